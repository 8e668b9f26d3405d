"""Embedded synthetic data sets, deterministic by seed: punctate and polymorphic cells (drug plates: plates.py).

Every cell is one ``<cell_id>.tiff`` holding a CZYX array, listed in ``manifest.csv`` next to it.
Volumes are ZYX on a cubic grid; point coordinates are ``(x, y, z)`` voxel coordinates with ``x`` the
last array axis. Sizes are given for the reference grid of 64 voxels and scale linearly with ``grid``
(volumes with ``(grid / 64) ** 3``), so smaller grids keep every shape inside the volume.
Each cell draws from its own ``numpy.random.default_rng(seed)``, where ``seed`` (written to the manifest)
is derived from the data set seed and the cell's stable key, so one cell's content does not depend on how
many other cells are generated or in which order.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cellrep_core.data.cells import MANIFEST_COLUMNS

REFERENCE_GRID = 64
VOXEL_SIZE_UM = 1.0

PUNCTATE_RULES: tuple[str, ...] = ("random", "radial", "surface", "planar_0", "planar_45", "planar_90")
N_SPHERES = 256
SPHERE_RADIUS = 1.2
MIN_CENTRE_DISTANCE = 2.4
BOUNDARY_MARGIN = 1.5
# Shrinking every semi-axis by 1.75 keeps all points >= 1.5 voxels from the nucleus boundary for the
# nucleus axis ratios used here (an ellipsoid shrunk by d per axis is not the inner parallel body).
_SHRUNK_MARGIN = 1.75
_MAX_SPHERE_CANDIDATES = 40_000
BLOB_SIGMA = 1.0
BLOB_PEAK_RANGE = (2000.0, 4000.0)
BACKGROUND = 100.0
NUCLEOPLASM_BACKGROUND = 20.0
READ_NOISE_SIGMA = 3.0

# The polymorphic reference set spans the shape variation a model must represent: piece counts, total
# volumes (voxels on the 64-grid) and piece elongations wider than any single plate condition, so that
# every planted effect below stays inside the space the model was trained on.
REFERENCE_PIECES: tuple[int, int] = (1, 8)
REFERENCE_VOLUME: tuple[float, float] = (800.0, 3000.0)
REFERENCE_ELONGATION: tuple[float, float] = (1.0, 3.6)


POLYMORPHIC_INNER_FRACTION = 0.55
_RELAXED_INNER_FRACTION = 0.85
_STRICT_TRIES = 150
# Centre distance must exceed the sum of longest semi-axes + PIECE_GAP; a gap of 2 (> sqrt(3)) keeps
# pieces apart under 26-connectivity after voxelisation (a gap of 1 can leave diagonal neighbours).
PIECE_GAP = 2.0
_RELAXED_TRIES = 300
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


# --------------------------------------------------------------------------------------- geometry


def grid_scale(grid: int) -> float:
    """Return the linear size factor of ``grid`` relative to the reference grid of 64 voxels."""
    if int(grid) < 16:
        raise ValueError(f"grid must be at least 16 voxels, got {grid}")
    return int(grid) / REFERENCE_GRID


def uniform_in_ball(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` points drawn uniformly in the unit ball, shape (n, 3)."""
    v = rng.standard_normal((n, 3))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v * np.cbrt(rng.random((n, 1)))


