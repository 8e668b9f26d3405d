"""cellrep's stored point clouds as a ``torch_geometric`` data set, labelled from the warehouse.

    from cellrep_core.pointclouds.pyg import CellCloudDataset
    from torch_geometric.loader import DataLoader

    ds = CellCloudDataset("allen_tomm20", label="label")      # or a plate: CellCloudDataset("drug_plates", "P1",
    loader = DataLoader(ds, batch_size=16, shuffle=True)     #   label="drug")
    for batch in loader:  # batch.pos [sum n, 3], batch.batch, batch.y [B]; punctate: batch.x = intensity
        ...

Each item is a ``torch_geometric.data.Data``: ``pos`` (``n_points`` points drawn without replacement from the
stored cloud, a fixed draw per cell and ``seed`` unless ``resample``), ``x`` (the punctate intensity column,
``[n, 1]``; absent for SDF surface clouds), ``y`` (class index of the label column, ``classes`` maps it back;
-1 for a cell without a label), ``cell_id``, and for polymorphic cells ``sdf`` (the stored grid, flattened).
Only torch-geometric's pure-Python parts are needed (no torch-cluster / pyg-lib).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data, Dataset

from cellrep_core import paths
from cellrep_core.data.cells import cell_seed
from cellrep_core.pointclouds.build import read_pointclouds

LABEL_COLUMNS = ("label", "drug", "structure_name", "shape_type", "well", "plate_id")


class CellCloudDataset(Dataset):
    """The clouds of one data set partition (a registered data set: partition ``all``; a plate: its id)."""

    def __init__(self, dataset: str, partition: str = "all", label: str = "label", n_points: int | None = 1024,
                 seed: int = 0, resample: bool = False, warehouse=None, transform=None) -> None:
        from cellrep_core.store.warehouse import Warehouse

        if label not in LABEL_COLUMNS:
            raise ValueError(f"label column {label!r}: choose one of {', '.join(LABEL_COLUMNS)}")
        path = Path(paths.pointcloud_path(dataset, partition))
        if not path.exists():
            raise FileNotFoundError(f"no point clouds for {dataset}/{partition} at {path}; materialize the data set's "
                                    "point clouds first")
        super().__init__(root=None, transform=transform)
        self.items = read_pointclouds(path)
        wh = warehouse or Warehouse()
        cells = wh.query(f"SELECT cell_id, {label} AS label FROM cells WHERE dataset = ?", [dataset])
        labels = dict(zip(cells.cell_id, cells.label.fillna("").astype(str), strict=True))
        self.labels = [labels.get(it.cell_id, "") for it in self.items]
        self.classes = sorted({v for v in self.labels if v})
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.n_points, self.seed, self.resample = n_points, seed, resample
        self._draws = 0

    def len(self) -> int:
        return len(self.items)

    def get(self, idx: int) -> Data:
        it = self.items[idx]
        pts = np.asarray(it.points, dtype=np.float32)
        if self.n_points and len(pts) > self.n_points:
            key = cell_seed(it.cell_id, self.seed)
            if self.resample:
                self._draws += 1
                key += self._draws
            pick = np.random.default_rng(key).choice(len(pts), self.n_points, replace=False)
            pts = pts[np.sort(pick)]
        data = Data(pos=torch.from_numpy(pts[:, :3].copy()),
                    y=torch.tensor([self._index.get(self.labels[idx], -1)], dtype=torch.long))
        if pts.shape[1] > 3:
            data.x = torch.from_numpy(pts[:, 3:].copy())
        if it.sdf is not None:
            data.sdf = torch.from_numpy(np.asarray(it.sdf, dtype=np.float32).reshape(1, -1))
        data.cell_id = it.cell_id
        return data
