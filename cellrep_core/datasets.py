"""User data sets: a manifest registered under a name, with the scale its cells are sampled at.

A registered data set is what the partitioned ``dataset_*`` assets materialize (cells, point clouds, a base
model, embeddings, benchmark), one partition per name. Registering reads the manifest once, checks it, and
records a working scale derived from the data set itself, so that structures larger than the default SDF box
are embedded instead of quarantined as ``structure_too_large``:

* the box stays ``half_extent_vox`` voxels (default 32, what every model config samples its 32³ grid over);
* the working voxel size is the finest spacing of the images, or coarser where a structure would not fit:
  ``max_extent_um / (FIT_FRACTION * half_extent_vox)``, where ``max_extent_um`` is the largest distance
  (per axis, as the box is a cube) of any structure voxel from its structure's centroid over all cells.

A ``target_voxel_um`` in the manifest (a row) or at registration wins over the derived value; the record
says where the scale came from. The registry is the ``datasets`` table of the warehouse (one row a name).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cellrep_core.data.cells import read_manifest, split_list
from cellrep_core.data.images import parse_voxel_size, read_cell_image, read_fov_images
from cellrep_core.data.validate import binarize
from cellrep_core.errors import CellInputError
from cellrep_core.ingest import resolve_path
from cellrep_core.store.warehouse import Warehouse

DEFAULT_HALF_EXTENT_VOX = 32.0
# structures are fitted to this fraction of the box: marching cubes puts vertices half a voxel beyond the
# voxel centres and resampling to a coarser grid can grow a mask by up to a voxel
FIT_FRACTION = 0.9
# the default model config of a data set's base model, by the shape type of its cells
DEFAULT_MODEL = {"polymorphic": "sdf_demo", "punctate": "punctate_demo"}
# names the platform uses for its own partitions and data sets
RESERVED = {"drug_plates", "synthetic_punctate", "synthetic_polymorphic", "all", "reference"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class DatasetError(ValueError):
    """A data set cannot be registered or is not registered; the message says why and what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    """One registered data set."""

    name: str
    manifest: str
    data_root: str
    shape_type: str
    structures: str
    model: str
    warm_start: str
    half_extent_vox: float
    target_voxel_um: float | None
    scale_source: str  # "manifest", "registration", "derived" or "native"
    max_extent_um: float | None
    n_rows: int
    per_cell_scale: bool = False

    @property
    def partition(self) -> str:
        """The point-cloud partition of the data set's cells (``cellrep ingest`` used the same name)."""
        return "all"

    def to_row(self) -> dict:
        return asdict(self)


def check_name(name: str) -> str:
    """A data set name: letters, digits, ``_`` and ``-``, starting with a letter; not a reserved name."""
    if not _NAME.match(str(name or "")):
        raise DatasetError(f"data set name {name!r}: use letters, digits, '_' or '-', starting with a letter "
                           "(at most 64 characters)")
    if name in RESERVED:
        raise DatasetError(f"data set name {name!r} is used by the platform ({', '.join(sorted(RESERVED))}); "
                           "choose another")
    return name


def _structure_extent_um(structure: np.ndarray, voxel_zyx: tuple[float, float, float]) -> float:
    """Largest per-axis distance (µm) of a structure voxel from the structure's centroid, plus half a voxel."""
    idx = np.argwhere(structure)
    if not len(idx):
        return 0.0
    um = idx * np.asarray(voxel_zyx, dtype=np.float64)
    return float(np.abs(um - um.mean(axis=0)).max() + 0.5 * max(voxel_zyx))


def _row_extents(row: dict, manifest: Path, data_root: Path | None) -> tuple[list[float], tuple]:
    """The structure extents (µm) of one manifest row's cells, and its voxel size."""
    cid = str(row["cell_id"])
    channels = split_list(row["channels"])
    files = [resolve_path(manifest.parent, r, cid, data_root) for r in split_list(row["path"])]
    voxel = parse_voxel_size(row, cid, files[0])
    if "cell_labels" in channels:
        images = read_fov_images(files, channels, cid)
        if "structure" not in images:
            return [], voxel
        labels = np.asarray(images["cell_labels"])
        inside = "nucleus_labels" if str(row.get("structure_in") or "cell").strip() == "nucleus" else "cell_labels"
        container = np.asarray(images.get(inside, labels))
        structure = binarize(images["structure"])
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int64, copy=False))):
            if sl is None:
                continue
            s = structure[sl] & (container[sl] == i + 1)
            if s.any():
                out.append(_structure_extent_um(s, voxel))
        return out, voxel
    images = read_cell_image(files[0], channels, cid)
    if "structure" not in images:
        return [], voxel  # punctate cells are sampled in voxels of the raw image, not in the SDF box
    return [_structure_extent_um(binarize(images["structure"]), voxel)], voxel


