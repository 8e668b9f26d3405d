"""Locations under the one storage root, ``CELLREP_HOME`` (default ``./.cellrep``)."""

from __future__ import annotations

import os
from pathlib import Path


def cellrep_home() -> Path:
    """Return the storage root, creating it if needed."""
    home = Path(os.environ.get("CELLREP_HOME", ".cellrep")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def warehouse_path() -> Path:
    """Return the DuckDB warehouse file."""
    return cellrep_home() / "warehouse.duckdb"


def lancedb_path() -> Path:
    """Return the LanceDB folder of the feature store."""
    return cellrep_home() / "lancedb"


def raw_dir(dataset: str) -> Path:
    """Return the folder holding the raw cell images of a data set."""
    return cellrep_home() / "raw" / dataset


def pointcloud_path(dataset: str, partition: str) -> Path:
    """Return the Parquet file of one partition's point clouds."""
    return cellrep_home() / "pointclouds" / dataset / f"{partition}.parquet"


def models_dir() -> Path:
    """Return the folder holding checkpoints as ``<model>/<version>/``."""
    return cellrep_home() / "models"


def landing_plates_dir() -> Path:
    """Return the landing folder where users drop new plates."""
    return cellrep_home() / "landing" / "plates"


def landing_datasets_dir() -> Path:
    """The folder where a manifest dropped as ``<name>/manifest.csv`` registers data set ``<name>``."""
    return cellrep_home() / "landing" / "datasets"


def reports_dir(dataset: str) -> Path:
    """Return the folder holding a data set's benchmark plots."""
    return cellrep_home() / "reports" / dataset


def screen_reports_dir(screen_id: str) -> Path:
    """Return the folder holding a screen's plots."""
    return cellrep_home() / "reports" / "screens" / screen_id


def explain_reports_dir(scope: str, scope_id: str) -> Path:
    """Return the folder holding the hit explanations of a plate or screen (``scope``: plate or screen)."""
    return cellrep_home() / "reports" / "explain" / f"{scope}s" / scope_id
