"""Reading and validating one cell's image file, and reading a manifest of cells."""

from __future__ import annotations

import contextlib
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from cellrep_core.errors import CellInputError

MANIFEST_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "dataset",
    "plate_id",
    "well",
    "drug",
    "concentration",
    "structure_name",
    "shape_type",
    "label",
    "path",
    "channels",
    "voxel_size_um",
    "seed",
)
REQUIRED_MANIFEST_COLUMNS: tuple[str, ...] = ("cell_id", "path", "channels")
MANIFEST_DEFAULTS: dict[str, object] = {
    "dataset": "",
    "plate_id": "",
    "well": "",
    "drug": "",
    "concentration": float("nan"),
    "structure_name": "",
    "shape_type": "",
    "label": "",
    "voxel_size_um": 1.0,
    "seed": -1,
}
ALL_FOREGROUND_FRACTION = 0.99
_NUMERIC_COLUMNS = {"voxel_size_um": float, "seed": int, "concentration": float}
_STRING_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c not in _NUMERIC_COLUMNS)


def split_list(value: object) -> list[str]:
    """The entries of a manifest's ';'-joined list (channels, paths of a multi-file field of view), or of a list;
    blanks dropped."""
    if isinstance(value, list | tuple):
        return [str(c).strip() for c in value if str(c).strip()]
    return [c.strip() for c in str(value if value is not None else "").split(";") if c.strip()]


def channel_names(channels: object) -> list[str]:
    """The channel names of a channel spec (``nucleus;structure`` or ``nucleus=0;structure=3``)."""
    return [name for name, _ in parse_channels(channels)]


def cell_seed(cell_id: str, seed: int = 0) -> int:
    """A stable integer seed of one cell under a seed (CRC32: the same in every process and batch order): the
    seed of a cell's point draws."""
    return zlib.crc32(f"{seed}:{cell_id}".encode())


def parse_channels(channels: list[str] | tuple[str, ...] | str) -> list[tuple[str, int | None]]:
    """Channel spec -> [(name, index or None)]: ``'nucleus;structure'`` (all channels of the file, in
    order) or ``'nucleus=0;cell=1;structure=3'`` (named channels of a file that may hold more)."""
    out: list[tuple[str, int | None]] = []
    for entry in split_list(channels):
        name, sep, idx = entry.partition("=")
        if sep:
            try:
                out.append((name.strip(), int(idx)))
            except ValueError:
                out.append((entry, -1))  # reported as an unknown channel below
        else:
            out.append((entry, None))
    return out


@contextlib.contextmanager
def _tifffile_errors():
    """Collect the errors tifffile logs while reading (e.g. an invalid page offset in a truncated file)
    instead of printing them: the cell's quarantine reason carries them."""
    reported: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reported.append(record.getMessage())

    lg = logging.getLogger("tifffile")
    handler, propagate = _Collect(logging.ERROR), lg.propagate
    lg.addHandler(handler)
    lg.propagate = False
    try:
        yield reported
    finally:
        lg.removeHandler(handler)
        lg.propagate = propagate


MAX_IMAGE_BYTES = 4 * 2**30


class _TooLarge(Exception):
    def __init__(self, nbytes: int) -> None:
        super().__init__(nbytes)
        self.nbytes = nbytes


def max_image_bytes() -> int:
    """The largest image (bytes of pixels its header declares) a cell may have: ``CELLREP_MAX_IMAGE_BYTES``,
    default 4 GiB. A header that declares more is refused before any pixel is read."""
    import os

    raw = os.environ.get("CELLREP_MAX_IMAGE_BYTES", "")
    try:
        return int(float(raw)) if raw else MAX_IMAGE_BYTES
    except ValueError:
        raise ValueError(f"CELLREP_MAX_IMAGE_BYTES={raw!r} is not a number of bytes") from None


def _declared_bytes(tif) -> int:
    """Bytes of pixels the file's header declares (all series), without reading them."""
    total = 0
    for s in tif.series:
        n = 1
        for d in s.shape:
            n *= int(d)
        total += n * np.dtype(s.dtype).itemsize
    return total


