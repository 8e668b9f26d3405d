"""The fast grid SDF (narrow band + propagation + ray parity) against the exact path and mesh_to_sdf."""

import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

from cellrep_core.data.synthetic import REFERENCE_ELONGATION, polymorphic_cell
from cellrep_core.pointclouds.gridsdf import grid_sdf
from cellrep_core.pointclouds.sdf import grid_signed_distance, mask_to_mesh, query_grid, sdf_pointcloud

BOX = 2.0  # edge of the query box [-1, 1]^3
BOUND = 0.01 * BOX  # the error budget: 1 % of the box
REAL = Path(os.environ.get("CELLREP_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
REAL = REAL / "allen_tomm20_fov"


def unit(mesh: trimesh.Trimesh, centre, half: float) -> trimesh.Trimesh:
    return trimesh.Trimesh((np.asarray(mesh.vertices) - np.asarray(centre)) / half, mesh.faces, process=False)


def compare(mesh: trimesh.Trimesh, grid: int = 32) -> tuple[np.ndarray, np.ndarray]:
    fast = grid_signed_distance(mesh, grid)
    exact = grid_signed_distance(mesh, grid, method="exact")
    assert fast.shape == exact.shape == (grid**3,) and fast.dtype == np.float32
    return fast.astype(np.float64), exact.astype(np.float64)


def test_synthetic_multi_piece_cells_within_bound():
    """Nucleolus-like cells of 1-8 pieces at the data set's scale (64^3 crops, half extent 32)."""
    worst, pieces = 0.0, []
    for seed, n_pieces in [(0, 1), (1, 3), (2, 5), (3, 8), (4, 8)]:
        rng = np.random.default_rng(seed)
        _nucleus, structure, info = polymorphic_cell(rng, 64, n_pieces, 2500.0, REFERENCE_ELONGATION)
        pieces.append(info["n_components"])
        mesh = mask_to_mesh(structure)
        fast, exact = compare(unit(mesh, np.argwhere(structure).mean(axis=0)[::-1], 32.0))
        worst = max(worst, float(np.abs(fast - exact).max()))
        far = np.abs(exact) > 1e-6
        assert np.array_equal(fast[far] < 0, exact[far] < 0)  # same sign everywhere off the surface
    assert max(pieces) >= 5
    assert worst < BOUND, worst
    assert worst > 0.0  # the far field is propagated, not copied from the exact path


def test_sdf_pointcloud_uses_fast_by_default():
    mask = np.zeros((48, 48, 48), bool)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    mask |= (xx - 18) ** 2 + (yy - 20) ** 2 + (zz - 22) ** 2 <= 49
    mask |= ((xx - 32) / 6) ** 2 + ((yy - 28) / 3) ** 2 + ((zz - 26) / 4) ** 2 <= 1
    _, fast, _ = sdf_pointcloud(mask, np.random.default_rng(0), n_surface=64, grid=24, half_extent_vox=24.0)
    _, exact, _ = sdf_pointcloud(
        mask, np.random.default_rng(0), n_surface=64, grid=24, half_extent_vox=24.0, sdf_method="exact"
    )
    diff = np.abs(fast.astype(np.float64) - exact)
    assert 0.0 < diff.max() < BOUND
    with pytest.raises(ValueError, match="unknown SDF method"):
        grid_signed_distance(mask_to_mesh(mask), 8, method="approximate")


def test_thin_pieces_are_negative_inside():
    """One-voxel plates and a rod, placed so that grid points fall inside them."""
    grid, half = 33, 16.0  # grid spacing = 1 voxel; grid points at integer voxel coordinates
    mask = np.zeros((40, 40, 40), bool)
    mask[20, 6:34, 6:34] = True  # plate, one voxel thick in z
    mask[6:34, 6:34, 30] = True  # plate, one voxel thick in x
    mask[8:30, 8, 8] = True  # rod along z, one voxel wide
    mesh = mask_to_mesh(mask)
    centre = np.array([20.0, 20.0, 20.0])
    fast, exact = compare(unit(mesh, centre, half), grid)
    # grid point (x, y, z) in voxels: q * half + centre
    pts = query_grid(grid).astype(np.float64) * half + centre
    vox = np.rint(pts).astype(int)
    ok = np.all((vox >= 0) & (vox < 40), axis=1)
    on = np.zeros(len(pts), bool)
    on[ok] = mask[vox[ok, 2], vox[ok, 1], vox[ok, 0]]
    assert on.sum() > 1000
    # marching cubes at 0.5 puts the surface 0.5 voxel from a plate's voxels, 0.5 / sqrt(2) from a rod's
    # (0.5 / sqrt(3) at a rod's end)
    assert np.all(fast[on] < -0.28 / half), fast[on].max() * half
    assert np.isclose(np.median(fast[on]), -0.5 / half)
    off = np.abs(exact) > 1e-6
    assert np.array_equal(fast[off] < 0, exact[off] < 0)
    assert np.abs(fast - exact).max() < BOUND


def test_grid_lines_through_vertices_and_edges():
    """A box whose vertices, edges and faces lie on grid points: the parity must not double count."""
    grid = 33  # spacing 1/16, so +-0.5 and +-0.25 are grid coordinates
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.75))
    box = trimesh.Trimesh(box.vertices + np.array([0.0, 0.25, -0.125]), box.faces, process=False)
    sdf, bad = grid_sdf(box.vertices, box.faces, grid)
    assert not bad.any()
    q = query_grid(grid).astype(np.float64)
    lo, hi = np.array([-0.5, 0.0, -0.5]), np.array([0.5, 0.5, 0.25])
    outside = np.maximum(np.maximum(lo - q, q - hi), 0.0)
    inside = np.minimum(np.min(q - lo, axis=1), np.min(hi - q, axis=1))
    expected = np.where(np.linalg.norm(outside, axis=1) > 0, np.linalg.norm(outside, axis=1), -np.maximum(inside, 0))
    off = np.abs(expected) > 1e-9
    assert np.array_equal(sdf[off] < 0, expected[off] < 0)
    assert np.abs(sdf - expected).max() < 1e-6


