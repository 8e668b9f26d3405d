"""Fault injection at write stages, for tests and ``make bench-faults`` (off unless ``CELLREP_FAULT`` is set).

``CELLREP_FAULT=<point>[:<n>][@<seconds>]`` kills the process with SIGKILL the ``n``-th time (default 1st) it
reaches ``point``; with ``@seconds`` a timer kills it that long after reaching the point, so the kill lands
inside the write that follows (a Lance commit, a Parquet write). Points: ``parquet_replace`` (a point-cloud
file written to its temporary name, before the rename), ``duckdb_commit`` (a warehouse transaction's
statements done, before COMMIT), ``lance_commit`` (before a feature-store commit), ``epoch_end`` (a training
epoch's checkpoint saved), ``model_commit`` (a version's weights, config and lineage written, before
``model.pt.tmp`` is renamed), ``record_write`` (a version's config, lineage or whitening written to its temporary
name), ``report_write`` (a plot or report page written to its temporary name, before the rename).
"""

from __future__ import annotations

import os
import signal
import threading

_hits: dict[str, int] = {}


def _spec() -> tuple[str, int, float | None] | None:
    raw = os.environ.get("CELLREP_FAULT", "").strip()
    if not raw:
        return None
    delay = None
    if "@" in raw:
        raw, d = raw.split("@", 1)
        delay = float(d)
    name, _, n = raw.partition(":")
    return name, int(n or 1), delay


def point(name: str) -> None:
    """A write stage: killed here when ``CELLREP_FAULT`` names it (see the module docstring)."""
    spec = _spec()
    if spec is None or spec[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != spec[1]:
        return
    if spec[2] is None:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Timer(spec[2], os.kill, (os.getpid(), signal.SIGKILL)).start()
