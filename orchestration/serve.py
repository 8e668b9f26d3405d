"""``cellrep ui``: the Dagster webserver and daemon on 127.0.0.1, stopped cleanly by Ctrl-C.

``dagster dev`` starts a webserver, a daemon and code servers as children, and on Ctrl-C it stops the
daemon but can leave the webserver and code servers running (seen with dagster 1.13). This wrapper
starts it in its own process group and, on SIGINT or SIGTERM, signals the whole group, waits, and
kills whatever is left, so no process survives and the port is free again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestration.demo import dagster_home

ROOT = Path(__file__).resolve().parents[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL it if anything is still there after ``grace_s``."""
    for sig, wait in ((signal.SIGINT, 2.0), (signal.SIGTERM, grace_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serve(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Run ``dagster dev`` on the project's workspace until interrupted; returns its exit code."""
    home = dagster_home()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(ROOT / "workspace.yaml"),
        "-h",
        host,
        "-p",
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            print(f"\ncellrep ui: stopping Dagster (signal {signum}) ...", file=sys.stderr, flush=True)
            stop_group(proc.pid)

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"cellrep ui: Dagster UI on http://{host}:{port}  (DAGSTER_HOME={home}); Ctrl-C stops it", flush=True)
        code = proc.wait()
        if not stopping:  # dagster exited on its own: take its children down too
            stop_group(proc.pid)
        return 0 if stopping else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
