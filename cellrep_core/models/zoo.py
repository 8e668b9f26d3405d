"""One place that maps a model config to its network, its training data set and its inputs.

Every model family (``ModelConfig.encoder``) is a LightningModule whose ``forward`` takes a batch of inputs
and returns at least ``z`` (``[B, code_dim]``, the code stored as an embedding) and ``rotation``
(``[B, 3, 3]``; the identity for classical models). Training, embedding and the benchmark go through
these functions only, so a new family is added here and nowhere else.

The benchmark (evolution energy, interpolation, reconstruction) needs one more protocol, which every
family's module implements on batches as produced by ``make_dataset(cfg, items, train=False)``:

- ``latent(batch) -> Tensor [B, D]``: the decoder's input in the model's canonical frame (equivariant
  models: the input seen through the inverse of its learned rotation; classical models: as is), such that
  interpolating two latents linearly is meaningful;
- ``decode_latent(lat, batch) -> Tensor``: the reconstruction in the canonical frame (``batch`` gives
  the query points where the decoder needs them);
- ``target(batch) -> Tensor``: the reconstruction target in the same canonical frame;
- ``reconstruction_error(a, b) -> Tensor [B]``: the family's loss between two reconstructions/targets
  (Chamfer for punctate clouds, L1 of clipped SDF values, MSE for volumes).
"""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import Dataset

from cellrep_core.models.config import ModelConfig
from cellrep_core.models.data import CloudDataset, fixed_points
from cellrep_core.pointclouds.items import CloudItem


def model_class(cfg: ModelConfig) -> type[L.LightningModule]:
    """The LightningModule class of a config's family."""
    if cfg.family == "pointcloud":
        from cellrep_core.models.module import PointCloudAutoencoder

        return PointCloudAutoencoder
    if cfg.family == "statcell":
        from cellrep_core.models.statcell import StatCellVAE

        return StatCellVAE
    from cellrep_core.models.image import ImageAutoencoder

    return ImageAutoencoder


def build_model(cfg: ModelConfig) -> L.LightningModule:
    """A freshly initialised network for ``cfg``."""
    return model_class(cfg)(cfg.model_dump())


def make_dataset(cfg: ModelConfig, items: list[CloudItem], train: bool, seed: int = 0) -> Dataset:
    """Training (random draws) or evaluation (fixed draws) items for ``cfg``'s family."""
    if cfg.family == "pointcloud":
        return CloudDataset(items, cfg, train=train, seed=seed)
    if cfg.family == "statcell":
        from cellrep_core.models.statcell import StatCellDataset

        return StatCellDataset(items, cfg, train=train, seed=seed)
    from cellrep_core.models.image import ImageDataset

    return ImageDataset(items, cfg, train=train, seed=seed)


def model_inputs(item: CloudItem, cfg: ModelConfig, draw: int = 0) -> np.ndarray:
    """The deterministic input of one cell for embedding (``draw`` selects a point subset; images ignore it)."""
    if cfg.family == "pointcloud":
        return fixed_points(item, cfg, draw)
    if cfg.family == "statcell":
        from cellrep_core.models.statcell import pack_inputs

        return pack_inputs(item)
    from cellrep_core.models.image import cell_volume

    return cell_volume(item, cfg)


def n_draws(cfg: ModelConfig, draws: int) -> int:
    """Input draws worth averaging: point clouds are subsampled, an image is the same every time."""
    return draws if cfg.family == "pointcloud" else 1


def rotate_inputs(cfg: ModelConfig, inputs: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate a batch of model inputs by the ``[3, 3]`` rotation ``rot`` (points: xyz columns; images: the
    volume about its centre)."""
    if cfg.family == "pointcloud":
        out = inputs.copy()
        out[..., :3] = inputs[..., :3] @ rot.T
        return out
    from cellrep_core.models.image import rotate_volumes

    return rotate_volumes(inputs, rot)
