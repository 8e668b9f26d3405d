"""A user's own data sets, one ``datasets`` partition each: cells → point clouds → base model → embeddings,
and the benchmark on demand.

A partition is a name registered with ``cellrep dataset add NAME MANIFEST`` (or a manifest dropped into
``$CELLREP_HOME/landing/datasets/<name>/``); its record in the ``datasets`` table carries the manifest, the
data root, the working scale derived at registration and the model config. ``cellrep ingest`` materializes
the cells, point clouds and embeddings of the same partition (one code path).
"""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.resources import GPU_OP_TAGS, FeatureStoreResource, WarehouseResource
from cellrep_core import datasets, pipeline, statcell
from cellrep_core.models.config import variant
from cellrep_core.pointclouds.build import SamplingConfig
from cellrep_core.structures import KIND_OF_SHAPE

# one dynamic partition per registered data set
datasets_partitions = dg.DynamicPartitionsDefinition(name="datasets")


def dataset_automation() -> dg.AutomationCondition:
    """``eager()`` without waiting on unrelated partitions: a newly registered data set runs from cells to
    embeddings in one run; a re-registered one (new manifest or scale: its cells re-materialized) follows."""
    ac = dg.AutomationCondition
    return (
        (ac.newly_missing() | ac.any_deps_updated()).since_last_handled()
        & ~ac.any_deps_missing()
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
    ).with_label("dataset_eager")


def _md(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str)}


def sampling_of(spec: datasets.DatasetSpec) -> SamplingConfig:
    """How a data set's cells are sampled: the defaults at the data set's box."""
    return SamplingConfig(half_extent_vox=spec.half_extent_vox, per_cell_scale=spec.per_cell_scale)


class SamplingWorkersConfig(dg.Config):
    """Processes for point-cloud sampling (0: all cores)."""

    workers: int = 0


class DatasetTrainConfig(dg.Config):
    """Epoch override (0: the config's), retrain even when the version exists, DDP processes (>= 2: torchrun
    through Dagster Pipes, ``assets/training.py``)."""

    max_epochs: int = 0
    force: bool = False
    processes: int = 1


class DatasetEmbedConfig(dg.Config):
    """The model version to embed with (empty: the data set's own base model, else the platform's base model
    of its shape type)."""

    model_version: str = ""


class DatasetBenchmarkConfig(dg.Config):
    """Model configs to benchmark on the data set (empty: its own model config), epoch override, emissions."""

    models: list[str] = []
    max_epochs: int = 0
    emissions: bool = False


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", kinds={"duckdb"},
          automation_condition=dataset_automation(),
          description="A registered data set's cells (manifest rows, fields of view split into cells) at the working "
                      "voxel size recorded with it; bad cells quarantined with the file and the fix.")
def dataset_cells(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    t0 = time.perf_counter()
    counts = pipeline.ingest(spec.manifest, wh, spec.name, data_root=spec.data_root or None,
                             default_voxel_um=spec.target_voxel_um)
    context.log.info(f"{spec.name}: {counts}")
    return dg.MaterializeResult(metadata={
        **_md(counts), "quarantine_reasons": str(counts["reasons"]), "manifest": spec.manifest,
        "working_voxel_um": spec.target_voxel_um or "native", "scale_source": spec.scale_source,
        "stage_seconds": round(time.perf_counter() - t0, 2)})


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", deps=[dataset_cells], kinds={"parquet"},
          automation_condition=dataset_automation(),
          description="Point clouds of a registered data set (SDF or intensity sampling by shape type) in the box "
                      "recorded with it; hand-crafted features of polymorphic cells.")
