"""SDF benchmark: cellrep's grid signed distance against ``mesh_to_sdf`` on the same 20 real cell meshes.

Meshes: the mitochondria (TOMM20) of every non-border cell of ``allen_tomm20_fov`` and, to make 20,
nuclei of ``allen_fov_labels``; each cut out of its field of view, resampled to isotropic voxels
(0.29 x 0.108 x 0.108 um), scaled so that it spans 90 % of a 32^3 grid and meshed by marching cubes.
Query points: the 32^3 grid on the box [-1, 1]^3. Everything runs on ONE core.

Timed per cell: cellrep's default (``grid_signed_distance``, method "fast": compiled narrow band +
propagation + ray parity), its exact path (method "exact": fcpw BVH + winding number) and ``mesh_to_sdf``.
The speedup is mesh_to_sdf's total time over the fast method's. The fast method's first call in a
process (numba loading its on-disk cache, or compiling on the very first run) is timed apart.

Reference for the errors: the exact closest point on the triangles by libigl's AABB tree
(``point_cloud_utils.closest_points_on_mesh``, float64) with the winding-number sign. Errors are given
as a fraction of the box edge (2 units). The last part times the whole per-cell preprocessing
(read, validate, sample) of synthetic cells: cells per second per core, punctate and SDF.

Run: ``make bench-sdf`` (or ``python benchmarks/bench_sdf.py [--real DIR]``).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TBB_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import point_cloud_utils as pcu  # noqa: E402
import tifffile  # noqa: E402
import trimesh  # noqa: E402

from cellrep_core.data.fov import fit_to_grid, split_fov  # noqa: E402
from cellrep_core.pointclouds.sdf import grid_signed_distance, mask_to_mesh, query_grid  # noqa: E402

ALLEN_VOXEL_ZYX = (0.29, 0.108, 0.108)
GRID = 32
BOX_EDGE = 2.0


def one_core() -> None:
    """Pin this process to its first allowed CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def bench_masks(real: Path, n: int = 20) -> list[tuple[str, np.ndarray]]:
    """``n`` cell masks (name, bool ZYX at isotropic voxels) from the real Allen fields of view."""
    fov = real / "allen_tomm20_fov"
    cells = split_fov(
        tifffile.imread(fov / "cell_segmentation.tiff"),
        tifffile.imread(fov / "nucleus_segmentation.tiff"),
        tifffile.imread(fov / "structure_segmentation.tiff"),
        voxel_size_zyx=ALLEN_VOXEL_ZYX,
    )
    out = [(f"tomm20_cell{c.label:02d}", c.structure) for c in cells if c.structure is not None and c.structure.any()]
    if len(out) < n:
        labels = real / "allen_fov_labels"
        nuclei = tifffile.imread(labels / "nucleus_labels.tiff")
        more = split_fov(nuclei, voxel_size_zyx=ALLEN_VOXEL_ZYX)
        out += [(f"nucleus{c.label:02d}", c.cell) for c in more[: n - len(out)]]
    return out[:n]


def unit_mesh(mask: np.ndarray) -> trimesh.Trimesh:
    """Fit a mask into the grid, mesh it and map it into [-1, 1]^3."""
    m, _ = fit_to_grid(mask, GRID, fill=0.9)
    mesh = mask_to_mesh(m)
    centre = np.array(m.shape[::-1], dtype=np.float64) / 2.0
    return trimesh.Trimesh((np.asarray(mesh.vertices) - centre) / (GRID / 2.0), mesh.faces, process=False)


