"""The Dagster Definitions of cellrep: assets, resources, partitions."""

from __future__ import annotations

import dagster as dg

from assets.feature_store import embedding_ann_index, feature_store_maintenance, feature_store_nightly
from assets.plates import plate_asset_checks, plate_asset_defs
from assets.reference import reference_asset_defs
from assets.sql_models import sql_model_assets
from orchestration.resources import FeatureStoreResource, WarehouseResource
from orchestration.sensors import landing_plates_sensor, plates_automation_sensor

all_assets = [
    *reference_asset_defs,
    *plate_asset_defs,
    embedding_ann_index,
    feature_store_maintenance,
    *sql_model_assets(),
]

resources = {"warehouse": WarehouseResource(), "feature_store": FeatureStoreResource()}

defs = dg.Definitions(assets=all_assets, asset_checks=plate_asset_checks, resources=resources,
                      schedules=[feature_store_nightly],
                      sensors=[landing_plates_sensor, plates_automation_sensor])
