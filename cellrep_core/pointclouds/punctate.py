"""Intensity-weighted point clouds for punctate structures (Vasan et al. 2025).

The published recipe samples mask voxels with weight ``exp(skew * p)`` where ``p = I / max(I)`` and
``skew = lam * 3 * (mean - median) / std`` (Pearson's second skewness coefficient of the intensities,
times ``lam``; ``lam`` = 100 for nuclear, 500 for cytoplasmic structures, whose skew is also floored at
25). The exponent can be in the hundreds: the weights are computed in log space (the maximum
subtracted) so they never overflow, and sampling is WITH replacement so ``n_dense`` points always come
back.

Collapse guard: the published exponent reaches the hundreds for cytoplasmic structures (lam = 500;
70 to 180 on the synthetic test images). Then a voxel 1 % dimmer than the brightest weighs e^-1 or
less, so the cloud sits on the one or two brightest voxels, and a cell with many equally bright puncta
becomes one or two spots: a punctum's brightest voxel depends on where its centre falls inside the
voxel (10 to 30 % lower for a sigma = 1 voxel spot centred off the voxel grid), and the exponent turns
that into e^-10 or less. The exponent is therefore clipped to ``[-max_exponent, max_exponent]`` with
``MAX_EXPONENT`` = 25 by default, the published floor for cytoplasmic structures (``None`` keeps the
published value). At 25 a voxel at 90 % of the maximum weighs e^-2.5 ~ 8 % of the brightest, at 50 %
e^-12.5, and background at p ~ 0.05 ~ e^-24 (negligible even summed over 10^5 voxels). Measured on 12
equally bright Gaussian puncta at random sub-voxel positions in a 48^3 image (share of 4096 points
> 1 % per punctum, 100 % of the points within 2 voxels of a centre in every case):

    exponent      published (~140)   50     35      25      15       10
    sigma 1.0     2/12               5-8    9       11-12   12       12 (only 80 % near a punctum)
    sigma 1.5     1-2/12             9-12   12      12      12       12 (87 % near)

Consequence: with the default cap, cytoplasmic structures (lam = 500, floor 25) always use exponent 25,
and nuclear ones (lam = 100, 14 to 35 on the test images) use ``min(skew, 25)``; pass
``max_exponent=None`` for the published behaviour, which stays numerically stable (log-space weights,
sampling with replacement). An effective-sample-size guard (lower the exponent until
``(sum w)^2 / sum w^2`` reaches N voxels) was tried and rejected: on sparse puncta in a large mask it
reaches N by leaking mass onto the background (a third of the points left the puncta in a 4-blob
image) instead of spreading it over the puncta. ``sampling_weights`` reports the skew, the exponent
actually used and the effective sample size.

Smoothing (``SMOOTH_SIGMA`` = 1 voxel): the weights and the 4th column use the image smoothed by a
Gaussian of sd 1 voxel, not the raw voxels. With raw voxels the cloud sits on the ~7 brightest voxels of
a few puncta, and resampling the image (a turned or sub-voxel-shifted cell, ``metrics/end_to_end.py``)
changes which voxels those are: a punctum's brightest voxel drops by up to ~30 % when its centre moves off
the grid, its smoothed maximum by at most ~16 %, and noise no longer picks the voxel. Measured on 12
synthetic punctate cells (64^3, 256 puncta, data set seeds 9001 and 31337, 2 random turns each, 20,480
points), random-weight tiny VN-DGCNN, code change over the mean distance between cells, turned / noise
floor / sub-voxel shift without a turn, per seed:

    raw voxels (before)        0.39 / 0.07 / 0.43      0.37 / 0.11 / 0.53
    smoothed, sigma 1          0.18 / 0.09 / 0.19      0.11 / 0.08 / 0.15
    smoothed, sigma 1.5        0.09 / 0.06 / 0.14      0.13 / 0.10 / 0.15
    exponent 10, raw           0.42 / 0.21 / 0.37

and a trained ``punctate_demo`` (60 cells, seed 77): 0.62 / 0.085 / 0.44 before, 0.16 / 0.074 / 0.18
smoothed. Coverage of the same cells (points within 2 voxels of a true punctum centre / beyond 3 /
effective number of puncta, exp of the entropy of the points' nearest-punctum shares / of voxels):
raw 100 % / 0 / 14 / 7, sigma 1 99.7 % / 0 / 22 / 35, sigma 1.5 96 % / 0 / 25 / 94; exponent 10 (raw)
90 % within 2 voxels, 167 puncta, 290 voxels. So sigma 1 keeps the points on the puncta and spreads
them over more of them; sigma 1.5 blurs them off the centres, and a lower exponent leaks mass between
the puncta without helping.
Sub-voxel positions (a uniform point in the drawn voxel's cube, ``subvoxel=True``, not the default) were
measured too: alone they double the noise floor (0.20; the tiny model sees fewer exact repeats), with
smoothing they change nothing (0.19 / 0.09), and the image models count a dense cloud's distinct voxels.
The price of smoothing: nearby puncta add up, so in an image of 12 equal puncta where some lie 3-4 voxels
apart the pair outweighs the rest (2-3 of 12 puncta get > 1 % of the points in two of three random
layouts, 9-11 unsmoothed); well separated equal puncta are still all covered (11-12 of 12 in
``tests/test_pointclouds.py``).

Deviations from the published script, on purpose: statistics are over mask voxels only (the script
used the whole crop with the outside set to its minimum, and zeroed voxels below the mean of the unique
values); the weights and ``p`` use the smoothed image (above); the jitter is Gaussian (sd ``jitter``)
instead of uniform; the centre is the exact mask centroid instead of the rounded one; the 4th column is
``p = I / max(I)`` (smoothed, max over the mask) instead of the raw intensity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cellrep_core.errors import CellInputError

_STAGE = "pointcloud"
MAX_EXPONENT = 25.0
SMOOTH_SIGMA = 1.0


def _ess(log_w: np.ndarray) -> float:
    """Effective sample size of unnormalised log weights."""
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / np.dot(w, w))


def sampling_weights(
    raw: np.ndarray,
    mask: np.ndarray,
    lam: float = 100.0,
    skew_floor: float | None = None,
    max_exponent: float | None = MAX_EXPONENT,
    cell_id: str = "",
    path: str = "",
    smooth_sigma: float = SMOOTH_SIGMA,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mask voxel indices (ZYX, [n, 3]), their sampling probabilities and the exponent used.

    The weights use the image smoothed by a Gaussian of sd ``smooth_sigma`` voxels (0: the raw image);
    ``info["smoothed"]`` holds that image (float64) and ``info["top"]`` its maximum over the mask."""
    raw = np.asarray(raw)
    mask = np.asarray(mask)
    if raw.ndim != 3 or raw.shape != mask.shape:
        raise CellInputError(
            cell_id,
            path,
            "shape_mismatch",
            f"raw image {raw.shape} and mask {mask.shape} must be 3D ZYX arrays of the same shape; "
            "crop both channels from the same cell",
            stage=_STAGE,
        )
    vox = np.argwhere(mask > 0 if mask.dtype != bool else mask)
    if len(vox) == 0:
        raise CellInputError(
            cell_id,
            path,
            "empty_segmentation",
            "the mask has no foreground voxel; check the segmentation channel or drop this cell",
            stage=_STAGE,
        )
    if not np.all(np.isfinite(raw[tuple(vox.T)])):
        raise CellInputError(
            cell_id,
            path,
            "nonfinite_intensity",
            "the raw image has NaN or infinite values inside the mask; re-export the image",
            stage=_STAGE,
        )
    smoothed = smooth_intensity(raw, smooth_sigma)
    intensity = smoothed[tuple(vox.T)]
    top = intensity.max()
    if top <= 0:
        raise CellInputError(
            cell_id,
            path,
            "no_signal",
            f"the raw intensity inside the mask is at most {top:g}; check the channel index or drop this cell",
            stage=_STAGE,
        )
    p = intensity / top
    std = p.std()
    skew = 0.0 if std == 0 else float(lam * 3.0 * (p.mean() - np.median(p)) / std)
    if skew_floor is not None:
        skew = max(skew, float(skew_floor))

    exponent = skew if max_exponent is None else float(np.clip(skew, -max_exponent, max_exponent))
    log_w = exponent * p
    w = np.exp(log_w - log_w.max())
    probs = w / w.sum()
    info = {"skew": skew, "exponent": exponent, "ess": _ess(log_w), "n_mask": int(len(p)), "max_intensity": float(top),
            "smoothed": smoothed, "top": float(top)}
    return vox, probs, info


