"""Rotation invariance of learned codes."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cellrep_core.models.train import embed_points
from cellrep_core.models.zoo import rotate_inputs


def rotate_points(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate the xyz columns of ``[..., N, D]`` points; extra columns (intensity) are left alone."""
    out = points.copy()
    out[..., :3] = points[..., :3] @ rot.T
    return out


def random_rotations(n: int, seed: int) -> np.ndarray:
    """``[n, 3, 3]`` rotations drawn uniformly from SO(3)."""
    return Rotation.random(n, random_state=seed).as_matrix().astype(np.float32)


def z90_rotations() -> np.ndarray:
    """The three non-trivial 90° rotations about z (the published protocol)."""
    return Rotation.from_euler("z", [[90], [180], [270]], degrees=True).as_matrix().astype(np.float32)


def relative_error(z0: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """‖z_R − z‖ / (‖z‖ + ‖z_R‖) per row."""
    num = np.linalg.norm(zr - z0, axis=-1)
    den = np.linalg.norm(z0, axis=-1) + np.linalg.norm(zr, axis=-1)
    return num / np.maximum(den, 1e-12)


def rotation_invariance_error(model, points: np.ndarray, rotations: np.ndarray) -> dict[str, float]:
    """Mean/std/max relative code change of a batch of model inputs (``[n, N, D]`` points or ``[n, C, S, S, S]``
    volumes) under each rotation, rotated the family's way (``zoo.rotate_inputs``)."""
    z0 = embed_points(model, points)
    errs = np.concatenate(
        [relative_error(z0, embed_points(model, rotate_inputs(model.cfg, points, r))) for r in rotations]
    )
    return {
        "mean": float(errs.mean()),
        "std": float(errs.std()),
        "max": float(errs.max()),
        "n": int(errs.size),
    }
