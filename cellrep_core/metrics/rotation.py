"""Rotation invariance of learned codes."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from cellrep_core.models.inference import embed_points
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
    """Code change of a batch of model inputs (``[n, N, D]`` points or ``[n, C, S, S, S]`` volumes) under each
    rotation, rotated the family's way (``zoo.rotate_inputs``), measured two ways:

    - ``mean``/``std``/``max``: ``‖z_R − z‖ / (‖z‖ + ‖z_R‖)`` (REFERENCE.md, the published metric);
    - ``spread_mean``/``spread_std``: ``‖z_R − z‖`` over the mean distance between the codes of two different
      inputs of the batch (0 = invariant, 1 = a turn moves the code as far as another cell is away); NaN for
      fewer than two distinct codes. Unlike the published ratio it does not shrink when every code carries
      the same large offset (mean pooling of biased features does that), which makes a code that hardly
      depends on its input look invariant.
    """
    z0 = embed_points(model, points)
    zr = [embed_points(model, rotate_inputs(model.cfg, points, r)) for r in rotations]
    errs = np.concatenate([relative_error(z0, z) for z in zr])
    moved = np.concatenate([np.linalg.norm(z - z0, axis=-1) for z in zr])
    spread = float(pdist(z0.astype(np.float64)).mean()) if len(z0) >= 2 else 0.0
    rel_spread = moved / spread if spread > 0 else np.full_like(moved, np.nan)
    return {
        "mean": float(errs.mean()),
        "std": float(errs.std()),
        "max": float(errs.max()),
        "n": int(errs.size),
        "spread_mean": float(rel_spread.mean()),
        "spread_std": float(rel_spread.std()),
        "code_spread": spread,
    }
