"""The benchmark metrics with planted answers: known intrinsic dimension, separable vs random labels, linear
interpolation, NULL rows with reasons, the canonical frame of the model protocol, plots and leaderboard."""


import numpy as np
import pandas as pd
import pytest
import torch

from cellrep_core.metrics.benchmark import benchmark_model, row
from cellrep_core.metrics.measures import (
    INTERPOLATION_STEPS,
    classification_accuracy,
    compactness_k,
    eval_batch,
    evolution_energy,
    interpolation_distance,
    latents_and_targets,
    levina_bickel,
    random_pairs,
    reconstruction,
    regression_r2,
)
from cellrep_core.metrics.plots import summary_scores, write_reports
from cellrep_core.metrics.rotation import random_rotations, rotate_points
from cellrep_core.models.config import get_config
from cellrep_core.models.zoo import build_model
from cellrep_core.pointclouds.items import CloudItem
from cellrep_core.pointclouds.sdf import query_grid

# ------------------------------------------------------------------------------------ compactness


def test_intrinsic_dimension_of_a_2d_manifold_in_10d():
    rng = np.random.default_rng(0)
    n = 2000
    # a swiss roll (2-D) embedded by a random isometry into 10-D
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    h = 20 * rng.random(n)
    roll = np.stack([t * np.cos(t), h, t * np.sin(t)], 1)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = roll @ q[:3]
    k1, k2 = compactness_k(n)
    assert (k1, k2) == (16, 32)
    d, sd = levina_bickel(x, k1, k2)
    assert abs(d - 2.0) < 0.25, d
    # a 6-D Gaussian is not mistaken for a low-dimensional set
    d6, _ = levina_bickel(rng.normal(size=(n, 6)) @ rng.normal(size=(6, 10)), k1, k2)
    assert 5.0 < d6 < 6.5, d6


def test_levina_bickel_errors():
    with pytest.raises(ValueError, match="k2"):
        levina_bickel(np.random.default_rng(0).normal(size=(8, 3)), 5, 10)
    with pytest.raises(ValueError, match="k1"):
        levina_bickel(np.random.default_rng(0).normal(size=(80, 3)), 1, 10)


# ------------------------------------------------------------------------------ classification, R²


def test_classification_separable_vs_random_labels():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    means = rng.normal(scale=6.0, size=(4, 12))
    x = means[y] + rng.normal(size=(120, 12))
    sep = classification_accuracy(x, y)
    assert sep["top1"] > 0.95 and sep["top2"] >= sep["top1"] and sep["folds"] == 5 and sep["n_classes"] == 4
    rnd = classification_accuracy(rng.normal(size=(120, 12)), y)
    assert rnd["top1"] < 0.45 and rnd["top2"] < 0.7  # chance: 0.25 and 0.5
    # a class with a single cell is left out and named; fewer than two classes is an error with the reason
    res = classification_accuracy(x[:61], y[:61])
    assert res["dropped_classes"] == ["2"] and res["n"] == 60
    with pytest.raises(ValueError, match="fewer than two classes"):
        classification_accuracy(x[:31], y[:31])


def test_regression_r2_linear_vs_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 8))
    good = regression_r2(x, x @ rng.normal(size=8) + 0.1 * rng.normal(size=100))
    assert good["mean"] > 0.95 and good["folds"] == 100
    bad = regression_r2(x, rng.normal(size=100))
    assert bad["mean"] < 0.1
    with pytest.raises(ValueError, match="constant"):
        regression_r2(x, np.ones(100))


# ------------------------------------------------------------------------------ interpolation


