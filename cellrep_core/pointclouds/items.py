"""The stored form of one cell that models read: what ``pointclouds/`` writes and ``models/`` trains on (here, so
that the point-cloud layer never imports the model layer above it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CloudItem:
    """One cell's stored cloud: dense punctate points ``[n, 4]`` or surface points ``[n, 3]`` + SDF grid; for the
    beta-VAEs of ``models/statcell.py`` instead masks in the nucleus frame ``volume [C, S, S, S]`` and a
    ``condition`` vector (``points`` empty)."""

    cell_id: str
    points: np.ndarray
    sdf: np.ndarray | None = None
    volume: np.ndarray | None = None
    condition: np.ndarray | None = None
