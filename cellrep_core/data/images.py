"""Reading and writing one cell's (or one field of view's) image files: TIFF / OME-TIFF channels with a size
guard read from the header before anything is allocated, and voxel sizes."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import tifffile

from cellrep_core.data.cells import parse_channels
from cellrep_core.errors import CellInputError


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


def _channel_spec(channels: list[str] | str, cell_id: str, path: Path) -> tuple[list[str], list[int]]:
    """Channel names in file order, and the picked indices (empty: every channel of the file, in order)."""
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
    return names, indexed


def _read_tiff(path: Path, cell_id: str) -> np.ndarray:
    """The file's pixels; refused from the header when it declares more than the size limit."""
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
    return arr


def _planes(arr: np.ndarray, names: list[str], indexed: list[int], cell_id: str, path: Path) -> np.ndarray:
    """The named channels as ``[C, Z, Y, X]``."""
    if indexed and arr.ndim == 4:
        if max(indexed) >= arr.shape[0]:
            raise CellInputError(
                cell_id,
                path,
                "unknown_channel",
                f"{path} has {arr.shape[0]} channels, the manifest asks for index {max(indexed)}; channel "
                "indices start at 0.",
            )
        return arr[indexed]
    if (indexed and arr.ndim == 3 and indexed == [0]) or (not indexed and arr.ndim == 3 and len(names) == 1):
        return arr[None]
    if not indexed and arr.ndim == 4 and arr.shape[0] == len(names):
        return arr
    raise CellInputError(
        cell_id,
        path,
        "wrong_dimensionality",
        f"{path} holds an array of shape {tuple(arr.shape)}, expected CZYX with C={len(names)} for "
        f"channels {names!r} (or ZYX for one channel); fix the manifest's channels column or "
        "re-export the image as CZYX.",
    )


def read_cell_image(path: Path, channels: list[str] | str, cell_id: str) -> dict[str, np.ndarray]:
    """Read one cell's CZYX (or single-channel ZYX) TIFF / OME-TIFF and return channel name -> ZYX array.

    ``channels`` names every channel of the file in order, or picks channels by index (``name=index``).
    """
    path = Path(path)
    names, indexed = _channel_spec(channels, cell_id, path)
    planes = _planes(_read_tiff(path, cell_id), names, indexed, cell_id, path)
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
