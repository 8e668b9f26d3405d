"""Profiling: hand-crafted features, control normalisation, per-plate mAP with BH q-values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from cellrep_core.data.features import HANDCRAFTED_FEATURES, handcrafted_features
from cellrep_core.profiling.mapping import (
    RESULT_COLUMNS,
    benjamini_hochberg,
    drug_map_qvalues,
    normalize_to_controls,
    robust_normalize_blocks,
)
from cellrep_core.profiling.permutation import map_permutation_test

NULL_DRUGS = ("null1", "null2", "null3")


def _ball(shape: tuple[int, int, int], center: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= r * r


def _plate(
    seed: int,
    plate_id: str = "P1",
    dim: int = 32,
    shift: float = 3.0,
    weak_scale: float = 0.5,
    n_shifted_dims: int = 4,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One synthetic plate: 32 DMSO, a strong and a weak (scaled-down) planted drug, three null drugs."""
    rng = np.random.default_rng(seed)
    pattern = np.zeros(dim)
    pattern[:n_shifted_dims] = shift
    groups = [("DMSO", 32, 0.0), ("strong", 20, 1.0), ("weak", 20, weak_scale)]
    groups += [(d, 20, 0.0) for d in NULL_DRUGS]
    rows, feats = [], []
    for drug, n, scale in groups:
        feats.append(rng.normal(size=(n, dim)) + scale * pattern)
        rows += [(plate_id, drug, f"{plate_id}_{drug}_{i}") for i in range(n)]
    return pd.DataFrame(rows, columns=["plate_id", "drug", "cell_id"]), np.vstack(feats)


def _by_drug(res: pd.DataFrame, plate_id: str = "P1") -> pd.DataFrame:
    return res[res["plate_id"] == plate_id].set_index("drug")


def _reference_map(feats: np.ndarray, drugs: np.ndarray, drug: str, control: str = "DMSO") -> float:
    """Brute-force mAP: each drug cell ranks the other drug cells (positives) among controls (negatives)."""
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    idx_drug = np.flatnonzero(drugs == drug)
    idx_ctrl = np.flatnonzero(drugs == control)
    aps = []
    for q in idx_drug:
        pos = idx_drug[idx_drug != q]
        cand = np.concatenate([pos, idx_ctrl])
        rel = np.concatenate([np.ones(len(pos)), np.zeros(len(idx_ctrl))])
        order = np.argsort(-(unit[cand] @ unit[q]), kind="stable")
        rel = rel[order]
        precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((precision * rel).sum() / rel.sum())
    return float(np.mean(aps))


# --------------------------------------------------------------------------- hand-crafted features


def test_ball_volume_and_surface():
    r = 12
    f = handcrafted_features(_ball((2 * r + 5,) * 3, (r + 2,) * 3, r))
    assert set(f) == set(HANDCRAFTED_FEATURES)
    assert f["volume"] == pytest.approx(4 / 3 * np.pi * r**3, rel=0.05)
    assert f["surface_area"] == pytest.approx(4 * np.pi * r**2, rel=0.10)
    assert f["n_pieces"] == 1.0
    assert f["mean_piece_distance"] == 0.0


def test_ball_touching_border_is_closed_by_padding():
    r = 12
    full = handcrafted_features(_ball((2 * r + 1,) * 3, (r,) * 3, r))
    assert full["surface_area"] == pytest.approx(4 * np.pi * r**2, rel=0.10)


def test_two_balls_pieces_and_centroid_distance():
    mask = _ball((20, 20, 50), (10, 10, 10), 5) | _ball((20, 20, 50), (10, 10, 38), 5)
    f = handcrafted_features(mask)
    assert f["n_pieces"] == 2.0
    assert f["mean_piece_distance"] == pytest.approx(28.0, abs=1e-9)

    three = mask | _ball((20, 20, 50), (10, 10, 24), 2)
    # centroids on a line at x = 10, 24, 38: distances 14, 14, 28
    assert handcrafted_features(three)["mean_piece_distance"] == pytest.approx(56 / 3, abs=1e-9)


def test_diagonal_voxels_are_one_piece_with_26_connectivity():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True
    assert handcrafted_features(mask)["n_pieces"] == 1.0