def read_cell_image(path: Path, channels: list[str] | str, cell_id: str) -> dict[str, np.ndarray]:
    """Read one cell's CZYX (or single-channel ZYX) TIFF / OME-TIFF and return channel name -> ZYX array.

    ``channels`` names every channel of the file in order, or picks channels by index (``name=index``).
    """
    path = Path(path)
    spec = parse_channels(channels)
    names = [n for n, _ in spec]
    indexed = [i for _, i in spec if i is not None]
    if (
        not names
        or len(set(names)) != len(names)
        or (indexed and len(indexed) != len(spec))
        or any(i < 0 for i in indexed)
    ):
        raise CellInputError(
            cell_id,
            path,
            "unknown_channel",
            f"the manifest lists channels {names!r} for {path}; list each channel of the file once, in "
            "file order, joined by ';' (e.g. 'nucleus;structure'), or pick channels by index "
            "(e.g. 'nucleus=0;cell=1;structure=3').",
        )
    if not path.is_file():
        raise CellInputError(
            cell_id,
            path,
            "unreadable",
            f"{path} does not exist; fix the manifest's path column (relative to the manifest's folder, "
            "or to --data-root) or restore the file.",
        )
    limit = max_image_bytes()
    try:
        with _tifffile_errors() as reported, tifffile.TiffFile(path) as tif:
            declared = _declared_bytes(tif)
            if declared > limit:  # refused from the header, before anything is allocated
                raise _TooLarge(declared)
            arr = tif.asarray()
        if reported:  # tifffile logs (and skips) broken pages instead of raising: a truncated file
            raise ValueError("; ".join(reported))
    except _TooLarge as big:
        raise CellInputError(
            cell_id,
            path,
            "image_too_large",
            f"{path} declares {big.nbytes / 2**30:.1f} GiB of pixels, above the limit of {limit / 2**30:.1f} GiB "
            f"per image (CELLREP_MAX_IMAGE_BYTES); crop or downsample it, or raise the limit if the machine has "
            "the memory.",
        ) from None
    except Exception as exc:  # any reader failure means the file cannot be used
        raise CellInputError(
            cell_id,
            path,
            "unreadable",
            f"{path} cannot be read as a TIFF ({type(exc).__name__}: {exc}); the file is truncated, "
            "corrupt or not a TIFF: re-export it as a CZYX TIFF or drop the cell from the manifest.",
        ) from exc
    arr = np.asarray(arr)
    while arr.ndim > 4 and arr.shape[0] == 1:
        arr = arr[0]
    if indexed and arr.ndim == 4:
        if max(indexed) >= arr.shape[0]:
            raise CellInputError(
                cell_id,
                path,
                "unknown_channel",
                f"{path} has {arr.shape[0]} channels, the manifest asks for index {max(indexed)}; channel "
                "indices start at 0.",
            )
        planes = arr[indexed]
    elif indexed and arr.ndim == 3 and indexed == [0]:
        planes = arr[None]
    elif not indexed and arr.ndim == 4 and arr.shape[0] == len(names):
        planes = arr
    elif not indexed and arr.ndim == 3 and len(names) == 1:
        planes = arr[None]
    else:
        raise CellInputError(
            cell_id,
            path,
            "wrong_dimensionality",
            f"{path} holds an array of shape {tuple(arr.shape)}, expected CZYX with C={len(names)} for "
            f"channels {names!r} (or ZYX for one channel); fix the manifest's channels column or "
            "re-export the image as CZYX.",
        )
    if np.issubdtype(planes.dtype, np.floating):
        bad = [n for n, plane in zip(names, planes, strict=True) if not np.isfinite(plane).all()]
        if bad:
            raise CellInputError(
                cell_id,
                path,
                "nan_intensity",
                f"{path} has NaN or infinite values in channel(s) {bad!r}; re-export the image with "
                "finite values (e.g. replace NaN by 0) or drop the cell.",
            )
    return {name: planes[k] for k, name in enumerate(names)}


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


def resolve_cell_path(manifest_path: Path, cell_path: str | Path) -> Path:
    """Return a manifest row's file path, resolved relative to the manifest's folder."""
    p = Path(cell_path)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def _to_int(value: str) -> int:
    """Parse an integer written either as '12' or as '12.0'."""
    try:
        return int(value)
    except ValueError:
        f = float(value)
        if not f.is_integer():
            raise
        return int(f)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest (CSV or Parquet), check its columns and fill optional ones with defaults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"manifest {path} lacks required column(s) {missing}; a manifest needs at least "
            f"{list(REQUIRED_MANIFEST_COLUMNS)} (channels as ';'-joined names in file order)."
        )
    df = df.copy()
    for col, default in MANIFEST_DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    for col in _STRING_COLUMNS:
        df[col] = df[col].astype(object).where(df[col].notna(), "").map(str).astype(str)
    for col, kind in _NUMERIC_COLUMNS.items():
        values = df[col].astype(object).where(df[col].notna(), "").map(str).str.strip()
        values = values.where(values != "", str(MANIFEST_DEFAULTS[col]))
        try:
            df[col] = values.map(_to_int if kind is int else float).astype("int64" if kind is int else "float64")
        except ValueError as exc:
            raise ValueError(f"manifest {path}: column {col!r} has a non-numeric value ({exc})") from exc
    empty = [c for c in REQUIRED_MANIFEST_COLUMNS if (df[c] == "").any()]
    if empty:
        raise ValueError(f"manifest {path} has empty values in required column(s) {empty}")
    # duplicate cell ids are not an error of the whole manifest: ingestion quarantines the repeats
    extras = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    return df[list(MANIFEST_COLUMNS) + extras].reset_index(drop=True)


