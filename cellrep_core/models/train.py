"""Training entry point: versions, splits, checkpoints, resuming, and the record written beside the weights
(loading and embedding: inference.py; the whitening: whitening.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler

from cellrep_core.models.config import ModelConfig
from cellrep_core.models.inference import device_accelerator, inference_device, load_model
from cellrep_core.models.vn import compiled_edges
from cellrep_core.models.whitening import WHITENING_FILE, fit_whitening
from cellrep_core.models.zoo import build_model, make_dataset, model_class
from cellrep_core.pointclouds.items import CloudItem

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up banner (GPU/TPU available, logger tips) and two known harmless warnings (the
    version folder already holds the config and logs; a deprecation inside Lightning) are silenced for a fit;
    real warnings and errors still show."""
    lg = logging.getLogger("lightning.pytorch")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        lg.setLevel(level)


@dataclass
class TrainedModel:
    """A trained model on disk: its version, folder and what training measured."""

    name: str
    version: str
    path: Path
    config: ModelConfig
    metrics: dict = field(default_factory=dict)
    reused: bool = False


def data_hash(items: list[CloudItem]) -> str:
    """Hash of the training cells (ids, points and SDF values), part of a model version."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda x: x.cell_id):
        h.update(it.cell_id.encode())
        h.update(np.ascontiguousarray(it.points, dtype=np.float32).tobytes())
        if it.sdf is not None:
            h.update(np.ascontiguousarray(it.sdf, dtype=np.float32).tobytes())
        for extra in (it.volume, it.condition):  # beta-VAE items (models/statcell.py); None for clouds
            if extra is not None:
                h.update(np.ascontiguousarray(extra, dtype=np.float32).tobytes())
    return h.hexdigest()[:12]


# Bumped whenever the network's layers or its invariant code change, so that an older checkpoint of the
# same config and data is never reused for a different architecture.
# 4: punctate inputs map the intensity onto [-r, r], r the drawn points' largest radius about the centre,
# instead of the xyz range, which depended on the cell's orientation (pointclouds/punctate.py).
# 5: punctate clouds are drawn from the Gaussian-smoothed (sd 1 voxel) intensity inside a Euclidean-ball
# dilation of the nucleus, and carry the smoothed intensity (pointclouds/punctate.py): other inputs.
ARCHITECTURE_VERSION = 5


def train_precision() -> str:
    """Lightning precision of a training here: ``CELLREP_PRECISION`` when set (e.g. ``32-true`` to train a GPU
    model in fp32); otherwise mixed bf16 on a CUDA device that supports it (fp32's exponent range: no loss
    scaling), mixed fp16 on older CUDA devices, fp32 on the CPU."""
    if os.environ.get("CELLREP_PRECISION"):
        return os.environ["CELLREP_PRECISION"]
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def model_version(cfg: ModelConfig, dhash: str, parent: str | None = None, precision: str = "32-true",
                  accelerator: str = "cpu") -> str:
    """Deterministic version from config, data, parent version, training precision and accelerator: the same
    inputs give the same version, and weights trained on a GPU (in mixed precision or not) never share a version
    with CPU ones (fp32 on the CPU, the default, leaves the key as it always was)."""
    parts = {"cfg": cfg.digest(), "data": dhash, "parent": parent, "arch": ARCHITECTURE_VERSION}
    if precision != "32-true":
        parts["precision"] = precision
    if accelerator != "cpu":
        parts["accelerator"] = accelerator
    key = json.dumps(parts, sort_keys=True)
    return f"{cfg.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def release_accelerator_memory() -> None:
    """Give the CUDA caching allocator's blocks back after a training, so that the same process (a Dagster step
    that embeds after training, the gpu-check) starts its next stage with the device's memory free."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fused_edges_pay_off(cfg: ModelConfig) -> bool:
    """Whether to train a VN-DGCNN with the fused (``torch.compile``) edge kernels: on a CPU with a C
    compiler at the published sizes (batch x points >= 32,768), where they are several times faster than
    the eager edge function and their compilation (seconds per input shape) is paid back within a step."""
    import shutil

    return (
        cfg.encoder == "vn_dgcnn"
        and not torch.cuda.is_available()
        and cfg.batch_size * cfg.n_points >= 32768
        and shutil.which("gcc") is not None
    )


