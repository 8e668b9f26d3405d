"""Validating one cell's channel arrays for its shape type, and the quarantine row of a cell that fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from cellrep_core.data.images import read_cell_image
from cellrep_core.errors import CellInputError

ALL_FOREGROUND_FRACTION = 0.99


def _require_channels(images: dict, names: tuple[str, ...], cell_id: str, path: Path | str | None) -> None:
    """Raise ``unknown_channel`` when one of ``names`` is missing from ``images``."""
    missing = [n for n in names if n not in images]
    if missing:
        raise CellInputError(
            cell_id,
            path,
            "unknown_channel",
            f"{path} has channels {sorted(images)!r} but lacks {missing!r}; name the channels "
            f"{list(names)!r} in the manifest's channels column, in file order.",
        )


def _check_same_zyx(arrays: dict[str, np.ndarray], cell_id: str, path: Path | str | None) -> None:
    """Raise ``wrong_dimensionality`` unless all arrays are 3-D with the same shape."""
    shapes = {n: tuple(a.shape) for n, a in arrays.items()}
    if any(len(s) != 3 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise CellInputError(
            cell_id,
            path,
            "wrong_dimensionality",
            f"{path} has channel shapes {shapes}; every channel must be one ZYX volume of the same shape: "
            "re-export the image as CZYX.",
        )


def _check_finite(arrays: dict[str, np.ndarray], cell_id: str, path: Path | str | None) -> None:
    """Raise ``nan_intensity`` when a float channel holds NaN or inf."""
    bad = [n for n, a in arrays.items() if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()]
    if bad:
        raise CellInputError(
            cell_id,
            path,
            "nan_intensity",
            f"{path} has NaN or infinite values in channel(s) {bad!r}; re-export the image with finite "
            "values or drop the cell.",
        )


# a mask with intermediate values along the edge of its full-valued region (an 8-bit mask resampled with linear
# interpolation: 0 … 255) is cut at this fraction of its maximum, where the original mask's boundary lies
INTERPOLATED_MASK_THRESHOLD = 0.5


def binarize(arr: np.ndarray) -> np.ndarray:
    """A mask channel as bool.

    Binary masks (one non-zero value: 0/1, 0/255, one label) keep every non-zero voxel, and so do label images
    (pieces of a few constant values). A mask resampled with interpolation (an 8-bit mask zoomed with linear
    interpolation: 0 … 255 along its edges) is cut at ``INTERPOLATED_MASK_THRESHOLD`` of its maximum; ``> 0`` would
    grow every object by the interpolation's halo. A mask counts as interpolated when its intermediate values
    are many (more than 8 distinct, none holding a quarter of them) and every object holding one also holds
    full-valued voxels (a ramp from the object's core to the background)."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return a
    nz = a > 0
    if not nz.any():
        return nz
    sl = ndimage.find_objects(nz.astype(np.uint8))[0]
    sub = a[sl]
    mx = sub.max()
    top = sub == mx
    mid = (sub > 0) & ~top
    n_mid = int(mid.sum())
    if n_mid == 0:
        return nz
    _, counts = np.unique(sub[mid], return_counts=True)
    if len(counts) <= 8 or counts.max() >= 0.25 * n_mid:
        return nz
    comp, n = ndimage.label(sub > 0)
    has_top = np.zeros(n + 1, bool)
    has_top[np.unique(comp[top])] = True
    if not has_top[comp[mid]].all():
        return nz
    return a >= INTERPOLATED_MASK_THRESHOLD * float(mx)


def _check_nucleus(
    nucleus: np.ndarray, cell_id: str, path: Path | str | None, what: str = "nucleus"
) -> np.ndarray:
    """Return the ``what`` (nucleus or cell) mask, raising ``empty_<what>`` or ``all_foreground``."""
    mask = binarize(nucleus)
    if not mask.any():
        raise CellInputError(
            cell_id,
            path,
            f"empty_{what}",
            f"{path} has an empty {what} mask; re-run the {what} segmentation for this cell or drop it.",
        )
    if mask.mean() >= ALL_FOREGROUND_FRACTION:
        raise CellInputError(
            cell_id,
            path,
            "all_foreground",
            f"{path}: the {what} mask fills {mask.mean():.1%} of the volume, so it is not a segmentation "
            f"of one {what}; check the channel order in the manifest or re-segment the cell.",
        )
    return mask


def validate_polymorphic(
    images: dict[str, np.ndarray], cell_id: str, path: Path | str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (container mask, structure mask inside it) as bool arrays, or raise CellInputError.

    The container is the ``cell`` channel when the image has one (cytoplasmic structures such as
    mitochondria), the ``nucleus`` channel otherwise (nuclear structures such as nucleoli).
    """
    container_name = "cell" if "cell" in images else "nucleus"
    _require_channels(images, (container_name, "structure"), cell_id, path)
    arrays = {n: np.asarray(images[n]) for n in (container_name, "structure")}
    _check_same_zyx(arrays, cell_id, path)
    _check_finite(arrays, cell_id, path)
    container = _check_nucleus(arrays[container_name], cell_id, path, what=container_name)
    structure = binarize(arrays["structure"])
    if not structure.any():
        raise CellInputError(
            cell_id,
            path,
            "empty_segmentation",
            f"{path} has an empty structure segmentation; re-run the structure segmentation for this cell "
            "or drop it from the manifest.",
        )
    if structure.mean() >= ALL_FOREGROUND_FRACTION:
        raise CellInputError(
            cell_id,
            path,
            "all_foreground",
            f"{path}: the structure mask fills {structure.mean():.1%} of the volume; the segmentation "
            "failed (threshold too low or inverted): re-segment the cell.",
        )
    inside = structure & container
    if not inside.any():
        raise CellInputError(
            cell_id,
            path,
            "structure_outside_" + container_name,
            f"{path}: the structure mask ({int(structure.sum())} voxels) lies entirely outside the "
            f"{container_name} mask; check that the {container_name} and structure channels belong to the "
            "same cell and are in the manifest's channel order.",
        )
    return container, inside


def validate_punctate(
    images: dict[str, np.ndarray], cell_id: str, path: Path | str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (raw intensity as float32, container mask as bool), or raise CellInputError.

    The container is the ``cell`` channel when the image has one (cytoplasmic punctate structures: the whole
    cell is sampled), the ``nucleus`` channel otherwise (nuclear structures: the nucleus, dilated by the
    sampler)."""
    container = "cell" if "cell" in images else "nucleus"
    _require_channels(images, ("raw", container), cell_id, path)
    arrays = {n: np.asarray(images[n]) for n in ("raw", container)}
    _check_same_zyx(arrays, cell_id, path)
    _check_finite(arrays, cell_id, path)
    mask = _check_nucleus(arrays[container], cell_id, path, what=container)
    raw = arrays["raw"].astype(np.float32, copy=False)
    if not np.any(raw[mask] != 0):
        raise CellInputError(
            cell_id,
            path,
            "empty_intensity",
            f"{path}: the raw intensity is 0 everywhere inside the {container}; check the channel order in the "
            "manifest or re-acquire/re-export the raw channel.",
        )
    return raw, mask


QUARANTINE_COLUMNS = ["cell_id", "dataset", "plate_id", "stage", "reason", "detail", "source_path"]


def quarantine_row(err: CellInputError, dataset: str, plate_id: str) -> dict:
    """A quarantine table row from a cell error."""
    return {
        "cell_id": err.cell_id,
        "dataset": dataset,
        "plate_id": plate_id,
        "stage": err.stage,
        "reason": err.reason,
        "detail": err.detail,
        "source_path": err.path,
    }


def validate_cell(path: Path, channels: list[str], shape_type: str, cell_id: str):
    """Read and validate one cell's images; returns the arrays the sampler needs."""
    return validate_cell_arrays(read_cell_image(path, channels, cell_id), shape_type, cell_id, path)


def validate_cell_arrays(images: dict, shape_type: str, cell_id: str, path: Path):
    """Validate one cell's channel arrays for its shape type; returns the arrays the sampler needs."""
    if shape_type == "punctate":
        return validate_punctate(images, cell_id, str(path))
    if shape_type == "polymorphic":
        return validate_polymorphic(images, cell_id, str(path))
    raise CellInputError(
        cell_id,
        path,
        "unknown_shape_type",
        f"shape_type {shape_type!r} in the manifest; use 'punctate' or 'polymorphic'",
    )
