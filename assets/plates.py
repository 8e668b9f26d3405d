"""Drug plates, one dynamic partition each: cells → point clouds → embeddings → q-values."""


import dagster as dg
import pandas as pd

from cellrep_core import paths, pipeline
from cellrep_core.pipeline import PLATES_DATASET
from cellrep_core.store.warehouse import Warehouse
from orchestration.partitions import plates_partitions
from orchestration.resources import FeatureStoreResource, WarehouseResource

BASE_DATASET = "synthetic_polymorphic"


class ProfileConfig(dg.Config):
    """Null size of the mAP permutation test and its seed."""

    null_size: int = 10000
    seed: int = 0


def _md(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str)}


@dg.asset(partitions_def=plates_partitions, group_name="plates", kinds={"duckdb"},
          description="A plate's cells from landing/plates/<plate_id>/manifest.csv; bad cells quarantined.")
def plate_cells(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    pid = context.partition_key
    plate_dir = paths.landing_plates_dir() / pid
    wh = warehouse.get()
    counts = pipeline.ingest(plate_dir / "manifest.csv", wh, PLATES_DATASET, plate_id=pid)
    n_truth = pipeline.write_truth(wh, plate_dir, pid)
    wh.upsert("plates", pd.DataFrame([{"plate_id": pid, "source_dir": str(plate_dir), "n_cells": counts["cells"],
                                       "n_quarantined": counts["quarantined"]}]), on=["plate_id"])
    context.log.info(f"plate {pid}: {counts}")
    return dg.MaterializeResult(metadata={**_md(counts), "truth_rows": n_truth,
                                          "quarantine_reasons": str(counts["reasons"])})


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_cells], kinds={"parquet"},
          description="SDF point clouds and hand-crafted features of a plate's cells.")
def plate_pointclouds(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    pid = context.partition_key
    res = pipeline.pointclouds(warehouse.get(), PLATES_DATASET, pid, plate_id=pid)
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


@dg.asset(partitions_def=plates_partitions, group_name="plates",
          deps=[plate_pointclouds, dg.AssetKey(f"{BASE_DATASET}_model")], kinds={"lancedb"},
          description="A plate's cells embedded with the base polymorphic model into the feature store.")
def plate_embeddings(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    tm = pipeline.latest_model(wh, BASE_DATASET)
    res = pipeline.embed(wh, feature_store.get(), tm, PLATES_DATASET, pid, plate_id=pid)
    return dg.MaterializeResult(metadata=_md(res))


@dg.asset(partitions_def=plates_partitions, group_name="plates", deps=[plate_embeddings], kinds={"duckdb"},
          description="mAP vs DMSO and BH q-values per drug, for the embeddings and the hand-crafted baseline.")
def plate_qvalues(context: dg.AssetExecutionContext, config: ProfileConfig, warehouse: WarehouseResource,
                  feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    pid = context.partition_key
    wh = warehouse.get()
    tm = pipeline.latest_model(wh, BASE_DATASET)
    df = pipeline.profile_plate(wh, feature_store.get(), pid, tm.version, null_size=config.null_size,
                                seed=config.seed)
    hits = df[df.is_hit]
    return dg.MaterializeResult(metadata={
        "n_drugs": int(df.drug.nunique()), "hits_embedding": int(hits[hits.feature_set == "embedding"].shape[0]),
        "hits_handcrafted": int(hits[hits.feature_set == "handcrafted"].shape[0]),
        "table": dg.MetadataValue.md(df.round(4).to_markdown(index=False)),
    })


plate_asset_defs = [plate_cells, plate_pointclouds, plate_embeddings, plate_qvalues]
plate_asset_checks = [plate_pointclouds_valid]
