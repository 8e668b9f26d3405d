"""Time from dropping plates into the landing folder to their rows in ``drug_qvalues``, with ``cellrep ui`` running.

    cellrep ui --port 3417 &                                  # same CELLREP_HOME; reference assets built
    python benchmarks/landing_latency.py --plate ui_01 [--plate ui_02] --n-dmso 32 --n-per-drug 28

Each plate is written to a staging folder first (``cellrep synth-plate --out``), then all plates are moved
into ``$CELLREP_HOME/landing/plates/`` at the same instant (one rename each); nothing else is done. Prints
per plate the seconds until its q-value rows appear, the Dagster runs that processed it (queue wait and
per-step seconds from the run's step stats), and duplicate keys in LanceDB and DuckDB afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import dagster as dg
from bench_plates import DRUGS, duplicate_keys  # beside this file (the script's folder is on sys.path)

from cellrep_core import paths
from cellrep_core.cli import write_synthetic_plate
from cellrep_core.store.warehouse import Warehouse


def _runs_report(inst: dg.DagsterInstance, plate: str, t_drop: float) -> list[str]:
    lines = []
    records = inst.get_run_records(dg.RunsFilter(tags={"dagster/partition": plate}))
    for rec in sorted(records, key=lambda r: r.create_timestamp):
        run = rec.dagster_run
        created = rec.create_timestamp.timestamp()
        start, end = rec.start_time or created, rec.end_time or time.time()
        steps = {s.step_key: round((s.end_time or end) - (s.start_time or start), 1)
                 for s in inst.get_run_step_stats(run.run_id)}
        lines.append(f"  run {run.run_id[:8]} {run.status.value}: created +{created - t_drop:.1f} s after the drop, "
                     f"queued {start - created:.1f} s, ran {end - start:.1f} s; steps {steps}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plate", action="append", required=True)
    ap.add_argument("--n-dmso", type=int, default=32)
    ap.add_argument("--n-per-drug", type=int, default=28)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    landing = paths.landing_plates_dir()
    stage = paths.cellrep_home() / "staging"
    for i, pid in enumerate(args.plate):
        write_synthetic_plate(pid, stage / pid, seed=args.seed + i, n_dmso=args.n_dmso,
                              n_per_drug=args.n_per_drug, drugs=DRUGS)
    landing.mkdir(parents=True, exist_ok=True)
    t_drop = time.time()
    for pid in args.plate:
        os.rename(stage / pid, landing / pid)
    print(f"dropped {args.plate} ({args.n_dmso} DMSO + 6 x {args.n_per_drug} cells, 2 bad) into {landing}", flush=True)
    shutil.rmtree(stage, ignore_errors=True)
    wh = Warehouse()
    done: dict[str, float] = {}
    while len(done) < len(args.plate) and time.time() - t_drop < args.timeout:
        time.sleep(2)
        q = wh.query("SELECT plate_id, count(*) AS n FROM drug_qvalues WHERE plate_id IN "
                     f"({', '.join('?' * len(args.plate))}) GROUP BY plate_id", list(args.plate))
        for pid in q.plate_id:
            if pid not in done:
                done[pid] = time.time() - t_drop
                print(f"{pid}: q-values after {done[pid]:.1f} s", flush=True)
    inst = dg.DagsterInstance.get()
    for pid in args.plate:
        print(f"{pid}: {done.get(pid, float('nan')):.1f} s from drop to drug_qvalues rows")
        print("\n".join(_runs_report(inst, pid, t_drop)))
    print(f"duplicate keys per table: {duplicate_keys()}")
    rows = wh.query("SELECT plate_id, model_version, feature_set, count(*) AS n FROM drug_qvalues GROUP BY ALL "
                    "ORDER BY ALL")
    print(rows.to_string(index=False))
    print(" ".join(f"{pid}_s={done.get(pid, float('nan')):.1f}" for pid in args.plate))


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_HOME", str(paths.cellrep_home() / "dagster"))
    main()