def dataset_pointclouds(context: dg.AssetExecutionContext, config: SamplingWorkersConfig,
                        warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    res = pipeline.pointclouds(wh, spec.name, spec.partition, cfg=sampling_of(spec), n_workers=config.workers or None)
    context.log.info(f"{spec.name} point clouds: {res}")
    if res["clouds"] == 0:
        raise dg.Failure(f"data set {spec.name}: no cell gave a point cloud; see "
                         f"`cellrep sql \"select * from quarantine where dataset = '{spec.name}'\"`")
    return dg.MaterializeResult(metadata=_md(res))


def dataset_train_config(wh, spec: datasets.DatasetSpec, max_epochs: int = 0):
    """(config, parent) of a data set's base model: its own config, or, warm-started, the architecture of the
    base it starts from (so the weights load) under the name ``<dataset>_<config>``."""
    overrides = {"max_epochs": max_epochs} if max_epochs else {}
    if not spec.warm_start:
        return pipeline.get_config(spec.model, **overrides), None
    try:  # a data set's name (its latest base model), else a model version
        parent = pipeline.latest_model(wh, spec.warm_start)
    except LookupError:
        try:
            parent = pipeline.model_by_version(wh, spec.warm_start)
        except LookupError:
            raise dg.Failure(f"data set {spec.name}: warm start {spec.warm_start!r} is neither a data set with a "
                             "trained model nor a registered model version") from None
    if parent.config.kind != KIND_OF_SHAPE[spec.shape_type]:
        raise dg.Failure(f"data set {spec.name} ({spec.shape_type}) cannot warm-start from {parent.version}, a "
                         f"{parent.config.kind} model")
    return variant(parent.config, name=f"{parent.config.name}_{spec.name}", **overrides), parent


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", deps=[dataset_pointclouds], pool="gpu",
          op_tags=GPU_OP_TAGS,
          kinds={"pytorch"}, automation_condition=dataset_automation(),
          description="A base model trained on the data set's own cells (from scratch, or warm-started from the "
                      "base named at registration); versioned by config and data, lineage in the models table.")
def dataset_model(context: dg.AssetExecutionContext, config: DatasetTrainConfig,
                  warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    cfg, parent = dataset_train_config(wh, spec, config.max_epochs)
    t0 = time.perf_counter()
    if config.processes > 1:
        from assets.training import train_distributed

        tm, _ = train_distributed(context, wh, spec.name, spec.partition, cfg, config.processes, parent=parent,
                                  force=config.force)
    else:
        tm = pipeline.train(wh, spec.name, spec.partition, cfg, parent=parent, force=config.force)
    context.log.info(f"{spec.name}: model {tm.version} ({'reused' if tm.reused else 'trained'})")
    return dg.MaterializeResult(metadata={
        "model_version": tm.version, "parent_version": parent.version if parent else "", "path": str(tm.path),
        "reused": tm.reused, "processes": config.processes, "stage_seconds": round(time.perf_counter() - t0, 2),
        **_md(tm.metrics)})


def embedding_model(wh, spec: datasets.DatasetSpec, model_version: str = ""):
    """The model a data set is embedded with: the given version, its own base model, else the platform's."""
    if model_version:
        return pipeline.model_by_version(wh, model_version)
    try:
        return pipeline.latest_model(wh, spec.name)
    except LookupError:
        base = pipeline.BASE_DATASET_OF_SHAPE[spec.shape_type]
        try:
            return pipeline.latest_model(wh, base)
        except LookupError:
            raise dg.Failure(f"data set {spec.name}: no model to embed with; materialize dataset_model for it, or "
                             f"{base}_model (`make demo` trains it)") from None


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", deps=[dataset_pointclouds, dataset_model],
          kinds={"lancedb"}, automation_condition=dataset_automation(),
          description="The data set's invariant codes in the feature store (its own base model by default); "
                      "`cellrep nearest --dataset NAME` searches them.")
