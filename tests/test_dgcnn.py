"""Classical DGCNN autoencoder, the Sinkhorn EMD loss, and the paper's point: only the VN model is invariant."""

import sys

import numpy as np
import pytest
import torch

from cellrep_core.metrics.rotation import random_rotations, rotation_invariance_error
from cellrep_core.models.config import get_config
from cellrep_core.models.dgcnn import DGCNNEncoder, feature_knn, layer_widths
from cellrep_core.models.module import PointCloudAutoencoder

ROTS = random_rotations(4, seed=7)


def _clouds(b, n, d, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(b, n, d)).astype(np.float32) * np.array([3, 2, 1, 1][:d], np.float32)
    if d == 4:
        pts[..., 3] = rng.random((b, n))
    return pts


def test_feature_knn_matches_brute_force():
    f = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 50, 6)).astype(np.float32)).transpose(1, 2)
    idx = feature_knn(f, 5)
    d = torch.cdist(f.transpose(1, 2).double(), f.transpose(1, 2).double())
    ref = d.topk(5, dim=-1, largest=False).indices
    assert torch.equal(idx.sort(-1).values, ref.sort(-1).values)
    assert layer_widths(64, 4) == [64, 64, 128, 256]


def test_knn_in_row_blocks_and_under_autocast_builds_the_same_graph():
    """Blocks of query rows bound the distance matrix's memory without changing the graph, and mixed precision
    does not reach the distances: the graph of a bf16 training step is the fp32 embedding's."""
    from cellrep_core.models.vn import knn

    rng = np.random.default_rng(3)
    pts = torch.from_numpy(rng.normal(size=(3, 200, 3)).astype(np.float32))
    f = torch.from_numpy(rng.normal(size=(3, 16, 200)).astype(np.float32))
    full_p, full_f = knn(pts, 10), feature_knn(f, 10)
    # 3 x 200 entries per row: blocks of 1 and of 7 rows
    for block in (600, 7 * 600):
        assert torch.equal(knn(pts, 10, block_entries=block), full_p)
        assert torch.equal(feature_knn(f, 10, block_entries=block), full_f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(feature_knn(f, 10), full_f)
        assert torch.equal(knn(pts, 10), full_p)
    # the half-precision product alone would build another graph: the autocast guard is what keeps it
    x = f.transpose(1, 2)
    half = (x.bfloat16() @ x.transpose(1, 2).bfloat16()).float()
    d = (x * x).sum(-1)[:, :, None] - 2 * half + (x * x).sum(-1)[:, None, :]
    assert not torch.equal(d.topk(10, dim=-1, largest=False).indices, full_f)


@pytest.mark.parametrize("kind,d", [("punctate", 4), ("sdf", 3)])
def test_dgcnn_shapes_and_identity_rotation(kind, d):
    torch.manual_seed(0)
    cfg = get_config(f"{kind}_dgcnn_tiny")
    model = PointCloudAutoencoder(cfg.model_dump()).eval()
    assert isinstance(model.encoder, DGCNNEncoder)
    x = torch.from_numpy(_clouds(3, cfg.n_points, d, 1))
    with torch.no_grad():
        enc = model(x)
    assert enc["z"].shape == (3, cfg.latent_dim) == (3, model.encoder.code_dim)
    assert torch.equal(enc["rotation"], torch.eye(3).expand(3, 3, 3))
    if kind == "punctate":
        assert model.decode_points(enc).shape == (3, 2025, 4)
    else:
        q = torch.from_numpy(_clouds(3, 40, 3, 2))
        assert model.decode_sdf(enc, q).shape == (3, 40)


@pytest.mark.parametrize("name", ["punctate_dgcnn_tiny", "sdf_dgcnn_tiny"])
def test_dgcnn_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    cfg = get_config(name)
    model = PointCloudAutoencoder(cfg.model_dump()).train()
    d = 4 if cfg.kind == "punctate" else 3
    batch = {"points": torch.from_numpy(_clouds(4, cfg.n_points, d, 3) * 0.3)}  # the scale of training data
    if cfg.kind == "sdf":
        q = torch.from_numpy(_clouds(4, 64, 3, 4))
        batch["query"], batch["sdf"] = q, (q.norm(dim=-1) - 2.0) * 0.05  # inside the clip band
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model.per_item_loss(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # punctate: Chamfer first falls to the collapsed-cloud plateau (about -13 %), SDF falls much further
    assert losses[-1] < (0.9 if cfg.kind == "punctate" else 0.5) * losses[0], losses


def test_classical_invariance_error_at_least_100x_the_vn_models():
    """The paper's point at tiny scale: same data, same sizes, random SO(3) rotations."""
    pts = _clouds(4, 128, 4, 5)
    errs = {}
    for name in ("punctate_tiny", "punctate_dgcnn_tiny"):
        torch.manual_seed(0)
        model = PointCloudAutoencoder(get_config(name).model_dump()).eval()
        errs[name] = rotation_invariance_error(model, pts, ROTS)["mean"]
    assert errs["punctate_tiny"] < 1e-4
    assert errs["punctate_dgcnn_tiny"] > 100 * errs["punctate_tiny"], errs


def test_emd_loss_tracks_the_exact_transport_distance():
    """Sinkhorn (p=1, blur 0.01, scaling 0.5) against the exact W1 of equal-size uniform clouds (an optimal
    assignment, scipy): zero for identical clouds, within 35 % below the exact value, same order."""
    import geomloss  # noqa: F401  (a dev dependency: missing is a failure, not a skip)
    from scipy.optimize import linear_sum_assignment

    from cellrep_core.models.losses import sinkhorn_emd

    emd = sinkhorn_emd()
    a = torch.from_numpy(_clouds(1, 300, 3, 6)) * 0.1
    assert emd(a, a).abs().max() < 1e-3
    approx, exact = [], []
    for s, seed in [(0.05, 1), (0.15, 2), (0.4, 3)]:
        b = a * (1 + s) + torch.from_numpy(_clouds(1, 300, 3, seed)) * 0.1 * s
        cost = torch.cdist(a[0].double(), b[0].double()).numpy()
        r, c = linear_sum_assignment(cost)
        exact.append(cost[r, c].mean())
        approx.append(emd(a, b).item())
    ratio = np.array(approx) / np.array(exact)
    assert ((ratio > 0.65) & (ratio <= 1.0 + 1e-3)).all(), (approx, exact)
    assert approx == sorted(approx) and exact == sorted(exact)


def test_emd_config_trains_and_missing_geomloss_fails_at_build(monkeypatch):
    import geomloss  # noqa: F401  (a dev dependency: missing is a failure, not a skip)
    torch.manual_seed(0)
    cfg = get_config("punctate_dgcnn_tiny", loss="emd")
    model = PointCloudAutoencoder(cfg.model_dump())
    loss = model.per_item_loss({"points": torch.from_numpy(_clouds(2, cfg.n_points, 4, 8))})
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.mean().backward()
    monkeypatch.setitem(sys.modules, "geomloss", None)
    with pytest.raises(ImportError, match="geomloss"):
        PointCloudAutoencoder(get_config("punctate_tiny", loss="emd").model_dump())


def test_blocked_chamfer_equals_the_full_distance_matrix_in_value_and_gradient():
    """The Chamfer loss finds neighbours in blocks without gradients and measures the distances to them directly:
    the value and gradient of the minimum over the full ``[B, N, M]`` matrix (the reference), in float64."""
    from cellrep_core.models.losses import chamfer_distance, nearest_index

    torch.manual_seed(0)
    a = torch.randn(3, 300, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 410, 4, dtype=torch.float64, requires_grad=True)
    d = torch.cdist(a, b).pow(2)
    ref = d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)
    got = chamfer_distance(a, b)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    for g, r in zip(torch.autograd.grad(got.sum(), (a, b)), torch.autograd.grad(ref.sum(), (a, b)), strict=True):
        assert torch.allclose(g, r, rtol=0, atol=1e-12)
    # blocks of one row and of many give the same neighbours
    assert torch.equal(nearest_index(a, b, block_entries=3 * 410), nearest_index(a, b))
