"""The stages of the asset graph as plain functions over the warehouse and the feature store.

Dagster assets call these and nothing else; a notebook can call them the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellrep_core import paths, statcell
from cellrep_core.data import synthetic
from cellrep_core.data.features import HANDCRAFTED_FEATURES
from cellrep_core.ingest import ingest_manifest
from cellrep_core.metrics.benchmark import benchmark_model
from cellrep_core.models.config import ModelConfig, get_config, variant
from cellrep_core.models.inference import embed_items, inference_device, load_model, read_lineage
from cellrep_core.models.train import TrainedModel, train_model
from cellrep_core.models.whitening import load_whitening
from cellrep_core.pointclouds.build import SamplingConfig, build_pointclouds, read_pointclouds
from cellrep_core.profiling.mapping import drug_map_qvalues
from cellrep_core.profiling.screen import SCREEN_NULL_SIZE, fisher_combine, screen_map_qvalues
from cellrep_core.registry import (  # noqa: F401 - the registry's lookups, used by the stages and assets as pipeline.*
    _trained_model,
    latest_model,
    model_by_version,
    plate_models,
    plate_structures,
    register_model,
)
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse
from cellrep_core.structures import DEFAULT_BASE

PLATES_DATASET = "drug_plates"
CONTROL = "DMSO"


@dataclass(frozen=True)
class ReferenceSpec:
    """A reference data set: its generator, its sampling kind and its default model config."""

    dataset: str
    kind: str  # "punctate" or "sdf"
    model: str


REFERENCE = {
    "synthetic_punctate": ReferenceSpec("synthetic_punctate", "punctate", "punctate_demo"),
    "synthetic_polymorphic": ReferenceSpec("synthetic_polymorphic", "sdf", "sdf_demo"),
}


# the reference data set whose base model embeds cells of a shape type
BASE_DATASET_OF_SHAPE = DEFAULT_BASE


def generate_reference(dataset: str, size: int, seed: int, grid: int = 64) -> Path:
    """Write a synthetic reference data set under ``raw/<dataset>/`` (same files on every run)."""
    out = paths.raw_dir(dataset)
    if dataset == "synthetic_punctate":
        synthetic.generate_punctate_dataset(out, n_per_rule=size, seed=seed, grid=grid, dataset=dataset)
    elif dataset == "synthetic_polymorphic":
        synthetic.generate_polymorphic_dataset(out, n_cells=size, seed=seed, grid=grid, dataset=dataset)
    else:
        raise ValueError(f"unknown synthetic data set {dataset!r}; known: {', '.join(REFERENCE)}")
    return out / "manifest.csv"


def ingest(
    manifest: Path, wh: Warehouse, dataset: str, plate_id: str = "", data_root: Path | None = None,
    default_voxel_um: float | dict[str, float] | None = None,
) -> dict:
    """Validate a manifest's cells into ``cells`` and ``quarantine``, replacing that partition's rows.
    ``default_voxel_um``: working voxel size of rows without their own (a registered data set's scale)."""
    res = ingest_manifest(manifest, dataset=dataset, plate_id=plate_id, data_root=data_root,
                          default_voxel_um=default_voxel_um)
    part = {"dataset": dataset, "plate_id": plate_id}
    wh.replace_many([("cells", res.cells, part), ("quarantine", res.quarantine, {**part, "stage": "ingest"})])
    return {
        "cells": len(res.cells),
        "quarantined": len(res.quarantine),
        "reasons": res.quarantine["reason"].value_counts().to_dict(),
    }


def cells_of(wh: Warehouse, dataset: str, plate_id: str = "") -> pd.DataFrame:
    """The ingested cells of one partition, ordered by cell_id."""
    return wh.query(
        "SELECT * FROM cells WHERE dataset = ? AND plate_id = ? ORDER BY cell_id", [dataset, plate_id]
    )


def pointclouds(
    wh: Warehouse,
    dataset: str,
    partition: str,
    plate_id: str = "",
    cfg: SamplingConfig | None = None,
    n_workers: int | None = None,
    cfg_of: dict[str, SamplingConfig] | None = None,
) -> dict:
    """Sample the partition's cells into ``pointclouds/<dataset>/<partition>.parquet`` and index them.
    ``cfg_of``: the sampling of each structure group (``data.cells.structure_key``), else ``cfg``."""
    cfg = cfg or SamplingConfig()
    cells = cells_of(wh, dataset, plate_id)
    out = paths.pointcloud_path(dataset, partition)
    res = build_pointclouds(cells, out, cfg, n_workers=n_workers, cfg_of=cfg_of)
    idx = res.index.assign(partition=partition)
    part = {"dataset": dataset, "plate_id": plate_id}
    wh.replace_many([
        ("pointcloud_index", idx, {"dataset": dataset, "partition": partition}),
        ("quarantine", res.quarantine, {**part, "stage": "pointcloud"}),
        ("handcrafted_features", res.features, part),
    ])
    n = max(len(cells), 1)
    return {
        "clouds": len(res.index),
        "quarantined": len(res.quarantine),
        "seconds": round(res.seconds, 2),
        "cells_per_s": round(len(cells) / max(res.seconds, 1e-9), 2),
        "path": str(out),
        "valid_fraction": len(res.index) / n,
    }


FINETUNE_EPOCHS = 3
FINETUNE_LR_SCALE = 0.5


def finetune_config(base: ModelConfig, max_epochs: int = FINETUNE_EPOCHS, lr_scale: float = FINETUNE_LR_SCALE,
                    **overrides: object) -> ModelConfig:
    """The config a plate fine-tunes with: the base model's architecture (so its weights load), named
    ``<base>_ft``, a bounded number of epochs at a lower learning rate."""
    if max_epochs < 1:
        raise ValueError(f"fine-tuning needs max_epochs >= 1, got {max_epochs}")
    return variant(base, **{"name": f"{base.name}_ft", "max_epochs": max_epochs,
                            "patience": min(base.patience, max_epochs), "lr": base.lr * lr_scale, **overrides})


def finetune_plate(wh: Warehouse, plate_id: str, base: TrainedModel, max_epochs: int = FINETUNE_EPOCHS,
                   lr_scale: float = FINETUNE_LR_SCALE, force: bool = False, structure: str | None = None,
                   cell_ids: list[str] | None = None) -> TrainedModel:
    """Warm-start from ``base`` and train a bounded number of epochs on one plate's clouds (of one structure
    group: ``cell_ids``); registered with its lineage (parent = base version, plate, structure, config, data
    hash). Same inputs reuse the version."""
    cfg = finetune_config(base.config, max_epochs=max_epochs, lr_scale=lr_scale)
    return train(wh, PLATES_DATASET, plate_id, cfg, plate_id=plate_id, parent=base, force=force,
                 cell_ids=cell_ids, structure_name=structure or "")


def train(
    wh: Warehouse,
    dataset: str,
    partition: str,
    cfg: ModelConfig,
    plate_id: str = "",
    parent: TrainedModel | None = None,
    force: bool = False,
    cell_ids: list[str] | None = None,
    structure_name: str = "",
) -> TrainedModel:
    """Train a model on a partition's clouds (those of ``cell_ids`` when given), save it under ``models/`` and
    register it."""
    items = read_pointclouds(paths.pointcloud_path(dataset, partition), cell_ids)
    tm = train_model(
        cfg,
        items,
        paths.models_dir(),
        parent=parent,
        force=force,
        lineage={"dataset": dataset, "partition": partition, "plate_id": plate_id,
                 **({"structure_name": structure_name} if structure_name else {})},
    )
    register_model(wh, tm, dataset, plate_id, structure_name)
    return tm


def embed(
    wh: Warehouse, fs: FeatureStore, tm: TrainedModel, dataset: str, partition: str, plate_id: str = "",
    cell_ids: list[str] | None = None, structure: str | None = None,
) -> dict:
    """Embed a partition's cells (of one structure group: ``cell_ids``, ``structure``) with a model version into
    the feature store (upsert, no duplicates)."""
    items = read_pointclouds(paths.pointcloud_path(dataset, partition), cell_ids)
    model = load_model(tm.path, inference_device())
    t0 = time.perf_counter()
    z = embed_items(model, items)
    seconds = time.perf_counter() - t0
    cells = cells_of(wh, dataset, plate_id).set_index("cell_id")
    ids = [it.cell_id for it in items]
    meta = pd.DataFrame(
        {
            "cell_id": ids,
            "dataset": dataset,
            "plate_id": plate_id,
            "drug": [cells.at[c, "drug"] for c in ids],
            "structure_name": [cells.at[c, "structure_name"] for c in ids],
            "model_name": tm.name,
            "model_version": tm.version,
        }
    )
    # replace this partition's rows for this model version in one commit: cells dropped since the last run
    # disappear too, and a reader never sees the partition half written
    key = {"dataset": dataset, "plate_id": plate_id, "model_version": tm.version}
    if structure is not None:  # one base model may embed several structure groups of a plate
        named = bool(ids) and all(cells.at[c, "structure_name"] == structure for c in ids)
        key |= {"structure_name": structure} if named else {"cell_id": list(cell_ids or ids) or ["\x00"]}
    if ids:
        fs.replace(key, meta, z)
    else:
        fs.delete(key, table=fs.table_for_dim(z.shape[1]))
    return {
        "cells": len(ids),
        "dim": int(z.shape[1]),
        "model_version": tm.version,
        "seconds_per_cell": seconds / max(len(ids), 1),
        "commit_retries": fs.commit_retries,
    }


# The model configs benchmarked on each reference data set (every family the paper compares). A name not in
# the registry yet is reported as missing by the benchmark, not an error.
BENCHMARK_MODELS: dict[str, list[str]] = {
    "synthetic_punctate": ["punctate_demo", "punctate_dgcnn_demo", "punctate_so3cnn_demo", "punctate_cnn_demo"],
    "synthetic_polymorphic": ["sdf_demo", "sdf_dgcnn_demo", "sdf_so3cnn_demo", "sdf_cnn_demo",
                              "sdf_segso3cnn_demo", "sdf_segcnn_demo"],
}


def held_out_cells(lineage: dict) -> tuple[list[str], str]:
    """The cells a model's held-out metrics are measured on, and what they are: its test split, else (a model
    fine-tuned from a parent, fewer than MIN_CELLS_FOR_TEST_SPLIT cells, or trained before test splits) its
    validation cells, which chose its checkpoint and stopped its training."""
    if lineage.get("test_cells"):
        return list(lineage["test_cells"]), "test cells (never trained on nor validated on)"
    return list(lineage.get("val_cells") or []), "validation cells (no test split; they chose the checkpoint)"


def benchmark(
    wh: Warehouse, tm: TrainedModel, dataset: str, partition: str, n_rotations: int = 8, seed: int = 0,
    emissions: bool = True, items: list | None = None, sampling: SamplingConfig | None = None,
) -> pd.DataFrame:
    """Every benchmark metric of one model version on a data set (``cellrep_core.metrics.benchmark``),
    written to ``benchmark_metrics`` (replacing that model version's rows for the data set). ``items``: the
    partition's clouds when the caller has read them already; ``sampling``: the config the clouds were
    sampled with (default: ``pointclouds``'), used again on turned cells for the end-to-end invariance."""
    from cellrep_core.metrics.end_to_end import cached_turned_clouds, pick_cells

    lin = read_lineage(tm.path)
    if items is None:
        items = read_pointclouds(paths.pointcloud_path(dataset, partition))
    model = load_model(tm.path, inference_device())
    features = wh.query("SELECT * FROM handcrafted_features WHERE dataset = ?", [dataset])
    cells = cells_of_dataset(wh, dataset)
    stored = {it.cell_id for it in items}
    held_ids, held_kind = held_out_cells(lin)
    held = [c for c in held_ids if c in stored] or sorted(stored)
    # a few held-out cells turned and sampled again (the same cells and clouds for every model of the data set)
    turned = cached_turned_clouds(cells[cells.cell_id.isin(pick_cells(held, seed=seed))],
                                  sampling or SamplingConfig(), seed=seed) if len(cells) else None
    df = benchmark_model(
        model, items, held_ids, cells, features,
        lin.get("metrics", {}), n_rotations=n_rotations, seed=seed, emissions=emissions, turned=turned,
        held_kind=held_kind,
    ).assign(model=tm.name, model_version=tm.version, dataset=dataset)
    df = df[["model", "model_version", "dataset", "metric", "value", "std", "n", "note"]]
    wh.replace("benchmark_metrics", df, {"model_version": tm.version, "dataset": dataset})
    return df


def cells_of_dataset(wh: Warehouse, dataset: str) -> pd.DataFrame:
    """Every ingested cell of a data set (all plates), ordered by cell_id."""
    return wh.query("SELECT * FROM cells WHERE dataset = ? ORDER BY cell_id", [dataset])


def benchmark_dataset(
    wh: Warehouse, dataset: str, partition: str, model_names: list[str] | None = None, max_epochs: int = 0,
    emissions: bool = True, sampling: SamplingConfig | None = None,
) -> dict:
    """Train (or reuse by version) every benchmark model of a data set, compute all metrics for each and write
    the summary plots; returns the versions, the configs not in the registry yet, the table and the plots.
    ``sampling``: the config the data set's clouds were sampled with (for the end-to-end invariance)."""
    from cellrep_core.metrics.plots import write_reports
    from cellrep_core.models.config import REGISTRY

    names = list(model_names or BENCHMARK_MODELS.get(dataset) or [REFERENCE[dataset].model])
    missing = [n for n in names if n not in REGISTRY]
    versions, tables = {}, []
    items = read_pointclouds(paths.pointcloud_path(dataset, partition))  # once for every model
    from cellrep_core.progress import Progress

    with Progress(f"benchmark of {dataset}", len(names) - len(missing), unit="models") as prog:
        for name in names:
            if name in missing:
                continue
            cfg = get_config(name, **({"max_epochs": max_epochs} if max_epochs else {}))
            # trained (or reused) like pipeline.train but not registered in ``models``: latest_model() there picks
            # the data set's base model for embeddings, plates and search, and a benchmark-only model must not
            # become it; the version folder keeps config and lineage
            tm = train_model(cfg, items, paths.models_dir(), lineage={"dataset": dataset, "partition": partition,
                                                                      "plate_id": "", "role": "benchmark"})
            versions[name] = tm.version
            tables.append(benchmark(wh, tm, dataset, partition, emissions=emissions, items=items, sampling=sampling))
            prog.update(note=f"{name} done")
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    reports = write_reports(table, paths.reports_dir(dataset), dataset) if len(table) else {}
    return {"versions": versions, "missing": missing, "table": table, "reports": reports}


TRUTH_COLUMNS = ["plate_id", "drug", "planted_effect", "concentration", "strength", "structure_name"]


def write_truth(wh: Warehouse, plate_dir: Path, plate_id: str) -> int:
    """Copy a synthetic plate's planted effects into ``drug_truth`` (per drug, or per drug and concentration for
    a screen plate) and, where the plate has one, every cell's truth into ``cell_truth`` (none for real plates)."""
    f = Path(plate_dir) / "drug_truth.csv"
    df = pd.read_csv(f, dtype={"plate_id": str, "drug": str, "planted_effect": str, "structure_name": str}) \
        if f.exists() else pd.DataFrame()
    for col in TRUTH_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float) if col in ("concentration", "strength") else pd.Series(dtype=str)
    df = df.assign(plate_id=plate_id)[TRUTH_COLUMNS]
    cf = Path(plate_dir) / "cell_truth.csv"
    cells = pd.read_csv(cf, dtype={"cell_id": str, "plate_id": str, "well": str, "drug": str, "effect": str}) \
        if cf.exists() else None
    if cells is not None:  # the ids the plate's cells were stored under (``ingest.scoped_cell_id``)
        from cellrep_core.ingest import scoped_cell_id

        cells = cells.assign(plate_id=plate_id, cell_id=[scoped_cell_id(c, plate_id) for c in cells.cell_id])
    else:
        cells = pd.DataFrame()
    wh.replace_many([("drug_truth", df, {"plate_id": plate_id}), ("cell_truth", cells, {"plate_id": plate_id})])
    return len(df)


