"""The Dagster code location: every stage is an asset, plates are dynamic partitions, training is pooled."""

import dagster as dg
import pytest

from orchestration.definitions import defs


def test_asset_graph_shape():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for ds in ("synthetic_punctate", "synthetic_polymorphic"):
        assert {f"{ds}_{s}" for s in ("cells", "pointclouds", "model", "embeddings", "benchmark")} <= keys
    assert {"plate_cells", "plate_pointclouds", "plate_model", "plate_embeddings", "plate_qvalues", "drug_hits",
            "drug_hits_compare"} <= keys
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("plate_model")).parent_keys}
    assert parents == {"plate_pointclouds", "synthetic_polymorphic_model"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("plate_embeddings")).parent_keys}
    assert parents == {"plate_pointclouds", "plate_model"}


def test_plates_are_dynamic_partitions_and_models_use_the_gpu_pool():
    graph = defs.resolve_asset_graph()
    for name in ("plate_cells", "plate_pointclouds", "plate_model", "plate_embeddings", "plate_qvalues"):
        node = graph.get(dg.AssetKey(name))
        pdef = node.partitions_def
        assert isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name == "plates"
        assert node.automation_condition is not None and node.automation_condition.get_label() == "plate_eager"
    for name in ("synthetic_punctate_model", "synthetic_polymorphic_model", "plate_model"):
        assert graph.get(dg.AssetKey(name)).pools == {"gpu"}


def test_sensors_run_by_default():
    for name in ("landing_plates_sensor", "plates_automation_sensor"):
        sensor = next(s for s in defs.sensors if s.name == name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    auto = next(s for s in defs.sensors if s.name == "plates_automation_sensor")
    assert isinstance(auto, dg.AutomationConditionSensorDefinition)


def test_instance_bounds_the_runs_it_starts_at_a_time(tmp_path, monkeypatch):
    """dagster.yaml caps concurrent runs (Dagster's default of 10 thrashes a small machine); a home from before
    gets the cap, a user's own run_queue setting is kept, CELLREP_MAX_RUNS overrides, and Dagster accepts it."""

    import yaml

    from orchestration.demo import dagster_home, instance_config, max_concurrent_runs

    monkeypatch.setenv("CELLREP_MAX_RUNS", "3")
    assert max_concurrent_runs() == 3
    assert instance_config({})["concurrency"]["runs"]["max_concurrent_runs"] == 3
    kept = instance_config({"run_queue": {"max_concurrent_runs": 5}})
    assert "runs" not in kept["concurrency"] and kept["run_queue"]["max_concurrent_runs"] == 5
    old = tmp_path / "dagster"
    old.mkdir()
    (old / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    monkeypatch.setenv("DAGSTER_HOME", str(old))
    dagster_home()
    cfg = yaml.safe_load((old / "dagster.yaml").read_text())
    assert cfg["concurrency"] == {"pools": {"default_limit": 1}, "runs": {"max_concurrent_runs": 3}}
    inst = dg.DagsterInstance.from_config(str(old))
    assert inst.get_concurrency_config().run_queue_config.max_concurrent_runs == 3
    monkeypatch.setenv("CELLREP_MAX_RUNS", "many")
    with pytest.raises(ValueError, match="CELLREP_MAX_RUNS='many'"):
        max_concurrent_runs()


def test_definitions_are_composed_from_the_domain_modules():
    """Every asset, check and sensor a domain module defines is in the Definitions, and nothing else is: a domain's
    new asset that is not composed in orchestration/definitions.py fails here."""
    from assets import dataset_landing, datasets, feature_store, plate_landing, plates, reference, screens
    from assets.sql_models import sql_model_assets

    domain = [*reference.reference_asset_defs, *datasets.dataset_asset_defs, *plates.plate_asset_defs,
              *screens.screen_asset_defs, feature_store.embedding_ann_index, feature_store.feature_store_maintenance,
              *sql_model_assets()]
    domain_keys = {k.to_user_string() for a in domain for k in a.keys}
    graph = defs.resolve_asset_graph()
    assert domain_keys == {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"{ds}_{s}" for ds in reference.REFERENCE for s in ("cells", "interpretation")} <= domain_keys
    sensors = {s.name for s in defs.sensors}
    assert sensors == {plate_landing.landing_plates_sensor.name, dataset_landing.landing_datasets_sensor.name,
                       plate_landing.plates_automation_sensor.name}
    assert plates.plates_partitions.name == "plates" and datasets.datasets_partitions.name == "datasets"


def test_resources_open_the_stores_under_their_home(tmp_path, monkeypatch):
    from assets.resources import FeatureStoreResource, WarehouseResource

    monkeypatch.setenv("CELLREP_HOME", str(tmp_path / "env_home"))
    assert WarehouseResource(home=str(tmp_path / "a")).get().path == (tmp_path / "a" / "warehouse.duckdb").resolve()
    assert FeatureStoreResource(home=str(tmp_path / "a")).get().uri == (tmp_path / "a" / "lancedb").resolve()
    assert WarehouseResource().get().path == (tmp_path / "env_home" / "warehouse.duckdb").resolve()


def test_distributed_training_starts_the_worker_module_under_torchrun(tmp_path):
    """The model assets start ``assets.ddp_worker`` (importable, with a ``main`` taking ``--request``) under
    torchrun; its processes never import Dagster's asset code."""
    import importlib.util
    import sys

    from assets.ddp_worker import MODULE, main
    from assets.training import train_distributed
    from cellrep_core.models.ddp import distributed_command

    assert MODULE == "assets.ddp_worker" and importlib.util.find_spec(MODULE) is not None and callable(main)
    cmd = distributed_command(tmp_path / "request.json", 2, module=MODULE)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == MODULE
    with pytest.raises(ValueError, match="at least 2 processes"):
        train_distributed(None, None, "d", "p", None, 1)
    import subprocess

    probe = subprocess.run([sys.executable, "-c", f"import {MODULE}, sys; print('dagster' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"
