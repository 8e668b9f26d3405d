"""Drug plates, one dynamic partition each: cells → point clouds → fine-tuned model → embeddings (base and
fine-tuned) → q-values, each asset started by declarative automation when its inputs are ready."""


import time

import dagster as dg
import pandas as pd

from assets.resources import GPU_OP_TAGS, FeatureStoreResource, WarehouseResource
from cellrep_core import paths, pipeline, statcell, structures
from cellrep_core.data.cells import read_manifest
from cellrep_core.pipeline import PLATES_DATASET
from cellrep_core.store.warehouse import Warehouse

# one dynamic partition per drug plate
plates_partitions = dg.DynamicPartitionsDefinition(name="plates")

BASE_DATASET = "synthetic_polymorphic"
BASE_MODEL = dg.AssetKey(f"{BASE_DATASET}_model")


def plate_automation() -> dg.AutomationCondition:
    """``eager()`` for one plate partition, except that a new base model version does not re-run every
    earlier plate (a plate keeps the base it was fine-tuned from until it is re-materialized).

    A plate partition that appears (the landing sensor adds it) is missing, so its cells are requested;
    each later asset is requested in the same tick (its parents "will be requested"), so one run takes a
    new plate from cells to q-values. The blocking check has no condition of its own, so it rides along
    in that run and, when it fails, the run skips training and everything after it; a failed plate is
    not requested again until its inputs change. (``all_deps_blocking_checks_passed()`` would split the
    chain into two runs: a check of a partitioned asset is not seen as "will be requested" in the tick.)
    """
    ac = dg.AutomationCondition
    return (
        (ac.newly_missing() | ac.any_deps_updated().ignore(dg.AssetSelection.assets(BASE_MODEL))).since_last_handled()
        & ~ac.any_deps_missing()
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
    ).with_label("plate_eager")


class ProfileConfig(dg.Config):
    """Null size of the mAP permutation test and its seed."""

    null_size: int = 10000
    seed: int = 0


class FineTuneConfig(dg.Config):
    """Epochs (bounded) and learning-rate factor of a plate's fine-tuning; force retrains an existing version."""

    max_epochs: int = pipeline.FINETUNE_EPOCHS
    lr_scale: float = pipeline.FINETUNE_LR_SCALE
    force: bool = False


def _md(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str)}


@dg.asset(partitions_def=plates_partitions, group_name="plates", kinds={"duckdb"},
          automation_condition=plate_automation(),
          description="A plate's cells from landing/plates/<plate_id>/manifest.csv; bad cells quarantined.")
def plate_cells(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    pid = context.partition_key
    plate_dir = paths.landing_plates_dir() / pid
    wh = warehouse.get()
    t0 = time.perf_counter()
    voxel, _ = structures.manifest_scales(wh, read_manifest(plate_dir / "manifest.csv"))
    counts = pipeline.ingest(plate_dir / "manifest.csv", wh, PLATES_DATASET, plate_id=pid, default_voxel_um=voxel)
    n_truth = pipeline.write_truth(wh, plate_dir, pid)
    screen_id = pipeline.plate_screen_id(plate_dir)
    wh.upsert("plates", pd.DataFrame([{"plate_id": pid, "source_dir": str(plate_dir), "n_cells": counts["cells"],
                                       "n_quarantined": counts["quarantined"], "screen_id": screen_id}]),
              on=["plate_id"])
    context.log.info(f"plate {pid}: {counts}")
    return dg.MaterializeResult(metadata={**_md(counts), "truth_rows": n_truth, "screen_id": screen_id or "",
                                          "stage_seconds": round(time.perf_counter() - t0, 2),
                                          "quarantine_reasons": str(counts["reasons"])})


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_cells], kinds={"parquet"},
          automation_condition=plate_automation(),
          description="Point clouds of a plate's cells (SDF for polymorphic, intensity sampling for punctate "
                      "structures, each at the scale of its structure's base data set) and hand-crafted features.")