def ellipsoid_box(
    shape: tuple[int, int, int], center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Return (ZYX slices of the bounding box, bool mask inside it) of a rotated ellipsoid.

    ``center`` is (x, y, z) in voxels, ``rotation`` maps ellipsoid-frame to voxel (x, y, z) coordinates
    (its columns are the ellipsoid axes), so a voxel q is inside when |R^T (q - c) / semi_axes| <= 1.
    """
    center = np.asarray(center, dtype=float)
    semi_axes = np.asarray(semi_axes, dtype=float)
    rotation = np.asarray(rotation, dtype=float)
    half = np.sqrt(((rotation * semi_axes[None, :]) ** 2).sum(axis=1))
    size_xyz = np.array([shape[2], shape[1], shape[0]])
    lo = np.clip(np.floor(center - half).astype(int), 0, size_xyz)
    hi = np.clip(np.ceil(center + half).astype(int) + 1, 0, size_xyz)
    slices = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    if np.any(hi <= lo):
        return slices, np.zeros((max(hi[2] - lo[2], 0), max(hi[1] - lo[1], 0), max(hi[0] - lo[0], 0)), bool)
    xs = np.arange(lo[0], hi[0]) - center[0]
    ys = np.arange(lo[1], hi[1]) - center[1]
    zs = np.arange(lo[2], hi[2]) - center[2]
    inv = rotation / semi_axes[None, :]
    acc = np.zeros((zs.size, ys.size, xs.size))
    for i in range(3):
        p = inv[0, i] * xs[None, None, :] + inv[1, i] * ys[None, :, None] + inv[2, i] * zs[:, None, None]
        acc += p * p
    return slices, acc <= 1.0


def ellipsoid_mask(
    shape: tuple[int, int, int], center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Return the bool ZYX mask of a rotated ellipsoid on a grid of ``shape``."""
    out = np.zeros(shape, dtype=bool)
    slices, sub = ellipsoid_box(shape, center, semi_axes, rotation)
    out[slices] = sub
    return out


@dataclass(frozen=True)
class Nucleus:
    """An ellipsoidal nucleus: centre (x, y, z) voxels, semi-axes a >= b >= c, rotation frame -> voxels."""

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray

    def to_voxel(self, points_frame: np.ndarray) -> np.ndarray:
        """Map points in the nucleus frame (long axis = x) to voxel (x, y, z) coordinates."""
        return self.center + np.asarray(points_frame, dtype=float) @ self.rotation.T

    def to_frame(self, points_xyz: np.ndarray) -> np.ndarray:
        """Map voxel (x, y, z) coordinates to the nucleus frame (long axis = x)."""
        return (np.asarray(points_xyz, dtype=float) - self.center) @ self.rotation

    def normalized_radius(self, points_frame: np.ndarray) -> np.ndarray:
        """Return the ellipsoidal radius |p / semi_axes| of nucleus-frame points (1 on the boundary)."""
        return np.linalg.norm(np.asarray(points_frame, dtype=float) / self.semi_axes, axis=-1)

    def mask(self, grid: int) -> np.ndarray:
        """Return the bool ZYX nucleus mask on a cubic grid."""
        return ellipsoid_mask((grid, grid, grid), self.center, self.semi_axes, self.rotation)

    def to_dict(self) -> dict[str, list]:
        """Return the nucleus parameters as JSON-ready lists."""
        return {
            "center": self.center.tolist(),
            "semi_axes": self.semi_axes.tolist(),
            "rotation": self.rotation.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Nucleus:
        """Rebuild a nucleus from :meth:`to_dict` output."""
        return cls(np.asarray(d["center"], float), np.asarray(d["semi_axes"], float), np.asarray(d["rotation"]))


def random_nucleus(rng: np.random.Generator, grid: int) -> Nucleus:
    """Draw a nucleus: a~U(20,27), b~U(15,20), c~U(11,14) (x grid/64), centre within 2 voxels, random pose."""
    s = grid_scale(grid)
    axes = np.array([rng.uniform(20.0, 27.0), rng.uniform(15.0, 20.0), rng.uniform(11.0, 14.0)]) * s
    offset = uniform_in_ball(rng, 1)[0] * 2.0 * s
    center = np.full(3, (grid - 1) / 2.0) + offset
    rotation = Rotation.random(rng=rng).as_matrix()
    return Nucleus(center=center, semi_axes=axes, rotation=rotation)


# --------------------------------------------------------------------------------------- seeds, files


def key_seed(seed: int, *key: int) -> int:
    """Return a cell's integer seed derived from the data set seed and the cell's stable integer key."""
    ss = np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _name_key(name: str) -> int:
    """Return a stable integer key for a name (CRC32), independent of Python's hash seed."""
    return zlib.crc32(name.encode("utf-8"))


def _write_cell_tiff(path: Path, arr: np.ndarray) -> None:
    """Write a CZYX array as a zlib-compressed TIFF, atomically (same array -> same bytes)."""
    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, arr, compression="zlib", metadata={"axes": "CZYX"})
    os.replace(tmp, path)


def _write_manifest(out_dir: Path, rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Write ``manifest.csv`` (last, via a temporary file and a rename, so a watcher of the folder never
    sees half a manifest) and return it as a DataFrame with the manifest columns in order (then ``extra``)."""
    df = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *extra])
    for col in MANIFEST_COLUMNS:
        if col in ("voxel_size_um", "concentration"):
            df[col] = df[col].astype("float64")
        elif col == "seed":
            df[col] = df[col].astype("int64")
        else:
            df[col] = df[col].astype(str)
    tmp = out_dir / "manifest.csv.tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "manifest.csv")
    return df


def _row(
    cell_id: str,
    dataset: str,
    shape_type: str,
    structure_name: str,
    label: str,
    channels: tuple[str, ...],
    seed: int,
    plate_id: str = "",
    well: str = "",
    drug: str = "",
) -> dict[str, Any]:
    """Return one manifest row."""
    return {
        "cell_id": cell_id,
        "dataset": dataset,
        "plate_id": plate_id,
        "well": well,
        "drug": drug,
        "structure_name": structure_name,
        "shape_type": shape_type,
        "label": label,
        "path": f"{cell_id}.tiff",
        "channels": ";".join(channels),
        "voxel_size_um": VOXEL_SIZE_UM,
        "seed": int(seed),
    }


def _to_u8(mask: np.ndarray) -> np.ndarray:
    """Return a bool mask as uint8 0/255."""
    return mask.astype(np.uint8) * np.uint8(255)


# --------------------------------------------------------------------------------------- punctate


def _rule_density(rule: str, p: np.ndarray, inner_axes: np.ndarray) -> np.ndarray:
    """Return the acceptance probability (0..1) of nucleus-frame points ``p`` under a placement rule."""
    r = np.minimum(np.linalg.norm(p / inner_axes, axis=1), 1.0)
    if rule == "random":
        return np.ones(len(p))
    if rule == "radial":
        return (1.0 - r) ** 2
    if rule == "surface":
        return r**4
    if rule.startswith("planar_"):
        theta = math.radians(float(rule.split("_", 1)[1]))
        n = np.array([math.cos(theta), math.sin(theta), 0.0])
        half_width = math.hypot(inner_axes[0] * n[0], inner_axes[1] * n[1])
        return np.exp(3.0 * (p @ n / half_width - 1.0))
    raise ValueError(f"unknown punctate rule {rule!r}; expected one of {PUNCTATE_RULES}")


def pack_spheres(
    rng: np.random.Generator,
    nucleus: Nucleus,
    rule: str,
    n: int = N_SPHERES,
    min_distance: float = MIN_CENTRE_DISTANCE,
    margin: float = _SHRUNK_MARGIN,
) -> np.ndarray:
    """Return up to ``n`` sphere centres (nucleus frame) packed by ``rule`` with a minimum distance.

    Candidates are drawn by rejection from the rule's density inside the nucleus shrunk by ``margin``
    and dropped when closer than ``min_distance`` to an accepted centre; after many candidates the
    packing stops and returns fewer centres rather than failing.
    """
    if rule not in PUNCTATE_RULES:
        raise ValueError(f"unknown punctate rule {rule!r}; expected one of {PUNCTATE_RULES}")
    inner = np.maximum(nucleus.semi_axes - margin, 0.5)
    accepted = np.empty((n, 3))
    k = 0
    tried = 0
    d2 = min_distance**2
    while k < n and tried < _MAX_SPHERE_CANDIDATES:
        batch = uniform_in_ball(rng, 2048) * inner
        keep = rng.random(len(batch)) < _rule_density(rule, batch, inner)
        for p in batch[keep]:
            tried += 1
            if k == 0 or np.min(((accepted[:k] - p) ** 2).sum(axis=1)) >= d2:
                accepted[k] = p
                k += 1
                if k == n:
                    break
            if tried >= _MAX_SPHERE_CANDIDATES:
                break
    return accepted[:k].copy()


def punctate_raw_image(
    rng: np.random.Generator, grid: int, centres_xyz: np.ndarray, nucleus_mask: np.ndarray
) -> np.ndarray:
    """Return a uint16 ZYX image: Gaussian blobs (peaks ~2000-4000) at centres over a noisy background."""
    delta = np.zeros((grid, grid, grid), dtype=np.float64)
    idx = np.clip(np.rint(centres_xyz).astype(int), 0, grid - 1)
    peaks = rng.uniform(*BLOB_PEAK_RANGE, size=len(idx)) * (2.0 * math.pi * BLOB_SIGMA**2) ** 1.5
    np.add.at(delta, (idx[:, 2], idx[:, 1], idx[:, 0]), peaks)
    signal = ndimage.gaussian_filter(delta, BLOB_SIGMA, mode="constant")
    lam = BACKGROUND + NUCLEOPLASM_BACKGROUND * nucleus_mask + signal
    noisy = rng.poisson(lam).astype(np.float64) + rng.normal(0.0, READ_NOISE_SIGMA, size=lam.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def punctate_cell(
    rng: np.random.Generator, grid: int, rule: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Return (raw uint16, nucleus bool mask, centres (n, 3) voxel xyz, info) of one punctate cell."""
    s = grid_scale(grid)
    nucleus = random_nucleus(rng, grid)
    nmask = nucleus.mask(grid)
    frame = pack_spheres(rng, nucleus, rule, N_SPHERES, MIN_CENTRE_DISTANCE * s, _SHRUNK_MARGIN)
    centres = nucleus.to_voxel(frame)
    raw = punctate_raw_image(rng, grid, centres, nmask)
    info = {
        "rule": rule,
        "nucleus": nucleus,
        "points_frame": frame,
        "n_points": len(frame),
        "sphere_radius": SPHERE_RADIUS * s,
    }
    return raw, nmask, centres, info


def generate_punctate_dataset(
    out_dir: Path, n_per_rule: int = 25, seed: int = 0, grid: int = 64, dataset: str = "synthetic_punctate"
) -> pd.DataFrame:
    """Write punctate cells (six packing rules) + truth_points.parquet + manifest.csv; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = ("raw", "nucleus")
    rows: list[dict[str, Any]] = []
    truth: list[pd.DataFrame] = []
    for k, rule in enumerate(PUNCTATE_RULES):
        for i in range(n_per_rule):
            cseed = key_seed(seed, k, i)
            raw, nmask, centres, _ = punctate_cell(np.random.default_rng(cseed), grid, rule)
            cell_id = f"{dataset}_{rule}_{i:03d}"
            arr = np.stack([raw, nmask.astype(np.uint16) * np.uint16(255)])
            _write_cell_tiff(out_dir / f"{cell_id}.tiff", arr)
            rows.append(_row(cell_id, dataset, "punctate", "synthetic_foci", rule, channels, cseed))
            truth.append(
                pd.DataFrame(
                    {
                        "cell_id": pd.Series([cell_id] * len(centres), dtype=str),
                        "x": centres[:, 0],
                        "y": centres[:, 1],
                        "z": centres[:, 2],
                    }
                )
            )
    if truth:
        truth_df = pd.concat(truth, ignore_index=True)
    else:
        truth_df = pd.DataFrame({"cell_id": pd.Series([], dtype=str), "x": [], "y": [], "z": []})
    truth_df.to_parquet(out_dir / "truth_points.parquet", index=False)
    return _write_manifest(out_dir, rows)


# --------------------------------------------------------------------------------------- polymorphic


def _place_piece(
    rng: np.random.Generator,
    nucleus: Nucleus,
    nmask: np.ndarray,
    occupied: np.ndarray,
    placed: list[tuple[np.ndarray, float, float]],
    semi_axes: np.ndarray,
    rotation: np.ndarray,
) -> tuple[np.ndarray, tuple[slice, slice, slice], np.ndarray, str]:
    """Find a centre for one piece; return (centre xyz, slices, clipped mask, placement).

    ``strict``: a centre in the inner 55 % of the nucleus with centre distance > sum of longest
    semi-axes + PIECE_GAP to every placed piece; else ``voxel``: the piece, clipped to the nucleus, must
    not touch any placed piece under 26-connectivity (centres first in the inner 55 %, then gradually
    up to 85 % out); as a last
    resort ``forced``: an inner-55 % centre even if the piece touches others.
    """
    shape = nmask.shape
    longest, shortest = float(semi_axes.max()), float(semi_axes.min())
    for attempt in range(_STRICT_TRIES + _RELAXED_TRIES):
        strict = attempt < _STRICT_TRIES
        frac = POLYMORPHIC_INNER_FRACTION
        if attempt >= _STRICT_TRIES + _RELAXED_TRIES // 2:  # only then widen the centre region
            step = (attempt - _STRICT_TRIES - _RELAXED_TRIES // 2) / max(_RELAXED_TRIES // 2 - 1, 1)
            frac += (_RELAXED_INNER_FRACTION - POLYMORPHIC_INNER_FRACTION) * step
        centre = nucleus.to_voxel(uniform_in_ball(rng, 1)[0] * frac * nucleus.semi_axes)
        if placed:
            dist = np.array([np.linalg.norm(centre - c) for c, _, _ in placed])
            far = np.array([longest + lj + PIECE_GAP for _, lj, _ in placed])
            near = np.array([shortest + sj for _, _, sj in placed])
            clear = bool(np.all(dist > far))
            if strict and not clear:
                continue
            if not strict and np.any(dist < near):
                continue
        else:
            clear = True
        slices, sub = ellipsoid_box(shape, centre, semi_axes, rotation)
        clipped = sub & nmask[slices]
        n_in = int(clipped.sum())
        if n_in == 0 or (not strict and n_in < 0.5 * sub.sum()):
            continue
        if clear:
            return centre, slices, clipped, "strict" if strict else "voxel"
        pad = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(slices, shape, strict=True))
        grown = np.zeros(tuple(p.stop - p.start for p in pad), dtype=bool)
        inner = tuple(
            slice(s.start - p.start, s.start - p.start + (s.stop - s.start)) for s, p in zip(slices, pad, strict=True)
        )
        grown[inner] = clipped
        grown = ndimage.binary_dilation(grown, structure=_STRUCTURE_26)
        if not np.any(grown & occupied[pad]):
            return centre, slices, clipped, "voxel"
    centre = nucleus.to_voxel(uniform_in_ball(rng, 1)[0] * POLYMORPHIC_INNER_FRACTION * nucleus.semi_axes)
    slices, sub = ellipsoid_box(shape, centre, semi_axes, rotation)
    return centre, slices, sub & nmask[slices], "forced"


def polymorphic_cell(
    rng: np.random.Generator,
    grid: int,
    n_pieces: int,
    total_volume: float,
    elongation_range: tuple[float, float],
    nucleus: Nucleus | None = None,
    dirichlet_alpha: float = 2.0,
    oblate_probability: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return (nucleus bool mask, structure bool mask, info) of one nucleolus-like cell.

    ``nucleus``: use this nucleus instead of drawing one. ``dirichlet_alpha``: concentration of the volume
    shares (lower: more unequal pieces). ``oblate_probability``: chance that a piece is oblate (semi-axes
    r e^(1/3), r e^(1/3), r e^(-2/3): same volume and longest / shortest ratio e) instead of prolate. The
    defaults draw exactly the random numbers they always did.

    ``total_volume`` (voxels, on this grid) is split over ``n_pieces`` ellipsoids by a Dirichlet(2); each
    piece has elongation e ~ U(elongation_range) (semi-axes r e^(2/3), r e^(-1/3), r e^(-1/3)) and a
    random orientation, centres inside the inner 55 % of the nucleus, pieces not touching. The structure
    is the union of pieces intersected with the nucleus; ``info["n_components"]`` counts its
    26-connected components.
    """
    n_pieces = int(n_pieces)
    if n_pieces < 1:
        raise ValueError(f"n_pieces must be >= 1, got {n_pieces}")
    nucleus = random_nucleus(rng, grid) if nucleus is None else nucleus
    nmask = nucleus.mask(grid)
    shares = rng.dirichlet(np.full(n_pieces, float(dirichlet_alpha))) if n_pieces > 1 else np.ones(1)
    volumes = np.sort(float(total_volume) * shares)[::-1]
    structure = np.zeros_like(nmask)
    placed: list[tuple[np.ndarray, float, float]] = []
    pieces: list[dict[str, Any]] = []
    relaxed_any = False
    for vol in volumes:
        e = float(rng.uniform(*elongation_range))
        r = (3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0)
        oblate = bool(oblate_probability > 0 and rng.random() < oblate_probability)
        if oblate:
            semi_axes = np.array([r * e ** (1.0 / 3.0), r * e ** (1.0 / 3.0), r * e ** (-2.0 / 3.0)])
        else:
            semi_axes = np.array([r * e ** (2.0 / 3.0), r * e ** (-1.0 / 3.0), r * e ** (-1.0 / 3.0)])
        rotation = Rotation.random(rng=rng).as_matrix()
        centre, slices, clipped, placement = _place_piece(rng, nucleus, nmask, structure, placed, semi_axes, rotation)
        relaxed_any |= placement == "forced"
        structure[slices] |= clipped
        placed.append((centre, float(semi_axes.max()), float(semi_axes.min())))
        pieces.append(
            {
                "center": centre.tolist(),
                "semi_axes": semi_axes.tolist(),
                "rotation": rotation.tolist(),
                "elongation": e,
                "oblate": oblate,
                "volume": float(vol),
                "voxels": int(clipped.sum()),
                "placement": placement,
            }
        )
    _, n_components = ndimage.label(structure, structure=_STRUCTURE_26)
    info = {
        "nucleus": nucleus,
        "n_pieces": n_pieces,
        "total_volume": float(total_volume),
        "elongation_range": tuple(float(v) for v in elongation_range),
        "pieces": pieces,
        "n_components": int(n_components),
        "structure_volume": int(structure.sum()),
        "relaxed_placement": relaxed_any,
    }
    return nmask, structure, info


def generate_polymorphic_dataset(
    out_dir: Path, n_cells: int = 150, seed: int = 1, grid: int = 64, dataset: str = "synthetic_polymorphic"
) -> pd.DataFrame:
    """Write nucleolus-like cells labelled by piece count + manifest.csv; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vol_scale = grid_scale(grid) ** 3
    channels = ("nucleus", "structure")
    rows: list[dict[str, Any]] = []
    for i in range(n_cells):
        cseed = key_seed(seed, i)
        rng = np.random.default_rng(cseed)
        n_pieces = int(rng.integers(REFERENCE_PIECES[0], REFERENCE_PIECES[1] + 1))
        volume = float(rng.uniform(*REFERENCE_VOLUME)) * vol_scale
        nmask, smask, info = polymorphic_cell(rng, grid, n_pieces, volume, REFERENCE_ELONGATION)
        cell_id = f"{dataset}_{i:04d}"
        _write_cell_tiff(out_dir / f"{cell_id}.tiff", np.stack([_to_u8(nmask), _to_u8(smask)]))
        label = str(info["n_components"])
        rows.append(_row(cell_id, dataset, "polymorphic", "synthetic_nucleolus", label, channels, cseed))
    return _write_manifest(out_dir, rows)
