"""The Dagster code location: every stage is an asset, plates are dynamic partitions, training is pooled."""

import dagster as dg

from orchestration.definitions import defs


def test_asset_graph_shape():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for ds in ("synthetic_punctate", "synthetic_polymorphic"):
        assert {f"{ds}_{s}" for s in ("cells", "pointclouds", "model", "embeddings", "benchmark")} <= keys
    assert {"plate_cells", "plate_pointclouds", "plate_embeddings", "plate_qvalues", "drug_hits"} <= keys
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("plate_embeddings")).parent_keys}
    assert parents == {"plate_pointclouds", "synthetic_polymorphic_model"}


def test_plates_are_dynamic_partitions_and_models_use_the_gpu_pool():
    graph = defs.resolve_asset_graph()
    for name in ("plate_cells", "plate_pointclouds", "plate_embeddings", "plate_qvalues"):
        pdef = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name == "plates"
    for ds in ("synthetic_punctate", "synthetic_polymorphic"):
        node = graph.get(dg.AssetKey(f"{ds}_model"))
        assert node.pools == {"gpu"}