MIN_CELLS_FOR_TEST_SPLIT = 40


def split_items(items: list[CloudItem], val_fraction: float, seed: int, test_fraction: float = 0.0
                ) -> tuple[list, list, list]:
    """Deterministic train / validation / test split by cell id. The test cells (``test_fraction``, at least 2,
    only from ``MIN_CELLS_FOR_TEST_SPLIT`` cells on) come first out of the permutation; without them the
    validation and training cells are what they were before test splits existed."""
    order = sorted(items, key=lambda x: x.cell_id)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(order))
    n_test = max(2, int(round(test_fraction * len(order)))) if test_fraction > 0 and \
        len(order) >= MIN_CELLS_FOR_TEST_SPLIT else 0
    test = [order[i] for i in perm[:n_test]]
    perm = perm[n_test:]
    n_val = max(1, int(round(val_fraction * len(order)))) if len(order) > 2 else 0
    val = [order[i] for i in perm[:n_val]]
    train = [order[i] for i in perm[n_val:]]
    return train, val, test


LAST_CHECKPOINT = "last.ckpt"


def resumable_checkpoint(path: Path, name: str) -> tuple[Path, int] | None:
    """``(path, first epoch to run)`` if ``path`` holds a readable Lightning checkpoint of an interrupted
    training, else ``None``; an unreadable one (cut short while it was written) is removed with a warning
    and training starts over."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        ok = isinstance(state, dict) and {"state_dict", "epoch", "optimizer_states"} <= set(state)
        why = "not a training checkpoint"
    except Exception as err:  # noqa: BLE001 - any unreadable file means: start over
        ok, why = False, f"{type(err).__name__}: {err}"
    if ok:
        log.warning("model %s: resuming the interrupted training from %s", name, path)
        return path, int(state["epoch"]) + 1
    log.warning("model %s: %s cannot be resumed (%s); training starts over", name, path, why)
    path.unlink()
    return None


def _reuse(cfg: ModelConfig, version: str, out: Path, items: list[CloudItem]) -> TrainedModel | None:
    """The version already trained under ``out``, or None (absent, or a torn ``model.pt``, removed so that the
    version is trained again)."""
    if not (out / "model.pt").exists():
        return None
    from cellrep_core.errors import CorruptFileError

    try:
        reused = load_model(out)
    except CorruptFileError as err:  # torn or damaged: train this version again instead of reusing it
        log.warning("%s", err)
        (out / "model.pt").unlink()
        return None
    meta = json.loads((out / "lineage.json").read_text())
    if not (out / WHITENING_FILE).exists():
        fit_whitening(reused, items, out)
    return TrainedModel(cfg.name, version, out, cfg, meta.get("metrics", {}), reused=True)


def _loaders(cfg: ModelConfig, train: list[CloudItem], val: list[CloudItem], world: int, rank: int,
             per_item: bool) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders; with per-item draws one permutation per epoch, sharded across the
    processes (one process: the whole permutation)."""
    train_ds = make_dataset(cfg, train, train=True, seed=cfg.seed)
    drop_last = len(train) > cfg.batch_size
    if per_item:
        train_ds.per_item_draws = True
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=drop_last)
        train_dl = DataLoader(train_ds, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=drop_last)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=drop_last)
    if not val:
        return train_dl, None
    val_ds = make_dataset(cfg, val, train=False)
    val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    return train_dl, DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_sampler)


