"""From a manifest to validated cells: one row per good cell, one quarantine row per bad one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cellrep_core import paths
from cellrep_core.data.cells import MANIFEST_COLUMNS, channel_names, read_manifest, split_list, structure_key
from cellrep_core.data.fov import resample_cell, split_fov
from cellrep_core.data.images import parse_voxel_size, read_cell_image, read_fov_images, write_cell_tiff
from cellrep_core.data.validate import QUARANTINE_COLUMNS, quarantine_row, validate_cell_arrays
from cellrep_core.errors import CellInputError

# a cell row is a manifest row whose path has been resolved and checked
CELL_COLUMNS = ["source_path" if c == "path" else c for c in MANIFEST_COLUMNS]


@dataclass
class IngestResult:
    """Cells that passed validation and the quarantined rest."""

    cells: pd.DataFrame
    quarantine: pd.DataFrame


def resolve_path(manifest_dir: Path, rel: str, cell_id: str, data_root: Path | None = None) -> Path:
    """Resolve a manifest path: relative to the manifest's folder or, when it is not there, to the data
    root. Any path that ends up outside both (``..``, absolute paths, symlinks) is refused."""
    root = manifest_dir.resolve()
    p = (root / rel).resolve()
    allowed = [root]
    if data_root:
        droot = Path(data_root).resolve()
        allowed.append(droot)
        if not p.exists() and (droot / rel).exists():
            p = (droot / rel).resolve()
    if not any(p == a or a in p.parents for a in allowed):
        raise CellInputError(
            cell_id,
            rel,
            "path_outside_root",
            f"{rel} resolves to {p}, outside {' and '.join(map(str, allowed))}; move the file under the "
            "manifest's folder or pass --data-root",
        )
    return p


def scoped_cell_id(local_id: str, scope: str) -> str:
    """The stored id of a manifest's cell: its plate's (else its data set's) name, then its own id, unless the
    id already starts with that name. ``cells.cell_id`` is one key across every plate and data set, while
    users number cells per plate or field of view (``A01_001`` on every plate): a re-imaged plate under a new
    plate id, or one field of view ingested as two data sets, would otherwise collide."""
    local_id, scope = str(local_id), str(scope)
    if not scope or local_id == scope or local_id.startswith(scope + "_"):
        return local_id
    return f"{scope}_{local_id}"


def _cell_row(row: dict, cell_id: str, ds: str, pid: str, path: Path, channels: str, voxel_um: float) -> dict:
    return {
        "cell_id": cell_id,
        "dataset": ds,
        "plate_id": pid,
        "well": str(row.get("well") or ""),
        "drug": str(row.get("drug") or ""),
        "concentration": _concentration(row.get("concentration"), row.get("drug")),
        "structure_name": str(row.get("structure_name") or ""),
        "shape_type": str(row.get("shape_type") or "polymorphic"),
        "label": str(row.get("label") or ""),
        "source_path": str(path),
        "channels": channels,
        "voxel_size_um": float(voxel_um),
        "seed": int(row.get("seed") or 0),
    }


def _concentration(value: object, drug: object) -> float | None:
    """A cell's concentration in µM (NULL when the manifest has none; the DMSO control is 0 when unset)."""
    try:
        c = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        c = float("nan")
    if c != c:
        return 0.0 if str(drug or "") == "DMSO" else None
    return c


def working_voxel_um(row: dict, voxel: tuple[float, float, float], cell_id: str, path: Path,
                     default: float | dict[str, float] | None = None) -> float:
    """The cubic voxel size crops are resampled to: the row's ``target_voxel_um``, else ``default`` (a registered
    data set's working scale), else the finest spacing."""
    target = str(row.get("target_voxel_um") or "").strip()
    if target.lower() == "nan":
        target = ""
    if isinstance(default, dict):  # per structure group (a plate inherits the scale of each structure's base)

        default = default.get(structure_key(row.get("structure_name"), row.get("shape_type")))
    if not target:
        return float(default) if default else min(voxel)
    try:
        value = float(target)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise CellInputError(
            cell_id, path, "bad_voxel_size", f"target_voxel_um {target!r} must be a positive number of micrometres."
        )
    return value


def _ingest_fov_row(
    row: dict, manifest: Path, ds: str, pid: str, data_root: Path | None, crops_dir: Path, seen: set[str],
    default_voxel_um: float | dict[str, float] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Split one field-of-view row into single-cell crops (written under ``crops_dir``) and validate them."""
    fov_id = str(row["cell_id"])
    channels = split_list(row["channels"])
    rels = split_list(row["path"])
    files = [resolve_path(manifest.parent, r, fov_id, data_root) for r in rels]
    images = read_fov_images(files, channels, fov_id)
    voxel = parse_voxel_size(row, fov_id, files[0])
    voxel_um = working_voxel_um(row, voxel, fov_id, files[0], default_voxel_um)
    structure_in = str(row.get("structure_in") or "cell").strip()
    try:
        cells = split_fov(
            images["cell_labels"],
            images.get("nucleus_labels"),
            images.get("structure"),
            voxel_size_zyx=voxel,
            structure_in=structure_in,
            keep_border=True,
            target_voxel_um=voxel_um,
        )
    except ValueError as exc:
        raise CellInputError(fov_id, files[0], "bad_field_of_view", f"{files[0]}: {exc}") from exc
    good, bad = [], []
    crops_dir.mkdir(parents=True, exist_ok=True)
    for c in cells:
        cell_id = f"{fov_id}_c{c.label:03d}"
        try:
            if cell_id in seen:
                raise CellInputError(cell_id, files[0], "duplicate_cell_id", f"cell_id {cell_id} appears twice")
            seen.add(cell_id)
            if c.touches_border:
                raise CellInputError(
                    cell_id,
                    files[0],
                    "touches_border",
                    f"cell label {c.label} of {files[0]} touches the image border, so its shape is cut off; "
                    "it is left out (image a larger field of view to keep it).",
                )
            planes = (("cell", c.cell), ("nucleus", c.nucleus), ("structure", c.structure))
            crop = {n: a for n, a in planes if a is not None}
            out = crops_dir / f"{cell_id}.tiff"
            write_cell_tiff(out, crop)
            validate_cell_arrays(crop, str(row.get("shape_type") or "polymorphic"), cell_id, out)
        except CellInputError as err:
            bad.append(quarantine_row(err, ds, pid))
            continue
        good.append(_cell_row(row, cell_id, ds, pid, out, ";".join(crop), voxel_um))
    return good, bad


def ingest_manifest(
    manifest: Path,
    dataset: str | None = None,
    plate_id: str | None = None,
    data_root: Path | None = None,
    crops_dir: Path | None = None,
    default_voxel_um: float | dict[str, float] | None = None,
) -> IngestResult:
    """Validate every cell of a manifest; bad cells are returned as quarantine rows, never raised.

    A row whose channels include ``cell_labels`` is a field of view: it is split into single-cell crops
    (see :func:`cellrep_core.data.fov.split_fov`) written under ``crops_dir`` (default
    ``$CELLREP_HOME/raw/<dataset>/fov_crops``), one cell row per crop. ``default_voxel_um``: the working voxel
    size of rows without a ``target_voxel_um`` (a registered data set's derived scale, or one per structure group;
    default: finest spacing).
    """
    manifest = Path(manifest)
    df = read_manifest(manifest)
    good, bad = [], []
    seen: set[str] = set()
    for row in df.to_dict("records"):
        ds = dataset or row.get("dataset") or manifest.parent.name
        pid = plate_id if plate_id is not None else str(row.get("plate_id") or "")
        local = str(row["cell_id"])
        cell_id = scoped_cell_id(local, pid or ds)
        row = {**row, "cell_id": cell_id}
        if "cell_labels" in channel_names(row["channels"]):
            try:
                g, b = _ingest_fov_row(
                    row, manifest, ds, pid, data_root, Path(crops_dir or paths.raw_dir(ds) / "fov_crops"), seen,
                    default_voxel_um,
                )
            except CellInputError as err:
                bad.append(quarantine_row(err, ds, pid))
                continue
            good += g
            bad += b
            continue
        try:
            if cell_id in seen:
                raise CellInputError(
                    cell_id,
                    row["path"],
                    "duplicate_cell_id",
                    f"cell_id {local} appears more than once in {manifest}; make ids unique",
                )
            seen.add(cell_id)
            path = resolve_path(manifest.parent, str(row["path"]), cell_id, data_root)
            channels = split_list(row["channels"])
            shape_type = str(row.get("shape_type") or "polymorphic")
            images = read_cell_image(path, channels, cell_id)
            voxel = parse_voxel_size(row, cell_id, path)
            voxel_um = working_voxel_um(row, voxel, cell_id, path, default_voxel_um)
            chan_str = str(row["channels"])
            if any(abs(v - voxel_um) > 1e-9 * voxel_um for v in voxel):
                # anisotropic (or a requested working voxel): resample before meshing, keep the crop
                images = resample_cell(images, tuple(v / voxel_um for v in voxel))
                path = Path(crops_dir or paths.raw_dir(ds) / "fov_crops") / f"{cell_id}.tiff"
                write_cell_tiff(path, images)
                chan_str = ";".join(images)
            validate_cell_arrays(images, shape_type, cell_id, path)
        except CellInputError as err:
            bad.append(quarantine_row(err, ds, pid))
            continue
        good.append(_cell_row(row, cell_id, ds, pid, path, chan_str, voxel_um))
    return IngestResult(
        pd.DataFrame(good, columns=CELL_COLUMNS), pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)
    )
