"""Torch data sets over stored point clouds: random draws for training, fixed draws for embedding."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cellrep_core.data.cells import cell_seed
from cellrep_core.models.config import ModelConfig
from cellrep_core.pointclouds.items import CloudItem
from cellrep_core.pointclouds.punctate import training_sample
from cellrep_core.pointclouds.sdf import query_grid


def fixed_points(item: CloudItem, cfg: ModelConfig, draw: int = 0) -> np.ndarray:
    """The ``draw``-th deterministic input draw used to embed a cell (draw 0: the one training validates on)."""
    rng = np.random.default_rng(cell_seed(item.cell_id, cfg.seed) + int(draw))
    return _draw_points(item, cfg, rng, noise=False)


def _draw_points(item: CloudItem, cfg: ModelConfig, rng: np.random.Generator, noise: bool) -> np.ndarray:
    if cfg.kind == "punctate":
        return training_sample(item.points, cfg.n_points, rng)
    n = item.points.shape[0]
    idx = rng.choice(n, size=cfg.n_points, replace=n < cfg.n_points)
    pts = item.points[idx].astype(np.float32)
    if noise and cfg.surface_noise > 0:
        pts = pts + rng.normal(0.0, cfg.surface_noise, pts.shape).astype(np.float32)
    return pts


class CloudDataset(Dataset):
    """Items for training (fresh random draws) or evaluation (fixed draws per cell)."""

    def __init__(self, items: list[CloudItem], cfg: ModelConfig, train: bool, seed: int = 0) -> None:
        self.items, self.cfg, self.train = items, cfg, train
        self.rng = np.random.default_rng(seed)
        # per_item_draws: a training item's draw depends on (cell, seed, epoch) only, not on the order items are
        # read in (DDP shards read them in other orders than one process: models/ddp.py)
        self.per_item_draws, self.epoch, self.seed = cfg.per_item_draws, 0, seed
        self.grid = None
        self._near: dict[int, np.ndarray] = {}
        self._inside: dict[int, np.ndarray] = {}
        if cfg.kind == "sdf":
            self.grid = query_grid(round(len(items[0].sdf) ** (1 / 3))) if items else None

    def _query_indices(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """``sdf_inside_fraction`` of the queries inside (sdf < 0, with replacement when there are fewer
        inside grid points), then half of the rest near the surface (|sdf| below the clip), half uniform
        over the grid."""
        sdf = self.items[i].sdf
        n = min(self.cfg.n_query, len(sdf))
        if i not in self._near:
            self._near[i] = np.flatnonzero(np.abs(sdf) < self.cfg.sdf_clip)
            self._inside[i] = np.flatnonzero(sdf < 0)
        near, inside = self._near[i], self._inside[i]
        n_in = int(round(self.cfg.sdf_inside_fraction * n)) if len(inside) else 0
        picked_in = rng.choice(inside, size=n_in, replace=n_in > len(inside)) if n_in else np.zeros(0, np.int64)
        n_near = min((n - n_in) // 2, len(near))
        picked = rng.choice(near, size=n_near, replace=False) if n_near else np.zeros(0, np.int64)
        rest = rng.choice(len(sdf), size=n - n_in - n_near, replace=False)
        return np.concatenate([picked_in, picked, rest])

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the per-item draws are for."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.items[i]
        if not self.train:
            rng = np.random.default_rng(cell_seed(item.cell_id, self.cfg.seed))
        elif self.per_item_draws:
            rng = np.random.default_rng([cell_seed(item.cell_id, self.seed), self.epoch])
        else:
            rng = self.rng
        out = {"points": torch.from_numpy(_draw_points(item, self.cfg, rng, noise=self.train))}
        if self.cfg.kind == "sdf":
            q = self._query_indices(i, rng)
            out["query"] = torch.from_numpy(self.grid[q])
            out["sdf"] = torch.from_numpy(item.sdf[q].astype(np.float32))
            if not self.train:  # the whole grid, for the benchmark's canonical-frame targets
                out["sdf_grid"] = torch.from_numpy(item.sdf.astype(np.float32))
        return out
