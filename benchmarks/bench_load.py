"""Load: many plates dropped at once under the running daemon, with SQL readers polling all the while.

    python benchmarks/bench_load.py [--plates 20] [--readers 2] [--n-dmso 16 --n-per-drug 8]

On ``$CELLREP_HOME`` (a fresh one: ``make bench-load``): builds a tiny base model (``sdf_tiny`` on 24 cells; this
measures the platform, not the model), starts ``cellrep ui`` (Dagster webserver + daemon on 127.0.0.1), writes
the plates to a staging folder and moves them all into the landing folder at the same instant. While the daemon
works, ``--readers`` processes run ``cellrep sql`` in a loop (rows per plate in ``cells`` and ``drug_qvalues``).
Waits until every plate has q-values and no run is queued or running, then reports: plates done, runs by status,
reader queries and failures, whether a reader ever saw part of a plate (a row count other than 0 or the final
one), duplicate keys in LanceDB and DuckDB, peak memory (sum of the resident sets of the daemon's whole process
tree, sampled every second, and the largest single process) and wall time. Ends with
``plates_done=<n>/<N> failed_runs=<n> reader_errors=<n> partial_reads=<n> duplicates=<n> peak_rss_gb=<x>
wall_s=<s>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLREP = str(Path(sys.executable).with_name("cellrep"))
QUERY = ("select 'cells' as t, plate_id, count(*) as n from cells where dataset = 'drug_plates' group by all "
         "union all select 'drug_qvalues', plate_id, count(*) from drug_qvalues group by all")


def reader(out: Path, stop: Path) -> None:
    """Run ``cellrep sql`` until ``stop`` exists; one JSON line per query (counts, or the error)."""
    with open(out, "w") as f:
        while not stop.exists():
            t0 = time.time()
            r = subprocess.run([CELLREP, "sql", QUERY, "--format", "csv"], capture_output=True, text=True)
            rec = {"t": t0, "s": time.time() - t0, "rc": r.returncode}
            if r.returncode:
                rec["err"] = (r.stderr or r.stdout).strip().splitlines()[-1:] if (r.stderr or r.stdout) else []
            else:
                rows = [line.split(",") for line in r.stdout.strip().splitlines()[1:] if line]
                rec["counts"] = {f"{t}:{p}": int(n) for t, p, n in rows}
            f.write(json.dumps(rec) + "\n")
            f.flush()


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum, max) of the resident set sizes of a process and all its descendants, bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for p in procs:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plates", type=int, default=20)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--n-dmso", type=int, default=16)
    ap.add_argument("--n-per-drug", type=int, default=8)
    ap.add_argument("--seed", type=int, default=4100)
    ap.add_argument("--port", type=int, default=3419)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    import dagster as dg
    from bench_plates import DRUGS, duplicate_keys, ensure_reference  # beside this file

    from cellrep_core import paths
    from cellrep_core.cli import write_synthetic_plate
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.demo import instance
    from orchestration.serve import stop_group

    inst = instance()
    ensure_reference(inst, quick=True)
    home = paths.cellrep_home()
    work = home / "bench_load"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ui = subprocess.Popen([CELLREP, "ui", "--port", str(args.port)], cwd=ROOT, stdout=open(work / "ui.log", "w"),
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(25)  # webserver, daemon and code server up
        stage = home / "staging"
        plates = [f"load_{k:02d}" for k in range(args.plates)]
        for k, pid in enumerate(plates):
            write_synthetic_plate(pid, stage / pid, seed=args.seed + k, n_dmso=args.n_dmso, n_per_drug=args.n_per_drug,
                                  drugs=DRUGS)
        stop = work / "stop"
        readers = [subprocess.Popen([sys.executable, __file__, "--reader", str(work / f"reader_{i}.jsonl"), str(stop)])
                   for i in range(args.readers)]
        landing = paths.landing_plates_dir()
        landing.mkdir(parents=True, exist_ok=True)
        t_drop = time.time()
        for pid in plates:
            os.rename(stage / pid, landing / pid)
        print(f"dropped {len(plates)} plates ({args.n_dmso} DMSO + {len(DRUGS)} x {args.n_per_drug} cells, 2 bad "
              f"each) at once; {args.readers} readers running `cellrep sql` in a loop", flush=True)
        wh = Warehouse()
        peak_sum = peak_one = 0
        done: dict[str, float] = {}
        busy = True
        while time.time() - t_drop < args.timeout:
            s, m = tree_rss(ui.pid)
            peak_sum, peak_one = max(peak_sum, s), max(peak_one, m)
            time.sleep(1)
            if int(time.time() - t_drop) % 5:
                continue
            q = wh.query("SELECT DISTINCT plate_id FROM drug_qvalues")
            for pid in set(q.plate_id) & set(plates) - set(done):
                done[pid] = time.time() - t_drop
                print(f"{pid}: q-values {done[pid]:.0f} s after the drop (tree RSS now {s / 2**30:.2f} GB)",
                      flush=True)
            active = inst.get_run_records(dg.RunsFilter(statuses=[
                dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED]))
            busy = bool(active)
            if len(done) == len(plates) and not busy:
                break
        wall = time.time() - t_drop
        stop.touch()
        for r in readers:
            r.wait(timeout=120)
    finally:  # Ctrl-C to `cellrep ui`, which stops Dagster's own process group; force only if it hangs
        import signal

        ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stop_group(ui.pid)
    runs = inst.get_run_records()
    by_status: dict[str, int] = {}
    for rec in runs:
        by_status[rec.dagster_run.status.value] = by_status.get(rec.dagster_run.status.value, 0) + 1
    failed = [rec.dagster_run.run_id for rec in runs if rec.dagster_run.status == dg.DagsterRunStatus.FAILURE]
    final = {f"cells:{p}": n for p, n in wh.query("SELECT plate_id, count(*) n FROM cells WHERE dataset = "
                                                   "'drug_plates' GROUP BY ALL").itertuples(index=False)}
    final |= {f"drug_qvalues:{p}": n for p, n in wh.query("SELECT plate_id, count(*) n FROM drug_qvalues "
                                                          "GROUP BY ALL").itertuples(index=False)}
    queries = errors = partial = 0
    seconds, examples = [], []
    for i in range(args.readers):
        for line in open(work / f"reader_{i}.jsonl"):
            rec = json.loads(line)
            queries += 1
            seconds.append(rec["s"])
            if rec["rc"]:
                errors += 1
                examples.append(rec.get("err"))
                continue
            for key, n in rec["counts"].items():
                if n not in (0, final.get(key)):
                    partial += 1
                    examples.append(f"{key}: saw {n}, final {final.get(key)}")
    dups = duplicate_keys()
    print(f"runs by status: {by_status}; failed runs: {failed[:5]}")
    print(f"readers: {queries} queries, {errors} failed, {partial} partial plates seen; query seconds median "
          f"{sorted(seconds)[len(seconds) // 2] if seconds else float('nan'):.2f}; examples {examples[:3]}")
    print(f"plates with q-values: {len(done)}/{len(plates)}; last at {max(done.values(), default=float('nan')):.0f} s")
    print(f"duplicate keys per table: {dups}")
    print(f"peak memory: {peak_sum / 2**30:.2f} GB summed over the daemon's process tree, largest process "
          f"{peak_one / 2**30:.2f} GB")
    print(f"plates_done={len(done)}/{len(plates)} failed_runs={len(failed)} reader_errors={errors} "
          f"partial_reads={partial} duplicates={sum(dups.values())} peak_rss_gb={peak_sum / 2**30:.2f} "
          f"wall_s={wall:.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--reader":
        reader(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        main()