def test_voxel_size_scales_features():
    mask = _ball((20, 20, 50), (10, 10, 10), 5) | _ball((20, 20, 50), (10, 10, 38), 5)
    f1 = handcrafted_features(mask, 1.0)
    f2 = handcrafted_features(mask, 0.5)
    assert f2["volume"] == pytest.approx(f1["volume"] * 0.5**3, rel=1e-12)
    assert f2["surface_area"] == pytest.approx(f1["surface_area"] * 0.5**2, rel=1e-5)
    assert f2["mean_piece_distance"] == pytest.approx(f1["mean_piece_distance"] * 0.5, rel=1e-12)
    assert f2["n_pieces"] == f1["n_pieces"]


def test_empty_or_bad_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        handcrafted_features(np.zeros((5, 5, 5), dtype=bool))
    with pytest.raises(ValueError, match="3D"):
        handcrafted_features(np.ones((5, 5), dtype=bool))


# --------------------------------------------------------------------------- normalisation and BH


def test_normalize_to_controls_gives_controls_mean0_std1():
    rng = np.random.default_rng(3)
    feats = rng.normal(loc=5.0, scale=[1.0, 2.0, 7.0, 0.1], size=(40, 4))
    feats[:, 3] = 2.5  # constant feature
    is_control = np.arange(40) < 15
    z = normalize_to_controls(feats, is_control)
    np.testing.assert_allclose(z[is_control, :3].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[is_control, :3].std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(z[:, 3], 0.0)
    # non-controls are transformed with the controls' statistics
    mu, sd = feats[is_control, 0].mean(), feats[is_control, 0].std()
    np.testing.assert_allclose(z[~is_control, 0], (feats[~is_control, 0] - mu) / sd)
    with pytest.raises(ValueError, match="at least 2 control"):
        normalize_to_controls(feats, np.arange(40) == 0)


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    cases = [rng.uniform(size=n) for n in (1, 2, 6, 50)]
    cases.append(np.concatenate([rng.uniform(0, 1e-3, size=10), rng.uniform(size=30)]))
    cases.append(np.array([0.01, 0.01, 0.04, 0.04, 1.0, 0.5, 0.03]))  # ties and a 1
    for p in cases:
        q = benjamini_hochberg(p)
        np.testing.assert_allclose(q, false_discovery_control(p, method="bh"), rtol=1e-12, atol=1e-15)
        assert np.all(q <= 1.0) and np.all(q >= p - 1e-15)
        order = np.argsort(p)
        assert np.all(np.diff(q[order]) >= -1e-15)  # monotone in p
    assert benjamini_hochberg(np.array([])).shape == (0,)
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([0.2, 1.5]))


# --------------------------------------------------------------------------- mAP, p and q


def test_planted_effect_hits_and_nulls_over_seeds():
    null_p, null_hits = [], 0
    for seed in range(20):
        meta, feats = _plate(seed)
        res = drug_map_qvalues(meta, feats, null_size=2000, seed=seed)
        assert list(res.columns) == list(RESULT_COLUMNS)
        assert res["is_hit"].dtype == bool
        r = _by_drug(res)
        assert set(r.index) == {"strong", "weak", *NULL_DRUGS}  # DMSO is not scored
        assert (r["n_cells"] == 20).all()
        for drug in ("strong", "weak"):
            assert r.loc[drug, "q_value"] < 0.01 and r.loc[drug, "is_hit"], (seed, drug)
        for drug in NULL_DRUGS:
            null_hits += int(r.loc[drug, "is_hit"])
            null_p.append(r.loc[drug, "p_value"])
            assert 0.3 < r.loc[drug, "mean_average_precision"] < 0.7
        assert r.loc["strong", "mean_average_precision"] > r.loc["weak", "mean_average_precision"]
        np.testing.assert_allclose(r["q_value"], false_discovery_control(r["p_value"], method="bh"))
    # an exact test: null p-values uniform (measured over 40 seeds: 4.2 % below 0.05, KS p 0.89), and BH at 0.05
    # calls a null drug now and then (4 of 120 over 40 seeds)
    assert np.mean(np.array(null_p) < 0.05) <= 0.1 and null_hits <= 4


