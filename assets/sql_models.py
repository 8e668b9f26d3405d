"""Every ``dbt_like_sql/*.sql`` file becomes an asset; dependencies come from the tables it reads."""


from pathlib import Path

import dagster as dg

from assets.resources import FeatureStoreResource, WarehouseResource
from cellrep_core import sqlmodels
from cellrep_core.pipeline import REFERENCE

_REF = list(REFERENCE)
# warehouse tables → the assets that write them
TABLE_ASSETS: dict[str, list[str]] = {
    "cells": ["plate_cells", *(f"{d}_cells" for d in _REF)],
    "quarantine": ["plate_cells", "plate_pointclouds", *(f"{d}_cells" for d in _REF)],
    "plates": ["plate_cells"],
    "drug_truth": ["plate_cells"],
    "cell_truth": ["plate_cells"],
    "screen_qvalues": ["screen_qvalues"],
    "phenotype_enrichment": ["phenotype_enrichment"],
    "phenotype_classifiers": ["phenotype_enrichment"],
    "hit_explanations": ["hit_explanations"],
    "mode_kl": ["screen_shape_modes"],
    "shape_modes": ["screen_shape_modes"],
    "pointcloud_index": ["plate_pointclouds", *(f"{d}_pointclouds" for d in _REF)],
    "handcrafted_features": ["plate_pointclouds", *(f"{d}_pointclouds" for d in _REF)],
    "models": ["plate_model", *(f"{d}_model" for d in _REF)],
    "benchmark_metrics": [f"{d}_benchmark" for d in _REF],
    "drug_qvalues": ["plate_qvalues"],
    "cell_embeddings": ["plate_embeddings", *(f"{d}_embeddings" for d in _REF)],
}


def _upstream(model: sqlmodels.SqlModel, names: set[str]) -> list[dg.AssetKey]:
    keys: list[str] = []
    for dep in model.deps:
        if dep in names:
            keys.append(dep)
        elif dep in TABLE_ASSETS:
            keys.extend(TABLE_ASSETS[dep])
        else:
            raise sqlmodels.SqlModelError(
                f"SQL model {model.name} ({model.path}) reads unknown table {dep!r}; known: "
                f"{', '.join(sorted([*TABLE_ASSETS, *names]))}"
            )
    return [dg.AssetKey(k) for k in dict.fromkeys(keys)]


def sql_automation() -> dg.AutomationCondition:
    """Re-run a SQL model once after its upstream assets updated (any partition of a plate asset) and none
    of them is still in progress. Unlike ``eager()`` it does not wait for every upstream partition to
    exist: one plate that failed its checks must not freeze the cross-plate tables. A model whose upstream
    model is requested in the same tick joins that run (``will_be_requested``), so a chain of SQL models
    (screen_qvalues -> screen_hits -> dose_response) settles in one run, not one run per level."""
    ac = dg.AutomationCondition
    return (
        ac.any_deps_match(ac.newly_updated() | ac.will_be_requested()).since_last_handled()
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
    ).with_label("after_upstream_updates")


def sql_model_assets(sql_dir: Path = sqlmodels.SQL_DIR) -> list[dg.AssetsDefinition]:
    """One asset per SQL file, with code_version from the file's hash."""
    models = sqlmodels.load_models(sql_dir)
    names = {m.name for m in models}
    return [_sql_asset(m, _upstream(m, names)) for m in models]


def _sql_asset(m: sqlmodels.SqlModel, deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(name=m.name, group_name="sql_models", deps=deps, kinds={"duckdb", "sql"}, code_version=m.code_version,
              automation_condition=sql_automation(),
              description=f"SQL model {m.path.name}")
    def _fn(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
            feature_store: FeatureStoreResource) -> dg.MaterializeResult:
        n = sqlmodels.materialize(warehouse.get(), m, feature_store.get())
        preview = warehouse.get().query(f'SELECT * FROM "{m.name}" LIMIT 20')
        return dg.MaterializeResult(metadata={"rows": n, "sql_file": str(m.path),
                                              "preview": dg.MetadataValue.md(preview.to_markdown(index=False))})

    return _fn
