"""From a manifest to validated cells: one row per good cell, one quarantine row per bad one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cellrep_core.data.cells import read_cell_image, read_manifest, validate_polymorphic, validate_punctate
from cellrep_core.errors import CellInputError

CELL_COLUMNS = [
    "cell_id",
    "dataset",
    "plate_id",
    "well",
    "drug",
    "structure_name",
    "shape_type",
    "label",
    "source_path",
    "channels",
    "voxel_size_um",
    "seed",
]
QUARANTINE_COLUMNS = ["cell_id", "dataset", "plate_id", "stage", "reason", "detail", "source_path"]


@dataclass
class IngestResult:
    """Cells that passed validation and the quarantined rest."""

    cells: pd.DataFrame
    quarantine: pd.DataFrame


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


def resolve_path(manifest_dir: Path, rel: str, cell_id: str, data_root: Path | None = None) -> Path:
    """Resolve a manifest path, refusing any that leaves the manifest folder (or the data root)."""
    root = manifest_dir.resolve()
    p = (root / rel).resolve()
    allowed = [root] + ([Path(data_root).resolve()] if data_root else [])
    if not any(p == a or a in p.parents for a in allowed):
        raise CellInputError(
            cell_id,
            rel,
            "path_outside_root",
            f"{rel} resolves to {p}, outside {' and '.join(map(str, allowed))}; move the file under the "
            "manifest's folder or pass --data-root",
        )
    return p


def validate_cell(path: Path, channels: list[str], shape_type: str, cell_id: str):
    """Read and validate one cell's images; returns the arrays the sampler needs."""
    images = read_cell_image(path, channels, cell_id)
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


def ingest_manifest(
    manifest: Path, dataset: str | None = None, plate_id: str | None = None, data_root: Path | None = None
) -> IngestResult:
    """Validate every cell of a manifest; bad cells are returned as quarantine rows, never raised."""
    manifest = Path(manifest)
    df = read_manifest(manifest)
    good, bad = [], []
    seen: set[str] = set()
    for row in df.to_dict("records"):
        ds = dataset or row.get("dataset") or manifest.parent.name
        pid = plate_id if plate_id is not None else str(row.get("plate_id") or "")
        cell_id = str(row["cell_id"])
        try:
            if cell_id in seen:
                raise CellInputError(
                    cell_id,
                    row["path"],
                    "duplicate_cell_id",
                    f"cell_id {cell_id} appears more than once in {manifest}; make ids unique",
                )
            seen.add(cell_id)
            path = resolve_path(manifest.parent, str(row["path"]), cell_id, data_root)
            channels = [c for c in str(row["channels"]).split(";") if c]
            validate_cell(path, channels, str(row.get("shape_type") or "polymorphic"), cell_id)
        except CellInputError as err:
            bad.append(quarantine_row(err, ds, pid))
            continue
        good.append(
            {
                "cell_id": cell_id,
                "dataset": ds,
                "plate_id": pid,
                "well": str(row.get("well") or ""),
                "drug": str(row.get("drug") or ""),
                "structure_name": str(row.get("structure_name") or ""),
                "shape_type": str(row.get("shape_type") or "polymorphic"),
                "label": str(row.get("label") or ""),
                "source_path": str(path),
                "channels": str(row["channels"]),
                "voxel_size_um": float(row.get("voxel_size_um") or 1.0),
                "seed": int(row.get("seed") or 0),
            }
        )
    return IngestResult(
        pd.DataFrame(good, columns=CELL_COLUMNS), pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)
    )