def derive_scale(manifest: Path, data_root: Path | None = None,
                 half_extent_vox: float = DEFAULT_HALF_EXTENT_VOX) -> dict:
    """Working voxel size that fits every structure of a manifest into the SDF box, from the data itself.

    Returns ``target_voxel_um`` (None when the native spacing fits), ``max_extent_um``, ``finest_um`` and
    ``unreadable`` (rows that could not be read: ingest will quarantine them with their own message)."""
    manifest = Path(manifest)
    df = read_manifest(manifest)
    extents, finest, unreadable = [], [], []
    for row in df.to_dict("records"):
        if str(row.get("shape_type") or "polymorphic") != "polymorphic":
            continue
        try:
            ext, voxel = _row_extents(row, manifest, data_root)
        except CellInputError as err:
            unreadable.append(f"{err.cell_id}: {err.reason}")
            continue
        extents += ext
        finest.append(min(voxel))
    if not extents:
        return {"target_voxel_um": None, "max_extent_um": None, "finest_um": min(finest, default=None),
                "unreadable": unreadable}
    max_um, fine = max(extents), min(finest)
    need = max_um / (FIT_FRACTION * half_extent_vox)
    return {"target_voxel_um": round(need, 4) if need > fine else None, "max_extent_um": round(max_um, 4),
            "finest_um": fine, "unreadable": unreadable}


def _manifest_targets(df: pd.DataFrame) -> set[float]:
    if "target_voxel_um" not in df:
        return set()
    vals = pd.to_numeric(df["target_voxel_um"].replace("", np.nan), errors="coerce").dropna()
    return {float(v) for v in vals}


def build_spec(name: str, manifest: Path, data_root: Path | None = None, model: str = "", warm_start: str = "",
               half_extent_vox: float | None = None, target_voxel_um: float | None = None,
               per_cell_scale: bool = False) -> DatasetSpec:
    """Check a manifest and derive its scale; the record ``register`` stores (nothing written)."""
    from cellrep_core.models.config import REGISTRY

    check_name(name)
    manifest = Path(manifest).resolve()
    if not manifest.is_file():
        raise DatasetError(f"manifest {manifest} does not exist")
    if data_root is not None and not Path(data_root).is_dir():
        raise DatasetError(f"--data-root {data_root} is not a folder")
    try:
        df = read_manifest(manifest)
    except ValueError as err:
        raise DatasetError(f"data set {name}: {err}") from None
    if df.empty:
        raise DatasetError(f"data set {name}: manifest {manifest} has no rows")
    kinds = sorted({str(s or "polymorphic") for s in df.get("shape_type", pd.Series(["polymorphic"]))})
    if len(kinds) != 1:
        raise DatasetError(f"data set {name}: {manifest} mixes shape types {kinds}; one base model embeds one shape "
                           "type, so register each shape type as its own data set")
    shape_type = kinds[0]
    if shape_type not in DEFAULT_MODEL:
        raise DatasetError(f"data set {name}: shape_type {shape_type!r} in {manifest}; use 'punctate' or "
                           "'polymorphic'")
    model = model or DEFAULT_MODEL[shape_type]
    if model not in REGISTRY:
        raise DatasetError(f"data set {name}: model config {model!r} is not registered; known: "
                           f"{', '.join(sorted(REGISTRY))}")
    if REGISTRY[model].family == "statcell":
        raise DatasetError(f"data set {name}: {model} is a model of structure given shape, not a base model; "
                           f"register the data set with a base model (e.g. {DEFAULT_MODEL[shape_type]}) and run "
                           f"`cellrep statcell {name}` for it")
    half = float(half_extent_vox or DEFAULT_HALF_EXTENT_VOX)
    if not half > 0:
        raise DatasetError(f"data set {name}: half_extent_vox must be positive, got {half_extent_vox}")
    scale = derive_scale(manifest, Path(data_root) if data_root else None, half)
    in_manifest = _manifest_targets(df)
    if target_voxel_um is not None:
        if not target_voxel_um > 0:
            raise DatasetError(f"data set {name}: target_voxel_um must be positive, got {target_voxel_um}")
        target, source = float(target_voxel_um), "registration"
    elif in_manifest:
        target, source = None, "manifest"  # each row keeps its own; rows without one get the derived value
        if scale["target_voxel_um"] is not None:
            target = scale["target_voxel_um"]
    elif per_cell_scale:
        target, source = None, "per_cell"  # every cell gets a box of its own size: no common voxel size needed
    elif scale["target_voxel_um"] is not None:
        target, source = scale["target_voxel_um"], "derived"
    else:
        target, source = None, "native"
    structures = sorted({str(s) for s in df.get("structure_name", pd.Series([""])) if str(s or "")})
    return DatasetSpec(name=name, manifest=str(manifest), data_root=str(Path(data_root).resolve()) if data_root
                       else "", shape_type=shape_type, structures=";".join(structures), model=model,
                       warm_start=warm_start, half_extent_vox=half, target_voxel_um=target, scale_source=source,
                       max_extent_um=scale["max_extent_um"], n_rows=len(df), per_cell_scale=bool(per_cell_scale))


