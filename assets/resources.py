"""Dagster resources: the DuckDB warehouse and the LanceDB feature store under CELLREP_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse


def _home(home: str) -> Path:
    return Path(home or os.environ.get("CELLREP_HOME", ".cellrep")).resolve()


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse; writes are serialized by a file lock across processes."""

    home: str = ""

    def get(self) -> Warehouse:
        """The Warehouse object."""
        return Warehouse(_home(self.home) / "warehouse.duckdb")


class FeatureStoreResource(dg.ConfigurableResource):
    """The embedding store; writes are serialized by a file lock and keyed merge_insert."""

    home: str = ""

    def get(self) -> FeatureStore:
        """The FeatureStore object."""
        return FeatureStore(_home(self.home) / "lancedb")


# Steps that train or run a model: on Kubernetes (CELLREP_EXECUTOR=k8s) their pods request one GPU and tolerate
# the taint GPU node pools usually carry (CPU and memory requests are the deployment's: its run launcher config);
# other executors ignore the tag. The "gpu" pool bounds them either way.
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]},
    }
}
