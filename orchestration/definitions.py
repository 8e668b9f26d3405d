"""The Dagster Definitions of cellrep: assets, resources, partitions."""

from __future__ import annotations

import dagster as dg

from assets.dataset_landing import landing_datasets_sensor
from assets.datasets import dataset_asset_defs
from assets.feature_store import embedding_ann_index, feature_store_maintenance, feature_store_nightly
from assets.plate_landing import landing_plates_sensor, plates_automation_sensor
from assets.plates import plate_asset_checks, plate_asset_defs
from assets.reference import reference_asset_defs
from assets.resources import FeatureStoreResource, WarehouseResource
from assets.screens import screen_asset_defs
from assets.sql_models import sql_model_assets
from orchestration.execution import executor

all_assets = [
    *reference_asset_defs,
    *dataset_asset_defs,
    *plate_asset_defs,
    *screen_asset_defs,
    embedding_ann_index,
    feature_store_maintenance,
    *sql_model_assets(),
]

resources = {"warehouse": WarehouseResource(), "feature_store": FeatureStoreResource()}

# By default the steps of a run execute one after the other in the run's process: a step subprocess (the
# multiprocess executor's default) spends ~7 s importing torch, escnn and Dagster before it starts, about a third
# of a 200-cell plate's run on a 2-core machine, and the plate chain is sequential anyway. Runs still go in
# parallel (one process each) and the "gpu" pool limit still applies to steps. CELLREP_EXECUTOR switches to the
# multiprocess or the Kubernetes executor (orchestration/execution.py).
defs = dg.Definitions(assets=all_assets, asset_checks=plate_asset_checks, resources=resources,
                      executor=executor(), schedules=[feature_store_nightly],
                      sensors=[landing_plates_sensor, landing_datasets_sensor, plates_automation_sensor])
