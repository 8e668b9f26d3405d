"""New plates at scale: two plates processed at the same time, and a new plate's time with 1 and 5 earlier plates.

    python benchmarks/bench_plates.py [--quick] [--n-dmso 32 --n-per-drug 20]

Uses ``$CELLREP_HOME`` (reference assets are built first when the base model is missing: the default
``sdf_demo`` model on 200 cells, or ``sdf_tiny`` on 24 with ``--quick``). Each plate goes through the same
automation the daemon runs (landing folder → partition → automation ticks → plate chain and SQL models,
in-process); two plates are also run at the same time in two processes, as the daemon launches two runs,
and the warehouse and feature store are then checked for lock errors and duplicate keys. Ends with
``new_plate_s_after_1=<s> new_plate_s_after_5=<s> concurrent_ok=<bool> duplicates=<n>``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import dagster as dg

RUN = {"ops": {"plate_qvalues": {"config": {"null_size": 10000}}}}
DRUGS = {"cmpd_shrink": "shrink", "cmpd_fragment": "fragment", "cmpd_elongate": "elongate",
         "cmpd_null_1": "none", "cmpd_null_2": "none", "cmpd_null_3": "none"}


def _step_seconds(res: dg.ExecuteInProcessResult) -> dict[str, float]:
    return {e.step_key: round(e.event_specific_data.duration_ms / 1000, 2) for e in res.all_events if e.is_step_success}


def _write_plate(pid: str, seed: int, args: argparse.Namespace) -> None:
    from cellrep_core.cli import write_synthetic_plate

    write_synthetic_plate(pid, seed=seed, n_dmso=args.n_dmso, n_per_drug=args.n_per_drug, drugs=DRUGS)


def _add_partitions(inst: dg.DagsterInstance, pids: list[str]) -> None:
    from assets.plate_landing import landing_plates_sensor

    res = landing_plates_sensor(dg.build_sensor_context(instance=inst))
    added = [k for r in res.dynamic_partitions_requests for k in r.partition_keys]
    assert sorted(added) == sorted(pids), (added, pids)
    inst.add_dynamic_partitions("plates", added)


def ensure_reference(inst: dg.DagsterInstance, quick: bool) -> None:
    """Build the base polymorphic model (and its data) unless the warehouse has one."""
    from cellrep_core.pipeline import latest_model
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.demo import _materialize

    try:
        print(f"base model: {latest_model(Warehouse(), 'synthetic_polymorphic').version}", flush=True)
        return
    except LookupError:
        pass
    cfg = {"ops": {"synthetic_polymorphic_cells": {"config": {"size": 24}},
                   "synthetic_polymorphic_model": {"config": {"model": "sdf_tiny"}}}} if quick else None
    t0 = time.perf_counter()
    keys = [f"synthetic_polymorphic_{s}" for s in ("cells", "pointclouds", "model")]
    _materialize(inst, dg.AssetSelection.assets(*keys), run_config=cfg)
    print(f"built the reference base model in {time.perf_counter() - t0:.0f} s", flush=True)


def sequential_plate(inst: dg.DagsterInstance, cursor, pid: str, seed: int, args: argparse.Namespace):
    """Land one plate, tick the automation until quiet; wall time and per-step seconds."""
    from orchestration.demo import automate

    _write_plate(pid, seed, args)
    t0 = time.perf_counter()
    _add_partitions(inst, [pid])
    runs, cursor = automate(inst, cursor, RUN)
    total = time.perf_counter() - t0
    assert runs and all(r.success for _, _, r in runs), [(pk, keys, r.success) for pk, keys, r in runs]
    steps: dict[str, float] = {}
    for _, _, r in runs:
        steps |= _step_seconds(r)
    return total, steps, cursor


def _child(home: str, pid: str, queue) -> None:
    os.environ["CELLREP_HOME"] = home
    from assets.plate_landing import PLATE_ASSETS
    from orchestration.demo import _materialize, instance

    t0 = time.perf_counter()
    try:
        res = _materialize(instance(), dg.AssetSelection.assets(*PLATE_ASSETS), partition_key=pid, run_config=RUN)
        queue.put((pid, time.perf_counter() - t0, _step_seconds(res), None))
    except Exception as err:  # reported by the parent
        queue.put((pid, time.perf_counter() - t0, {}, f"{type(err).__name__}: {err}"))


def concurrent_plates(inst: dg.DagsterInstance, pids: list[str], seeds: list[int], args: argparse.Namespace):
    """Two plates landed together, each run in its own process at the same time (as two daemon runs)."""
    for pid, seed in zip(pids, seeds, strict=True):
        _write_plate(pid, seed, args)
    _add_partitions(inst, pids)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_child, args=(os.environ["CELLREP_HOME"], pid, queue)) for pid in pids]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return time.perf_counter() - t0, out


def duplicate_keys() -> dict[str, int]:
    """Rows sharing a key that must be unique, per table (LanceDB and DuckDB)."""
    from cellrep_core.store.feature_store import FeatureStore
    from cellrep_core.store.warehouse import Warehouse

    fs = FeatureStore()
    out = {}
    for table in fs.table_names():
        meta, _ = fs.load(table=table)
        out[f"lancedb.{table}"] = int(meta.duplicated(["cell_id", "model_version"]).sum())
    keys = {
        "cells": "cell_id", "plates": "plate_id", "models": "model_version",
        "pointcloud_index": "dataset, partition, cell_id", "handcrafted_features": "dataset, cell_id",
        "drug_qvalues": "plate_id, drug, model_version, feature_set", "drug_truth": "plate_id, drug",
        "quarantine": "dataset, plate_id, stage, cell_id",
    }
    wh = Warehouse()
    for table, key in keys.items():
        n = wh.query(f"SELECT coalesce(sum(n - 1), 0) AS d FROM (SELECT count(*) AS n FROM {table} GROUP BY {key})")
        out[table] = int(n.d[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny base model (sdf_tiny on 24 cells)")
    ap.add_argument("--n-dmso", type=int, default=32)
    ap.add_argument("--n-per-drug", type=int, default=20)
    ap.add_argument("--null-size", type=int, default=10000)
    args = ap.parse_args()
    RUN["ops"]["plate_qvalues"]["config"]["null_size"] = args.null_size
    from cellrep_core import paths
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.demo import automate, instance

    inst = instance()
    print(f"CELLREP_HOME={paths.cellrep_home()}  plates of {args.n_dmso} DMSO + 6 x {args.n_per_drug} cells",
          flush=True)
    ensure_reference(inst, args.quick)
    _, cursor = automate(inst, None, RUN)  # bring the SQL models up to date first
    n_before = len(Warehouse().query("SELECT * FROM plates"))
    assert n_before == 0, f"{paths.cellrep_home()} already has {n_before} plates: use a fresh CELLREP_HOME"

    timings = {}
    for i in (1, 2):
        total, steps, cursor = sequential_plate(inst, cursor, f"bench_{i:02d}", 100 + i, args)
        timings[i - 1] = (total, steps)
        print(f"plate {i} ({i - 1} earlier): {total:.1f} s  {steps}", flush=True)

    wall, out = concurrent_plates(inst, ["bench_03", "bench_04"], [103, 104], args)
    errors = [f"{pid}: {err}" for pid, _, _, err in out if err]
    for pid, seconds, steps, err in out:
        print(f"concurrent {pid}: {seconds:.1f} s  {'ERROR ' + err if err else steps}", flush=True)
    print(f"two plates at the same time: {wall:.1f} s wall", flush=True)
    _, cursor = automate(inst, cursor, RUN)  # the SQL models after both

    for i in (5, 6):
        total, steps, cursor = sequential_plate(inst, cursor, f"bench_{i:02d}", 100 + i, args)
        timings[i - 1] = (total, steps)
        print(f"plate {i} ({i - 1} earlier): {total:.1f} s  {steps}", flush=True)

    dups = duplicate_keys()
    print(f"duplicate keys per table: {dups}", flush=True)
    q = Warehouse().query("SELECT plate_id, count(*) AS n FROM drug_qvalues GROUP BY plate_id ORDER BY plate_id")
    print(q.to_string(index=False))
    print(f"new_plate_s_after_1={timings[1][0]:.1f} new_plate_s_after_5={timings[5][0]:.1f} "
          f"concurrent_ok={not errors} duplicates={sum(dups.values())}")


if __name__ == "__main__":
    main()
