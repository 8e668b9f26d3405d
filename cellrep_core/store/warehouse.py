"""The DuckDB warehouse: one writer at a time, or any number of read-only readers (one file lock).

DuckDB lets one process open the file read-write or several open it read-only, never both: a read-only
open while another process writes fails with "Could not set lock on file". Writers therefore take the
lock file exclusively and readers take it shared (``flock``), so a reader waits for a write to commit
and a writer waits for open readers, instead of either failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
from filelock import FileLock

from cellrep_core import faults, paths

SCHEMA: dict[str, str] = {
    "cells": """
        cell_id VARCHAR PRIMARY KEY, dataset VARCHAR, plate_id VARCHAR, well VARCHAR, drug VARCHAR,
        concentration DOUBLE, structure_name VARCHAR, shape_type VARCHAR, label VARCHAR, source_path VARCHAR,
        channels VARCHAR,
        voxel_size_um DOUBLE, seed BIGINT, ingested_at TIMESTAMP DEFAULT current_timestamp""",
    "quarantine": """
        cell_id VARCHAR, dataset VARCHAR, plate_id VARCHAR, stage VARCHAR, reason VARCHAR, detail VARCHAR,
        source_path VARCHAR, recorded_at TIMESTAMP DEFAULT current_timestamp""",
    "datasets": """
        name VARCHAR PRIMARY KEY, manifest VARCHAR, data_root VARCHAR, shape_type VARCHAR, structures VARCHAR,
        model VARCHAR, warm_start VARCHAR, half_extent_vox DOUBLE, target_voxel_um DOUBLE, scale_source VARCHAR,
        max_extent_um DOUBLE, n_rows INTEGER, registered_at TIMESTAMP DEFAULT current_timestamp,
        per_cell_scale BOOLEAN""",
    "structure_bases": """
        structure_name VARCHAR PRIMARY KEY, base_dataset VARCHAR, registered_at TIMESTAMP DEFAULT current_timestamp""",
    "plates": """
        plate_id VARCHAR PRIMARY KEY, source_dir VARCHAR, n_cells INTEGER, n_quarantined INTEGER,
        screen_id VARCHAR, registered_at TIMESTAMP DEFAULT current_timestamp""",
    "pointcloud_index": """
        cell_id VARCHAR, dataset VARCHAR, partition VARCHAR, kind VARCHAR, n_points INTEGER,
        n_components INTEGER, parquet_path VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp""",
    "handcrafted_features": """
        cell_id VARCHAR, dataset VARCHAR, plate_id VARCHAR, volume DOUBLE, surface_area DOUBLE,
        n_pieces DOUBLE, mean_piece_distance DOUBLE""",
    "drug_truth": """
        plate_id VARCHAR, drug VARCHAR, planted_effect VARCHAR, concentration DOUBLE, strength DOUBLE,
        structure_name VARCHAR""",
    "cell_truth": """
        cell_id VARCHAR, plate_id VARCHAR, well VARCHAR, drug VARCHAR, concentration DOUBLE, effect VARCHAR,
        strength DOUBLE, debris BOOLEAN, edge_well BOOLEAN, batch_factor DOUBLE, nuclear_volume DOUBLE,
        n_pieces INTEGER, total_volume DOUBLE, structure_voxels INTEGER, n_oblate INTEGER""",
    "models": """
        model_name VARCHAR, model_version VARCHAR PRIMARY KEY, parent_version VARCHAR, dataset VARCHAR,
        plate_id VARCHAR, path VARCHAR, config_json VARCHAR, data_hash VARCHAR, metrics_json VARCHAR,
        trained_at TIMESTAMP DEFAULT current_timestamp, structure_name VARCHAR""",
    "benchmark_metrics": """
        model VARCHAR, model_version VARCHAR, dataset VARCHAR, metric VARCHAR, value DOUBLE, std DOUBLE,
        n INTEGER, note VARCHAR, computed_at TIMESTAMP DEFAULT current_timestamp""",
    "drug_qvalues": """
        plate_id VARCHAR, drug VARCHAR, model_version VARCHAR, feature_set VARCHAR, n_cells INTEGER,
        mean_average_precision DOUBLE, p_value DOUBLE, q_value DOUBLE, is_hit BOOLEAN,
        computed_at TIMESTAMP DEFAULT current_timestamp, concentration DOUBLE, structure_name VARCHAR""",
    "screen_qvalues": """
        screen_id VARCHAR, drug VARCHAR, concentration DOUBLE, feature_set VARCHAR, model_role VARCHAR,
        model_version VARCHAR, method VARCHAR, n_plates INTEGER, n_cells INTEGER, mean_average_precision DOUBLE,
        p_value DOUBLE, q_value DOUBLE, is_hit BOOLEAN, null_size INTEGER,
        computed_at TIMESTAMP DEFAULT current_timestamp, structure_name VARCHAR""",
    "cell_shape_features": """
        dataset VARCHAR, cell_id VARCHAR, nuclear_volume DOUBLE, nuclear_surface_area DOUBLE,
        nuclear_sphericity DOUBLE, nuclear_extent_1 DOUBLE, nuclear_extent_2 DOUBLE, nuclear_extent_3 DOUBLE,
        cell_volume DOUBLE, structure_volume DOUBLE, structure_surface_area DOUBLE, error VARCHAR""",
    "pc_correlations": """
        dataset VARCHAR, model_version VARCHAR, pc INTEGER, explained_variance_ratio DOUBLE, descriptor VARCHAR,
        pearson_r DOUBLE, n INTEGER, computed_at TIMESTAMP DEFAULT current_timestamp""",
    "phenotype_classifiers": """
        screen_id VARCHAR, feature_set VARCHAR, n_cells INTEGER, labels VARCHAR, macro_f1 DOUBLE,
        shuffled_macro_f1 DOUBLE, n_groups INTEGER, best_C DOUBLE, best_l1_ratio DOUBLE, per_class_f1 VARCHAR,
        computed_at TIMESTAMP DEFAULT current_timestamp""",
    "phenotype_enrichment": """
        screen_id VARCHAR, feature_set VARCHAR, drug VARCHAR, concentration DOUBLE, phenotype VARCHAR,
        n_cells INTEGER, mean_probability DOUBLE, control_mean_probability DOUBLE, ks_statistic DOUBLE,
        p_value DOUBLE, q_value DOUBLE, enriched BOOLEAN, computed_at TIMESTAMP DEFAULT current_timestamp""",
    "shape_modes": """
        scope VARCHAR, scope_id VARCHAR, cell_id VARCHAR, mode INTEGER, soft DOUBLE[], model_version VARCHAR""",
    "shape_mode_fits": """
        scope VARCHAR, scope_id VARCHAR, model_version VARCHAR, k INTEGER, epochs INTEGER, ari_dec DOUBLE,
        ari_kmeans DOUBLE, computed_at TIMESTAMP DEFAULT current_timestamp""",
    "mode_kl": """
        screen_id VARCHAR, drug VARCHAR, concentration DOUBLE, planted_effect VARCHAR, strength DOUBLE,
        kl_from_dmso DOUBLE, n_cells INTEGER, k INTEGER, model_version VARCHAR""",
    "statcell_models": """
        dataset VARCHAR PRIMARY KEY, ref_version VARCHAR, cond_version VARCHAR, ref_path VARCHAR, cond_path VARCHAR,
        base_version VARCHAR, sgs_version VARCHAR, sgs_path VARCHAR, sgs_dim INTEGER, image_size INTEGER,
        half_extent DOUBLE, n_cells INTEGER, n_skipped INTEGER, coupling_gain DOUBLE, recon_true DOUBLE,
        recon_shuffled DOUBLE, active_dims INTEGER, shape_explained DOUBLE, metrics_json VARCHAR,
        trained_at TIMESTAMP DEFAULT current_timestamp""",
    "statcell_beta_sweep": """
        dataset VARCHAR, beta DOUBLE, model_version VARCHAR, reconstruction_nll DOUBLE, kl DOUBLE,
        active_dims INTEGER, latent_dim INTEGER, n_cells INTEGER""",
    "hit_explanations": """
        scope VARCHAR, scope_id VARCHAR, drug VARCHAR, concentration DOUBLE, model_version VARCHAR,
        n_treated INTEGER, n_control INTEGER, n_pcs INTEGER, separation DOUBLE, baseline_mean DOUBLE,
        baseline_p95 DOUBLE, effect_size DOUBLE, empirical_p DOUBLE, exceeds_baseline_p95 BOOLEAN,
        top_descriptor VARCHAR, top_descriptor_rho DOUBLE, is_hit BOOLEAN, report_path VARCHAR,
        computed_at TIMESTAMP DEFAULT current_timestamp, structure_name VARCHAR""",
}
# Columns added after a table was first created: existing warehouses get them on the next write.
MIGRATIONS: dict[str, list[str]] = {
    "cells": ["concentration DOUBLE"],
    "plates": ["screen_id VARCHAR"],
    "drug_truth": ["concentration DOUBLE", "strength DOUBLE", "structure_name VARCHAR"],
    "drug_qvalues": ["concentration DOUBLE", "structure_name VARCHAR"],
    "models": ["structure_name VARCHAR"],
    "datasets": ["per_cell_scale BOOLEAN"],
    "hit_explanations": ["structure_name VARCHAR"],
    "screen_qvalues": ["structure_name VARCHAR"],
}


class ReadOnlyError(RuntimeError):
    """A write was attempted through a read-only connection."""


class Warehouse:
    """Access to ``warehouse.duckdb``: serialized writes, read-only reads."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else paths.warehouse_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, holding the writer lock."""
        with self._lock:
            con = duckdb.connect(str(self.path))
            try:
                self._ensure_schema(con)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    faults.point("duckdb_commit")
                    con.execute("COMMIT")
                except BaseException as err:
                    with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already ended the transaction
                        con.execute("ROLLBACK")
                    from cellrep_core.errors import disk_full, is_disk_full

                    if isinstance(err, duckdb.Error | OSError) and is_disk_full(err):
                        raise disk_full(err, self.path, "a warehouse transaction") from err
                    raise
            finally:
                con.close()

    @contextlib.contextmanager
    def shared_lock(self) -> Iterator[None]:
        """The readers' side of the writer lock (creates the file and schema first if it does not exist): any
        read-only DuckDB connection to the warehouse must be opened and used inside it, or a writer's commit in
        another process makes the open fail ("Could not set lock on file")."""
        if not self.path.exists():
            with self.write():
                pass
        with _shared_lock(str(self.path) + ".lock"):
            yield

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the shared lock (creates the schema first if the file does not exist)."""
        with self.shared_lock():
            con = duckdb.connect(str(self.path), read_only=True)
            try:
                yield con
            finally:
                con.close()

    @staticmethod
    def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
        for table, cols in SCHEMA.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        for table, added in MIGRATIONS.items():
            for col in added:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col}")

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run read-only SQL and return a DataFrame."""
        with self.read() as con:
            return con.execute(sql, params or []).df()

    def replace(self, table: str, df: pd.DataFrame, key: dict[str, object]) -> int:
        """Atomically delete the rows matching ``key`` (column → value) and insert ``df``; returns rows."""
        with self.write() as con:
            _replace(con, table, df, key)
        return len(df)

    def replace_many(self, parts: list[tuple[str, pd.DataFrame, dict[str, object]]]) -> int:
        """Several :meth:`replace` calls (table, rows, key) in one transaction; returns the rows written."""
        with self.write() as con:
            for table, df, key in parts:
                _replace(con, table, df, key)
        return sum(len(df) for _, df, _ in parts)

    def upsert(self, table: str, df: pd.DataFrame, on: list[str]) -> int:
        """Delete rows whose ``on`` columns match a row of ``df``, then insert ``df`` (no duplicates)."""
        if df.empty:
            return 0
        with self.write() as con:
            con.register("_incoming", df)
            cond = " AND ".join(f"t.{c} IS NOT DISTINCT FROM i.{c}" for c in on)
            con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM _incoming i WHERE {cond})")
            _insert(con, table, "_incoming", df)
            con.unregister("_incoming")
        return len(df)


@contextlib.contextmanager
def _shared_lock(path: str) -> Iterator[None]:
    """``flock(LOCK_SH)`` on the writers' lock file (``filelock`` takes ``LOCK_EX`` on the same file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _insert(con: duckdb.DuckDBPyConnection, table: str, view: str, df: pd.DataFrame) -> None:
    cols = ", ".join(df.columns)
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")


def _replace(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, key: dict[str, object]) -> None:
    where = " AND ".join(f"{c} IS NOT DISTINCT FROM ?" for c in key) or "TRUE"
    con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))
    if not df.empty:
        con.register("_incoming", df)
        _insert(con, table, "_incoming", df)
        con.unregister("_incoming")
