"""How long the daemon's automation tick and landing sensor take with 10, 1,000 and 10,000 plate partitions.

For each size, on a fresh Dagster instance (SQLite, as `make ui` runs it): N plate partitions are added; the
first automation tick (the plates' and SQL models' conditions, what ``plates_automation_sensor`` evaluates)
requests the chain of every new plate; the next tick, with nothing new, requests nothing: that is the steady
cost of every tick. Then the landing sensor scans N known plate folders. Prints a table and ends with
``tick_s_10000=<s> steady_tick_s_10000=<s> landing_scan_s_10000=<s>``.

    python benchmarks/bench_ticks.py [--sizes 10,1000,10000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def measure(n: int, root: Path) -> dict:
    import dagster as dg

    home = root / f"n{n}"
    os.environ["CELLREP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    from assets.plate_landing import scan_landing
    from assets.plates import plates_partitions
    from orchestration.definitions import defs
    from orchestration.demo import dagster_home

    dagster_home()
    inst = dg.DagsterInstance.get()
    pids = [f"p{i:05d}" for i in range(n)]
    before = dg.evaluate_automation_conditions(defs=defs, instance=inst)  # the daemon ticked before the drop
    t = time.perf_counter()
    inst.add_dynamic_partitions(plates_partitions.name, pids)
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    first = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=before.cursor)
    first_s = time.perf_counter() - t
    requested = sum(len(first.get_requested_partitions(r.key)) for r in first.results
                    if isinstance(r.key, dg.AssetKey) and r.key.path[0].startswith("plate_"))
    t = time.perf_counter()
    second = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=first.cursor)
    second_s = time.perf_counter() - t
    again = sum(len(second.get_requested_partitions(r.key)) for r in second.results if isinstance(r.key, dg.AssetKey))
    landing = home / "landing" / "plates"
    for p in pids:
        (landing / p).mkdir(parents=True, exist_ok=True)
        (landing / p / "manifest.csv").write_text("cell_id,path,channels\n")
    t = time.perf_counter()
    new, _, _ = scan_landing(set(pids), {})
    scan_s = time.perf_counter() - t
    dg.DagsterInstance.get().dispose()
    return {"n": n, "add_s": add_s, "first_tick_s": first_s, "requested": requested, "steady_tick_s": second_s,
            "requested_again": again, "landing_scan_s": scan_s, "new_found": len(new)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,10000")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellrep-ticks-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(n, Path(tmp)))
            r = rows[-1]
            print(f"{n} partitions: first tick {r['first_tick_s']:.1f} s ({r['requested']} plate asset-partitions "
                  f"requested), steady tick {r['steady_tick_s']:.1f} s ({r['requested_again']} requested), landing "
                  f"scan {r['landing_scan_s']:.2f} s", flush=True)
    print("\n| plate partitions | first tick (all new) s | steady tick s | landing scan s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['first_tick_s']:.1f} | {r['steady_tick_s']:.1f} | {r['landing_scan_s']:.2f} |")
    last = rows[-1]
    print(f"tick_s_{last['n']}={last['first_tick_s']:.1f} steady_tick_s_{last['n']}={last['steady_tick_s']:.1f} "
          f"landing_scan_s_{last['n']}={last['landing_scan_s']:.2f}")


if __name__ == "__main__":
    main()
