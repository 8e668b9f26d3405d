"""Typed model configurations and the registry of named configs."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class ModelConfig(BaseModel):
    """Everything needed to rebuild and train a point-cloud autoencoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["punctate", "sdf"]
    # model family: point clouds (SO(3) vector-neuron DGCNN or classical DGCNN) or 3D images
    # (SO(3)-steerable escnn CNN or its classical twin with plain convolutions); "ref_bvae" / "cond_bvae": the
    # stacked beta-VAEs of seed 003 (reference shape; structure given the reference: models/statcell.py)
    encoder: Literal["vn_dgcnn", "dgcnn", "so3_cnn", "cnn", "ref_bvae", "cond_bvae"] = "vn_dgcnn"
    # reconstruction loss of punctate point clouds (image models use MSE, SDF clouds L1)
    loss: Literal["chamfer", "emd"] = "chamfer"
    # image models: side of the cubic input volume and channels of the first layer
    image_size: int = 32
    # image models of polymorphic (sdf) cells: the volume holds the SDF clipped to ±2 image voxels, or the
    # segmentation (1 inside, 0 outside); punctate cells are always intensity images
    image_input: Literal["sdf", "segmentation"] = "sdf"
    image_channels: int = 8
    k: int = 20
    hidden: int = 64
    n_layers: int = 4
    latent_dim: int = 256
    n_points: int = 2048
    n_query: int = 20000
    decoder_hidden: int = 512
    template: Literal["plane", "sphere"] = "plane"
    sdf_clip: float = 0.1
    # SDF training: weight of the L1 at queries whose target is inside (sdf < 0), and the share of the
    # queries drawn from the inside grid points (0: half near the surface, half uniform)
    sdf_inside_weight: float = 1.0
    sdf_inside_fraction: float = 0.0
    surface_noise: float = 0.005
    lr: float = 2e-4
    # learning rate over the epochs: constant, or cosine decay from ``lr`` to 0 at ``max_epochs``
    lr_schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10
    val_fraction: float = 0.15
    # cells set aside before the validation split when a model trains from scratch on at least
    # MIN_CELLS_FOR_TEST_SPLIT cells (models/train.py): never trained on, never used to stop or to pick the
    # checkpoint; the benchmark's held-out metrics are measured on them
    test_fraction: float = 0.1
    seed: int = 0
    chunk_points: int = 0
    checkpointing: bool = False
    # training inputs drawn per (cell, epoch) instead of from one stream, and batches from one permutation per
    # epoch: any sharding of the batches (DDP) draws what one process draws (models/ddp.py)
    per_item_draws: bool = False
    # beta-VAEs (models/statcell.py): weight of the KL term, size of the condition (reference latent + one-hot
    # structure label; set when the conditional model is trained), number of structure labels, and channels of
    # the reference (nucleus; nucleus + cell)
    beta: float = 1.0
    cond_dim: int = 0
    n_labels: int = 0
    ref_channels: int = 1

    @model_validator(mode="after")
    def _segmentation_needs_an_sdf_image_model(self) -> ModelConfig:
        if self.image_input == "segmentation" and (self.kind != "sdf" or self.family != "image"):
            raise ValueError(
                f"config {self.name}: image_input='segmentation' needs an image encoder (so3_cnn, cnn) on "
                f"polymorphic cells (kind='sdf'), got encoder={self.encoder!r}, kind={self.kind!r}"
            )
        return self

    @property
    def family(self) -> str:
        """``pointcloud``, ``image`` or ``statcell`` (the beta-VAEs over aligned masks): what the model takes."""
        if self.encoder in ("ref_bvae", "cond_bvae"):
            return "statcell"
        return "pointcloud" if self.encoder in ("vn_dgcnn", "dgcnn") else "image"

    @property
    def equivariant(self) -> bool:
        """Whether the encoder is SO(3)-equivariant (its code rotation-invariant by construction)."""
        return self.encoder in ("vn_dgcnn", "so3_cnn")

    def digest(self) -> str:
        """Short stable hash of the config, part of a model version."""
        dump = self.model_dump()
        for key, default in DIGEST_NEUTRAL_DEFAULTS.items():  # fields added later: at their default, the
            if dump.get(key) == default:  # digest (and every model version) stays what it was
                dump.pop(key)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:10]


DIGEST_NEUTRAL_DEFAULTS: dict[str, object] = {"per_item_draws": False, "beta": 1.0, "cond_dim": 0, "n_labels": 0,
                                               "ref_channels": 1}


def variant(cfg: ModelConfig, **changes: object) -> ModelConfig:
    """``cfg`` with some fields changed, validated like a new config (``model_copy`` would skip that)."""
    return ModelConfig.model_validate({**cfg.model_dump(), **changes})


_PAPER = {"k": 20, "hidden": 64, "batch_size": 32, "lr": 2e-4}
_DEMO = {"k": 10, "hidden": 16, "n_layers": 3, "latent_dim": 64, "n_points": 512, "decoder_hidden": 128,
         "batch_size": 16, "lr": 2e-3}
_SDF_TRAINING = {"sdf_clip": 0.5, "sdf_inside_fraction": 0.2, "lr_schedule": "cosine"}
_TINY = {"k": 8, "hidden": 8, "n_layers": 2, "latent_dim": 16, "n_points": 128, "decoder_hidden": 32,
         "batch_size": 8, "lr": 1e-3, "max_epochs": 2, "patience": 2}