def plate_pointclouds(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    t0 = time.perf_counter()
    cells = pipeline.cells_of(wh, PLATES_DATASET, pid)
    _, cfg_of = structures.manifest_scales(wh, cells)
    res = pipeline.pointclouds(wh, PLATES_DATASET, pid, plate_id=pid, cfg_of=cfg_of)
    res["stage_seconds"] = round(time.perf_counter() - t0, 2)
    context.log.info(f"plate {pid} point clouds: {res}")
    return dg.MaterializeResult(metadata=_md(res))


MIN_VALID_CELLS = 10
MIN_VALID_FRACTION = 0.8


@dg.asset_check(asset=plate_pointclouds, blocking=True,
                description=f"At least {MIN_VALID_CELLS} cells and {MIN_VALID_FRACTION:.0%} of the plate's cells "
                            "have a point cloud, and every stored cloud is finite; blocks embedding otherwise.")
def plate_pointclouds_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return pointcloud_check(context.partition_key if context.has_partition_key else None)


def pointcloud_check(pid: str | None) -> dg.AssetCheckResult:
    """The blocking check of a plate's point clouds (also usable without Dagster)."""
    import numpy as np

    from cellrep_core.pointclouds.build import read_pointclouds

    if pid is None:
        return dg.AssetCheckResult(passed=False, description="the check needs a plate partition")
    path = paths.pointcloud_path(PLATES_DATASET, pid)
    items = read_pointclouds(path) if path.exists() else []
    n_cells = len(pipeline.cells_of(Warehouse(), PLATES_DATASET, pid))
    n_bad = sum(
        1 for it in items if not (np.isfinite(it.points).all() and (it.sdf is None or np.isfinite(it.sdf).all()))
    )
    frac = len(items) / n_cells if n_cells else 0.0
    passed = len(items) >= MIN_VALID_CELLS and frac >= MIN_VALID_FRACTION and n_bad == 0
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"clouds": len(items), "cells": n_cells, "valid_fraction": round(frac, 3), "non_finite": n_bad},
        description=None if passed else (
            f"plate {pid}: {len(items)} clouds of {n_cells} cells ({frac:.0%}), {n_bad} with NaN/inf; needs "
            f">= {MIN_VALID_CELLS} and >= {MIN_VALID_FRACTION:.0%}: see quarantine for the failed cells"
        ),
    )


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_pointclouds, BASE_MODEL],
          pool="gpu", op_tags=GPU_OP_TAGS, kinds={"pytorch"}, automation_condition=plate_automation(),
          description="For each structure on the plate, the base model of its base data set (structure_bases, else "
                      f"{BASE_DATASET} or synthetic_punctate by shape type) fine-tuned on that structure's clouds "
                      "(warm start, a bounded number of epochs; CUDA with mixed precision when present); lineage in "
                      "the models table. A structure without a base model is reported, the others go on.")
def plate_model(context: dg.AssetExecutionContext, config: FineTuneConfig,
                warehouse: WarehouseResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    check = pointcloud_check(pid)  # also when plate_pointclouds ran in another run than this one
    if not check.passed:
        raise dg.Failure(f"refusing to fine-tune on plate {pid}: {check.description}")
    t0 = time.perf_counter()
    groups = structures.plate_groups(wh, pid)
    trained, skipped = {}, {}
    for key, g in groups.items():
        try:
            base = pipeline.latest_model(wh, g["base_dataset"])
        except LookupError:
            skipped[key] = (f"no base model for structure {key} ({g['shape_type']}): materialize "
                            f"{g['base_dataset']}'s model, or register a data set of this structure with "
                            f"`cellrep dataset add NAME MANIFEST --base-for {key}`")
            context.log.warning(f"plate {pid}: {skipped[key]}")
            continue
        tm = pipeline.finetune_plate(wh, pid, base, max_epochs=config.max_epochs, lr_scale=config.lr_scale,
                                     force=config.force, structure=key, cell_ids=g["cell_ids"])
        trained[key] = {"model_version": tm.version, "base_version": base.version, "base_dataset": g["base_dataset"],
                        "reused": tm.reused, "cells": len(g["cell_ids"])}
        context.log.info(f"plate {pid} {key}: {tm.version} from base {base.version} "
                         f"({'reused' if tm.reused else 'trained'})")
    if not trained:
        raise dg.Failure(f"plate {pid}: no structure has a base model: " + "; ".join(skipped.values()))
    md: dict = {"structures": dg.MetadataValue.json(trained), "stage_seconds": round(time.perf_counter() - t0, 2)}
    if skipped:
        md["skipped_structures"] = dg.MetadataValue.json(skipped)
    if len(trained) == 1:
        only = next(iter(trained.values()))
        md |= {"model_version": only["model_version"], "base_version": only["base_version"],
               "reused": only["reused"]}
    return dg.MaterializeResult(metadata=md)


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_pointclouds, plate_model],
          kinds={"lancedb"}, automation_condition=plate_automation(),
          description="A plate's cells embedded zero-shot with their structure's base model and with the plate's "
                      "fine-tuned model of that structure (rows carry model_version).")
