"""A manifest of cells: its columns and reader, the channel and list notation it uses, and per-cell keys (the
seed of a cell's point draws, the structure group it is routed by). Images: images.py; validation: validate.py."""

from __future__ import annotations

import zlib
from pathlib import Path

import pandas as pd

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


def structure_key(structure_name: object, shape_type: object) -> str:
    """The group a cell is routed by: its structure name, else its shape type."""
    name = str(structure_name or "").strip()
    return name if name and name.lower() != "nan" else str(shape_type or "polymorphic")