REGISTRY: dict[str, ModelConfig] = {
    # the published configuration (paper): use on a GPU
    "punctate_paper": ModelConfig(
        name="punctate_paper", kind="punctate", latent_dim=256, n_points=2048, **_PAPER
    ),
    "sdf_paper": ModelConfig(
        name="sdf_paper", kind="sdf", latent_dim=512, n_points=8192, n_query=20000, **_PAPER
    ),
    # small configurations that train in minutes on a laptop CPU (the demo)
    "punctate_demo": ModelConfig(name="punctate_demo", kind="punctate", max_epochs=8, patience=4, **_DEMO),
    # SDF training that finds the inside of pieces filling ~0.6 % of the box (DESIGN.md has the measurements):
    # distances clipped at 0.5 instead of 0.1 (far queries locate the pieces), a fifth of the queries inside,
    # cosine learning rate
    "sdf_demo": ModelConfig(name="sdf_demo", kind="sdf", n_query=2048, max_epochs=15, patience=5, **_DEMO,
                            **_SDF_TRAINING),
    # tiny configurations for tests
    "punctate_tiny": ModelConfig(name="punctate_tiny", kind="punctate", **_TINY),
    "sdf_tiny": ModelConfig(name="sdf_tiny", kind="sdf", n_query=256, **_TINY),
}
# the classical DGCNN twin of every point-cloud config above (same sizes, encoder="dgcnn")
REGISTRY.update({
    n.replace("_", "_dgcnn_", 1): variant(c, name=n.replace("_", "_dgcnn_", 1), encoder="dgcnn")
    for n, c in list(REGISTRY.items())
    if c.encoder == "vn_dgcnn" and n.split("_")[0] in ("punctate", "sdf")
})

# Image autoencoders (escnn SO(3)-steerable CNN "so3_cnn" and its classical twin "cnn") on volumes: SDF
# images of polymorphic cells, intensity images of punctate ones (models/image.py). Paper: 32^3 SDF images,
# 118^3 punctate images (96^3 here: five stride-2 layers need a multiple of 32), channels 8..512 over 7
# layers (strides 1, 1, 2, 2, 2, 2, 2), lr 1e-3, latent 256 / 512. Demo and tiny use 16^3 inputs: escnn
# on 32^3 is too slow for a CPU demo (DESIGN.md has the timings).
_IMAGE_PAPER = {"image_channels": 8, "n_layers": 7, "batch_size": 32, "lr": 1e-3}
_IMAGE_PAPER_SIZE = {"punctate": 96, "sdf": 32}
_IMAGE_DEMO = {"image_size": 16, "image_channels": 4, "n_layers": 5, "latent_dim": 64, "batch_size": 16,
               "lr": 1e-3, "max_epochs": 20, "patience": 5}
_IMAGE_TINY = {"image_size": 16, "image_channels": 2, "n_layers": 4, "latent_dim": 16, "batch_size": 8,
               "lr": 2e-3, "max_epochs": 2, "patience": 2}
for _enc, _tag in (("so3_cnn", "so3cnn"), ("cnn", "cnn")):
    for _kind, _latent in (("punctate", 256), ("sdf", 512)):
        _n = f"{_kind}_{_tag}"
        REGISTRY[f"{_n}_paper"] = ModelConfig(
            name=f"{_n}_paper", kind=_kind, encoder=_enc, latent_dim=_latent, image_size=_IMAGE_PAPER_SIZE[_kind],
            **_IMAGE_PAPER,
        )
        REGISTRY[f"{_n}_demo"] = ModelConfig(name=f"{_n}_demo", kind=_kind, encoder=_enc, **_IMAGE_DEMO)
        REGISTRY[f"{_n}_tiny"] = ModelConfig(name=f"{_n}_tiny", kind=_kind, encoder=_enc, **_IMAGE_TINY)
# the same image models on the segmentation of polymorphic cells instead of their SDF (the paper benchmarks
# both): sdf_segso3cnn_* and sdf_segcnn_*
REGISTRY.update({
    n.replace("sdf_", "sdf_seg", 1): variant(c, name=n.replace("sdf_", "sdf_seg", 1), image_input="segmentation")
    for n, c in list(REGISTRY.items())
    if c.kind == "sdf" and c.family == "image"
})

# The stacked beta-VAEs of seed 003 (models/statcell.py) over masks in the nucleus frame: a reference model of the
# nucleus (and cell) and a conditional model of the structure given it. Demo: 32^3 volumes, minutes on a CPU;
# tiny: 16^3 for tests. cond_dim and n_labels are filled in when the conditional model is trained.
_STATCELL_DEMO = {"image_size": 32, "image_channels": 8, "batch_size": 16, "lr": 1e-3, "max_epochs": 100,
                  "patience": 10, "lr_schedule": "cosine"}
_STATCELL_TINY = {"image_size": 16, "image_channels": 4, "batch_size": 8, "lr": 2e-3, "max_epochs": 3, "patience": 3}
for _size, _kw in (("demo", _STATCELL_DEMO), ("tiny", _STATCELL_TINY)):
    REGISTRY[f"statcell_ref_{_size}"] = ModelConfig(name=f"statcell_ref_{_size}", kind="sdf", encoder="ref_bvae",
                                                    latent_dim=8 if _size == "demo" else 4, beta=1.0, **_kw)
    REGISTRY[f"statcell_cond_{_size}"] = ModelConfig(name=f"statcell_cond_{_size}", kind="sdf", encoder="cond_bvae",
                                                     latent_dim=16 if _size == "demo" else 4, beta=1.0, **_kw)


def get_config(name: str, **overrides: object) -> ModelConfig:
    """Return a registered config by name, with optional field overrides."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model config {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    base = REGISTRY[name]
    return variant(base, **overrides) if overrides else base