def test_evolution_energy_of_a_linear_toy_model():
    """Identity decoder: x̂_t = (1−t)a + tb, so with L = ‖·‖² the energy is mean_t [t² + (1−t)²] and with
    L = ‖·‖ it is exactly 1."""
    rng = np.random.default_rng(3)
    lat = torch.from_numpy(rng.normal(size=(10, 5)))
    pairs = random_pairs(10, 20, seed=0)
    ts = np.asarray(INTERPOLATION_STEPS)

    def decode(lt, _):
        return lt

    sq = evolution_energy(decode, lambda a, b: ((a - b) ** 2).sum(1), lat, lat, pairs)
    assert sq[0] == pytest.approx(np.mean(ts**2 + (1 - ts) ** 2), abs=1e-9) and sq[2] == 20
    lin = evolution_energy(decode, lambda a, b: (a - b).norm(dim=1), lat, lat, pairs)
    assert lin[0] == pytest.approx(1.0, abs=1e-9) and lin[1] < 1e-9
    # a decoder that ignores the latent and returns a constant is worse than the linear one
    const = evolution_energy(lambda lt, _: torch.full_like(lt, 5.0), lambda a, b: (a - b).norm(dim=1), lat, lat,
                             pairs)
    assert const[0] > 2.0
    # identical ends are left out instead of dividing by zero
    same = evolution_energy(decode, lambda a, b: (a - b).norm(dim=1), lat[[0, 0]], lat[[0, 0]],
                            np.array([[0, 1]]))
    assert same[2] == 0 and np.isnan(same[0])


def test_interpolation_distance_dense_line_vs_two_clusters():
    rng = np.random.default_rng(4)
    line = np.c_[np.linspace(0, 1, 200), np.zeros((200, 2))]
    near = np.stack([np.arange(0, 190, 10), np.arange(5, 195, 10)], 1)  # interpolants lie on the data
    d_line = interpolation_distance(line, near)
    assert d_line[0] < 1.0
    blobs = np.r_[rng.normal(size=(50, 3)) * 0.1, rng.normal(size=(50, 3)) * 0.1 + 10]
    across = np.stack([np.arange(50), np.arange(50, 100)], 1)  # interpolants fall in the empty gap
    d_gap = interpolation_distance(blobs, across)
    assert d_gap[0] > 20 * d_line[0]


def test_null_value_needs_a_reason():
    with pytest.raises(ValueError, match="reason"):
        row("evolution_energy", None)
    assert row("evolution_energy", float("nan"), note="why")["value"] is None


# ------------------------------------------------------------------------- the model protocol


