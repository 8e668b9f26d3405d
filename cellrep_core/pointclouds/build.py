"""Turn validated cells into point clouds, in parallel across cores, written once per partition."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import ndimage

from cellrep_core import faults
from cellrep_core.data.cells import cell_seed, split_list, structure_key
from cellrep_core.data.features import HANDCRAFTED_FEATURES, handcrafted_features
from cellrep_core.data.validate import QUARANTINE_COLUMNS, quarantine_row, validate_cell
from cellrep_core.errors import CellInputError, CorruptFileError
from cellrep_core.pointclouds.items import CloudItem
from cellrep_core.pointclouds.punctate import MAX_EXPONENT, SMOOTH_SIGMA, intensity_sample
from cellrep_core.pointclouds.sdf import sdf_pointcloud
from cellrep_core.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """How cells become clouds (paper values by default)."""

    n_dense: int = 20480
    lam: float = 100.0
    # cytoplasmic punctate structures (a ``cell`` channel): the cell mask, lambda 500, skew floored at 25
    lam_cytoplasmic: float = 500.0
    skew_floor_cytoplasmic: float = 25.0
    dilate_vox: int = 8
    ball_dilation: bool = True
    smooth_sigma: float = SMOOTH_SIGMA
    subvoxel: bool = False
    max_exponent: float | None = MAX_EXPONENT
    n_surface: int = 4096
    grid: int = 32
    half_extent_vox: float = 32.0
    # scale each polymorphic cell to its own box instead of one box for the data set (mixed-size sets)
    per_cell_scale: bool = False
    seed: int = 0


@dataclass
class BuildResult:
    """Index rows of the stored clouds, quarantined cells, hand-crafted features of polymorphic cells."""

    index: pd.DataFrame
    quarantine: pd.DataFrame
    features: pd.DataFrame
    seconds: float


def dilate(mask: np.ndarray, radius: int, ball: bool = True) -> np.ndarray:
    """The mask grown by ``radius`` voxels: every voxel within Euclidean distance ``radius`` of it
    (``ball``), or ``radius`` iterations of the 6-connected dilation (a diamond, not rotation invariant)."""
    mask = np.asarray(mask, dtype=bool)
    if not radius or not mask.any():
        return mask
    if not ball:
        return ndimage.binary_dilation(mask, iterations=radius)
    return ndimage.distance_transform_edt(~mask) <= radius


def process_cell(row: dict, cfg: SamplingConfig) -> dict:
    """Sample one cell; returns its cloud or, for a bad cell, its quarantine row (never raises)."""
    cell_id, path = row["cell_id"], row["source_path"]
    rng = np.random.default_rng(cell_seed(cell_id, cfg.seed))
    channels = split_list(row["channels"])
    try:
        if row["shape_type"] == "punctate":
            raw, container = validate_cell(Path(path), channels, "punctate", cell_id)
            if "cell" in channels:  # cytoplasmic: the whole cell, centred on the cell (membrane) centroid
                mask, lam, floor = container, cfg.lam_cytoplasmic, cfg.skew_floor_cytoplasmic
            else:  # nuclear: the nucleus grown by dilate_vox, centred on its centroid
                mask, lam, floor = dilate(container, cfg.dilate_vox, cfg.ball_dilation), cfg.lam, None
            pts = intensity_sample(
                raw, mask, rng, n_dense=cfg.n_dense, lam=lam, skew_floor=floor, max_exponent=cfg.max_exponent,
                smooth_sigma=cfg.smooth_sigma, subvoxel=cfg.subvoxel, cell_id=cell_id, path=path
            )
            return {
                "ok": True,
                "cell_id": cell_id,
                "kind": "punctate",
                "points": pts,
                "sdf": None,
                "n_components": 0,
                "features": None,
            }
        _, structure = validate_cell(Path(path), channels, "polymorphic", cell_id)
        surface, sdf, info = sdf_pointcloud(
            structure,
            rng,
            n_surface=cfg.n_surface,
            grid=cfg.grid,
            half_extent_vox=None if cfg.per_cell_scale else cfg.half_extent_vox,
            cell_id=cell_id,
            path=path,
        )
        if not (np.isfinite(surface).all() and np.isfinite(sdf).all()):
            raise CellInputError(
                cell_id,
                path,
                "nan_pointcloud",
                "sampling produced NaN/inf; check the mask",
                stage="pointcloud",
            )
        feats = handcrafted_features(structure, float(row.get("voxel_size_um") or 1.0))
        return {
            "ok": True,
            "cell_id": cell_id,
            "kind": "sdf",
            "points": surface,
            "sdf": sdf,
            "n_components": info["n_components"],
            "features": feats,
        }
    except CellInputError as err:
        if err.stage == "ingest":
            err.stage = "pointcloud"
        return {"ok": False, "row": quarantine_row(err, row["dataset"], row["plate_id"])}
    except Exception as err:  # a bug or an unforeseen input: quarantine the cell, keep the batch going
        e = CellInputError(
            cell_id, path, "sampling_failed", f"{type(err).__name__}: {err}", stage="pointcloud"
        )
        return {"ok": False, "row": quarantine_row(e, row["dataset"], row["plate_id"])}


def _worker(args: tuple[dict, dict]) -> dict:
    row, cfg = args
    return process_cell(row, SamplingConfig(**cfg))


def build_pointclouds(
    cells: pd.DataFrame,
    out_path: Path,
    cfg: SamplingConfig = SamplingConfig(),
    n_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cfg_of: dict[str, SamplingConfig] | None = None,
) -> BuildResult:
    """Sample every cell (in parallel), write one Parquet file atomically, return index and quarantine.
    ``cfg_of``: the sampling of each structure group (``data.cells.structure_key``), else ``cfg``."""
    t0 = time.perf_counter()
    rows = cells.to_dict("records")
    n_workers = n_workers or min(len(rows), os.cpu_count() or 1) or 1
    results: list[dict] = []

    cfg_of = cfg_of or {}
    jobs = [(r, asdict(cfg_of.get(structure_key(r.get("structure_name"), r.get("shape_type")), cfg))) for r in rows]
    if n_workers <= 1 or len(rows) < 4:
        it = map(_worker, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"))
        it = pool.map(_worker, jobs, chunksize=max(1, len(rows) // (8 * n_workers)))
    try:
        with Progress(f"point clouds -> {Path(out_path).parent.name}/{Path(out_path).name}", len(rows)) as prog:
            for i, res in enumerate(it, 1):
                results.append(res)
                if progress is not None:
                    progress(i, len(rows))
                prog.update()
    finally:
        if pool is not None:
            pool.shutdown()
    ok = [r for r in results if r["ok"]]
    quarantine = pd.DataFrame([r["row"] for r in results if not r["ok"]], columns=QUARANTINE_COLUMNS)
    write_pointclouds(ok, out_path)
    meta = cells.set_index("cell_id")
    index = pd.DataFrame(
        {
            "cell_id": [r["cell_id"] for r in ok],
            "dataset": [meta.at[r["cell_id"], "dataset"] for r in ok],
            "kind": [r["kind"] for r in ok],
            "n_points": [len(r["points"]) for r in ok],
            "n_components": [r["n_components"] for r in ok],
            "parquet_path": str(out_path),
        }
    )
    feats = pd.DataFrame(
        [
            {
                "cell_id": r["cell_id"],
                "dataset": meta.at[r["cell_id"], "dataset"],
                "plate_id": meta.at[r["cell_id"], "plate_id"],
                **r["features"],
            }
            for r in ok
            if r["features"]
        ],
        columns=["cell_id", "dataset", "plate_id", *HANDCRAFTED_FEATURES],
    )
    return BuildResult(index, quarantine, feats, time.perf_counter() - t0)


def write_pointclouds(results: list[dict], out_path: Path) -> None:
    """Write clouds to Parquet via a temporary file and a rename, so readers never see half a file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "cell_id": pa.array([r["cell_id"] for r in results], pa.string()),
            "kind": pa.array([r["kind"] for r in results], pa.string()),
            "dims": pa.array([r["points"].shape[1] for r in results], pa.int32()),
            "points": pa.array([r["points"].reshape(-1) for r in results], pa.list_(pa.float32())),
            "sdf": pa.array(
                [None if r["sdf"] is None else r["sdf"] for r in results], pa.list_(pa.float32())
            ),
        }
    )
    tmp = out_path.with_suffix(".parquet.tmp")
    try:
        pq.write_table(table, tmp)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # never leave half a file behind; the partition's previous file stays
        from cellrep_core.errors import disk_full, is_disk_full

        if is_disk_full(err):
            raise disk_full(err, out_path, f"the point clouds of {len(results)} cells") from err
        raise
    faults.point("parquet_replace")
    os.replace(tmp, out_path)