def smooth_intensity(raw: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """The image as float64, Gaussian-smoothed (sd ``sigma`` voxels, edges repeated) unless ``sigma`` is 0;
    non-finite values (outside the mask, where they are allowed) count as 0."""
    img = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(img)):
        img = np.where(np.isfinite(img), img, 0.0)
    return ndimage.gaussian_filter(img, sigma, mode="nearest") if sigma > 0 else img


def intensity_sample(
    raw: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    n_dense: int = 20480,
    lam: float = 100.0,
    skew_floor: float | None = None,
    jitter: float = 0.001,
    *,
    max_exponent: float | None = MAX_EXPONENT,
    smooth_sigma: float = SMOOTH_SIGMA,
    subvoxel: bool = False,
    cell_id: str = "",
    path: str = "",
) -> np.ndarray:
    """Dense intensity-weighted point cloud (x, y, z, p), centred on the mask centroid, float32.

    ``subvoxel``: each drawn voxel gives a point uniformly distributed over its cube (``[-0.5, 0.5]`` voxel
    about the centre) and ``p`` is the smoothed intensity interpolated (trilinear) there, over its maximum
    in the mask and at most 1; otherwise the point is the voxel centre with Gaussian jitter (sd ``jitter``)
    and ``p`` the voxel's smoothed intensity over that maximum."""
    if n_dense < 1:
        raise ValueError(f"n_dense must be >= 1, got {n_dense}")
    vox, probs, info = sampling_weights(
        raw, mask, lam=lam, skew_floor=skew_floor, max_exponent=max_exponent, cell_id=cell_id, path=path,
        smooth_sigma=smooth_sigma,
    )
    smoothed, top = info["smoothed"], info["top"]
    xyz_all = vox[:, ::-1].astype(np.float64)
    centroid = xyz_all.mean(axis=0)
    idx = rng.choice(len(probs), size=n_dense, replace=True, p=probs)
    if subvoxel:
        xyz = xyz_all[idx] + rng.uniform(-0.5, 0.5, size=(n_dense, 3))
        intensity = ndimage.map_coordinates(smoothed, xyz[:, ::-1].T, order=1, mode="nearest")
    else:
        xyz = xyz_all[idx] + rng.normal(0.0, jitter, size=(n_dense, 3))
        intensity = smoothed[tuple(vox[idx].T)]
    p = np.minimum(intensity / top, 1.0)
    return np.column_stack([xyz - centroid, p]).astype(np.float32)