def test_permutation_pvalues_are_calibrated_and_control_zscore_is_not():
    """Pure-noise plates: with the plate-wide robust z-score the permutation p-values of null drugs are uniform;
    z-scoring to the controls (label-dependent: it centres them exactly) makes them anti-conservative."""
    p_robust, p_ctrl = [], []
    for seed in range(25):
        rng = np.random.default_rng(1000 + seed)
        x = rng.normal(size=(32 + 4 * 10, 32)) * rng.uniform(0.5, 2.0, 32)
        drugs = np.array(["DMSO"] * 32 + [f"n{j}" for j in range(4) for _ in range(10)], dtype=object)
        ctrl = drugs == "DMSO"
        meta = pd.DataFrame({"plate_id": "P", "drug": drugs, "cell_id": [f"c{i}" for i in range(len(x))]})
        p_robust += drug_map_qvalues(meta, x, null_size=500, seed=seed)["p_value"].tolist()
        xc = normalize_to_controls(x, ctrl)
        for j in range(4):
            sel = ctrl | (drugs == f"n{j}")
            p_ctrl.append(map_permutation_test(xc[sel], drugs[sel] == f"n{j}", np.zeros(int(sel.sum())), False,
                                               500, seed)[1])
    p_robust, p_ctrl = np.array(p_robust), np.array(p_ctrl)
    from scipy import stats

    assert stats.kstest(p_robust, "uniform").pvalue > 0.01
    assert (p_robust < 0.05).mean() < 0.12
    assert (p_ctrl < 0.05).mean() > 0.12 and np.median(p_ctrl) < 0.35


def test_map_matches_brute_force_with_control_only_negatives():
    meta, feats = _plate(7, weak_scale=0.3)
    drugs = meta["drug"].to_numpy()
    # copairs' mAP (the paper's: z-scored to the controls) and the permutation test's (plate-wide robust z-score)
    for null, z in [("copairs", normalize_to_controls(feats, drugs == "DMSO")),
                    ("permutation", robust_normalize_blocks(feats, meta["plate_id"].to_numpy()))]:
        res = _by_drug(drug_map_qvalues(meta, feats, null_size=200, null=null))
        for drug in ("strong", "weak", "null1"):
            expected = _reference_map(z, drugs, drug)
            assert res.loc[drug, "mean_average_precision"] == pytest.approx(expected, abs=1e-5), (null, drug)


def test_other_drugs_are_not_negatives():
    # Two drugs with the same strong phenotype: against controls only, each is perfectly retrieved.
    # Had the other drug's cells been negatives, mAP would fall to about 0.5.
    rng = np.random.default_rng(11)
    pattern = np.zeros(16)
    pattern[:3] = 8.0
    feats = np.vstack([rng.normal(size=(24, 16)), rng.normal(size=(30, 16)) + pattern])
    drugs = ["DMSO"] * 24 + ["A"] * 15 + ["B"] * 15
    meta = pd.DataFrame({"plate_id": "P", "drug": drugs, "cell_id": [f"c{i}" for i in range(54)]})
    res = _by_drug(drug_map_qvalues(meta, feats, null_size=500, null="copairs"), "P")
    assert res.loc["A", "mean_average_precision"] == pytest.approx(1.0)
    assert res.loc["B", "mean_average_precision"] == pytest.approx(1.0)
    # the permutation path (plate-wide robust z-score) on a plate where most cells are DMSO, as in a screen
    feats = np.vstack([rng.normal(size=(100, 16)), rng.normal(size=(20, 16)) + pattern])
    drugs = ["DMSO"] * 100 + ["A"] * 10 + ["B"] * 10
    meta = pd.DataFrame({"plate_id": "P", "drug": drugs, "cell_id": [f"c{i}" for i in range(120)]})
    res = _by_drug(drug_map_qvalues(meta, feats, null_size=500), "P")
    assert res.loc["A", "mean_average_precision"] == pytest.approx(1.0)
    assert res.loc["B", "mean_average_precision"] == pytest.approx(1.0)


