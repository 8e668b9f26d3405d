"""torch-geometric over cellrep's stored clouds: a user's own PyG model trains on them."""

import numpy as np
import pytest
import torch

from cellrep_core import pipeline
from cellrep_core.data import synthetic
from cellrep_core.store.warehouse import Warehouse


@pytest.fixture
def ellipsoids(home, tmp_path):
    """Polymorphic cells of 1 piece and of 5-8 pieces, ingested and sampled (a learnable two-class label)."""
    from cellrep_core.pointclouds.build import SamplingConfig

    synthetic.generate_polymorphic_dataset(tmp_path / "poly", n_cells=16, seed=2, grid=32, dataset="pyg")
    man = tmp_path / "poly" / "manifest.csv"
    wh = Warehouse()
    pipeline.ingest(man, wh, "pyg")
    pipeline.pointclouds(wh, "pyg", "all", cfg=SamplingConfig(n_surface=512, grid=16), n_workers=1)
    return wh


def test_dataset_items_labels_and_batches(ellipsoids):
    from torch_geometric.loader import DataLoader

    from cellrep_core.pointclouds.pyg import CellCloudDataset

    ds = CellCloudDataset("pyg", label="label", n_points=128)
    cells = ellipsoids.query("select cell_id, label from cells where dataset = 'pyg' order by cell_id")
    assert len(ds) == len(cells) == 16
    assert ds.classes == sorted(set(cells.label))
    d0 = ds[0]
    assert d0.pos.shape == (128, 3) and d0.sdf.shape == (1, 16 ** 3)
    assert d0.x is None  # SDF surface clouds carry no intensity
    assert ds.classes[int(d0.y)] == cells.set_index("cell_id").label[d0.cell_id]
    assert torch.equal(ds[0].pos, d0.pos)  # a fixed draw per cell
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert batch.pos.shape == (8 * 128, 3) and batch.y.shape == (8,) and int(batch.batch.max()) == 7
    with pytest.raises(ValueError, match="label column"):
        CellCloudDataset("pyg", label="nope")
    with pytest.raises(FileNotFoundError, match="materialize"):
        CellCloudDataset("no_such_set")


def test_a_pyg_model_learns_from_the_clouds(ellipsoids):
    """A small PointNet (PyG MLP + global max pool) separates the piece-count labels on its training cells."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import MLP, global_max_pool

    from cellrep_core.pointclouds.pyg import CellCloudDataset

    torch.manual_seed(0)
    ds = CellCloudDataset("pyg", label="label", n_points=256)
    local = MLP([3, 32, 64])
    head = MLP([64, 32, len(ds.classes)])
    opt = torch.optim.Adam([*local.parameters(), *head.parameters()], lr=1e-2)
    loader = DataLoader(ds, batch_size=16, shuffle=True)
    losses = []
    for _ in range(60):
        for b in loader:
            logits = head(global_max_pool(local(b.pos), b.batch))
            loss = torch.nn.functional.cross_entropy(logits, b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_pyg_edgeconv_reference_equals_the_dense_layer():
    """torch-geometric's EdgeConv with the mapped weights computes cellrep's EdgeConv (the library as reference)."""
    from cellrep_core.models.dgcnn import EdgeConv, feature_knn
    from cellrep_core.models.pyg_reference import dense_to_edge_index, pyg_edgeconv_like, pyg_forward

    torch.manual_seed(1)
    ours = EdgeConv(8, 16)
    ref = pyg_edgeconv_like(ours)
    f = torch.randn(3, 8, 50, requires_grad=True)
    idx = feature_knn(f, 6)
    a = ours(f, idx)
    b = pyg_forward(ref, f, dense_to_edge_index(idx))
    assert a.shape == b.shape == (3, 16, 50)
    assert torch.allclose(a, b, atol=1e-5)
    ga, = torch.autograd.grad(a.square().sum(), f)
    gb, = torch.autograd.grad(b.square().sum(), f)
    assert torch.allclose(ga, gb, atol=1e-4)