def training_sample(dense: np.ndarray, n_points: int, rng: np.random.Generator, xyz_scale: float = 0.1) -> np.ndarray:
    """Intensity-weighted subsample of a dense cloud, xyz scaled, intensity mapped onto ``[-r, r]``.

    ``r`` is the largest distance of a drawn point from the cell's centre (the dense cloud's origin, the
    mask centroid), after scaling. The published recipe maps the intensity onto the range of the drawn xyz
    values, ``[min, max]`` over the three columns, which changes when the cell turns, and with it the code
    of a rotation-invariant encoder (``metrics/end_to_end.py``; random-weight VN-DGCNN, 90-degree turns of
    the image, which permute voxels exactly: 0.29 of the distance between two cells against 0.24 for the
    same cell sampled again; with ``[-r, r]`` 0.117 against 0.115). Radii do not change under a rotation
    about the centre, so the sample of a turned dense cloud is the turned sample of the cloud, intensity
    column unchanged; ``r`` keeps the
    intensity on the scale of the coordinates as the published recipe does (for the Chamfer/EMD loss and
    the classical DGCNN's extra input feature). The intensity is min-max normalised over the drawn points
    first; constant intensity carries no information and puts every point at ``r``.
    """
    dense = np.asarray(dense, dtype=np.float64)
    if dense.ndim != 2 or dense.shape[1] != 4 or len(dense) == 0:
        raise ValueError(f"dense must be a non-empty [n, 4] array, got shape {dense.shape}")
    w = np.clip(np.nan_to_num(dense[:, 3], nan=0.0), 0.0, None)
    if w.sum() <= 0:
        w = np.ones(len(dense))
    replace = n_points > np.count_nonzero(w)
    idx = rng.choice(len(dense), size=n_points, replace=replace, p=w / w.sum())
    out = dense[idx].copy()
    out[:, :3] *= xyz_scale
    r = float(np.sqrt((out[:, :3] ** 2).sum(axis=1).max()))
    inten = out[:, 3]
    span = inten.max() - inten.min()
    out[:, 3] = r if span == 0 else -r + (inten - inten.min()) / span * (2.0 * r)
    return out.astype(np.float32)