def _trainer(cfg: ModelConfig, out: Path, n_train: int, has_val: bool, distributed: bool, world: int,
             per_item: bool, callbacks: list[L.Callback] | None) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning trainer: best.ckpt by validation loss (when there is a validation set) and last.ckpt every
    epoch, for resuming; early stopping; DDP over ``LOCAL_WORLD_SIZE`` processes per node when distributed."""
    ckpt = ModelCheckpoint(dirpath=out, filename="best", monitor="val_loss" if has_val else None,
                           save_top_k=1 if has_val else 0, save_last=True)
    from cellrep_core.progress import epoch_progress

    cbs = [ckpt, *([EarlyStopping(monitor="val_loss", patience=cfg.patience)] if has_val else []),
           epoch_progress(f"training {cfg.name} on {n_train} cells", cfg.max_epochs), *(callbacks or []),
           *([_EpochDraws()] if per_item else []), _FaultPoint()]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    ddp = {"strategy": "ddp_find_unused_parameters_true", "devices": local, "num_nodes": max(1, world // local),
           "sync_batchnorm": torch.cuda.is_available(), "use_distributed_sampler": False} if distributed \
        else {"devices": 1}
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=device_accelerator(),
        **ddp,
        precision=train_precision(),
        callbacks=cbs,
        logger=CSVLogger(out, name="logs", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    return trainer, ckpt


def _write_weights(model: L.LightningModule, out: Path, version: str) -> Path:
    """The weights written whole to ``model.pt.tmp``; renaming it to ``model.pt`` (``_commit_weights``) is the
    last step of a version, after its record, so a ``model.pt`` always comes with its config and lineage."""
    tmp = out / "model.pt.tmp"
    try:
        torch.save(model.state_dict(), tmp)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        from cellrep_core.errors import disk_full, is_disk_full

        if is_disk_full(err):
            raise disk_full(err, out / "model.pt", f"the weights of {version}") from err
        raise
    return tmp


def _commit_weights(tmp: Path, out: Path) -> None:
    from cellrep_core import faults

    faults.point("model_commit")
    os.replace(tmp, out / "model.pt")


def _write_record(out: Path, cfg: ModelConfig, version: str, parent: TrainedModel | None, dhash: str,
                  train: list[CloudItem], val: list[CloudItem], test: list[CloudItem], metrics: dict,
                  lineage: dict | None) -> None:
    """``config.json`` and ``lineage.json`` (parent, data hash, config digest, the split, metrics) of a version."""
    from cellrep_core.atomic import write_text

    write_text(out / "config.json", cfg.model_dump_json(indent=2), f"the config of {version}", fault="record_write")
    meta = {
        "name": cfg.name,
        "version": version,
        "parent_version": parent.version if parent else None,
        "data_hash": dhash,
        "config_digest": cfg.digest(),
        "train_cells": sorted(it.cell_id for it in train),
        "val_cells": sorted(it.cell_id for it in val),
        "test_cells": sorted(it.cell_id for it in test),
        "metrics": metrics,
        **(lineage or {}),
    }
    write_text(out / "lineage.json", json.dumps(meta, indent=2), f"the lineage of {version}", fault="record_write")


def train_model(
    cfg: ModelConfig,
    items: list[CloudItem],
    models_root: Path,
    parent: TrainedModel | None = None,
    lineage: dict | None = None,
    force: bool = False,
    callbacks: list[L.Callback] | None = None,
    distributed: bool = False,
) -> TrainedModel:
    """Train (or warm-start from ``parent``) and save weights, config and lineage under
    ``models_root/<name>/<version>/``; an existing identical version is reused unless ``force``.

    ``distributed``: this process is one of a ``torchrun`` group (``models/ddp.py``): Lightning's DDP strategy
    over ``LOCAL_WORLD_SIZE`` processes per node, batch norm synchronised, each process a shard of every batch;
    rank 0 writes the version folder. Training then draws its inputs per (cell, epoch) whatever the config says,
    so that the shards together see what one process would.

    Every epoch leaves ``last.ckpt`` (weights, optimizer, epoch, early-stopping and best-checkpoint state)
    in the version folder until training ends; a training of the same version that was interrupted (killed,
    run terminated, machine lost) resumes from it instead of starting over. ``callbacks``: extra Lightning
    callbacks (progress, custom stopping)."""
    if len(items) < 4:
        raise ValueError(f"model {cfg.name}: need at least 4 cells to train, got {len(items)}")
    dhash = data_hash(items)
    version = model_version(cfg, dhash, parent.version if parent else None, train_precision(), device_accelerator())
    out = Path(models_root) / cfg.name / version
    if not force and (reused := _reuse(cfg, version, out, items)) is not None:
        return reused
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    rank = int(os.environ.get("RANK", "0")) if distributed else 0
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"model {cfg.name}: batch size {cfg.batch_size} is not divisible by {world} processes")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg)
    if parent is not None:
        model.load_state_dict(load_model(parent.path).state_dict())
    if distributed and world > 1 and not torch.cuda.is_available():
        from cellrep_core.models.ddp import all_reduce_batchnorm

        all_reduce_batchnorm(model)  # torch's SyncBatchNorm is CUDA-only
    # a test split only when training from scratch: a fine-tuned model's parent may have trained on any cell
    train, val, test = split_items(items, cfg.val_fraction, cfg.seed, cfg.test_fraction if parent is None else 0.0)
    per_item = cfg.per_item_draws or distributed
    train_dl, val_dl = _loaders(cfg, train, val, world, rank, per_item)
    resume, start_epoch = resumable_checkpoint(out / LAST_CHECKPOINT, cfg.name) or (None, None)
    with _quiet_lightning():
        trainer, ckpt = _trainer(cfg, out, len(train), bool(val), distributed, world, per_item, callbacks)
        t0 = time.perf_counter()
        try:
            with compiled_edges(fused_edges_pay_off(cfg)):
                trainer.fit(model, train_dl, val_dl, ckpt_path=resume)
        finally:
            model.cpu()
            release_accelerator_memory()
    seconds = time.perf_counter() - t0
    if rank != 0:  # rank 0 writes the version folder
        return TrainedModel(cfg.name, version, out, cfg, {})
    if distributed:  # the same weights in a fresh module: plain batch norm instead of the synchronised one
        plain = build_model(cfg)
        plain.load_state_dict(model.state_dict())
        model = plain
    log.info("trained %s %s in %.0f s (%d epochs%s)", cfg.name, version, seconds, trainer.current_epoch,
             f", resumed at epoch {start_epoch}" if resume else "")
    if val and ckpt.best_model_path:
        model = model_class(cfg).load_from_checkpoint(ckpt.best_model_path, map_location="cpu")
        Path(ckpt.best_model_path).unlink()
    (out / LAST_CHECKPOINT).unlink(missing_ok=True)
    model = model.cpu().eval()
    tmp = _write_weights(model, out, version)
    metrics = {
        "train_seconds": seconds,
        "epochs": trainer.current_epoch,
        "best_val_loss": float(ckpt.best_model_score) if val and ckpt.best_model_score is not None else None,
        "resumed_at_epoch": start_epoch,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "samples_per_s": len(train) * max(trainer.current_epoch, 1) / seconds if seconds > 0 else None,
        "device": device_accelerator(),
        "processes": world,
    }
    _write_record(out, cfg, version, parent, dhash, train, val, test, metrics, lineage)
    _commit_weights(tmp, out)
    fit_whitening(model.to(inference_device()), items, out)  # embeds every cell: on the GPU when there is one
    model.cpu()
    log.info("trained %s in %.1fs", version, seconds)
    return TrainedModel(cfg.name, version, out, cfg, metrics)


class _FaultPoint(L.Callback):
    """``faults.point("epoch_end")`` after each epoch's checkpoint is saved (fault-injection tests)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from cellrep_core import faults

        faults.point("epoch_end")


class _EpochDraws(L.Callback):
    """Tells a per-item-draws training set (and its sampler) which epoch runs, so every process draws the
    inputs one process would."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dl = trainer.train_dataloader
        for obj in (getattr(dl, "dataset", None), getattr(dl, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(trainer.current_epoch)
