"""``cellrep ui`` serves Dagster on 127.0.0.1 and leaves no process behind when interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_binds_loopback_unless_told_otherwise():
    import inspect

    from orchestration.serve import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    cli = subprocess.run([str(Path(sys.executable).with_name("cellrep")), "ui", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--host" in cli and "default 127.0.0.1" in cli


def test_ui_serves_and_ctrl_c_stops_every_process(tmp_path):
    port = _free_port()
    env = {**os.environ, "CELLREP_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster")}
    cli = str(Path(sys.executable).with_name("cellrep"))
    proc = subprocess.Popen([cli, "ui", "--port", str(port)], env=env, cwd=ROOT, start_new_session=True)
    try:
        info = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and info is None:
            time.sleep(2)
            try:
                info = urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).read()
            except OSError:
                assert proc.poll() is None, "cellrep ui exited before serving"
        assert info is not None and b"dagster_webserver_version" in info
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert proc.wait(timeout=60) == 0
        # nothing of the dagster process group is left, and the port is free again
        time.sleep(1)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=3)
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert f"-p {port}" not in out and f"--port {port}" not in out
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