def plate_screen_id(plate_dir: Path) -> str | None:
    """The screen a plate belongs to: the manifest's ``screen_id`` column (one value per plate), else none."""
    from cellrep_core.data.cells import read_manifest

    df = read_manifest(Path(plate_dir) / "manifest.csv")
    if "screen_id" not in df.columns:
        return None
    ids = sorted({str(v).strip() for v in df["screen_id"] if str(v).strip() not in ("", "nan")})
    if len(ids) > 1:
        raise ValueError(f"{plate_dir}/manifest.csv names several screens {ids}; a plate belongs to one screen")
    return ids[0] if ids else None


QVALUE_COLUMNS = ["plate_id", "structure_name", "drug", "concentration", "model_version", "feature_set", "n_cells",
                  "mean_average_precision", "p_value", "q_value", "is_hit"]


def _plate_qvalues(wh: Warehouse, fs: FeatureStore, plate_id: str, model_versions: list[str], null_size: int,
                   seed: int, structure: str = "", cell_ids: list[str] | None = None,
                   extra: list[tuple[str, str, Path, int]] | None = None) -> pd.DataFrame:
    """mAP / q-values of a plate's drugs (among the cells of one structure group) for each model version's
    embeddings, the hand-crafted baseline and the ``extra`` feature sets (structure given shape)."""
    sets = plate_feature_sets(wh, fs, plate_id, model_versions, cell_ids=cell_ids, extra=extra)
    out = []
    for feature_set, version, meta, feats in sets:
        if feature_set == "handcrafted" and len(meta) == 0:
            continue  # punctate cells have no hand-crafted shape features
        res = drug_map_qvalues(meta.reset_index(drop=True), feats, control=CONTROL, null_size=null_size, seed=seed)
        out.append(res.assign(model_version=version, feature_set=feature_set))
    return pd.concat(out, ignore_index=True).assign(structure_name=structure)[QVALUE_COLUMNS]


