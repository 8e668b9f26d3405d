"""Reference data sets: cells → point clouds → base model → embeddings → benchmark metrics."""

import base64
from pathlib import Path

import dagster as dg

from assets.resources import GPU_OP_TAGS, FeatureStoreResource, WarehouseResource
from cellrep_core import paths, pipeline
from cellrep_core.analysis.representation import SHAPE_FEATURES
from cellrep_core.pipeline import REFERENCE, ReferenceSpec

DEFAULT_SIZES = {"synthetic_punctate": 25, "synthetic_polymorphic": 200}
DEFAULT_SEEDS = {"synthetic_punctate": 0, "synthetic_polymorphic": 1}


class ReferenceDataConfig(dg.Config):
    """Size (cells per rule for punctate, cells for polymorphic; 0 = default) and seed of the synthetic set."""

    size: int = 0
    seed: int = -1


class TrainConfig(dg.Config):
    """Which registered model config to train, optional epoch override, whether to retrain, and DDP processes
    (>= 2: torchrun through Dagster Pipes, ``assets/training.py``)."""

    model: str = ""
    max_epochs: int = 0
    force: bool = False
    processes: int = 1


class BenchmarkConfig(dg.Config):
    """Model configs to benchmark (empty: pipeline.BENCHMARK_MODELS), optional epoch override, emissions."""

    models: list[str] = []
    max_epochs: int = 0
    emissions: bool = True


def _png_md(path: Path, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()})"


def benchmark_metadata(res: dict) -> dict:
    """Asset metadata of a data set's benchmark: versions, missing configs, tables and the plots."""
    rep = res["reports"]
    md = {
        "models": dg.MetadataValue.json(res["versions"]),
        "missing_models": dg.MetadataValue.json(res["missing"]),
        "n_rows": len(res["table"]),
        "n_null": int(res["table"]["value"].isna().sum()) if len(res["table"]) else 0,
    }
    if rep:
        md["metrics"] = dg.MetadataValue.md(rep["table_md"])
        md["z_scores"] = dg.MetadataValue.md(rep["scores_md"])
        for key in ("radar", "bars"):
            if key in rep:
                md[f"{key}_png"] = dg.MetadataValue.path(str(rep[key]))
                md[f"{key}_plot"] = dg.MetadataValue.md(_png_md(rep[key], key))
    return md


def _md(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str)}


def interpretation_result(context: dg.AssetExecutionContext, wh, fs, ds: str) -> dg.MaterializeResult:
    """Interpret a data set's codes, store the PC correlations and cell shape features, pictures inline."""
    from cellrep_core.analysis.representation import interpret_dataset

    res = interpret_dataset(wh, fs, ds, paths.reports_dir(ds) / "interpretation", progress=context.log.info)
    ev = dict(enumerate(res.pca.explained_variance_ratio, start=1))
    corr = res.correlations.assign(dataset=ds, model_version=res.model_version,
                                   explained_variance_ratio=res.correlations.pc.map(ev))
    wh.replace("pc_correlations", corr, {"dataset": ds})
    shapes = res.cells[["cell_id", *SHAPE_FEATURES, "error"]].assign(dataset=ds)
    wh.replace("cell_shape_features", shapes, {"dataset": ds})
    pc, r = res.volume_pc()
    md = {"model_version": res.model_version, "n_cells": len(res.cells),
          "explained_variance_top5": dg.MetadataValue.json([round(float(v), 4) for v in
                                                            res.pca.explained_variance_ratio[:5]]),
          "structure_volume_pc": pc, "structure_volume_pc_r": round(r, 4),
          "n_archetypes": len(res.archetype_cells),
          "unreadable_cells": int((res.cells.error.fillna("") != "").sum())}
    for key, path in res.pictures.items():
        md[f"{key}_plot"] = dg.MetadataValue.md(_png_md(path, key))
    return dg.MaterializeResult(metadata=md)


