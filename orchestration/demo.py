"""The demo: synthetic reference sets and plates, the whole asset graph materialized in-process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from cellrep_core import paths
from cellrep_core.pipeline import BENCHMARK_MODELS

LOG_LEVEL = os.environ.get("CELLREP_LOG_LEVEL", "WARNING")
# The demo screen: two replicate plates, every effect of the screen simulator and three null drugs at three
# concentrations (µM), 8 cells a well, DMSO in 6 wells (2 on the edge), the nuisance on, 2 bad cells a plate.
DEMO_SCREEN = {"screen_id": "demo", "seed": 101, "concentrations": (0.3, 1.0, 3.0), "replicates": 2,
               "n_per_well": 8, "n_dmso_wells": 6, "n_bad": 2}

DAGSTER_YAML_HEADER = """\
# cellrep's Dagster instance: the training pool "gpu" runs one step at a time; the daemon starts at most
# concurrency.runs.max_concurrent_runs runs at a time (orchestration/demo.py: max_concurrent_runs); progress of long
# stages (cellrep_core.progress) and the library's own log lines go into the run log; no first-visit modal.
"""


def max_concurrent_runs() -> int:
    """Runs the daemon starts at a time: ``$CELLREP_MAX_RUNS``, else one per two cores and at least 2. Each run
    process holds ~0.8 GB; Dagster's default of 10 on a 2-core machine had 10 runs (~9 GB) thrash for 7 minutes
    without finishing a plate (``benchmarks/bench_load.py``)."""
    env = os.environ.get("CELLREP_MAX_RUNS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"CELLREP_MAX_RUNS={env!r}: expected a positive whole number of runs")
        return int(env)
    return max(2, (os.cpu_count() or 2) // 2)


def instance_config(existing: dict | None = None) -> dict:
    """cellrep's dagster.yaml settings over ``existing`` (a home from before keeps what it has and gets what it
    lacks)."""
    cfg = dict(existing or {})
    conc = cfg.setdefault("concurrency", {}) or {}
    cfg["concurrency"] = conc
    conc.setdefault("pools", {}).setdefault("default_limit", 1)
    if "max_concurrent_runs" not in (cfg.get("run_queue") or {}):  # a user's own run_queue setting stays
        conc.setdefault("runs", {}).setdefault("max_concurrent_runs", max_concurrent_runs())
    cfg.setdefault("telemetry", {"enabled": False})
    cfg.setdefault("nux", {"enabled": False})
    cfg.setdefault("python_logs", {"python_log_level": "INFO", "managed_python_loggers": ["cellrep_core"]})
    return cfg


def dagster_home() -> Path:
    """Dagster instance folder (``$DAGSTER_HOME`` or ``$CELLREP_HOME/dagster``) with cellrep's dagster.yaml."""
    import yaml

    home = Path(os.environ.get("DAGSTER_HOME") or paths.cellrep_home() / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    f = home / "dagster.yaml"
    existing = (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}
    cfg = instance_config(existing)
    if cfg != existing or not f.exists():
        f.write_text(DAGSTER_YAML_HEADER + yaml.safe_dump(cfg, sort_keys=False))
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
    from assets.plates import plates_partitions

    landing = paths.landing_plates_dir()
    found = sorted(p.name for p in landing.iterdir() if (p / "manifest.csv").exists()) if landing.exists() else []
    known = set(inst.get_dynamic_partitions(plates_partitions.name))
    new = [p for p in found if p not in known]
    if new:
        inst.add_dynamic_partitions(plates_partitions.name, new)
    return found


def _progress_to_terminal() -> None:
    """Print the library's progress lines (``cellrep_core.progress``) while the demo runs: never silent for
    minutes. Not propagated to the root logger (no duplicates); Dagster also gets them through its own
    handler (``python_logs`` in dagster.yaml)."""
    import logging
    import sys

    lg = logging.getLogger("cellrep_core")
    if not any(getattr(h, "_cellrep_terminal", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("    %(message)s"))
        h._cellrep_terminal = True
        lg.addHandler(h)
    lg.setLevel(logging.INFO)
    lg.propagate = False


def run_demo(null_size: int = 10000, screen_null_size: int = 100_000, quick: bool = False,
             screen: dict | None = None, reference: bool = True) -> None:
    """Generate the data, materialize every asset (reference, each plate of the demo screen, the screen's
    q-values, SQL models), print the hits. ``reference=False``: the reference sets are there already; only the
    plates, the screen and what follows them run again."""
    from cellrep_core.cli import write_synthetic_screen
    from cellrep_core.store.warehouse import Warehouse

    t0 = time.perf_counter()
    _progress_to_terminal()
    screen = {**DEMO_SCREEN, **(screen or {})}
    inst = instance()
    print(f"cellrep demo: CELLREP_HOME={paths.cellrep_home()}  DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    plate_ids = [f"{screen['screen_id']}_r{k + 1}" for k in range(screen["replicates"])]
    if not all((paths.landing_plates_dir() / p / "manifest.csv").exists() for p in plate_ids):
        write_synthetic_screen(**screen)
        print(f"  wrote synthetic screen {screen['screen_id']} ({', '.join(plate_ids)}) into "
              f"{paths.landing_plates_dir()}")
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
    if reference:
        print("  materializing reference assets (data, point clouds, base models, embeddings, benchmark) ...")
        _materialize(inst, dg.AssetSelection.groups("reference"), run_config=run_config)
        print(f"  ... done in {time.perf_counter() - t0:.0f} s")
    for pid in plate_ids:
        t1 = time.perf_counter()
        _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=pid,
                     run_config={"ops": {"plate_qvalues": {"config": {"null_size": null_size}}}})
        print(f"  plate {pid}: cells, point clouds, fine-tuned model, embeddings, q-values in "
              f"{time.perf_counter() - t1:.0f} s")
    t1 = time.perf_counter()
    _materialize(inst, dg.AssetSelection.groups("screens"),
                 run_config={"ops": {"screen_qvalues": {"config": {"null_size": screen_null_size}}}})
    print(f"  screen {screen['screen_id']}: q-values over {len(plate_ids)} plates (null size {screen_null_size}) "
          f"in {time.perf_counter() - t1:.0f} s; plots in {paths.screen_reports_dir(screen['screen_id'])}")
    _materialize(inst, dg.AssetSelection.groups("feature_store", "sql_models"))
    wh = Warehouse()
    hits = wh.query(
        "SELECT drug, planted_effect, concentration AS conc_uM, strength, model_role, round(mean_average_precision, "
        "3) AS mAP, round(q_value, 4) AS q, is_hit FROM screen_hits WHERE screen_id = ? "
        "ORDER BY drug, concentration, model_role", [screen["screen_id"]])
    print(f"\nScreen {screen['screen_id']}: drug x concentration over {len(plate_ids)} replicate plates "
          "(q < 0.05 is a hit), base model zero-shot, fine-tuned models and hand-crafted features:")
    print(hits.to_string(index=False))
    print("\nDose response (mAP at 0.3 / 1 / 3 µM):")
    print(wh.query("SELECT drug, planted_effect, model_role, map_by_dose, dose_rank_correlation FROM dose_response "
                   "WHERE screen_id = ? ORDER BY drug, model_role", [screen["screen_id"]]).to_string(index=False))
    print("\nQuarantined cells:")
    print(wh.query("SELECT plate_id, n_cells, n_quarantined, reasons FROM plate_qc").to_string(index=False))
    print("\nBenchmark:")
    print(wh.query("SELECT * FROM model_leaderboard").to_string(index=False))
    print(f"\nWarehouse: {wh.path}\nFeature store: {paths.lancedb_path()}\nTotal {time.perf_counter() - t0:.0f} s")