def dataset_embeddings(context: dg.AssetExecutionContext, config: DatasetEmbedConfig, warehouse: WarehouseResource,
                       feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    tm = embedding_model(wh, spec, config.model_version)
    if tm.config.kind != KIND_OF_SHAPE[spec.shape_type]:
        raise dg.Failure(f"model {tm.version} is a {tm.config.kind} model; data set {spec.name} holds "
                         f"{spec.shape_type} cells")
    res = pipeline.embed(wh, feature_store.get(), tm, spec.name, spec.partition)
    context.log.info(f"{spec.name}: {res['cells']} cells embedded with {tm.version}")
    return dg.MaterializeResult(metadata=_md(res))


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", deps=[dataset_model], pool="gpu",
          op_tags=GPU_OP_TAGS,
          kinds={"pytorch", "duckdb"},
          description="Benchmark metrics of the data set's model configs (default: its own) on its cells "
                      "(benchmark_metrics, plots under reports/<dataset>/). Not automated: run it when wanted.")
def dataset_benchmark(context: dg.AssetExecutionContext, config: DatasetBenchmarkConfig,
                      warehouse: WarehouseResource) -> dg.MaterializeResult:
    from assets.reference import benchmark_metadata

    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    res = pipeline.benchmark_dataset(wh, spec.name, spec.partition, config.models or [spec.model],
                                     max_epochs=config.max_epochs, emissions=config.emissions,
                                     sampling=sampling_of(spec))
    return dg.MaterializeResult(metadata=benchmark_metadata(res))


class StatCellConfig(dg.Config):
    """The stacked beta-VAE of structure given shape: configs, epoch override (0: the configs'), the betas of the
    rate-distortion sweep (empty: no sweep), the base model version the shape residual is fitted on (empty: the
    data set's latest), retrain even when the versions exist."""

    ref_config: str = "statcell_ref_demo"
    cond_config: str = "statcell_cond_demo"
    max_epochs: int = 0
    betas: list[float] = list(statcell.DEFAULT_BETAS)
    base_version: str = ""
    force: bool = False


@dg.asset(partitions_def=datasets_partitions, group_name="datasets", deps=[dataset_cells, dataset_embeddings],
          pool="gpu", op_tags=GPU_OP_TAGS, kinds={"pytorch", "duckdb", "lancedb"},
          description="Structure given cell shape (seed 003): a reference beta-VAE of the nucleus (and cell) and a "
                      "conditional beta-VAE of the structure given it, with coupling, KL per dimension, a beta sweep "
                      "and generations (statcell_models, statcell_beta_sweep, reports/<dataset>/statcell/), and the "
                      "shape residual of the base codes that plates routed to this data set are profiled with "
                      "(feature set structure_given_shape). Not automated: `cellrep statcell NAME`.")
def dataset_statcell(context: dg.AssetExecutionContext, config: StatCellConfig, warehouse: WarehouseResource,
                     feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    from cellrep_core.analysis.render import png_data_uri

    wh = warehouse.get()
    spec = datasets.get(wh, context.partition_key)
    try:
        res = statcell.train_dataset(wh, feature_store.get(), spec.name, base_version=config.base_version or None,
                                     ref_config=config.ref_config, cond_config=config.cond_config,
                                     betas=config.betas, max_epochs=config.max_epochs, force=config.force)
    except (LookupError, ValueError) as err:
        raise dg.Failure(str(err)) from err
    report = res.pop("report_dir")
    problems = res.pop("problems")
    md = _md(res)
    pics = ""
    for name in ("beta_sweep.png", "generation.png"):
        f = Path(report) / name
        if f.exists():
            pics += f"![{name}]({png_data_uri(f)})\n\n"
    if pics:
        md["pictures"] = dg.MetadataValue.md(pics)
    if problems:
        md["skipped_cells"] = dg.MetadataValue.md(pd.DataFrame(problems).head(50).to_markdown(index=False))
    return dg.MaterializeResult(metadata={**md, "report_dir": report})


dataset_asset_defs = [dataset_cells, dataset_pointclouds, dataset_model, dataset_embeddings, dataset_benchmark,
                      dataset_statcell]
DATASET_CHAIN = ["dataset_cells", "dataset_pointclouds", "dataset_model", "dataset_embeddings"]
