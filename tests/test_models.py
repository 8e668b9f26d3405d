"""The SO(3) autoencoder: invariance and equivariance with real tolerances, training and checkpoints."""

import numpy as np
import pytest
import torch

from cellrep_core.metrics.rotation import random_rotations, relative_error, rotate_points, rotation_invariance_error
from cellrep_core.models.config import get_config
from cellrep_core.models.data import CloudItem
from cellrep_core.models.module import PointCloudAutoencoder
from cellrep_core.models.train import data_hash, embed_items, load_model, model_version, train_model
from cellrep_core.models.vn import VNDGCNNEncoder, knn

ROTS = random_rotations(5, seed=3)


def _cloud(n, d, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, d)).astype(np.float32) * np.array([3, 2, 1, 1][:d], np.float32)
    if d == 4:
        pts[:, 3] = rng.random(n)
    return pts


@pytest.mark.parametrize("intensity", [False, True])
def test_encoder_invariance_random_weights(intensity):
    torch.manual_seed(0)
    enc = VNDGCNNEncoder(latent_dim=16, hidden=8, n_layers=3, k=8, intensity=intensity).eval()
    x = torch.from_numpy(np.stack([_cloud(200, 4 if intensity else 3, s) for s in range(3)]))
    with torch.no_grad():
        a = enc(x)
        for r in ROTS:
            b = enc(torch.from_numpy(rotate_points(x.numpy(), r)))
            rt = torch.from_numpy(r)
            err = relative_error(a["z"].numpy(), b["z"].numpy())
            assert err.max() < 1e-4
            # latent vectors and the learned rotation are equivariant: v -> R v, R_hat -> R R_hat
            assert torch.allclose(a["vectors"] @ rt.T, b["vectors"], atol=1e-4)
            assert torch.allclose(rt @ a["rotation"], b["rotation"], atol=1e-3)
            # learned rotations are proper rotations
            eye = b["rotation"].transpose(1, 2) @ b["rotation"]
            assert torch.allclose(eye, torch.eye(3).expand_as(eye), atol=1e-4)


def test_invariance_error_not_trivially_zero():
    """The metric does see a non-invariant code: raw coordinates of a point change under rotation."""
    pts = _cloud(50, 3, 0)
    rotated = rotate_points(pts, ROTS[0])
    assert relative_error(pts[:1], rotated[:1]).max() > 1e-2


def test_knn_includes_self_and_is_sorted():
    pts = torch.from_numpy(_cloud(64, 3, 1))[None]
    idx = knn(pts, 5)[0]
    assert (idx[:, 0] == torch.arange(64)).all()
    d = (pts[0][idx] - pts[0][:, None]).norm(dim=-1)
    assert (d[:, 1:] >= d[:, :-1] - 1e-6).all()


def test_punctate_reconstruction_is_equivariant():
    torch.manual_seed(0)
    model = PointCloudAutoencoder(get_config("punctate_tiny").model_dump()).eval()
    x = torch.from_numpy(_cloud(128, 4, 2))[None]
    r = ROTS[1]
    with torch.no_grad():
        y = model.decode_points(model(x))
        yr = model.decode_points(model(torch.from_numpy(rotate_points(x.numpy(), r))))
    assert torch.allclose(torch.from_numpy(rotate_points(y.numpy(), r)), yr, atol=1e-4)


def test_sdf_prediction_is_invariant_to_joint_rotation():
    torch.manual_seed(0)
    model = PointCloudAutoencoder(get_config("sdf_tiny").model_dump()).eval()
    x = torch.from_numpy(_cloud(128, 3, 3))[None]
    q = torch.from_numpy(_cloud(64, 3, 4))[None]
    r = ROTS[2]
    with torch.no_grad():
        ea, eb = model(x), model(torch.from_numpy(rotate_points(x.numpy(), r)))
        a = model.decoder(ea["vectors"], q, ea["z"])
        b = model.decoder(eb["vectors"], torch.from_numpy(rotate_points(q.numpy(), r)), eb["z"])
    assert torch.allclose(a, b, atol=1e-4)


def _sdf_items(n):
    from cellrep_core.pointclouds.sdf import query_grid

    grid = query_grid(8)
    items = []
    for i in range(n):
        rng = np.random.default_rng(i)
        r = 0.3 + 0.4 * (i % 2)  # two sizes of ball
        pts = rng.normal(size=(300, 3))
        pts = (r * pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)
        items.append(CloudItem(f"c{i:02d}", pts, (np.linalg.norm(grid, axis=1) - r).astype(np.float32)))
    return items


def test_training_writes_versioned_checkpoint_and_reuses_it(tmp_path):
    cfg = get_config("sdf_tiny", max_epochs=3)
    items = _sdf_items(12)
    tm = train_model(cfg, items, tmp_path)
    assert tm.path == tmp_path / cfg.name / tm.version
    assert {"model.pt", "config.json", "lineage.json"} <= {p.name for p in tm.path.iterdir()}
    assert tm.version == model_version(cfg, data_hash(items))
    again = train_model(cfg, items, tmp_path)
    assert again.reused and again.version == tm.version
    # a changed config is a new version
    other = train_model(get_config("sdf_tiny", max_epochs=1), items, tmp_path)
    assert other.version != tm.version
    model = load_model(tm.path)
    z = embed_items(model, items)
    assert z.shape == (12, model.encoder.code_dim) and np.isfinite(z).all()
    # embedding is deterministic (fixed draws per cell)
    assert np.array_equal(z, embed_items(load_model(tm.path), items))


def test_trained_sdf_model_separates_sizes_and_stays_invariant(tmp_path):
    cfg = get_config("sdf_tiny", max_epochs=6, lr=3e-3)
    items = _sdf_items(16)
    tm = train_model(cfg, items, tmp_path)
    assert tm.metrics["best_val_loss"] is not None
    model = load_model(tm.path)
    from cellrep_core.models.data import fixed_points

    pts = np.stack([fixed_points(it, cfg) for it in items])
    res = rotation_invariance_error(model, pts, ROTS)
    assert res["mean"] < 1e-3 and res["max"] < 1e-3
    # small and large balls fall on either side: every cell is closer to its own size's centroid
    z = embed_items(model, items)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    big = np.array([i % 2 == 1 for i in range(len(items))])
    c_small, c_big = z[~big].mean(0), z[big].mean(0)
    closer_big = np.linalg.norm(z - c_big, axis=1) < np.linalg.norm(z - c_small, axis=1)
    assert (closer_big == big).all()