def _two_ball_items(n, grid_side=16, rotations=None):
    """Cells of two balls of different radii (SDF exact), optionally each rotated about the origin."""
    grid = query_grid(grid_side)
    items = []
    for i in range(n):
        rng = np.random.default_rng(i)
        r = 0.15 + 0.1 * (i % 3)
        centres = np.array([[0.35, 0.1, 0.0], [-0.3, -0.1, 0.1 * (i % 2)]])
        radii = np.array([r, 0.2])
        d = rng.normal(size=(600, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        which = np.arange(600) % 2
        rot = rotations[i] if rotations is not None else np.eye(3)
        pts = ((centres[which] + radii[which, None] * d) @ rot.T).astype(np.float32)
        centres = centres @ rot.T
        sdf = np.min(np.linalg.norm(grid[:, None] - centres[None], axis=2) - radii, axis=1).astype(np.float32)
        items.append(CloudItem(f"c{i:02d}", pts, sdf))
    return items


def test_sdf_canonical_frame_undoes_the_rotation():
    """A rotated cell has the same latent, reconstruction and canonical target as the original: the query
    grid is rotated by the learned rotation."""
    torch.manual_seed(0)
    model = build_model(get_config("sdf_tiny", n_points=256)).eval()
    rots = random_rotations(6, seed=5)
    a = eval_batch(model.cfg, _two_ball_items(6))
    b = eval_batch(model.cfg, _two_ball_items(6, rotations=rots))
    lat_a, tgt_a = latents_and_targets(model, a)
    lat_b, tgt_b = latents_and_targets(model, b)
    assert torch.allclose(lat_a, lat_b, atol=1e-4)
    # the targets agree up to trilinear interpolation of the stored 16³ grid (clip 0.1)
    assert (tgt_a - tgt_b).abs().mean() < 0.01
    assert tgt_a.shape == (6, 8**3)
    rec_a = reconstruction(model, a, lat_a, tgt_a)
    rec_b = reconstruction(model, b, lat_b, tgt_b)
    assert np.allclose(rec_a["error"], rec_b["error"], atol=0.01)
    # an unrotated cell's canonical target through an identity rotation equals the stored SDF on the grid
    grid_sdf = a.batch["sdf_grid"].reshape(6, 16, 16, 16)[:, ::2, ::2, ::2].reshape(6, -1).clamp(-0.1, 0.1)
    model.cfg = model.cfg.model_copy(update={"encoder": "dgcnn"})  # R = identity; target needs no decoder
    assert torch.allclose(model.target(a.batch), grid_sdf, atol=1e-6)


def test_punctate_canonical_frame_and_chamfer():
    torch.manual_seed(0)
    model = build_model(get_config("punctate_tiny")).eval()
    rng = np.random.default_rng(0)
    items = [CloudItem(f"p{i}", np.c_[rng.normal(size=(500, 3)) * [3, 2, 1], rng.random(500)].astype(np.float32))
             for i in range(4)]
    rot = random_rotations(1, seed=2)[0]
    a, b = eval_batch(model.cfg, items), eval_batch(model.cfg, items)
    # rotate the drawn inputs (the draw maps intensity onto the xyz range, which depends on the orientation)
    b.batch["points"] = torch.from_numpy(rotate_points(b.batch["points"].numpy(), rot))
    lat_a, tgt_a = latents_and_targets(model, a)
    lat_b, tgt_b = latents_and_targets(model, b)
    assert torch.allclose(lat_a, lat_b, atol=1e-4) and torch.allclose(tgt_a, tgt_b, atol=1e-3)
    # the error in the canonical frame equals the training loss in the input frame (rotations keep distances)
    enc = model(a.batch["points"])
    from cellrep_core.models.losses import chamfer_distance

    direct = chamfer_distance(model.decode_points(enc), a.batch["points"])
    rec = reconstruction(model, a, lat_a, tgt_a)
    assert np.allclose(rec["error"], direct.detach().numpy(), rtol=1e-4)
    assert "one_minus_iou" not in rec


def test_benchmark_model_has_every_metric_with_null_reasons():
    torch.manual_seed(0)
    model = build_model(get_config("sdf_tiny", n_points=256)).eval()
    items = _two_ball_items(24)
    cells = pd.DataFrame({"cell_id": [it.cell_id for it in items], "shape_type": "polymorphic",
                          "label": [str(i % 3) for i in range(24)], "structure_name": "balls"})
    feats = pd.DataFrame({"cell_id": cells.cell_id, "volume": [float(i % 3) for i in range(24)],
                          "surface_area": np.arange(24.0), "mean_piece_distance": 0.0})
    df = benchmark_model(model, items, [f"c{i:02d}" for i in range(8)], cells, feats, None, n_rotations=2,
                         n_pairs=6, emissions=False)
    assert df.metric.is_unique and len(df) == 25
    null = df[df.value.isna()].set_index("metric")["note"]
    assert set(null.index) == {
        "emissions_g_co2eq_per_cell", "train_seconds", "classification_top1_structure",
        "classification_top2_structure", "classification_top1_cell_cycle_stage",
        "classification_top2_cell_cycle_stage", "regression_r2_mean_piece_distance",
        "rotation_invariance_error_end_to_end", "rotation_invariance_error_end_to_end_noise_floor"}
    assert (null.str.len() > 5).all()
    assert "constant" in null["regression_r2_mean_piece_distance"]
    v = df.set_index("metric")["value"]
    assert v["rotation_invariance_error"] < 1e-4 and v["n_parameters"] > 1000
    assert v["inference_seconds_per_cell"] > 0 and v["input_seconds_per_cell"] > 0
    # a stored code averages 8 draws: the user pays at least 8 forward passes per embedded cell
    assert v["embedding_seconds_per_cell"] >= 8 * v["inference_seconds_per_cell"]
    assert 0 <= v["reconstruction_1_minus_iou"] <= 1 and v["evolution_energy"] > 0
    assert df.set_index("metric").loc["reconstruction_error", "n"] == 8



@pytest.mark.parametrize("name", ["sdf_cnn_tiny", "sdf_segcnn_tiny"])
def test_image_model_iou_reads_its_own_volume(name):
    """SDF images are inside where negative, segmentations where above 0.5: an autoencoder that returned its
    input would score 1 − IoU = 0 either way; the stored rows say which volume and threshold they used."""
    torch.manual_seed(0)
    model = build_model(get_config(name)).eval()
    items = _two_ball_items(12)
    cells = pd.DataFrame({"cell_id": [it.cell_id for it in items], "shape_type": "polymorphic",
                          "label": [str(i % 3) for i in range(12)], "structure_name": "balls"})
    df = benchmark_model(model, items, [it.cell_id for it in items[:6]], cells, None, None, n_rotations=1,
                         n_pairs=4, emissions=False).set_index("metric")
    volume = "segmentation" if "seg" in name else "sdf"
    assert f"MSE of {volume} volumes" in df.loc["reconstruction_error", "note"]
    inside = "segmentation > 0.5" if volume == "segmentation" else "SDF < 0"
    assert df.loc["reconstruction_1_minus_iou", "note"].startswith(f"inside = {inside}")
    assert 0 <= df.loc["reconstruction_1_minus_iou", "value"] <= 1
    eb = eval_batch(model.cfg, items[:6])
    tgt = model.target(eb.batch)
    perfect = reconstruction(_Echo(model), eb, tgt, tgt)
    assert len(perfect["one_minus_iou"]) == 6  # every cell has an inside under its own threshold
    assert np.allclose(perfect["one_minus_iou"], 0.0) and np.allclose(perfect["error"], 0.0)


class _Echo:
    """Wraps a model so that decoding a latent returns it (the latent is the target volume itself)."""

    def __init__(self, model) -> None:
        self.cfg, self.reconstruction_error = model.cfg, model.reconstruction_error

    def decode_latent(self, lat, batch):
        return lat


# ------------------------------------------------------------------------------- plots, leaderboard


def _table():
    rows = []
    for model, err, acc, size in (("a", 0.1, 0.9, 1e4), ("b", 0.2, 0.5, 1e5), ("c", 0.3, 0.7, 1e6)):
        rows += [
            {"model": model, "metric": "reconstruction_error", "value": err, "std": 0.01, "n": 5, "note": ""},
            {"model": model, "metric": "classification_top1_rule", "value": acc, "std": 0.05, "n": 5, "note": ""},
            {"model": model, "metric": "n_parameters", "value": size, "std": None, "n": 1, "note": ""},
            {"model": model, "metric": "regression_r2_volume", "value": None, "std": None, "n": None,
             "note": "no hand-crafted features"},
        ]
    return pd.DataFrame(rows).assign(dataset="d", model_version=lambda d: d.model + "-v1")


def test_summary_scores_flip_lower_is_better(tmp_path):
    s = summary_scores(_table())
    assert list(s.columns) == ["classification_top1_rule", "n_parameters", "reconstruction_error"]
    assert s.loc["a", "reconstruction_error"] > 0 > s.loc["c", "reconstruction_error"]
    assert s.loc["a", "classification_top1_rule"] > s.loc["c", "classification_top1_rule"] > 0
    assert np.allclose(s.mean(0), 0) and np.allclose(s.std(0, ddof=0), 1)
    rep = write_reports(_table(), tmp_path / "reports" / "d", "d")
    for key in ("radar", "bars"):
        assert rep[key].exists() and rep[key].read_bytes()[:4] == b"\x89PNG"
    assert "reconstruction_error" in rep["table_md"]


def test_leaderboard_ranks_latest_versions(tmp_path):
    from cellrep_core import sqlmodels
    from cellrep_core.store.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    t = _table()
    old = t[t.model == "c"].assign(model_version="c-v0", value=lambda d: d.value.where(
        d.metric != "reconstruction_error", 0.0))  # an older, better version of c must not count
    for df in (old, t):
        wh.replace("benchmark_metrics", df[["model", "model_version", "dataset", "metric", "value", "std", "n",
                                            "note"]], {"model_version": df.model_version.iloc[0]})
    with wh.write() as con:  # c-v1 is the newer version
        con.execute("UPDATE benchmark_metrics SET computed_at = computed_at + INTERVAL 1 HOUR "
                    "WHERE model_version = 'c-v1'")
    model = next(m for m in sqlmodels.load_models() if m.name == "model_leaderboard")
    assert sqlmodels.materialize(wh, model) == 3
    lb = wh.query("select * from model_leaderboard")
    assert list(lb.model) == ["a", "b", "c"] and list(lb["rank"]) == [1, 2, 3]
    assert list(lb.model_version) == ["a-v1", "b-v1", "c-v1"]
    assert lb.n_scored_metrics.tolist() == [3, 3, 3] and lb.n_null_metrics.tolist() == [1, 1, 1]
    assert lb.loc[0, "classification_top1"] == 0.9 and np.isnan(lb.loc[0, "regression_r2_volume"])


@pytest.mark.parametrize("kind", ["punctate", "sdf"])
@pytest.mark.parametrize("size", ["tiny", "demo"])
def test_point_cloud_models_smaller_than_image_models(kind, size):
    """The paper's size claim at equal latent size: both point-cloud autoencoders (VN-DGCNN, DGCNN) have
    fewer parameters than both image autoencoders (escnn SO(3), classical CNN). Speed: the next test; the
    rotation-invariance claims are asserted in test_dgcnn.py and test_image_models.py."""
    counts, latents = {}, set()
    for family in ("", "dgcnn_", "so3cnn_", "cnn_"):
        cfg = get_config(f"{kind}_{family}{size}")
        latents.add(cfg.latent_dim)
        counts[family or "vn_"] = sum(p.numel() for p in build_model(cfg).parameters())
    assert len(latents) == 1, latents
    assert max(counts["vn_"], counts["dgcnn_"]) < min(counts["so3cnn_"], counts["cnn_"]), counts


class _OffsetCentroidModel(torch.nn.Module):
    """A 'model' whose code is a large constant plus the cloud's centroid: not rotation-invariant at all."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = get_config("punctate_tiny")
        self.offset = torch.nn.Parameter(torch.full((3,), 1000.0))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.offset + x[..., :3].mean(1)}


def test_spread_invariance_error_sees_through_a_constant_offset():
    """The published ratio ‖z_R − z‖ / (‖z‖ + ‖z_R‖) calls a code invariant when every code carries the same
    large offset; measured against the distance between cells, the same code changes as much under a turn
    as between cells."""
    from cellrep_core.metrics.rotation import rotation_invariance_error

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(12, 64, 4)).astype(np.float32)
    pts[..., :3] += rng.normal(scale=3.0, size=(12, 1, 3))  # cells differ by their centroid
    r = rotation_invariance_error(_OffsetCentroidModel().eval(), pts, random_rotations(4, seed=1))
    assert r["mean"] < 3e-3  # the published ratio: looks invariant
    assert 0.5 < r["spread_mean"] < 2.0  # a turn moves the code as far as another cell is away
    assert r["code_spread"] > 3.0
