"""The SO(3) autoencoder: invariance and equivariance with real tolerances, training and checkpoints."""

import json

import numpy as np
import pytest
import torch

from cellrep_core.metrics.rotation import random_rotations, relative_error, rotate_points, rotation_invariance_error
from cellrep_core.models.config import get_config
from cellrep_core.models.inference import embed_items, load_model
from cellrep_core.models.module import PointCloudAutoencoder
from cellrep_core.models.train import data_hash, model_version, train_model
from cellrep_core.models.vn import VNDGCNNEncoder, knn
from cellrep_core.pointclouds.items import CloudItem

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
    # weights trained in mixed precision (CUDA) never share a version with fp32 ones
    assert model_version(cfg, data_hash(items), precision="16-mixed") != tm.version
    assert model_version(cfg, data_hash(items), precision="32-true") == tm.version
    versions = {model_version(cfg, data_hash(items), precision=p, accelerator=a)
                for p in ("32-true", "16-mixed", "bf16-mixed") for a in ("cpu", "gpu")}
    assert len(versions) == 6  # fp32 on a GPU is not the CPU's version either
    # a field added later, at its default, leaves every existing version as it was
    from cellrep_core.models.config import variant

    assert variant(cfg, per_item_draws=False).digest() == cfg.digest() != variant(cfg, per_item_draws=True).digest()
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