FOV_CHANNELS: tuple[str, ...] = ("cell_labels", "nucleus_labels", "structure")


def read_fov_images(files: list[Path], channels: list[str], fov_id: str) -> dict[str, np.ndarray]:
    """Read a field of view's label images: one multi-channel file, or one file per channel (same order).

    Channel names: ``cell_labels`` (required), ``nucleus_labels`` and ``structure`` (optional).
    """
    unknown = [c for c in channels if c not in FOV_CHANNELS]
    if unknown or "cell_labels" not in channels:
        raise CellInputError(
            fov_id,
            files[0] if files else None,
            "unknown_channel",
            f"field-of-view channels {channels!r}: each must be one of {list(FOV_CHANNELS)} and "
            "'cell_labels' is required; fix the manifest's channels column.",
        )
    if len(files) == 1:
        return read_cell_image(files[0], channels, fov_id)
    if len(files) != len(channels):
        raise CellInputError(
            fov_id,
            files[0],
            "unknown_channel",
            f"{len(files)} files for {len(channels)} channels {channels!r}; list one file per channel "
            "(';'-joined, same order) or one multi-channel file.",
        )
    images: dict[str, np.ndarray] = {}
    for f, name in zip(files, channels, strict=True):
        images.update(read_cell_image(f, [name], fov_id))
    shapes = {n: a.shape for n, a in images.items()}
    if len(set(shapes.values())) != 1:
        raise CellInputError(
            fov_id,
            files[0],
            "wrong_dimensionality",
            f"the field of view's images differ in shape {shapes}; they must be the same ZYX grid.",
        )
    return images


def parse_voxel_size(row: dict, cell_id: str, path: Path | str) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in um from ``voxel_size_zyx_um`` ('0.29,0.108,0.108') or, failing that,
    the OME metadata of the file, or an isotropic ``voxel_size_um``."""
    text = str(row.get("voxel_size_zyx_um") or "").strip()
    if text:
        try:
            vals = tuple(float(v) for v in text.replace(";", ",").split(","))
        except ValueError:
            vals = ()
        if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
            raise CellInputError(
                cell_id,
                path,
                "bad_voxel_size",
                f"voxel_size_zyx_um {text!r} must be three positive numbers 'z,y,x' in micrometres.",
            )
        return vals  # type: ignore[return-value]
    ome = ome_voxel_size(Path(path))
    if ome is not None:
        return ome
    v = float(row.get("voxel_size_um") or 1.0)
    return (v, v, v)


def ome_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """PhysicalSizeZ/Y/X of an OME-TIFF's first image, or None when the file has no such metadata."""
    if not Path(path).name.lower().endswith((".ome.tif", ".ome.tiff")):
        return None  # only OME-TIFFs carry it: do not open every plain TIFF a second time
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader, not here
        return None
    if not xml:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            try:
                return tuple(float(el.attrib[f"PhysicalSize{a}"]) for a in "ZYX")  # type: ignore[return-value]
            except (KeyError, ValueError):
                return None
    return None


def write_mask_tiff(path: Path, masks: np.ndarray) -> None:
    """Write CZYX masks as a uint8 0/255 TIFF, via a temporary file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tiff.tmp")
    tifffile.imwrite(tmp, np.where(np.asarray(masks, dtype=bool), 255, 0).astype(np.uint8), compression="zlib")
    tmp.replace(path)


def write_cell_tiff(path: Path, images: dict[str, np.ndarray]) -> None:
    """Write a cell's channels (same ZYX shape) as one CZYX TIFF, atomically: masks as 0/255, and float32
    for every channel when there is a ``raw`` intensity channel."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "raw" not in images:
        write_mask_tiff(path, np.stack([np.asarray(a) > 0 for a in images.values()]))
        return
    planes = [
        np.asarray(a, np.float32) if n == "raw" else np.where(np.asarray(a) > 0, 255.0, 0.0) for n, a in images.items()
    ]
    stack = np.stack(planes).astype(np.float32)
    tmp = path.with_suffix(".tiff.tmp")
    tifffile.imwrite(tmp, stack, compression="zlib")
    tmp.replace(path)


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


def structure_key(structure_name: object, shape_type: object) -> str:
    """The group a cell is routed by: its structure name, else its shape type."""
    name = str(structure_name or "").strip()
    return name if name and name.lower() != "nan" else str(shape_type or "polymorphic")
