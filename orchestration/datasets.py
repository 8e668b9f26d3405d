"""Registering a data set (record + Dagster partition) and materializing its assets in-process.

``cellrep dataset add`` and ``cellrep ingest`` come through here, and so does the landing sensor for
``$CELLREP_HOME/landing/datasets/<name>/manifest.csv``: one code path from a manifest to the assets.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from assets.dataset_landing import add_partition
from cellrep_core import datasets
from cellrep_core.data.cells import read_manifest
from cellrep_core.store.warehouse import Warehouse

CHAIN = ["dataset_cells", "dataset_pointclouds", "dataset_model", "dataset_embeddings"]


def register_dataset(name: str, manifest: Path, data_root: Path | None = None, model: str = "",
                     warm_start: str = "", half_extent_vox: float | None = None,
                     target_voxel_um: float | None = None, per_cell_scale: bool = False,
                     inst: dg.DagsterInstance | None = None) -> datasets.DatasetSpec:
    """Check the manifest, derive the working scale, store the record and add the Dagster partition."""
    from orchestration.demo import instance

    spec = datasets.build_spec(name, manifest, data_root, model=model, warm_start=warm_start,
                               half_extent_vox=half_extent_vox, target_voxel_um=target_voxel_um,
                               per_cell_scale=per_cell_scale)
    datasets.register(Warehouse(), spec)
    add_partition(inst or instance(), spec.name)
    return spec


def materialize_dataset(name: str, assets: list[str] | None = None, run_config: dict | None = None,
                        inst: dg.DagsterInstance | None = None, log_level: str | None = None
                        ) -> dg.ExecuteInProcessResult:
    """Materialize a registered data set's assets (default: cells → point clouds → model → embeddings) in
    this process, on the persistent instance (the run and its lineage show in the UI). A failed step does not
    raise: the result says which (``run_failure``); ``log_level`` of the console (default: the demo's)."""
    from orchestration.definitions import all_assets, resources
    from orchestration.demo import LOG_LEVEL, instance

    inst = inst or instance()
    datasets.get(Warehouse(), name)  # a clear error for an unknown name
    add_partition(inst, name)
    keys = [dg.AssetKey(a) for a in (assets or CHAIN)]
    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level or LOG_LEVEL}}}}
    return dg.materialize(all_assets, selection=dg.AssetSelection.assets(*keys), instance=inst,
                          resources=resources, partition_key=name, run_config=run_config, raise_on_error=False)


def run_failure(res: dg.ExecuteInProcessResult) -> str:
    """The first failed step of a run and its message, without the traceback."""
    for ev in res.all_events:
        if ev.is_step_failure and ev.step_failure_data and ev.step_failure_data.error:
            err = ev.step_failure_data.error
            msg = (err.cause.message if err.cause else err.message) or err.message
            msg = msg.strip().splitlines()[-1]
            for prefix in ("dagster._core.definitions.events.Failure: ", "Failure: "):
                msg = msg.removeprefix(prefix)
            return f"{ev.step_key}: {msg}"
    return "the run failed; see its log in the Dagster UI"


def ingest_command(manifest: Path, data_root: Path | None = None, dataset: str | None = None,
                   model_version: str | None = None, workers: int | None = None) -> list[str]:
    """``cellrep ingest``: register the manifest as a data set and materialize its cells, point clouds and
    embeddings (with ``model_version``, the data set's own base model, else the platform's base model of its
    shape type). Re-running replaces the data set's rows (no duplicates). Returns report lines."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist")
    df = read_manifest(manifest)
    ds = dataset or next((d for d in df.get("dataset", pd.Series(dtype=str)) if d), "") or manifest.parent.name
    try:  # a data set registered before keeps its options (model, warm start, box, scale given at registration)
        old = datasets.get(Warehouse(), ds)
        keep = {"model": old.model, "warm_start": old.warm_start, "half_extent_vox": old.half_extent_vox,
                "per_cell_scale": old.per_cell_scale,
                "target_voxel_um": old.target_voxel_um if old.scale_source == "registration" else None}
    except datasets.DatasetError:
        keep = {}
    spec = register_dataset(ds, manifest, data_root, **keep)
    lines = [datasets.describe(spec)]
    from assets.datasets import embedding_model

    cfg = {"ops": {"dataset_embeddings": {"config": {"model_version": model_version or ""}},
                   "dataset_pointclouds": {"config": {"workers": int(workers or 0)}}}}
    try:  # without any model, the cells and clouds are kept and the report says how to get one
        embedding_model(Warehouse(), spec, model_version or "")
        steps, no_model = ["dataset_cells", "dataset_pointclouds", "dataset_embeddings"], ""
    except dg.Failure as err:
        steps, no_model = ["dataset_cells", "dataset_pointclouds"], str(err.description)
    except LookupError as err:
        steps, no_model = ["dataset_cells", "dataset_pointclouds"], str(err)
    if no_model:
        cfg["ops"].pop("dataset_embeddings")
    res = materialize_dataset(ds, steps, cfg, log_level="CRITICAL")
    wh = Warehouse()
    n_cells = int(wh.query("SELECT count(*) n FROM cells WHERE dataset = ?", [ds]).n.iloc[0])
    q = wh.query("SELECT stage, reason, count(*) n FROM quarantine WHERE dataset = ? AND stage IN "
                 "('ingest', 'pointcloud') GROUP BY ALL ORDER BY stage, reason", [ds])
    n_clouds = int(wh.query("SELECT count(*) n FROM pointcloud_index WHERE dataset = ? AND partition = ?",
                            [ds, spec.partition]).n.iloc[0])
    lines.append(f"{ds}: {n_cells} cells, {n_clouds} point clouds, {int(q.n.sum()) if len(q) else 0} quarantined")
    lines += [f"  quarantined at {r.stage}: {r.n} x {r.reason}" for r in q.itertuples()]
    if res.success and no_model:
        lines.append(f"  embeddings skipped: {no_model}")
    elif res.success:
        emb = res.asset_materializations_for_node("dataset_embeddings")
        md = emb[-1].metadata if emb else {}
        lines.append(f"  embeddings: {md['cells'].value} cells with {md['model_version'].value} "
                     f"({md['dim'].value}-d) in LanceDB")
    else:
        lines.append(f"  stopped: {run_failure(res)}")
    lines.append(f"  in the Dagster UI: group datasets, partition {ds}; train a base model on these cells with "
                 f"`cellrep dataset materialize {ds}`")
    return lines
