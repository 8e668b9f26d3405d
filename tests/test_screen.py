"""The screen simulator and screen-level statistics: truth recorded, effects graded by dose, the hand-crafted
features blind to two effects, replicate positives robust to a plate's well artefact, calibrated nulls."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cellrep_core.data import screen
from cellrep_core.data.cells import read_manifest
from cellrep_core.data.features import handcrafted_features
from cellrep_core.profiling.mapping import drug_map_qvalues
from cellrep_core.profiling.screen import fisher_combine, screen_map_qvalues


def _spec(**kw):
    base = {"screen_id": "t", "seed": 3, "drugs": [screen.Drug("a", "shrink", 1.0), screen.Drug("n", "none", 0.0)],
            "concentrations": (0.3, 1.0, 3.0), "n_per_well": 2, "n_dmso_wells": 3}
    return screen.ScreenSpec(**{**base, **kw})


def test_screen_writes_replicates_with_truth_and_own_layouts(tmp_path):
    spec = _spec(n_bad=2)
    folders = screen.generate_screen(spec, tmp_path)
    assert [f.name for f in folders] == ["t_r1", "t_r2"]
    m1, m2 = (read_manifest(f / "manifest.csv") for f in folders)
    assert len(m1) == 2 * 3 * 2 + 3 * 2 + 2 and set(m1.screen_id) == {"t"}
    assert set(m1[m1.drug == "a"].concentration) == {0.3, 1.0, 3.0} and (m1[m1.drug == "DMSO"].concentration == 0).all()
    # every plate has its own layout: the same treatment sits in other wells; DMSO in edge and inner wells
    w1 = m1.groupby(["drug", "concentration"]).well.first()
    w2 = m2.groupby(["drug", "concentration"]).well.first()
    assert (w1 != w2).sum() >= 4
    dmso_wells = set(m1[m1.drug == "DMSO"].well)
    assert len(dmso_wells) == 3 and sum(screen.is_edge_well(w) for w in dmso_wells) == 2
    truth = pd.read_csv(folders[0] / "cell_truth.csv")
    assert len(truth) == len(m1) - 2  # the bad cells have no truth: they must end in quarantine
    a = truth[truth.drug == "a"].groupby("concentration").strength.first()
    assert a.is_monotonic_increasing and a.iloc[-1] == pytest.approx(1.0) and 0 < a.iloc[0] < 0.3
    assert (truth[truth.drug == "n"].strength == 0).all()
    assert truth.edge_well.any() and (~truth.edge_well).any()
    dt = pd.read_csv(folders[0] / "drug_truth.csv")
    assert list(dt.columns) == ["plate_id", "drug", "concentration", "planted_effect", "strength"]
    # deterministic: the same spec writes the same bytes
    again = screen.generate_screen(spec, tmp_path / "again")
    cell = m1.cell_id.iloc[5]
    assert (again[0] / f"{cell}.tiff").read_bytes() == (folders[0] / f"{cell}.tiff").read_bytes()


def test_evaluation_seeds_are_reserved():
    with pytest.raises(ValueError, match="reserved for the held-out evaluation"):
        _spec(seed=screen.EVAL_SEED_START)
    assert _spec(seed=screen.EVAL_SEED_START + 3, evaluation=True).seed == screen.EVAL_SEED_START + 3
    # defaults, the demo and the tests stay below the range
    from orchestration.demo import DEMO_SCREEN

    assert DEMO_SCREEN["seed"] < screen.EVAL_SEED_START


def test_bad_specs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown effect"):
        screen.Drug("x", "explode")
    with pytest.raises(ValueError, match="wells"):
        _spec(drugs=[screen.Drug(f"d{i}", "none") for i in range(32)])  # 96 treatment + 3 DMSO wells > 96
    with pytest.raises(ValueError, match="NAME=EFFECT"):
        screen.Drug.parse("shrink")
    assert screen.Drug.parse("c7=unequal:0.6") == screen.Drug("c7", "unequal", 0.6)


@pytest.mark.parametrize("effect", screen.HANDCRAFTED_INVISIBLE)
def test_invisible_effects_keep_piece_count_volume_and_distance(effect):
    """Same seeds, DMSO vs the effect at full strength: the drawn piece count and volume are identical, and
    the measured count, volume and mean piece distance do not differ (two-sample KS, 40 cells, no nuisance)."""
    off = screen.Nuisance.off()
    feats = {e: [] for e in ("none", effect)}
    for i in range(40):
        for e in feats:
            rng = np.random.default_rng(10_000 + i)
            p = screen.effect_parameters(np.random.default_rng(10_000 + i), e, 1.0)
            ref = screen.effect_parameters(np.random.default_rng(10_000 + i), "none", 0.0)
            assert (p["n_pieces"], p["volume"]) == (ref["n_pieces"], ref["volume"])
            _, smask, truth = screen.screen_cell(rng, e, 1.0, off, 1.0, False)
            feats[e].append(handcrafted_features(smask))
    a, b = pd.DataFrame(feats["none"]), pd.DataFrame(feats[effect])
    for col in ("n_pieces", "volume", "mean_piece_distance"):
        assert stats.ks_2samp(a[col], b[col]).pvalue > 0.05, col
    # the shape did change: flatter pieces or unequal piece volumes
    assert not a.equals(b)


def _features(rng, plates, effects, n=12, n_dmso=30, well_artifact=None, dim=6):
    """Toy profiles: per plate a batch shift; a drug shifts the first axis; ``well_artifact`` = (plate, drug)
    whose well adds a shift on plate ``plate`` only."""
    rows, x = [], []
    for p in plates:
        shift = rng.normal(0, 2.0, dim)
        for i in range(n_dmso):
            rows.append((f"{p}_d{i}", p, "DMSO", 0.0))
            x.append(rng.normal(size=dim) + shift)
        for drug, size in effects.items():
            for i in range(n):
                v = rng.normal(size=dim) + shift
                v[0] += size
                if well_artifact == (p, drug):
                    v[1] += 2.5
                rows.append((f"{p}_{drug}{i}", p, drug, 1.0))
                x.append(v)
    return pd.DataFrame(rows, columns=["cell_id", "plate_id", "drug", "concentration"]), np.array(x)


def test_screen_stats_find_a_planted_effect_and_ignore_a_one_plate_well_artifact():
    rng = np.random.default_rng(0)
    meta, x = _features(rng, ["p1", "p2"], {"real": 1.5, "null": 0.0, "null2": 0.0}, well_artifact=("p1", "null"))
    res = screen_map_qvalues(meta, x, null_size=20_000).set_index("drug")
    assert res.loc["real", "is_hit"] and res.loc["real", "method"] == "replicate_positives"
    assert not res.loc["null", "is_hit"] and not res.loc["null2", "is_hit"]
    assert (res.n_plates == 2).all() and (res.n_cells == 24).all()
    # per plate, the artefact of its one well makes the null drug a hit on that plate
    per_plate = drug_map_qvalues(meta, x, null_size=20_000).set_index(["plate_id", "drug"])
    assert per_plate.loc[("p1", "null"), "is_hit"] and not per_plate.loc[("p2", "null"), "is_hit"]


def test_screen_null_pvalues_are_not_anticonservative():
    """200 null treatments over 10 simulated screens: at most ~5 % below 0.05, KS against uniform not
    skewed towards small p-values."""
    p = []
    for s in range(10):
        meta, x = _features(np.random.default_rng(100 + s), ["p1", "p2"], {f"n{i}": 0.0 for i in range(20)}, n=8)
        p += screen_map_qvalues(meta, x, null_size=5000).p_value.tolist()
    p = np.array(p)
    assert (p < 0.05).mean() <= 0.08
    # anti-conservative = the empirical CDF above the uniform one (scipy: alternative="greater")
    assert stats.kstest(p, "uniform", alternative="greater").pvalue > 0.01


def _edge_screen(rng, n_null=12, n=8):
    """Two plates whose edge wells (rows A/H, columns 1/12) shift every feature by 1.5 sd: 6 DMSO wells (2 on
    the edge), null drugs in random wells."""
    rows, x = [], []
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    for p in ("p1", "p2"):
        edge = [w for w in wells if w[0] in "AH" or w[1:] in ("01", "12")]
        inner = [w for w in wells if w not in edge]
        dmso = list(rng.choice(edge, 2, replace=False)) + list(rng.choice(inner, 4, replace=False))
        rest = list(rng.permutation([w for w in wells if w not in dmso]))
        plan = [("DMSO", w) for w in dmso] + [(f"n{i}", rest[i]) for i in range(n_null)]
        for drug, w in plan:
            for i in range(n):
                v = rng.normal(size=6) + (1.5 if w in edge else 0.0)
                rows.append((f"{p}_{w}_{i}", p, drug, 1.0 if drug != "DMSO" else 0.0, w))
                x.append(v)
    return pd.DataFrame(rows, columns=["cell_id", "plate_id", "drug", "concentration", "well"]), np.array(x)


def test_edge_wells_are_normalised_and_permuted_apart():
    """An edge-well effect makes null drugs look active when edge and interior cells are pooled; per well
    position (edge / interior, as DMSO sits in both) the null p-values are uniform again."""
    p_pos, p_pooled = [], []
    for s in range(8):
        meta, x = _edge_screen(np.random.default_rng(300 + s))
        p_pos += screen_map_qvalues(meta, x, null_size=2000).p_value.tolist()
        p_pooled += screen_map_qvalues(meta, x, null_size=2000, by_position=False).p_value.tolist()
    p_pos, p_pooled = np.array(p_pos), np.array(p_pooled)
    assert stats.kstest(p_pos, "uniform", alternative="greater").pvalue > 0.01 and (p_pos < 0.05).mean() < 0.1
    assert (p_pooled < 0.05).mean() > 2 * max((p_pos < 0.05).mean(), 0.05)
    meta, _ = _edge_screen(np.random.default_rng(0))
    from cellrep_core.profiling.mapping import position_classes

    cls = position_classes(meta)
    assert set(cls) == {"edge", "interior"}
    assert (cls[meta.well.str[0].isin(["A", "H"]).to_numpy()] == "edge").all()
    # a plate without DMSO in both positions is one stratum
    one = meta[~((meta.drug == "DMSO") & (cls == "edge"))]
    assert set(position_classes(one)) == {"plate"}


def test_fisher_combination_matches_scipy_and_bh_runs_over_the_screen():
    rows = pd.DataFrame({"plate_id": ["a", "b", "a", "b"], "drug": ["x", "x", "y", "y"],
                         "concentration": [1.0, 1.0, 1.0, 1.0], "n_cells": [5, 6, 5, 6],
                         "mean_average_precision": [0.5, 0.7, 0.2, 0.3], "p_value": [0.01, 0.02, 0.5, 0.9]})
    out = fisher_combine(rows).set_index("drug")
    ref = stats.combine_pvalues([0.01, 0.02], method="fisher").pvalue
    assert out.loc["x", "p_value"] == pytest.approx(ref)
    assert out.loc["x", "n_cells"] == 11 and out.loc["x", "mean_average_precision"] == pytest.approx(0.6)
    assert out.loc["x", "q_value"] == pytest.approx(min(ref * 2, 1.0)) and out.loc["x", "is_hit"]