def reference_assets(spec: ReferenceSpec) -> list[dg.AssetsDefinition]:
    """The five assets of one reference data set."""
    ds = spec.dataset

    @dg.asset(name=f"{ds}_cells", group_name="reference", kinds={"duckdb"},
              description=f"Cells of {ds}: synthetic images written, validated, bad ones quarantined.")
    def cells(context: dg.AssetExecutionContext, config: ReferenceDataConfig,
              warehouse: WarehouseResource) -> dg.MaterializeResult:
        size = config.size or DEFAULT_SIZES[ds]
        seed = config.seed if config.seed >= 0 else DEFAULT_SEEDS[ds]
        manifest = pipeline.generate_reference(ds, size, seed)
        counts = pipeline.ingest(manifest, warehouse.get(), ds)
        context.log.info(f"{ds}: {counts}")
        return dg.MaterializeResult(metadata={**_md(counts), "manifest": str(manifest)})

    @dg.asset(name=f"{ds}_pointclouds", group_name="reference", deps=[cells], kinds={"parquet"},
              description=f"Point clouds of {ds} ({spec.kind}), one Parquet file.")
    def clouds(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        res = pipeline.pointclouds(warehouse.get(), ds, "reference")
        context.log.info(f"{ds} point clouds: {res}")
        return dg.MaterializeResult(metadata=_md(res))

    @dg.asset(name=f"{ds}_model", group_name="reference", deps=[clouds], pool="gpu",
              op_tags=GPU_OP_TAGS, kinds={"pytorch"},
              description=f"Base SO(3) VN-DGCNN autoencoder trained on {ds} (CUDA when present).")
    def model(context: dg.AssetExecutionContext, config: TrainConfig,
              warehouse: WarehouseResource) -> dg.MaterializeResult:
        overrides = {"max_epochs": config.max_epochs} if config.max_epochs else {}
        cfg = pipeline.get_config(config.model or spec.model, **overrides)
        if config.processes > 1:
            from assets.training import train_distributed

            tm, _ = train_distributed(context, warehouse.get(), ds, "reference", cfg, config.processes,
                                      force=config.force)
        else:
            tm = pipeline.train(warehouse.get(), ds, "reference", cfg, force=config.force)
        context.log.info(f"model {tm.version} ({'reused' if tm.reused else 'trained'})")
        return dg.MaterializeResult(metadata={"model_version": tm.version, "path": str(tm.path),
                                              "reused": tm.reused, **_md(tm.metrics)})

    @dg.asset(name=f"{ds}_embeddings", group_name="reference", deps=[model], kinds={"lancedb"},
              description=f"Invariant embeddings of {ds} in the feature store.")
    def embeddings(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                   feature_store: FeatureStoreResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        tm = pipeline.latest_model(wh, ds)
        res = pipeline.embed(wh, feature_store.get(), tm, ds, "reference")
        return dg.MaterializeResult(metadata=_md(res))

    @dg.asset(name=f"{ds}_benchmark", group_name="reference", deps=[model], pool="gpu",
              op_tags=GPU_OP_TAGS, kinds={"pytorch", "duckdb"},
              description=f"Every benchmark model of {ds} (pipeline.BENCHMARK_MODELS) trained or reused, all "
                          f"benchmark metrics in benchmark_metrics, z-scored polar and bar plots.")
    def bench(context: dg.AssetExecutionContext, config: BenchmarkConfig,
              warehouse: WarehouseResource) -> dg.MaterializeResult:
        res = pipeline.benchmark_dataset(warehouse.get(), ds, "reference", config.models or None,
                                         max_epochs=config.max_epochs, emissions=config.emissions)
        if res["missing"]:
            context.log.warning(f"{ds} benchmark: model configs not registered: {', '.join(res['missing'])}")
        return dg.MaterializeResult(metadata=benchmark_metadata(res))

    @dg.asset(name=f"{ds}_interpretation", group_name="reference", deps=[embeddings], kinds={"duckdb"},
              description=f"What the base model of {ds} has learned: PCA of its codes and each PC's "
                          "correlation with cell shape features (tables pc_correlations, cell_shape_features), "
                          "walks along the top PCs with the closest real cells and decoded shapes, archetypes, "
                          "nuclear-volume bins, a t-SNE map; pictures inline and under reports/<dataset>/"
                          "interpretation/.")
    def interpretation(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                       feature_store: FeatureStoreResource) -> dg.MaterializeResult:
        return interpretation_result(context, warehouse.get(), feature_store.get(), ds)

    return [cells, clouds, model, embeddings, bench, interpretation]


reference_asset_defs = [a for spec in REFERENCE.values() for a in reference_assets(spec)]
