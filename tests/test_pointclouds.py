"""Point clouds: intensity sampling of punctate structures, mesh + SDF of polymorphic ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cellrep_core.errors import CellInputError
from cellrep_core.pointclouds.punctate import intensity_sample, sampling_weights, training_sample
from cellrep_core.pointclouds.sdf import mask_to_mesh, query_grid, sdf_pointcloud, signed_distance

S = 48
ZZ, YY, XX = np.mgrid[:S, :S, :S].astype(np.float64)


def ball(c, r):
    """Voxel ball of radius r around c = (x, y, z) in an S^3 ZYX mask."""
    return (XX - c[0]) ** 2 + (YY - c[1]) ** 2 + (ZZ - c[2]) ** 2 <= r**2


def grid_points_vox(grid, half, centre):
    """query_grid points in voxel coordinates for a given normalisation."""
    return query_grid(grid).astype(np.float64) * half + np.asarray(centre, dtype=np.float64)


# ---------------------------------------------------------------- SDF ------------------------------------


def test_query_grid_layout():
    q = query_grid(4)
    assert q.shape == (64, 3) and q.dtype == np.float32
    assert q.min() == -1.0 and q.max() == 1.0
    # x fastest, z slowest: reshape(grid, grid, grid) is a ZYX volume
    vol = q.reshape(4, 4, 4, 3)
    assert np.all(np.diff(vol[..., 0], axis=2) > 0) and np.all(np.diff(vol[..., 2], axis=0) > 0)


def test_ball_sdf_surface_and_sign():
    r, half, grid = 10.0, 16.0, 24
    mask = ball((24, 24, 24), r)
    surf, sdf, info = sdf_pointcloud(mask, np.random.default_rng(0), n_surface=2000, grid=grid, half_extent_vox=half)
    assert surf.shape == (2000, 3) and surf.dtype == np.float32
    assert sdf.shape == (grid**3,) and sdf.dtype == np.float32
    expected = (np.linalg.norm(query_grid(grid).astype(np.float64), axis=1) * half - r) / half
    err_vox = np.abs(sdf - expected) * half
    assert err_vox.max() < 1.0, err_vox.max()
    assert err_vox.mean() < 0.5
    inside = expected < -1.0 / half
    outside = expected > 1.0 / half
    assert inside.sum() > 100 and np.all(sdf[inside] < 0) and np.all(sdf[outside] > 0)
    radius_vox = np.linalg.norm(surf, axis=1) * half
    assert np.all(np.abs(radius_vox - r) < 1.0) and abs(radius_vox.mean() - r) < 0.3
    assert info["n_components"] == 1 and info["n_faces"] > 0
    assert info["mesh_volume_vox"] == pytest.approx(mask.sum(), rel=0.03)
    assert info["mesh_area_vox"] == pytest.approx(4 * np.pi * r**2, rel=0.15)


def test_two_balls_and_torus_sign():
    half, grid = 24.0, 24
    centres, r = [(14, 14, 14), (34, 33, 34)], 6.0
    mask = ball(centres[0], r) | ball(centres[1], r)
    _, sdf, info = sdf_pointcloud(mask, np.random.default_rng(1), n_surface=256, grid=grid, half_extent_vox=half)
    assert info["n_components"] == 2
    centroid = np.argwhere(mask).mean(axis=0)[::-1]
    pts = grid_points_vox(grid, half, centroid)
    expected = np.min([np.linalg.norm(pts - np.array(c), axis=1) - r for c in centres], axis=0)
    assert np.abs(sdf * half - expected).max() < 1.0
    for c in centres:  # negative inside each piece
        assert np.all(sdf[np.linalg.norm(pts - np.array(c), axis=1) < r - 1] < 0)
    assert np.all(sdf[expected > 1] > 0)
    # inside points of both pieces against the voxel-unit mesh
    mesh = mask_to_mesh(mask)
    rng = np.random.default_rng(2)
    d = rng.normal(size=(200, 3))
    d *= (rng.random((200, 1)) * (r - 1.5)) / np.linalg.norm(d, axis=1, keepdims=True)
    probe = np.concatenate([d + np.array(centres[0]), d + np.array(centres[1])])
    assert np.all(signed_distance(mesh, probe) < 0)

    # torus in the xy plane: the hole is outside, the tube inside
    big_r, a = 12.0, 4.0
    rho = np.sqrt((XX - 24) ** 2 + (YY - 24) ** 2)
    torus = (rho - big_r) ** 2 + (ZZ - 24) ** 2 <= a**2
    _, sdf_t, info_t = sdf_pointcloud(torus, np.random.default_rng(3), n_surface=256, grid=grid, half_extent_vox=half)
    assert info_t["n_components"] == 1
    pts = grid_points_vox(grid, half, np.argwhere(torus).mean(axis=0)[::-1])
    rho_p = np.hypot(pts[:, 0] - 24, pts[:, 1] - 24)
    expected_t = np.hypot(rho_p - big_r, pts[:, 2] - 24) - a
    assert np.abs(sdf_t * half - expected_t).max() < 1.0
    hole = signed_distance(mask_to_mesh(torus), np.array([[24.0, 24.0, 24.0], [36.0, 24.0, 24.0]]))
    assert hole[0] > 0 and hole[1] < 0


def test_single_point_query():
    mesh = mask_to_mesh(ball((24, 24, 24), 10))
    pts = np.array([[24.0, 24.0, 24.0], [24.0, 24.0, 40.0], [30.0, 27.0, 22.0]])
    batch = signed_distance(mesh, pts)
    singles = np.concatenate([signed_distance(mesh, p[None]) for p in pts])
    assert singles.shape == (3,) and np.allclose(singles, batch)
    assert signed_distance(mesh, np.zeros((0, 3))).shape == (0,)


def test_hollow_shell_is_filled():
    r = np.sqrt((XX - 24) ** 2 + (YY - 24) ** 2 + (ZZ - 24) ** 2)
    shell = (r <= 12) & (r >= 7)
    mesh = mask_to_mesh(shell)
    assert mesh.volume == pytest.approx(ball((24, 24, 24), 12).sum(), rel=0.03)
    assert signed_distance(mesh, np.array([[24.0, 24.0, 24.0]]))[0] < -10


def test_matches_mesh_to_sdf():
    try:
        import mesh_to_sdf
    except Exception as exc:  # pyrender / OpenGL import failures are not ImportError
        pytest.skip(f"mesh_to_sdf cannot be imported here: {exc!r}")
    import trimesh

    half, grid = 24.0, 16
    mask = ball((16, 18, 20), 7) | ball((30, 30, 28), 5)
    mesh = mask_to_mesh(mask)
    centroid = np.argwhere(mask).mean(axis=0)[::-1]
    unit = trimesh.Trimesh((mesh.vertices - centroid) / half, mesh.faces, process=False)
    q = query_grid(grid)
    ours = signed_distance(unit, q)
    np.random.seed(0)  # trimesh.sample inside mesh_to_sdf uses the global generator
    ref = mesh_to_sdf.mesh_to_sdf(
        unit, q.astype(np.float64), surface_point_method="sample", sign_method="normal", sample_point_count=100_000
    )
    diff = np.abs(ours - ref)
    assert diff.max() < 0.04, diff.max()
    # same sign convention (negative inside) away from the surface
    far = np.abs(ref) > 0.02
    assert np.all(np.sign(ours[far]) == np.sign(ref[far]))
    assert (ours < 0).sum() > 10


def test_rotation_consistency():
    half, grid = 24.0, 20
    mask = ball((18, 20, 22), 7) | ((XX - 32) ** 2 / 36 + (YY - 28) ** 2 / 9 + (ZZ - 26) ** 2 / 16 <= 1)
    rot = np.rot90(mask, k=1, axes=(1, 2))  # ZYX array: rotation in the y-x plane, about z
    s1, d1, i1 = sdf_pointcloud(mask, np.random.default_rng(0), n_surface=3000, grid=grid, half_extent_vox=half)
    s2, d2, i2 = sdf_pointcloud(rot, np.random.default_rng(0), n_surface=3000, grid=grid, half_extent_vox=half)
    tol = 0.3 / half
    assert np.abs(np.sort(d1) - np.sort(d2)).max() < tol
    # the grid is symmetric, so the SDF volume rotates like the mask
    vol1 = np.rot90(d1.reshape(grid, grid, grid), k=1, axes=(1, 2))
    assert np.abs(vol1 - d2.reshape(grid, grid, grid)).max() < tol
    assert i1["mesh_volume_vox"] == pytest.approx(i2["mesh_volume_vox"], rel=1e-6)
    assert i1["n_components"] == i2["n_components"] == 2
    # surface points: same radius distribution, and rotated points lie on the rotated surface
    q = np.linspace(0.05, 0.95, 10)
    assert np.abs(np.quantile(np.linalg.norm(s1, axis=1), q) - np.quantile(np.linalg.norm(s2, axis=1), q)).max() < tol
    s1_rot = np.stack([s1[:, 1], -s1[:, 0], s1[:, 2]], axis=1)  # index map of rot90 axes=(1, 2)
    dist, _ = cKDTree(s2).query(s1_rot)
    assert dist.mean() < 0.5 / half and dist.max() < 1.5 / half


def test_sdf_pointcloud_deterministic():
    mask = ball((20, 24, 26), 6)
    a = sdf_pointcloud(mask, np.random.default_rng(5), n_surface=500, grid=8)
    b = sdf_pointcloud(mask, np.random.default_rng(5), n_surface=500, grid=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_sdf_errors():
    with pytest.raises(CellInputError) as exc:
        sdf_pointcloud(np.zeros((8, 8, 8), bool), np.random.default_rng(0), cell_id="c1", path="p.tif")
    assert exc.value.reason == "empty_segmentation" and exc.value.stage == "pointcloud"
    assert exc.value.cell_id == "c1" and exc.value.path == "p.tif"
    with pytest.raises(CellInputError) as exc:
        sdf_pointcloud(ball((24, 24, 24), 10), np.random.default_rng(0), half_extent_vox=8.0, cell_id="c2")
    assert exc.value.reason == "structure_too_large"
    assert "half_extent_vox" in exc.value.detail and "11" in exc.value.detail


# ---------------------------------------------------------------- punctate -------------------------------


def blob_image(centres, rng, peak=1000.0, bg=50.0, noise=5.0, sigma=1.0):
    """Gaussian blobs on a dim noisy background."""
    img = bg + noise * rng.standard_normal((S, S, S))
    for c in centres:
        img += peak * np.exp(-((XX - c[0]) ** 2 + (YY - c[1]) ** 2 + (ZZ - c[2]) ** 2) / (2 * sigma**2))
    return img


CELL = ball((24, 24, 24), 20)
CENTROID = np.argwhere(CELL).mean(axis=0)[::-1]


@pytest.mark.parametrize(("lam", "floor"), [(100.0, None), (500.0, 25.0)])
def test_intensity_sample_on_blobs(lam, floor):
    centres = np.array([(16, 20, 24), (30, 28, 20), (24, 34, 30), (20, 24, 14)], dtype=float)
    img = blob_image(centres, np.random.default_rng(0), noise=20.0)
    pts = intensity_sample(img, CELL, np.random.default_rng(1), n_dense=4096, lam=lam, skew_floor=floor)
    assert pts.shape == (4096, 4) and pts.dtype == np.float32
    d = np.linalg.norm((pts[:, :3] + CENTROID)[:, None] - centres[None], axis=2)
    assert (d.min(axis=1) < 2).mean() > 0.9
    assert len(np.unique(d.argmin(axis=1))) == 4
    assert 0 < pts[:, 3].min() and pts[:, 3].max() <= 1.0
    # centred on the mask centroid: a single blob at the centroid gives a cloud around the origin
    one = blob_image([CENTROID], np.random.default_rng(0))
    pts1 = intensity_sample(one, CELL, np.random.default_rng(1), n_dense=2048, lam=lam, skew_floor=floor)
    assert np.abs(pts1[:, :3].mean(axis=0)).max() < 0.5


def test_many_equal_blobs_are_covered():
    # equally bright puncta off the voxel grid: their brightest voxels differ by up to ~12 %
    a = np.linspace(0, 2 * np.pi, 5)[:-1]
    centres = np.array(
        [
            (24 + 12 * np.cos(t) * np.sin(b), 24 + 12 * np.sin(t) * np.sin(b), 24 + 12 * np.cos(b))
            for t in a
            for b in (0.8, 1.6, 2.4)
        ]
    )
    img = blob_image(centres, np.random.default_rng(3), noise=5.0)

    def blobs_hit(**kw):
        pts = intensity_sample(img, CELL, np.random.default_rng(4), n_dense=4096, lam=500.0, skew_floor=25.0, **kw)
        d = np.linalg.norm((pts[:, :3] + CENTROID)[:, None] - centres[None], axis=2)
        assert (d.min(axis=1) < 2).mean() > 0.9
        return int((np.bincount(d.argmin(axis=1), minlength=len(centres)) > 0.01 * len(pts)).sum())

    _, _, info = sampling_weights(img, CELL, lam=500.0, skew_floor=25.0, max_exponent=None)
    assert info["exponent"] > 100  # the published exponent collapses onto a few voxels ...
    capped = blobs_hit()
    assert capped >= 11, capped  # ... the capped one covers (nearly) all twelve equal blobs
    assert blobs_hit(max_exponent=None) <= 6


def test_huge_exponent_is_stable():
    img = np.zeros((S, S, S))
    img[10, 10, 10], img[30, 30, 30] = 1.0, 0.999
    mask = np.ones_like(img, dtype=bool)
    pts = intensity_sample(img, mask, np.random.default_rng(0), n_dense=1000, lam=1e6, max_exponent=None)
    assert np.all(np.isfinite(pts)) and pts.shape == (1000, 4)


def test_intensity_sample_deterministic_and_jitter():
    img = blob_image([(20, 20, 20), (30, 30, 30)], np.random.default_rng(0))
    a = intensity_sample(img, CELL, np.random.default_rng(7), n_dense=1000)
    b = intensity_sample(img, CELL, np.random.default_rng(7), n_dense=1000)
    c = intensity_sample(img, CELL, np.random.default_rng(8), n_dense=1000)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    frac = (a[:, :3] + CENTROID) % 1.0
    off = np.minimum(frac, 1 - frac)  # jitter around integer voxel positions, sd 0.001
    assert 0 < off.max() < 0.01


def test_smoothed_weights_and_subvoxel_positions():
    # a punctum centred between voxels: its smoothed maximum moves less than its brightest raw voxel
    on = blob_image([(24, 24, 24)], np.random.default_rng(0), noise=0.0)
    off = blob_image([(24.5, 24.5, 24.5)], np.random.default_rng(0), noise=0.0)

    def top(img, **kw):
        return sampling_weights(img, CELL, **kw)[2]["top"]

    raw_drop, smooth_drop = 1 - top(off, smooth_sigma=0) / top(on, smooth_sigma=0), 1 - top(off) / top(on)
    assert raw_drop > 0.25 and smooth_drop < 0.2
    img = blob_image([(20, 20, 20), (30, 30, 30)], np.random.default_rng(0))
    pts = intensity_sample(img, CELL, np.random.default_rng(7), n_dense=2000, subvoxel=True)
    off = (pts[:, :3] + CENTROID) % 1.0
    assert np.abs(off - 0.5).max() > 0.45 and 0 < pts[:, 3].min() and pts[:, 3].max() <= 1.0
    d = np.linalg.norm((pts[:, :3] + CENTROID)[:, None] - np.array([(20, 20, 20), (30, 30, 30)])[None], axis=2)
    assert (d.min(axis=1) < 2.5).mean() > 0.95


def test_ball_dilation_is_round():
    from cellrep_core.pointclouds.build import dilate

    seed = np.zeros((21, 21, 21), bool)
    seed[10, 10, 10] = True
    ball8, diamond = dilate(seed, 8), dilate(seed, 8, ball=False)
    assert ball8[10, 10, 18] and ball8[10, 15, 15] and not diamond[10, 15, 15]  # (0, 5, 5): 7.1 from the seed
    zz, yy, xx = np.mgrid[:21, :21, :21]
    assert np.array_equal(ball8, (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 64)
    assert np.array_equal(dilate(seed, 0), seed)


def test_training_sample():
    img = blob_image([(20, 20, 20), (30, 30, 30)], np.random.default_rng(0))
    dense = intensity_sample(img, CELL, np.random.default_rng(0), n_dense=4096)
    t = training_sample(dense, 1024, np.random.default_rng(1))
    assert t.shape == (1024, 4) and t.dtype == np.float32
    r = np.linalg.norm(t[:, :3].astype(np.float64), axis=1).max()  # intensity onto [-r, r], r about the centre
    assert t[:, 3].min() == pytest.approx(-r, abs=1e-5) and t[:, 3].max() == pytest.approx(r, abs=1e-5)
    assert np.abs(t[:, :3]).max() <= 0.1 * np.abs(dense[:, :3]).max() + 1e-6
    assert len(np.unique(t, axis=0)) == 1024  # without replacement
    assert np.array_equal(t, training_sample(dense, 1024, np.random.default_rng(1)))
    # intensity-weighted: bright rows are over-represented
    small = np.array([[0, 0, 0, 0.0], [1, 0, 0, 1.0], [0, 1, 0, 1.0], [0, 0, 1, 0.01]], dtype=np.float32)
    picks = training_sample(small, 50, np.random.default_rng(2), xyz_scale=1.0)  # with replacement
    assert picks.shape == (50, 4) and not np.any(np.all(picks[:, :3] == 0, axis=1))


def test_intensity_errors():
    rng = np.random.default_rng(0)
    img = np.ones((8, 8, 8))
    with pytest.raises(CellInputError) as exc:
        intensity_sample(img, np.zeros((8, 8, 8), bool), rng, cell_id="c3")
    assert exc.value.reason == "empty_segmentation" and exc.value.cell_id == "c3"
    with pytest.raises(CellInputError) as exc:
        intensity_sample(np.zeros((8, 8, 8)), np.ones((8, 8, 8), bool), rng)
    assert exc.value.reason == "no_signal"
    with pytest.raises(CellInputError) as exc:
        intensity_sample(img, np.ones((8, 8, 4), bool), rng)
    assert exc.value.reason == "shape_mismatch"
    # a constant image samples the mask uniformly
    pts = intensity_sample(img, np.ones((8, 8, 8), bool), rng, n_dense=4000)
    assert np.abs(pts[:, :3].mean(axis=0)).max() < 0.2 and np.all(pts[:, 3] == 1)


def test_signed_distance_is_exact_on_a_multi_piece_mask():
    """Against trimesh's exact closest point (Python, slow) and its ray-casting inside test."""
    import trimesh

    rng = np.random.default_rng(7)
    mask = np.zeros((40, 40, 40), bool)
    for _ in range(6):
        c = rng.uniform(8, 32, 3)
        mask |= ((ZZ[:40, :40, :40] - c[0]) / rng.uniform(2, 6)) ** 2 + ((YY[:40, :40, :40] - c[1]) / 3) ** 2 + (
            (XX[:40, :40, :40] - c[2]) / rng.uniform(2, 6)
        ) ** 2 <= 1
    mesh = mask_to_mesh(mask)
    pts = rng.uniform(-3, 43, (3000, 3))
    sdf = signed_distance(mesh, pts)
    exact = trimesh.proximity.closest_point(mesh, pts)[1]
    np.testing.assert_allclose(np.abs(sdf), exact, atol=1e-4)
    assert np.array_equal(sdf < 0, mesh.contains(pts))
