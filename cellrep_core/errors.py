"""Errors that name the cell, the file and the fix."""

from __future__ import annotations

from pathlib import Path


class CellInputError(ValueError):
    """A single cell's input cannot be used; the rest of its batch goes on.

    ``stage`` says where it was caught (``ingest``, ``pointcloud``, ...), ``reason`` is a short
    machine-readable code (``unreadable``, ``empty_segmentation``, ...), ``detail`` the sentence a
    person reads, including the fix.
    """

    def __init__(
        self,
        cell_id: str,
        path: str | Path | None,
        reason: str,
        detail: str,
        stage: str = "ingest",
    ) -> None:
        self.cell_id = str(cell_id)
        self.path = str(path) if path is not None else ""
        self.reason = reason
        self.detail = detail
        self.stage = stage
        super().__init__(f"cell {self.cell_id} ({self.path or 'no file'}): {reason}: {detail}")


class CorruptFileError(RuntimeError):
    """A stored file (point-cloud Parquet, checkpoint) cannot be read: torn by a crash or damaged on disk. The
    message names the file and the asset whose materialization rewrites it."""


class DiskFullError(OSError):
    """A write ran out of space. The message names the file, what was being written and the free space left; the
    write was not kept (temporary file removed, transaction rolled back, commit not made), so materializing
    again once there is space gives the same result as a run that never failed."""


def is_disk_full(err: BaseException) -> bool:
    """Whether an error (OSError, DuckDB IOException, Lance error) is a full device."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    msg = str(err).lower()
    return "no space left on device" in msg or "disk quota exceeded" in msg or "os error 28" in msg


def disk_full(err: BaseException, path: str | Path, what: str) -> DiskFullError:
    """The ``DiskFullError`` of a failed write of ``what`` to ``path``, with the free space of its device."""
    import errno
    import shutil

    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free on the device of {probe}"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on device writing {what} to {path} ({free}); nothing of "
                                       "this write was kept: free space (or point CELLREP_HOME at a larger disk) "
                                       "and materialize again")