def test_smallest_p_value_is_one_over_null_size_plus_one():
    meta, feats = _plate(1, shift=10.0)
    for null_size in (100, 10000):
        r = _by_drug(drug_map_qvalues(meta, feats, null_size=null_size, null="copairs"))
        assert r.loc["strong", "mean_average_precision"] == pytest.approx(1.0)
        assert r.loc["strong", "p_value"] == pytest.approx(1 / (null_size + 1), rel=1e-6)
        assert r["p_value"].min() >= 1 / (null_size + 1) - 1e-12
        # permutations stop once p < 0.05 / (10 x 5 drugs) is certain: a q-value call can no longer change
        r = _by_drug(drug_map_qvalues(meta, feats, null_size=null_size))
        assert r.loc["strong", "p_value"] == pytest.approx(1 / (min(null_size, 1000) + 1), rel=1e-6)
        assert r["p_value"].min() >= 1 / (null_size + 1) - 1e-12


def test_two_plates_batch_effect_removed_by_per_plate_normalisation():
    meta1, feats1 = _plate(21, plate_id="P1")
    meta2, clean2 = _plate(22, plate_id="P2")
    rng = np.random.default_rng(5)
    batch_scale = rng.uniform(0.5, 3.0, size=clean2.shape[1])
    batch_offset = rng.normal(scale=5.0, size=clean2.shape[1])
    feats2 = clean2 * batch_scale + batch_offset  # plate-wide batch effect on every cell of plate 2
    meta = pd.concat([meta1, meta2], ignore_index=True)
    res = drug_map_qvalues(meta, np.vstack([feats1, feats2]), null_size=10000)

    assert list(pd.unique(res["plate_id"])) == ["P1", "P2"]
    for plate_id in ("P1", "P2"):
        r = _by_drug(res, plate_id)
        assert r.loc["strong", "is_hit"] and r.loc["weak", "is_hit"]
        assert not r.loc[list(NULL_DRUGS), "is_hit"].any()
        assert (r.loc[list(NULL_DRUGS), "q_value"] > 0.05).all()

    # Per-plate normalisation makes plate 2's result blind to the batch effect, and plate 1 is
    # unaffected by plate 2 (normalisation and BH are per plate).
    alone_clean2 = _by_drug(drug_map_qvalues(meta2, clean2, null_size=10000), "P2")
    alone1 = _by_drug(drug_map_qvalues(meta1, feats1, null_size=10000))
    cols = ["mean_average_precision", "p_value", "q_value"]
    np.testing.assert_allclose(_by_drug(res, "P2")[cols], alone_clean2[cols], atol=1e-5)
    np.testing.assert_allclose(_by_drug(res, "P1")[cols], alone1[cols], atol=1e-12)


