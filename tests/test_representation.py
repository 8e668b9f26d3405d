"""Representation analysis on inputs with a known answer: shape features, archetypes, bins, correlations."""

import numpy as np
import pandas as pd

from cellrep_core.analysis.representation import (
    archetypes,
    choose_n_archetypes,
    nuclear_volume_bins,
    pc_correlations,
    pca,
    shape_features,
)


def test_shape_features_of_a_ball_and_an_ellipsoid():
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    ball = (x**2 + y**2 + z**2) < 12**2
    f = shape_features({"nucleus": ball, "structure": ball[:, :, ::-1] & (x > 0)}, voxel_size_um=0.5)
    assert abs(f["nuclear_volume"] - 4 / 3 * np.pi * 6**3) / (4 / 3 * np.pi * 6**3) < 0.03
    assert 0.85 < f["nuclear_sphericity"] <= 1.02  # a voxelised ball's marching-cubes surface is a bit rough
    assert abs(f["nuclear_extent_1"] - f["nuclear_extent_3"]) < 0.3
    assert np.isnan(f["cell_volume"]) and f["structure_volume"] < f["nuclear_volume"] / 1.9
    ell = (x / 16) ** 2 + (y / 8) ** 2 + (z / 8) ** 2 < 1
    g = shape_features({"nucleus": ell, "cell": np.ones_like(ell), "raw": ell * 1.0})
    assert g["nuclear_extent_1"] > 1.8 * g["nuclear_extent_2"]
    assert g["nuclear_sphericity"] < f["nuclear_sphericity"] - 0.05
    assert g["cell_volume"] == 40**3 and np.isnan(g["structure_volume"])  # intensity, no mask


def test_archetypes_recover_the_corners_of_a_simplex_and_the_elbow_finds_three():
    rng = np.random.default_rng(0)
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    w = rng.dirichlet([0.5, 0.5, 0.5], size=300)
    x = w @ corners + rng.normal(0, 0.05, (300, 2))
    z, a, rss = archetypes(x, 3)
    err = max(np.min(np.linalg.norm(z - c, axis=1)) for c in corners)
    assert err < 1.0
    assert np.allclose(a.sum(1), 1) and (a >= -1e-12).all()
    k, table = choose_n_archetypes(x)
    assert k == 3 and table[1] > table[2] > table[3]


def test_pc_correlations_and_volume_bins():
    rng = np.random.default_rng(1)
    vol = rng.uniform(100, 300, 200)
    x = np.c_[vol / 20 + rng.normal(0, 0.2, 200), rng.normal(0, 1, (200, 5))]
    res = pca(x, 4)
    corr = pc_correlations(res.scores, pd.DataFrame({"nuclear_volume": vol, "noise": rng.normal(size=200)}))
    best = corr.loc[corr[corr.descriptor == "nuclear_volume"].pearson_r.abs().idxmax()]
    assert abs(best.pearson_r) > 0.9
    assert corr[corr.descriptor == "noise"].pearson_r.abs().max() < 0.3
    bins = nuclear_volume_bins(vol, res.scores, n_bins=4)
    assert bins.n_cells.sum() == 200 and bins.nuclear_volume_lo.is_monotonic_increasing
    # the closest real cell of each bin's mean code lies in (or next to) that bin
    lo = bins.nuclear_volume_lo.to_numpy()
    assert (np.diff(vol[bins.closest_row.to_numpy()]) > 0).all() and vol[bins.closest_row].min() >= lo[0]