def plate_feature_sets(wh: Warehouse, fs: FeatureStore, plate_id: str, model_versions: list[str],
                       paths_of: dict[str, Path] | None = None, cell_ids: list[str] | None = None,
                       extra: list[tuple[str, str, Path, int]] | None = None,
                       ) -> list[tuple[str, str, pd.DataFrame, np.ndarray]]:
    """``(feature_set, model_version, meta, features)`` of a plate: each model version's whitened codes and the
    hand-crafted features; ``meta`` has cell_id, plate_id, drug, concentration, well. ``paths_of`` gives the folder of
    a model version that is not in the ``models`` table (the benchmark's other model families); ``cell_ids``
    restricts every set to those cells (one structure group). ``extra``: ``(feature_set, version, folder, dim)`` of
    other stored codes (``structure_given_shape``), whitened by ``folder/whitening.npz``; skipped where the plate
    has none of them."""
    keep = None if cell_ids is None else set(cell_ids)
    conc = wh.query("SELECT cell_id, concentration, well FROM cells WHERE plate_id = ?", [plate_id])
    hc = wh.query(
        "SELECT h.*, c.drug, c.concentration, c.well FROM handcrafted_features h JOIN cells c USING (cell_id) "
        "WHERE h.plate_id = ? ORDER BY cell_id",
        [plate_id],
    )
    if keep is not None:
        hc = hc[hc.cell_id.isin(keep)].reset_index(drop=True)
    sets = []
    for version in model_versions:
        emb_meta, vecs = fs.load({"plate_id": plate_id, "model_version": version})
        if keep is not None:
            mask = emb_meta.cell_id.isin(keep).to_numpy() if len(emb_meta) else np.zeros(0, bool)
            emb_meta, vecs = emb_meta[mask].reset_index(drop=True), vecs[mask]
        if emb_meta.empty:
            raise LookupError(f"no embeddings for plate {plate_id} with model {version}; embed the plate first")
        path = (paths_of or {}).get(version) or model_by_version(wh, version).path
        meta = emb_meta[["cell_id", "plate_id", "drug"]].merge(conc, on="cell_id", how="left")
        sets.append(("embedding", version, meta, load_whitening(path).transform(vecs)))
    for feature_set, version, folder, dim in extra or []:
        emb_meta, vecs = fs.load({"plate_id": plate_id, "model_version": version}, table=fs.table_for_dim(dim))
        if keep is not None and len(emb_meta):
            mask = emb_meta.cell_id.isin(keep).to_numpy()
            emb_meta, vecs = emb_meta[mask].reset_index(drop=True), vecs[mask]
        if len(emb_meta):
            meta = emb_meta[["cell_id", "plate_id", "drug"]].merge(conc, on="cell_id", how="left")
            sets.append((feature_set, version, meta, load_whitening(folder).transform(vecs)))
    sets.append(("handcrafted", "", hc[["cell_id", "plate_id", "drug", "concentration", "well"]],
                 hc[list(HANDCRAFTED_FEATURES)].to_numpy(float)))
    return sets


