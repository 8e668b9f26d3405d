"""Which base model embeds a structure: routing of a plate's cells by structure.

A plate may mix structures and shape types. Each cell belongs to a structure group, its ``structure_name``
(its shape type when the manifest names none); each group is sampled at the scale of its base data set,
fine-tuned from that data set's base model and profiled against the DMSO cells of the same group.

The base data set of a structure is the ``structure_bases`` table's entry (``cellrep dataset add NAME MANIFEST
--base-for STRUCTURE``), else the platform's reference set of the structure's shape type.
"""

from __future__ import annotations

import pandas as pd

from cellrep_core.data.cells import structure_key
from cellrep_core.store.warehouse import Warehouse

# the platform's reference set whose base model embeds a shape type when no structure_bases entry says otherwise
DEFAULT_BASE = {"polymorphic": "synthetic_polymorphic", "punctate": "synthetic_punctate"}
KIND_OF_SHAPE = {"polymorphic": "sdf", "punctate": "punctate"}


def set_base(wh: Warehouse, structure: str, dataset: str) -> None:
    """Route ``structure`` to the base model of ``dataset`` (replacing an earlier entry)."""
    wh.upsert("structure_bases", pd.DataFrame([{"structure_name": structure, "base_dataset": dataset}]),
              on=["structure_name"])


def base_dataset(wh: Warehouse, structure: str, shape_type: str) -> str:
    """The data set whose base model embeds ``structure`` (cells of ``shape_type``)."""
    try:
        df = wh.query("SELECT base_dataset FROM structure_bases WHERE structure_name = ?", [structure])
    except Exception:  # noqa: BLE001 - a warehouse from before the routing table
        df = pd.DataFrame()
    if len(df):
        return str(df.base_dataset.iloc[0])
    if shape_type not in DEFAULT_BASE:
        raise ValueError(f"structure {structure}: unknown shape type {shape_type!r}")
    return DEFAULT_BASE[shape_type]


def cell_groups(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A partition's cells by structure group, sorted by group name."""
    if cells.empty:
        return {}
    keys = [structure_key(n, s) for n, s in zip(cells.structure_name, cells.shape_type, strict=True)]
    return {k: g for k, g in cells.assign(_key=keys).groupby("_key", sort=True)}


def plate_groups(wh: Warehouse, plate_id: str) -> dict[str, dict]:
    """The structure groups of a plate: ``{structure: {"shape_type", "base_dataset", "cell_ids"}}``. A group
    whose cells have more than one shape type is an error naming them (route them as separate structures)."""
    cells = wh.query("SELECT cell_id, structure_name, shape_type FROM cells WHERE plate_id = ? ORDER BY cell_id",
                     [plate_id])
    out = {}
    for key, g in cell_groups(cells).items():
        kinds = sorted(set(g.shape_type))
        if len(kinds) != 1:
            raise ValueError(f"plate {plate_id}: structure {key} has cells of shape types {kinds}; give them "
                             "different structure_name values in the manifest")
        out[key] = {"shape_type": kinds[0], "base_dataset": base_dataset(wh, key, kinds[0]),
                    "cell_ids": list(g.cell_id)}
    return out


def base_scale(wh: Warehouse, dataset: str):
    """``(working voxel µm or None for native, SamplingConfig)`` of a base data set: plates are sampled at the
    scale of the base they are fine-tuned from (its box, or a box per cell)."""
    from cellrep_core import datasets
    from cellrep_core.pointclouds.build import SamplingConfig

    if dataset in DEFAULT_BASE.values():
        return None, SamplingConfig(half_extent_vox=datasets.DEFAULT_HALF_EXTENT_VOX)
    spec = datasets.get(wh, dataset)
    return spec.target_voxel_um, SamplingConfig(half_extent_vox=spec.half_extent_vox,
                                                per_cell_scale=spec.per_cell_scale)


def manifest_scales(wh: Warehouse, manifest_rows: pd.DataFrame) -> tuple[dict, dict]:
    """Per structure group of a plate manifest: working voxel (only where the base has one) and sampling config."""
    voxel, sampling = {}, {}
    names = manifest_rows.get("structure_name", pd.Series([""] * len(manifest_rows)))
    shapes = manifest_rows.get("shape_type", pd.Series(["polymorphic"] * len(manifest_rows)))
    keys = {structure_key(n, s): str(s or "polymorphic") for n, s in zip(names, shapes, strict=True)}
    for key, shape in keys.items():
        try:
            v, cfg = base_scale(wh, base_dataset(wh, key, shape))
        except ValueError:
            continue  # an unknown shape type or base: ingest and plate_model report it
        if v:
            voxel[key] = v
        sampling[key] = cfg
    return voxel, sampling
