"""The demo: synthetic reference sets and plates, the whole asset graph materialized in-process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from cellrep_core import paths
from cellrep_core.pipeline import BENCHMARK_MODELS

LOG_LEVEL = os.environ.get("CELLREP_LOG_LEVEL", "WARNING")
DEMO_PLATES = {"plate_01": 101, "plate_02": 202}

DAGSTER_YAML = """\
# cellrep's Dagster instance: the training pool "gpu" runs one step at a time.
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def dagster_home() -> Path:
    """Dagster instance folder (``$DAGSTER_HOME`` or ``$CELLREP_HOME/dagster``) with cellrep's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.cellrep_home() / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def instance() -> dg.DagsterInstance:
    """The persistent instance the UI also reads, so demo runs show up there."""
    dagster_home()
    return dg.DagsterInstance.get()


def _materialize(inst: dg.DagsterInstance, selection: dg.AssetSelection, partition_key: str | None = None,
                 run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    from orchestration.definitions import all_assets, plate_asset_checks, resources

    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}}
    res = dg.materialize([*all_assets, *plate_asset_checks], selection=selection, instance=inst, resources=resources,
                         partition_key=partition_key, run_config=run_config, raise_on_error=True)
    assert res.success
    return res


def automate(inst: dg.DagsterInstance, cursor=None, run_config: dict | None = None, max_ticks: int = 20):
    """What the daemon does, in-process: evaluate the automation conditions, run what a tick requests (one
    run per partition key, asset checks included), and tick again until a tick requests nothing.

    Returns ``(runs, cursor)``, ``runs`` a list of ``(partition_key, [asset keys], ExecuteInProcessResult)``.
    """
    from orchestration.definitions import all_assets, defs, plate_asset_checks, resources

    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}}
    runs = []
    for _ in range(max_ticks):
        tick = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=cursor)
        cursor = tick.cursor
        by_partition: dict[str | None, list[dg.AssetKey]] = {}
        for r in tick.results:
            if isinstance(r.key, dg.AssetKey):
                for pk in tick.get_requested_partitions(r.key):
                    by_partition.setdefault(pk, []).append(r.key)
        if not by_partition:
            return runs, cursor
        for pk, keys in sorted(by_partition.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
            ops = {k: v for k, v in run_config.get("ops", {}).items() if dg.AssetKey(k) in keys}
            res = dg.materialize([*all_assets, *plate_asset_checks], selection=dg.AssetSelection.assets(*keys),
                                 instance=inst, resources=resources, partition_key=pk,
                                 run_config={**run_config, "ops": ops}, raise_on_error=False)
            runs.append((pk, sorted(k.to_user_string() for k in keys), res))
    raise RuntimeError(f"automation still requesting runs after {max_ticks} ticks")


def register_landing_plates(inst: dg.DagsterInstance) -> list[str]:
    """Add every complete plate folder in the landing area as a partition (never twice)."""
    from orchestration.partitions import plates_partitions

    landing = paths.landing_plates_dir()
    found = sorted(p.name for p in landing.iterdir() if (p / "manifest.csv").exists()) if landing.exists() else []
    known = set(inst.get_dynamic_partitions(plates_partitions.name))
    new = [p for p in found if p not in known]
    if new:
        inst.add_dynamic_partitions(plates_partitions.name, new)
    return found


def run_demo(plates: dict[str, int] | None = None, null_size: int = 10000, quick: bool = False) -> None:
    """Generate the data, materialize every asset (reference, each plate, SQL models), print the hits."""
    from cellrep_core.cli import write_synthetic_plate
    from cellrep_core.store.warehouse import Warehouse

    t0 = time.perf_counter()
    plates = plates or DEMO_PLATES
    inst = instance()
    print(f"cellrep demo: CELLREP_HOME={paths.cellrep_home()}  DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    for pid, seed in plates.items():
        if not (paths.landing_plates_dir() / pid / "manifest.csv").exists():
            write_synthetic_plate(pid, seed=seed)
            print(f"  wrote synthetic plate {pid} into {paths.landing_plates_dir() / pid}")
    register_landing_plates(inst)
    run_config = None
    if quick:
        run_config = {"ops": {
            "synthetic_punctate_cells": {"config": {"size": 4}},
            "synthetic_polymorphic_cells": {"config": {"size": 24}},
            "synthetic_punctate_model": {"config": {"model": "punctate_tiny"}},
            "synthetic_polymorphic_model": {"config": {"model": "sdf_tiny"}},
            # the benchmark's model list with the tiny size of every config
            **{f"{ds}_benchmark": {"config": {"models": [n.removesuffix("_demo") + "_tiny" for n in names]}}
               for ds, names in BENCHMARK_MODELS.items()},
        }}
    print("  materializing reference assets (data, point clouds, base models, embeddings, benchmark) ...")
    _materialize(inst, dg.AssetSelection.groups("reference"), run_config=run_config)
    print(f"  ... done in {time.perf_counter() - t0:.0f} s")
    for pid in plates:
        t1 = time.perf_counter()
        _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=pid,
                     run_config={"ops": {"plate_qvalues": {"config": {"null_size": null_size}}}})
        print(f"  plate {pid}: cells, point clouds, embeddings, q-values in {time.perf_counter() - t1:.0f} s")
    _materialize(inst, dg.AssetSelection.groups("feature_store", "sql_models"))
    wh = Warehouse()
    hits = wh.query(
        "SELECT plate_id, drug, planted_effect, feature_set, round(mean_average_precision, 3) AS mAP, "
        "q_value, is_hit FROM drug_hits ORDER BY feature_set, plate_id, drug"
    )
    print("\nDrug hits (q < 0.05) per plate, learned embeddings vs hand-crafted baseline:")
    print(hits.to_string(index=False))
    print("\nQuarantined cells:")
    print(wh.query("SELECT plate_id, n_cells, n_quarantined, reasons FROM plate_qc").to_string(index=False))
    print("\nBenchmark:")
    print(wh.query("SELECT * FROM model_leaderboard").to_string(index=False))
    print(f"\nWarehouse: {wh.path}\nFeature store: {paths.lancedb_path()}\nTotal {time.perf_counter() - t0:.0f} s")