def profile_plate_models(
    wh: Warehouse, fs: FeatureStore, plate_id: str, model_versions: list[str], null_size: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """q-values of one plate for several model versions (zero-shot base and fine-tuned) and the hand-crafted
    baseline, over all of the plate's cells; all of the plate's earlier ``drug_qvalues`` rows are replaced in
    one transaction, other plates' rows are not touched. (A plate of several structures: ``profile_plate``.)"""
    df = _plate_qvalues(wh, fs, plate_id, list(dict.fromkeys(model_versions)), null_size, seed)
    wh.replace("drug_qvalues", df, {"plate_id": plate_id})
    return df


def profile_plate(wh: Warehouse, fs: FeatureStore, plate_id: str, null_size: int = 10000, seed: int = 0,
                  ) -> pd.DataFrame:
    """q-values of one plate per structure group: each group's drugs against the DMSO cells of the same group, in
    the spaces of the group's base and fine-tuned models and the hand-crafted features; the plate's earlier
    ``drug_qvalues`` rows are replaced in one transaction."""
    from cellrep_core.structures import plate_groups

    groups = plate_groups(wh, plate_id)
    trained = set(plate_structures(wh, plate_id))
    read_versions = fs.current_versions()  # the embedding versions this profile reads: tagged below
    frames = []
    for key, g in groups.items():
        if key not in trained and not (len(groups) == 1 and trained == {""}):
            continue  # no base model for this structure: plate_model reported it
        base, ft = plate_models(wh, plate_id, key if key in trained else None)
        extra = [(statcell.FEATURE_SET, *v) for v in statcell.plate_versions(wh, plate_id, g["base_dataset"],
                                                                            base.version)]
        frames.append(_plate_qvalues(wh, fs, plate_id, list(dict.fromkeys([base.version, ft.version])), null_size,
                                     seed, structure=key, cell_ids=g["cell_ids"], extra=extra))
    if not frames:
        raise LookupError(f"plate {plate_id}: no structure group has a fine-tuned model; materialize plate_model")
    df = pd.concat(frames, ignore_index=True)
    wh.replace("drug_qvalues", df, {"plate_id": plate_id})
    fs.tag_versions(qvalue_tag("plate", plate_id), read_versions)
    return df


def qvalue_tag(scope: str, scope_id: str) -> str:
    """The feature-store tag of the embedding versions a plate's or screen's q-values were computed from
    (``FeatureStore.load(version=...)`` reads them back; maintenance keeps them)."""
    import re

    return f"{scope}_qvalues_" + re.sub(r"[^A-Za-z0-9_.-]", "_", scope_id)


def default_model_config(dataset: str, **overrides: object) -> ModelConfig:
    """The registered config a reference data set trains with."""
    return get_config(REFERENCE[dataset].model, **overrides)


SCREEN_COLUMNS = ["screen_id", "structure_name", "drug", "concentration", "feature_set", "model_role",
                  "model_version", "method", "n_plates", "n_cells", "mean_average_precision", "p_value", "q_value",
                  "is_hit", "null_size"]


def screens(wh: Warehouse) -> dict[str, list[str]]:
    """Every screen and its plates (those registered with a ``screen_id``)."""
    df = wh.query("SELECT screen_id, plate_id FROM plates WHERE screen_id IS NOT NULL AND screen_id <> '' "
                  "ORDER BY screen_id, plate_id")
    return {s: list(g.plate_id) for s, g in df.groupby("screen_id", sort=True)}


def profile_screen(wh: Warehouse, fs: FeatureStore, screen_id: str, null_size: int = SCREEN_NULL_SIZE,
                   seed: int = 0) -> pd.DataFrame:
    """Screen-level mAP / q of every drug x concentration over the screen's replicate plates
    (``cellrep_core.profiling.screen``), per structure group, for the base model (zero-shot), the plates'
    fine-tuned models, the hand-crafted features and, where the group's base data set has one, structure given
    shape (model_role ``structure_given_shape``); replaces the screen's rows of ``screen_qvalues`` in one
    transaction.

    The base model's codes and the hand-crafted features are pooled over plates (per-plate DMSO normalisation,
    positives on the other plates); each plate's fine-tuned model has a space of its own, so those per-plate
    p-values (``drug_qvalues``) are combined by Fisher's method. When the plates were embedded by different
    base versions (the base was retrained between plates) the base rows are combined the same way."""
    from cellrep_core.structures import plate_groups

    plates = screens(wh).get(screen_id)
    if not plates:
        raise LookupError(f"no plate registered for screen {screen_id!r}; land its plates first")
    plate_rows = wh.query(
        f"SELECT * FROM drug_qvalues WHERE plate_id IN ({', '.join('?' * len(plates))})", plates)
    missing = [p for p in plates if p not in set(plate_rows.plate_id)]
    if missing:
        raise LookupError(f"screen {screen_id}: plates {missing} have no q-values yet; materialize plate_qvalues")
    plate_rows["structure_name"] = plate_rows["structure_name"].fillna("")
    read_versions = fs.current_versions()
    groups = {pid: plate_groups(wh, pid) for pid in plates}
    trained = {pid: set(plate_structures(wh, pid)) for pid in plates}
    structures = sorted({k for pid in plates for k in groups[pid] if k in trained[pid]}) or [""]
    frames = [_profile_screen_structure(wh, fs, s, plates, groups, trained, plate_rows, null_size, seed)
              for s in structures]
    out = pd.concat([f for f in frames if len(f)], ignore_index=True).assign(screen_id=screen_id, null_size=null_size)
    out = out[SCREEN_COLUMNS]
    wh.replace("screen_qvalues", out, {"screen_id": screen_id})
    fs.tag_versions(qvalue_tag("screen", screen_id), read_versions)
    return out


def _profile_screen_structure(wh: Warehouse, fs: FeatureStore, structure: str, plates: list[str], groups: dict,
                              trained: dict, plate_rows: pd.DataFrame, null_size: int, seed: int) -> pd.DataFrame:
    """The screen rows of one structure group (``""``: plates from before structure groups)."""
    have = [p for p in plates if structure in trained[p] or (structure == "" and trained[p] <= {""})]
    pairs = {pid: plate_models(wh, pid, structure or None) for pid in have}
    cells = {pid: (groups[pid][structure]["cell_ids"] if structure in groups[pid] else None) for pid in have}
    rows = plate_rows[plate_rows.plate_id.isin(have) & (plate_rows.structure_name == structure)]
    frames = []
    base_versions = {pid: b.version for pid, (b, _) in pairs.items()}
    shared_base = len(set(base_versions.values())) == 1
    # each plate's feature sets read once: the shared base model's whitened codes (when one base embedded every
    # plate) and the hand-crafted features, pooled over plates below
    # structure given shape, where the group's base data set has a stacked model fitted on the plate's base
    sgs = {pid: statcell.plate_versions(wh, pid, groups[pid][structure]["base_dataset"], base_versions[pid])
           if structure in groups[pid] else [] for pid in have}
    per_plate = [plate_feature_sets(wh, fs, pid, [base_versions[pid]] if shared_base else [], cell_ids=cells[pid],
                                    extra=[(statcell.FEATURE_SET, *v) for v in sgs[pid]])
                 for pid in have]

    def pooled(role: str, version: str, feature_set: str) -> None:
        sets = [(meta, x) for plate_sets in per_plate for fset, v, meta, x in plate_sets
                if fset == feature_set and v == version and len(meta)]
        if not sets:
            return
        res = screen_map_qvalues(pd.concat([m for m, _ in sets], ignore_index=True),
                                 np.concatenate([x for _, x in sets]), control=CONTROL, null_size=null_size,
                                 seed=seed)
        frames.append(res.assign(feature_set=feature_set, model_role=role, model_version=version))

    def combined(role: str, versions: dict[str, str], feature_set: str) -> None:
        sel = pd.concat([rows[(rows.plate_id == pid) & (rows.feature_set == feature_set)
                              & (rows.model_version == v)] for pid, v in versions.items()])
        res = fisher_combine(sel)
        label = next(iter(set(versions.values()))) if len(set(versions.values())) == 1 else "per_plate"
        frames.append(res.assign(feature_set=feature_set, model_role=role, model_version=label))

    if shared_base:
        pooled("base", next(iter(base_versions.values())), "embedding")
    else:
        combined("base", base_versions, "embedding")
    combined("finetuned", {pid: ft.version for pid, (_, ft) in pairs.items()}, "embedding")
    pooled("handcrafted", "", "handcrafted")
    sgs_versions = {v[0] for vs in sgs.values() for v in vs}
    if len(sgs_versions) == 1 and all(sgs.values()):  # one shape residual for every plate: pooled like the base
        pooled(statcell.FEATURE_SET, sgs_versions.pop(), statcell.FEATURE_SET)
    elif sgs_versions:  # plates on different residuals (base retrained between them): Fisher over the plates
        combined(statcell.FEATURE_SET, {pid: v[0][0] for pid, v in sgs.items() if v}, statcell.FEATURE_SET)
    return pd.concat(frames, ignore_index=True).assign(structure_name=structure) if frames else pd.DataFrame()


def up_to_date(wh: Warehouse, output: str, scope: str, scope_id: str) -> bool:
    """Whether ``output`` (``screen_qvalues`` or ``hit_explanations``) of a screen or lone plate is newer than
    everything it was computed from (the q-values of the scope's plates; for a screen's explanations, its screen
    q-values), so a cross-plate run can leave it as it is instead of recomputing every scope every time."""
    if scope == "screen":
        plates = screens(wh).get(scope_id, [])
        if not plates:
            return False
        if output == "hit_explanations":
            src = wh.query("SELECT max(computed_at) t FROM screen_qvalues WHERE screen_id = ?", [scope_id]).t.iloc[0]
        else:
            src = wh.query(f"SELECT max(computed_at) t FROM drug_qvalues WHERE plate_id IN "
                           f"({', '.join('?' * len(plates))})", plates).t.iloc[0]
    else:
        src = wh.query("SELECT max(computed_at) t FROM drug_qvalues WHERE plate_id = ?", [scope_id]).t.iloc[0]
    if output == "screen_qvalues":
        out = wh.query("SELECT max(computed_at) t FROM screen_qvalues WHERE screen_id = ?", [scope_id]).t.iloc[0]
    else:
        out = wh.query("SELECT max(computed_at) t FROM hit_explanations WHERE scope = ? AND scope_id = ?",
                       [scope, scope_id]).t.iloc[0]
    return not (pd.isna(src) or pd.isna(out)) and out >= src


def screen_reports(wh: Warehouse, screen_id: str) -> dict[str, Path]:
    """The screen's plots under ``reports/screens/<screen_id>/``: 1/q per drug and feature set
    (``inverse_q.png``), mAP against dose (``dose_response.png``), and the table as ``screen_qvalues.csv``."""
    from cellrep_core.profiling.plots import dose_response_plot, inverse_q_plot

    df = wh.query(
        "SELECT s.*, t.planted_effect, t.strength FROM screen_qvalues s LEFT JOIN ("
        "  SELECT drug, concentration, any_value(planted_effect) AS planted_effect, avg(strength) AS strength"
        "  FROM drug_truth WHERE plate_id IN (SELECT plate_id FROM plates WHERE screen_id = ?)"
        "  GROUP BY ALL) t ON t.drug = s.drug AND t.concentration IS NOT DISTINCT FROM s.concentration "
        "WHERE s.screen_id = ? ORDER BY s.drug, s.concentration, s.model_role",
        [screen_id, screen_id],
    )
    out = paths.screen_reports_dir(screen_id)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "screen_qvalues.csv", index=False)
    return {
        "inverse_q": inverse_q_plot(df, out / "inverse_q.png", f"screen {screen_id}: 1/q per drug and feature set"),
        "dose_response": dose_response_plot(df, out / "dose_response.png", f"screen {screen_id}: mAP against dose"),
        "table": out / "screen_qvalues.csv",
    }
