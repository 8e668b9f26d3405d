"""Reference data sets: cells → point clouds → base model → embeddings → benchmark metrics."""


import dagster as dg

from cellrep_core import pipeline
from cellrep_core.pipeline import REFERENCE, ReferenceSpec
from orchestration.resources import FeatureStoreResource, WarehouseResource

DEFAULT_SIZES = {"synthetic_punctate": 25, "synthetic_polymorphic": 200}
DEFAULT_SEEDS = {"synthetic_punctate": 0, "synthetic_polymorphic": 1}


class ReferenceDataConfig(dg.Config):
    """Size (cells per rule for punctate, cells for polymorphic; 0 = default) and seed of the synthetic set."""

    size: int = 0
    seed: int = -1


class TrainConfig(dg.Config):
    """Which registered model config to train, optional epoch override, and whether to retrain."""

    model: str = ""
    max_epochs: int = 0
    force: bool = False


def _md(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float | str)}


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

    @dg.asset(name=f"{ds}_model", group_name="reference", deps=[clouds], pool="gpu", kinds={"pytorch"},
              description=f"Base SO(3) VN-DGCNN autoencoder trained on {ds} (CUDA when present).")
    def model(context: dg.AssetExecutionContext, config: TrainConfig,
              warehouse: WarehouseResource) -> dg.MaterializeResult:
        overrides = {"max_epochs": config.max_epochs} if config.max_epochs else {}
        cfg = pipeline.get_config(config.model or spec.model, **overrides)
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

    @dg.asset(name=f"{ds}_benchmark", group_name="reference", deps=[model], kinds={"duckdb"},
              description=f"Benchmark metrics of the {ds} model (rotation invariance on held-out cells, ...).")
    def bench(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        tm = pipeline.latest_model(wh, ds)
        df = pipeline.benchmark(wh, tm, ds, "reference")
        return dg.MaterializeResult(metadata={r.metric: float(r.value) for r in df.itertuples() if r.value is not None}
                                    | {"table": dg.MetadataValue.md(df.to_markdown(index=False))})

    return [cells, clouds, model, embeddings, bench]


reference_asset_defs = [a for spec in REFERENCE.values() for a in reference_assets(spec)]
