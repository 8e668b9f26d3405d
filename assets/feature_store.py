"""Feature-store upkeep: the ANN index of every embedding table once it is large enough to need one."""

import dagster as dg

from assets.plates import plate_embeddings
from assets.reference import reference_asset_defs
from assets.resources import FeatureStoreResource
from cellrep_core.store.feature_store import ANN_MIN_ROWS

_embedding_keys = [a.key for a in reference_asset_defs if a.key.path[-1].endswith("_embeddings")]


@dg.asset(
    group_name="feature_store",
    deps=[*_embedding_keys, plate_embeddings],
    kinds={"lancedb"},
    description=(
        f"IVF-HNSW vector index of each embedding table with at least {ANN_MIN_ROWS:,} rows (smaller tables "
        "are searched exactly); rebuilt when more than 10 % of a table's rows are not indexed."
    ),
)
def embedding_ann_index(context: dg.AssetExecutionContext, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    fs = feature_store.get()
    rows = []
    for table in fs.table_names():
        built = fs.ensure_index(table)
        idx = fs.vector_index(table)
        rows.append(
            {
                "table": table,
                "rows": fs.count(table),
                "built_now": built or "",
                "index": idx["type"] if idx else "none (exact search)",
                "unindexed_rows": idx["unindexed_rows"] if idx else fs.count(table),
            }
        )
        context.log.info(f"{table}: {rows[-1]}")
    md = "\n".join(
        ["| table | rows | index | unindexed | built now |", "|---|---|---|---|---|"]
        + [f"| {r['table']} | {r['rows']} | {r['index']} | {r['unindexed_rows']} | {r['built_now']} |" for r in rows]
    )
    return dg.MaterializeResult(
        metadata={"tables": dg.MetadataValue.md(md), "ann_min_rows": ANN_MIN_ROWS, "n_tables": len(rows)}
    )


@dg.asset(
    group_name="feature_store",
    kinds={"lancedb"},
    description=(
        "Compaction and cleanup of the embedding tables: small files merged, new rows folded into the "
        "indices, table versions older than 7 days dropped (the versions of the last 7 days stay readable "
        "by time travel: FeatureStore.load(as_of=...)). Runs nightly (schedule feature_store_nightly)."
    ),
)
def feature_store_maintenance(
    context: dg.AssetExecutionContext, feature_store: FeatureStoreResource
) -> dg.MaterializeResult:
    res = feature_store.get().optimize()
    for r in res:
        context.log.info(f"{r['table']}: {r['rows']} rows, versions {r['versions_before']} -> {r['versions_after']}")
    return dg.MaterializeResult(
        metadata={
            "tables": len(res),
            "versions_removed": sum(r["versions_before"] - r["versions_after"] for r in res),
            "rows": sum(r["rows"] for r in res),
        }
    )


feature_store_nightly = dg.ScheduleDefinition(
    name="feature_store_nightly",
    target=dg.AssetSelection.assets(feature_store_maintenance),
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