def register(wh: Warehouse, spec: DatasetSpec) -> DatasetSpec:
    """Store (or replace) a data set's record in the ``datasets`` table."""
    wh.upsert("datasets", pd.DataFrame([spec.to_row()]), on=["name"])
    return spec


def get(wh: Warehouse, name: str) -> DatasetSpec:
    """A registered data set's record."""
    df = wh.query("SELECT * FROM datasets WHERE name = ?", [name])
    if df.empty:
        known = list_names(wh)
        raise DatasetError(f"data set {name!r} is not registered (known: {', '.join(known) or 'none'}); "
                           "register it with `cellrep dataset add NAME MANIFEST`")
    r = df.iloc[0].to_dict()
    fields = DatasetSpec.__dataclass_fields__
    vals = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items() if k in fields}
    vals["n_rows"] = int(vals["n_rows"])
    vals["per_cell_scale"] = bool(vals.get("per_cell_scale") or False)
    return DatasetSpec(**vals)


def list_names(wh: Warehouse) -> list[str]:
    """Names of the registered data sets."""
    try:
        return list(wh.query("SELECT name FROM datasets ORDER BY name")["name"])
    except Exception:  # noqa: BLE001 - a warehouse from before the registry has no table yet
        return []


def describe(spec: DatasetSpec) -> str:
    """One paragraph for the user: what was registered and at which scale."""
    if spec.scale_source == "per_cell":
        scale = "each cell scaled to its own SDF box (per-cell scale; sizes only in the hand-crafted features)"
    elif spec.scale_source == "manifest":
        rest = (f"; rows without one: {spec.target_voxel_um:g} µm, derived (the largest structure reaches "
                f"{spec.max_extent_um:g} µm from its centroid)" if spec.target_voxel_um else "")
        scale = (f"working voxel from the manifest's target_voxel_um{rest}, box half-extent "
                 f"{spec.half_extent_vox:g} voxels")
    elif spec.target_voxel_um is None:
        scale = (f"native voxel size (finest spacing); structures reach {spec.max_extent_um:g} µm, inside the box "
                 f"of {spec.half_extent_vox:g} voxels" if spec.max_extent_um else "native voxel size")
    else:
        why = {"derived": f"derived: the largest structure reaches {spec.max_extent_um:g} µm from its centroid",
               "registration": "given at registration"}
        scale = (f"working voxel {spec.target_voxel_um:g} µm ({why.get(spec.scale_source, spec.scale_source)}), "
                 f"box half-extent {spec.half_extent_vox:g} voxels")
    warm = f", warm start from {spec.warm_start}" if spec.warm_start else ""
    return (f"data set {spec.name}: {spec.n_rows} manifest rows of {spec.shape_type} cells"
            f"{' (' + spec.structures + ')' if spec.structures else ''}; {scale}; base model config "
            f"{spec.model}{warm}")
