"""``cellrep`` with the orchestration commands added: ``demo`` and ``ui``."""

from __future__ import annotations

import logging
import sys

import duckdb

from cellrep_core import cli as core_cli


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellrep`` console script."""
    parser = core_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    d = sub.add_parser("demo", help="materialize the whole asset graph on the embedded synthetic data")
    d.add_argument("--null-size", type=int, default=10000)
    d.add_argument("--quick", action="store_true", help="tiny data and models (smoke test)")
    u = sub.add_parser("ui", help="serve the Dagster UI and daemon on 127.0.0.1 (Ctrl-C stops everything)")
    u.add_argument("--port", type=int, default=3000)
    uc = sub.add_parser("ui-check", help="open the hit explanation in headless Chromium through the Dagster UI and "
                                         "save a screenshot (needs the chromium and chromium-driver packages)")
    uc.add_argument("--out", default="", help="screenshot PNG; default: $CELLREP_HOME/reports/ui_hit_explanation.png")
    args = parser.parse_args(argv)
    if args.command == "ui-check":
        from pathlib import Path

        from cellrep_core import paths
        from orchestration.ui_check import UICheckError, check_hit_explanation

        try:
            seen = check_hit_explanation(Path(args.out) if args.out else
                                         paths.cellrep_home() / "reports" / "ui_hit_explanation.png")
        except UICheckError as err:
            print(f"cellrep ui-check: {err}", file=sys.stderr)
            return 1
        print(", ".join(f"{k}: {v}" for k, v in seen.items()))
        return 0
    if args.command == "ui":
        from orchestration.serve import serve

        return serve(port=args.port)
    if args.command == "demo":
        from orchestration.demo import run_demo

        logging.basicConfig(level=logging.WARNING)
        run_demo(null_size=args.null_size, quick=args.quick)
        return 0
    try:
        return core_cli.run(args)
    except (PermissionError, LookupError, ValueError) as err:
        print(f"cellrep: {err}", file=sys.stderr)
        return 2
    except duckdb.Error as err:  # a SQL mistake (unknown table or column, syntax): DuckDB's message, no traceback
        print(f"cellrep: {err}", file=sys.stderr)
        return 2