@pytest.mark.parametrize("cross", [False, True])
def test_edge_function_matches_plain_autograd(cross):
    """The chunked, recomputing edge function gives the values and gradients of the plain autograd layer
    (``reference=True``), including with chunks that do not divide the point count."""
    from torch.autograd import gradcheck

    from cellrep_core.models.vn import EdgeVNReLUMean, VNEdgeConv

    torch.manual_seed(0)
    conv = VNEdgeConv(1 if cross else 3, 4, cross=cross, chunk_points=7).double()
    xyz = torch.from_numpy(_cloud(30, 3, 5)).double()[None].repeat(2, 1, 1)
    x = xyz.transpose(1, 2).unsqueeze(1)
    f = x if cross else torch.randn(2, 3, 3, 30, dtype=torch.float64)
    f.requires_grad_(True)
    idx = knn(xyz, 6)
    out = conv(f, idx, xyz=x)
    g_f, *g_w = torch.autograd.grad(out.square().sum(), [f, *conv.parameters()])
    conv.reference = True
    ref = conv(f, idx, xyz=x)
    r_f, *r_w = torch.autograd.grad(ref.square().sum(), [f, *conv.parameters()])
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(g_f, r_f, atol=1e-10)
    for a, b in zip(g_w, r_w, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    # and against finite differences
    nb, centre = conv.nb(f).detach(), conv.centre(f).detach()
    cr = None
    if cross:
        xj = torch.gather(x.reshape(2, 3, 30), 2, idx.reshape(2, 1, -1).expand(2, 3, -1)).view(2, 1, 3, 30, 6)
        cr = torch.cross(xj, x.unsqueeze(-1).expand_as(xj), dim=2)
    w = conv.cross.detach().clone().requires_grad_(True) if cross else None
    if cr is not None:
        cr.requires_grad_(True)
    assert gradcheck(
        lambda a, b, c, ww: EdgeVNReLUMean.apply(a, b, idx, c, ww, 0.2, 7),
        (nb.requires_grad_(True), centre.requires_grad_(True), cr, w),
    )


def test_compiled_edge_kernels_match_eager():
    """The fused torch.compile kernels (``use_compiled_edges``) give the eager chunked values and gradients
    (float64, so that float32 summation order does not hide a real difference)."""
    from cellrep_core.models.vn import use_compiled_edges

    torch.manual_seed(0)
    model = PointCloudAutoencoder(get_config("punctate_tiny").model_dump()).double()
    x = torch.from_numpy(np.stack([_cloud(128, 4, s) for s in range(2)])).double()
    res = []
    for on in (False, True):
        use_compiled_edges(on)
        try:
            model.zero_grad()
            loss = model.per_item_loss({"points": x}).mean()
            loss.backward()
        finally:
            use_compiled_edges(False)
        res.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert abs(res[0][0] - res[1][0]) < 1e-12 * abs(res[0][0])
    for a, b in zip(res[0][1], res[1][1], strict=True):
        assert (a - b).abs().max() <= 1e-10 * a.abs().max()


def test_autoencoder_base_steps_and_schedules():
    """Every model shares one base: the step logs the mean of the per-item loss, the config picks a constant or a
    cosine learning rate, and a subclass without a per-item loss fails with its name."""
    from cellrep_core.models.base import Autoencoder
    from cellrep_core.models.image import ImageAutoencoder

    model = PointCloudAutoencoder(get_config("sdf_tiny", lr_schedule="cosine", max_epochs=7).model_dump())
    opt = model.configure_optimizers()
    assert opt["lr_scheduler"]["scheduler"].T_max == 7 and opt["optimizer"].defaults["lr"] == model.cfg.lr
    image = ImageAutoencoder(get_config("sdf_cnn_tiny").model_dump())
    assert isinstance(image, Autoencoder) and isinstance(image.configure_optimizers(), torch.optim.Adam)
    logged = {}
    image.log = lambda name, value, **kw: logged.update({name: (float(value), kw["batch_size"])})
    batch = {"volume": torch.rand(3, 1, 16, 16, 16)}
    loss = image.training_step(batch, 0)
    assert logged["train_loss"] == (pytest.approx(float(image.per_item_loss(batch).mean()), rel=1e-5), 3)
    assert float(loss) == pytest.approx(logged["train_loss"][0], rel=1e-6)

    class NoLoss(Autoencoder):
        pass

    with pytest.raises(NotImplementedError, match="NoLoss defines no per_item_loss"):
        NoLoss(get_config("sdf_tiny").model_dump()).training_step({}, 0)


def test_implicit_sdf_decoder_is_invariant_and_the_classical_one_is_not():
    """Turning the latent vectors and the query points together leaves the invariant decoder's signed distances
    unchanged (to float precision); the classical decoder, which sees raw coordinates, changes."""
    from cellrep_core.models.decoders import ClassicalImplicitSDFDecoder, FoldingNetDecoder, ImplicitSDFDecoder

    torch.manual_seed(0)
    dec = ImplicitSDFDecoder(latent_dim=6, hidden=16, n_blocks=2, code_dim=4).eval()
    classical = ClassicalImplicitSDFDecoder(code_dim=4, hidden=16, n_blocks=2).eval()
    vectors, query, code = torch.randn(2, 6, 3), torch.randn(2, 50, 3), torch.randn(2, 4)
    with torch.no_grad():
        base, cbase = dec(vectors, query, code), classical(query, code)
        for rot in ROTS:
            r = torch.as_tensor(rot, dtype=torch.float32)
            assert relative_error(dec(vectors @ r.T, query @ r.T, code).numpy(), base.numpy()).max() < 1e-5
            assert relative_error(classical(query @ r.T, code).numpy(), cbase.numpy()).min() > 1e-3
        folding = FoldingNetDecoder(4, 16, out_dim=4, template="sphere")(code)
    assert folding.shape[0] == 2 and folding.shape[-1] == 4 and torch.isfinite(folding).all()


def test_a_test_split_that_training_never_sees(tmp_path):
    """From MIN_CELLS_FOR_TEST_SPLIT cells on, a model trained from scratch sets test cells aside before the
    validation split: they are in neither the training nor the validation cells, the benchmark measures its
    held-out metrics on them, and a fine-tuned model (whose parent may have seen any cell) has none."""
    from cellrep_core.models.train import MIN_CELLS_FOR_TEST_SPLIT, split_items
    from cellrep_core.pipeline import held_out_cells

    few = _sdf_items(MIN_CELLS_FOR_TEST_SPLIT - 1)
    train, val, test = split_items(few, 0.15, 0, test_fraction=0.1)
    assert test == [] and (train, val, []) == split_items(few, 0.15, 0)
    items = _sdf_items(MIN_CELLS_FOR_TEST_SPLIT + 10)
    tm = train_model(get_config("sdf_tiny", max_epochs=1), items, tmp_path)
    lin = json.loads((tm.path / "lineage.json").read_text())
    test, val, trained = set(lin["test_cells"]), set(lin["val_cells"]), set(lin["train_cells"])
    assert len(test) == 5 and not test & val and not test & trained and len(test | val | trained) == len(items)
    assert held_out_cells(lin) == (sorted(test), "test cells (never trained on nor validated on)")
    tuned = train_model(get_config("sdf_tiny", max_epochs=1), items, tmp_path / "tuned", parent=tm)
    lin2 = json.loads((tuned.path / "lineage.json").read_text())
    assert lin2["test_cells"] == [] and held_out_cells(lin2)[1].startswith("validation cells")