def reference_sdf(mesh: trimesh.Trimesh, q: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    f = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    d = np.asarray(pcu.closest_points_on_mesh(q, v, f)[0], dtype=np.float64)
    w = np.asarray(pcu.triangle_soup_fast_winding_number(v, f, q), dtype=np.float64)
    return np.where(np.abs(w) > 0.5, -d, d)


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def throughput(n_cells: int = 12) -> dict[str, float]:
    """Cells per second per core of the whole per-cell preprocessing, punctate and SDF."""
    from cellrep_core.data import synthetic
    from cellrep_core.ingest import ingest_manifest
    from cellrep_core.pointclouds.build import SamplingConfig, process_cell

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.generate_punctate_dataset(tmp / "p", n_per_rule=max(1, n_cells // 6), seed=0)
        synthetic.generate_polymorphic_dataset(tmp / "s", n_cells=n_cells, seed=0)
        for kind, d in (("punctate", tmp / "p"), ("sdf", tmp / "s")):
            cells = ingest_manifest(d / "manifest.csv").cells.to_dict("records")
            cfg = SamplingConfig()
            process_cell(cells[0], cfg)  # warm-up (imports, caches)
            t0 = time.perf_counter()
            results = [process_cell(c, cfg) for c in cells]
            dt = time.perf_counter() - t0
            assert all(r["ok"] for r in results), [r["row"] for r in results if not r["ok"]]
            out[kind] = len(cells) / dt
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    ap.add_argument("--real", type=Path, default=default_real, help="folder of the real Allen data")
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of every method (best kept)")
    args = ap.parse_args(argv)
    if not (args.real / "allen_tomm20_fov").is_dir():
        print(f"bench-sdf: real data not found under {args.real}; pass --real DIR", file=sys.stderr)
        return 2
    from mesh_to_sdf import mesh_to_sdf

    one_core()
    q = query_grid(GRID).astype(np.float64)
    masks = bench_masks(args.real, args.cells)
    print(f"{len(masks)} cell meshes, {len(q)} query points each, one core")
    meshes = [(name, unit_mesh(mask)) for name, mask in masks]
    t0 = time.perf_counter()
    grid_signed_distance(meshes[0][1], GRID)
    print(f"first call of the fast method in this process (numba JIT load/compile): {time.perf_counter() - t0:.2f} s")

    def m2s(m):
        np.random.seed(0)  # mesh_to_sdf samples the surface with numpy's global generator: the same every repeat
        return mesh_to_sdf(m, q, surface_point_method="sample", sign_method="normal", sample_point_count=100_000)

    # every method warmed up on the first mesh (first-call allocations, imports, BVH builds), then best of
    # --repeats for each: all sides timed alike
    grid_signed_distance(meshes[0][1], GRID, method="exact")
    m2s(meshes[0][1])
    print(
        f"{'cell':<16}{'faces':>7}{'pieces':>7}{'ours_s':>9}{'exact_s':>9}{'m2s_s':>9}{'ratio':>7}"
        f"{'ours_err':>11}{'exact_err':>11}{'m2s_err':>10}"
    )
    t_ours, t_exact, t_m2s, e_ours, e_exact, e_m2s = [], [], [], [], [], []
    for name, mesh in meshes:
        ref = reference_sdf(mesh, q)
        to, ours = best_time(lambda m=mesh: grid_signed_distance(m, GRID), args.repeats)
        te, exact = best_time(lambda m=mesh: grid_signed_distance(m, GRID, method="exact"), args.repeats)
        tm, theirs = best_time(lambda m=mesh: m2s(m), args.repeats)
        eo = float(np.abs(ours - ref).max()) / BOX_EDGE
        ee = float(np.abs(exact - ref).max()) / BOX_EDGE
        em = float(np.abs(np.asarray(theirs) - ref).max()) / BOX_EDGE
        pieces = len(trimesh.graph.connected_components(mesh.edges))
        t_ours.append(to)
        t_exact.append(te)
        t_m2s.append(tm)
        e_ours.append(eo)
        e_exact.append(ee)
        e_m2s.append(em)
        print(
            f"{name:<16}{len(mesh.faces):>7}{pieces:>7}{to:>9.4f}{te:>9.4f}{tm:>9.3f}{tm / to:>7.1f}"
            f"{eo:>11.2e}{ee:>11.2e}{em:>10.2e}"
        )
    speedup = float(np.sum(t_m2s) / np.sum(t_ours))
    print(
        f"per cell: cellrep {np.mean(t_ours) * 1e3:.1f} ms (median {np.median(t_ours) * 1e3:.1f}), "
        f"cellrep exact {np.mean(t_exact) * 1e3:.1f} ms (median {np.median(t_exact) * 1e3:.1f}), "
        f"mesh_to_sdf {np.mean(t_m2s) * 1e3:.0f} ms (median {np.median(t_m2s) * 1e3:.0f}); "
        f"max error as a fraction of the box: cellrep {max(e_ours):.2e}, cellrep exact {max(e_exact):.2e}, "
        f"mesh_to_sdf {max(e_m2s):.2e}"
    )
    tp = throughput()
    print(
        f"preprocessing throughput, one core: punctate {tp['punctate']:.2f} cells/s, "
        f"sdf {tp['sdf']:.2f} cells/s (synthetic 64^3 cells: read, validate, sample)"
    )
    print(f"speedup={speedup:.1f} max_abs_error={max(e_ours):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
