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