def plate_embeddings(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    fs = feature_store.get()
    t0 = time.perf_counter()
    md: dict = {}
    groups = structures.plate_groups(wh, pid)
    for key in pipeline.plate_structures(wh, pid):
        ids = groups[key]["cell_ids"] if key in groups else None
        base, ft = pipeline.plate_models(wh, pid, key or None)
        for role, tm in zip(("base", "finetuned"), (base, ft), strict=True):
            res = pipeline.embed(wh, fs, tm, PLATES_DATASET, pid, plate_id=pid, cell_ids=ids,
                                 structure=key if len(groups) > 1 else None)
            prefix = f"{role}_" if len(groups) <= 1 else f"{key}_{role}_"
            md |= {f"{prefix}{k}": v for k, v in _md(res).items()}
        if key in groups:  # structure given shape, where the group's base data set has a stacked model
            res = statcell.embed_plate(wh, fs, pid, key, ids, groups[key]["base_dataset"], base.version)
            prefix = "" if len(groups) <= 1 else f"{key}_"
            md |= {f"{prefix}structure_given_shape_{k}": v for k, v in _md(res).items()}
    return dg.MaterializeResult(metadata={**md, "stage_seconds": round(time.perf_counter() - t0, 2)})


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_embeddings], kinds={"duckdb"},
          automation_condition=plate_automation(),
          description="mAP vs DMSO and BH q-values per drug and structure for the base and fine-tuned embeddings "
                      "and the hand-crafted baseline; the plate's earlier rows are replaced in one transaction.")
def plate_qvalues(context: dg.AssetExecutionContext, config: ProfileConfig, warehouse: WarehouseResource,
                  feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    t0 = time.perf_counter()
    fs = feature_store.get()
    df = pipeline.profile_plate(wh, fs, pid, null_size=config.null_size, seed=config.seed)
    hits = df[df.is_hit]
    emb = hits[hits.feature_set == "embedding"]
    md = {"n_drugs": int(df.drug.nunique()), "structures": ", ".join(sorted(set(df.structure_name))),
          "hits_handcrafted": int(hits[hits.feature_set == "handcrafted"].shape[0]),
          "stage_seconds": round(time.perf_counter() - t0, 2),
          "embedding_table_versions": dg.MetadataValue.json(
              {t: fs.tagged_versions(t).get(pipeline.qvalue_tag("plate", pid)) for t in fs.table_names()}),
          "embedding_versions_tag": pipeline.qvalue_tag("plate", pid),
          "table": dg.MetadataValue.md(df.round(4).to_markdown(index=False))}
    for key in sorted(set(df.structure_name)):
        base, ft = pipeline.plate_models(wh, pid, key or None)
        pre = "" if df.structure_name.nunique() == 1 else f"{key}_"
        md |= {f"{pre}base_version": base.version, f"{pre}finetuned_version": ft.version,
               f"{pre}hits_base": int(((emb.model_version == base.version) & (emb.structure_name == key)).sum()),
               f"{pre}hits_finetuned": int(((emb.model_version == ft.version) & (emb.structure_name == key)).sum())}
    return dg.MaterializeResult(metadata=md)


plate_asset_defs = [plate_cells, plate_pointclouds, plate_model, plate_embeddings, plate_qvalues]
plate_asset_checks = [plate_pointclouds_valid]