def test_open_mesh_falls_back_to_the_winding_number():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    centre = sphere.triangles_center
    keep = ~((centre[:, 2] > 0.55) & (np.abs(centre[:, 0]) < 0.15))  # a small hole at the top
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)
    assert not holed.is_watertight
    _, bad = grid_sdf(holed.vertices, holed.faces, 24)
    assert bad.any()
    fast, exact = compare(holed, 24)
    far = np.abs(exact) > 2.0 / 23
    assert np.array_equal(fast[far] < 0, exact[far] < 0)
    r = np.linalg.norm(query_grid(24).astype(np.float64), axis=1)
    assert np.all(fast[r < 0.4] < 0) and np.all(fast[r > 0.8] > 0)


@pytest.mark.skipif(not REAL.exists(), reason="real Allen data not present next to the project")
def test_real_tomm20_cells_within_bound():
    import tifffile

    from cellrep_core.data.fov import fit_to_grid, split_fov

    cells = split_fov(
        tifffile.imread(REAL / "cell_segmentation.tiff"),
        tifffile.imread(REAL / "nucleus_segmentation.tiff"),
        tifffile.imread(REAL / "structure_segmentation.tiff"),
        voxel_size_zyx=(0.29, 0.108, 0.108),
    )
    checked = 0
    for c in cells[:4]:
        m, _ = fit_to_grid(c.structure, 32, fill=0.9)
        mesh = mask_to_mesh(m)
        fast, exact = compare(unit(mesh, np.array(m.shape[::-1]) / 2.0, 16.0))
        assert np.abs(fast - exact).max() < BOUND
        far = np.abs(exact) > 1e-6
        assert np.array_equal(fast[far] < 0, exact[far] < 0)
        checked += len(trimesh.graph.connected_components(mesh.edges)) > 1
    assert checked >= 2  # multi-piece mitochondria


def test_fast_matches_mesh_to_sdf():
    try:
        import mesh_to_sdf
    except Exception as exc:  # pyrender / OpenGL import failures are not ImportError
        pytest.skip(f"mesh_to_sdf cannot be imported here: {exc!r}")
    zz, yy, xx = np.mgrid[:40, :40, :40]
    mask = (xx - 14) ** 2 + (yy - 16) ** 2 + (zz - 18) ** 2 <= 49
    mask |= (xx - 27) ** 2 + (yy - 26) ** 2 + (zz - 24) ** 2 <= 25
    mesh = unit(mask_to_mesh(mask), np.argwhere(mask).mean(axis=0)[::-1], 20.0)
    q = query_grid(16)
    ours = grid_signed_distance(mesh, 16)
    np.random.seed(0)  # trimesh.sample inside mesh_to_sdf uses the global generator
    ref = mesh_to_sdf.mesh_to_sdf(
        mesh, q.astype(np.float64), surface_point_method="sample", sign_method="normal", sample_point_count=100_000
    )
    assert np.abs(ours - ref).max() < 0.04
    far = np.abs(ref) > 0.02
    assert np.array_equal(np.sign(ours[far]), np.sign(ref[far])) and (ours < 0).sum() > 10