def test_results_are_deterministic_for_a_seed():
    meta, feats = _plate(4)
    a = drug_map_qvalues(meta, feats, null_size=2000, seed=3)
    b = drug_map_qvalues(meta, feats, null_size=2000, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_input_errors():
    meta, feats = _plate(0)
    one = meta.copy()
    one.loc[one.index[-1], "drug"] = "lonely"
    with pytest.raises(ValueError, match=r"plate 'P1', drug 'lonely'"):
        drug_map_qvalues(one, feats, null_size=100)
    few_ctrl = meta.copy()
    few_ctrl.loc[few_ctrl["drug"] == "DMSO", "drug"] = ["DMSO"] + ["other"] * 31
    with pytest.raises(ValueError, match="control"):
        drug_map_qvalues(few_ctrl, feats, null_size=100)
    with pytest.raises(ValueError, match="missing columns"):
        drug_map_qvalues(meta.drop(columns="cell_id"), feats, null_size=100)
    with pytest.raises(ValueError, match="aligned"):
        drug_map_qvalues(meta, feats[:-1], null_size=100)


def test_plate_without_drugs_gives_empty_frame():
    meta = pd.DataFrame({"plate_id": "P", "drug": "DMSO", "cell_id": [f"c{i}" for i in range(5)]})
    res = drug_map_qvalues(meta, np.random.default_rng(0).normal(size=(5, 4)), null_size=100)
    assert list(res.columns) == list(RESULT_COLUMNS) and len(res) == 0


# ------------------------------------------------------------------------------ whitening of model codes


_LOADINGS = np.random.default_rng(99).uniform(0.5, 1.5, 40) * np.repeat([1.0, 0.05], 20)


def _correlated_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Codes like a model's: most dimensions follow one 'size' factor, plus small independent noise."""
    return rng.normal(size=(n, 1)) * 10 * _LOADINGS + rng.normal(scale=0.3, size=(n, len(_LOADINGS)))


def test_whitening_gives_unit_covariance_and_caps_axes():
    from cellrep_core.models.whitening import Whitening

    rng = np.random.default_rng(0)
    z = _correlated_codes(rng, 200)
    w = Whitening.fit(z)
    assert w.components.shape[0] == 40  # every axis with real variance (fewer than 200 / 4)
    zw = w.transform(z)
    np.testing.assert_allclose(np.cov(zw.T), np.eye(zw.shape[1]), atol=1e-4)
    # few cells: at most a quarter of them as axes; constant dimensions are dropped
    assert Whitening.fit(z[:20]).components.shape[0] == 5
    flat = np.concatenate([z[:, :3], np.ones((200, 30))], axis=1)
    assert Whitening.fit(flat).components.shape[0] == 3
    with pytest.raises(ValueError, match="at least 8 cells"):
        Whitening.fit(z[:5])
    with pytest.raises(ValueError, match="dimensions"):
        w.transform(z[:, :10])


def test_whitening_reveals_an_effect_orthogonal_to_the_dominant_factor():
    """A shift along a low-variance axis drowns in the size factor under cosine; whitening recovers it,
    and null drugs stay null because the transform is fitted on unlabelled reference codes."""
    from cellrep_core.models.whitening import Whitening

    rng = np.random.default_rng(1)
    ref = _correlated_codes(rng, 200)
    shift = np.zeros(40)
    shift[30:34] = 0.5  # under two noise s.d. on four low-variance dimensions
    rows, feats = [], []
    for drug, n, eff in [("DMSO", 32, 0.0), ("shifted", 20, 1.0), *[(d, 20, 0.0) for d in NULL_DRUGS]]:
        feats.append(_correlated_codes(rng, n) + eff * shift)
        rows += [{"cell_id": f"{drug}_{i}", "plate_id": "P1", "drug": drug} for i in range(n)]
    meta, z = pd.DataFrame(rows), np.concatenate(feats)
    raw = drug_map_qvalues(meta, z, null_size=2000).set_index("drug")
    white = drug_map_qvalues(meta, Whitening.fit(ref).transform(z), null_size=2000).set_index("drug")
    assert white.at["shifted", "mean_average_precision"] > raw.at["shifted", "mean_average_precision"] + 0.05
    assert white.at["shifted", "q_value"] < 0.05
    assert (white.loc[list(NULL_DRUGS), "q_value"] > 0.05).all()
    # copairs' conservative null misses it on the raw codes altogether
    assert drug_map_qvalues(meta, z, null_size=2000, null="copairs").set_index("drug").at["shifted", "q_value"] > 0.05


def test_plots_of_q_values_and_dose_response(tmp_path):
    """1/q gets one column per treatment (the figure widens with them); the dose response one panel per model."""
    import matplotlib.image as mpimg

    from cellrep_core.profiling.plots import dose_response_plot, inverse_q_plot

    def table(n_drugs: int, roles: tuple[str, ...]) -> pd.DataFrame:
        rows = [{"drug": f"d{i}", "concentration": c, "q_value": 0.5 / (i + 1) / c, "model_role": role,
                 "model_version": "v1", "mean_average_precision": 0.2 + 0.1 * c, "is_hit": c > 1,
                 "planted_effect": "none"}
                for i in range(n_drugs) for c in (0.3, 1.0, 3.0) for role in roles]
        return pd.DataFrame(rows)

    small = mpimg.imread(inverse_q_plot(table(2, ("base",)), tmp_path / "q_small.png"))
    large = mpimg.imread(inverse_q_plot(table(12, ("base",)), tmp_path / "q_large.png"))
    assert large.shape[1] > small.shape[1] * 1.5 and small.std() > 0.05
    one = mpimg.imread(dose_response_plot(table(3, ("base",)), tmp_path / "d1.png"))
    three = mpimg.imread(dose_response_plot(table(3, ("base", "fine_tuned", "handcrafted")), tmp_path / "d3.png"))
    assert three.shape[1] == pytest.approx(3 * one.shape[1], rel=0.02)
