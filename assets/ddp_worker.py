"""The torchrun entry module the model assets start through Dagster Pipes: one DDP process
(``cellrep_core.models.ddp.run_and_save``), and on rank 0 the result reported back through Pipes (it lands in
the asset's materialization and its log). Other ranks do not open Pipes: they share its context."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellrep_core.models.ddp import run_and_save

MODULE = "assets.ddp_worker"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one process of a DDP training started by an asset through Pipes")
    ap.add_argument("--request", type=Path, required=True)
    args = ap.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0 or not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        run_and_save(args.request)
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        res = run_and_save(args.request)
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        pipes.log.info(f"trained {res['version']} on {processes} processes")
        metrics = {k: v for k, v in res["metrics"].items()
                   if isinstance(v, int | float | str) and not isinstance(v, bool)}
        pipes.report_asset_materialization(metadata={"model_version": res["version"], "path": res["path"],
                                                      "reused": res["reused"], "processes": processes, **metrics})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