def read_pointclouds(path: Path, cell_ids: list[str] | None = None) -> list[CloudItem]:
    """Read stored clouds (optionally only some cells), ordered by cell_id; an unreadable file raises
    ``CorruptFileError`` naming it (materializing the partition's point clouds again rewrites it whole)."""
    try:
        table = pq.read_table(path)
        if not {"cell_id", "kind", "dims", "points", "sdf"} <= set(table.column_names):
            raise ValueError(f"columns {table.column_names} are not a point-cloud file's")
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: unreadable point-cloud file ({type(err).__name__}: {err}); materialize the point clouds of "
            "this data set or plate again (the file is rewritten whole)") from err
    if cell_ids is not None:
        keep = set(cell_ids)
        table = table.filter(pa.array([c in keep for c in table["cell_id"].to_pylist()]))
    items = []
    for cid, dims, pts, sdf in zip(
        table["cell_id"].to_pylist(),
        table["dims"].to_pylist(),
        table["points"].to_numpy(zero_copy_only=False),
        table["sdf"].to_numpy(zero_copy_only=False),
        strict=True,
    ):
        items.append(
            CloudItem(
                cid,
                np.asarray(pts, np.float32).reshape(-1, dims),
                None if sdf is None else np.asarray(sdf, np.float32),
            )
        )
    return sorted(items, key=lambda x: x.cell_id)
