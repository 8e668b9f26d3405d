"""kill -9 at every write stage of a small pipeline (ingest, point clouds, training, model registry, embeddings,
reports),
what a reader sees right after, and whether running again gives exactly what a never-killed run gives.

    python benchmarks/bench_faults.py [--out reports/faults.md]

Prints a Markdown table (stage × fault → outcome) and ends with ``identical=<n>/<stages>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cellrep_core import faultcheck


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellrep-faults-") as tmp:
        work = Path(tmp)
        manifest = faultcheck.make_manifest(work / "data")
        faultcheck.run_stages(work / "reference", manifest)
        ref = faultcheck.snapshot(work / "reference")
        rows = [faultcheck.check_fault(work, manifest, name, spec, ref) for name, spec in faultcheck.FAULTS.items()]
        rows.append(faultcheck.check_report_fault(work))
    lines = ["| stage | fault | killed | a reader right after the kill | after running again |",
             "|---|---|---|---|---|"]
    for r in rows:
        seen = ", ".join(f"{k} {v}" for k, v in r["reader_after_kill"].items())
        outcome = "identical to an unkilled run" if r["identical"] else f"differs: {', '.join(r['differs'])}"
        lines.append(f"| {r['stage']} | `{r['fault']}` | {'yes' if r['killed'] else 'no'} | {seen} | {outcome} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    print(f"identical={sum(r['identical'] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
