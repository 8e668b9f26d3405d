"""Field-of-view label images split into isotropic single-cell crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellrep_core.data.fov import fit_to_grid, isotropic_zoom, split_fov

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "allen_tomm20_fov"


def _fov() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three box cells in a 10 x 40 x 60 FOV: 1 and 2 inside, 3 touching the right x border."""
    cells = np.zeros((10, 40, 60), np.uint8)
    cells[2:8, 5:15, 5:20] = 1
    cells[2:8, 20:35, 25:40] = 2
    cells[2:8, 10:30, 50:60] = 3
    nuclei = np.zeros_like(cells)
    nuclei[3:7, 8:12, 8:16] = 1
    nuclei[3:7, 24:30, 28:36] = 2
    nuclei[3:7, 15:25, 52:58] = 3
    structure = np.zeros_like(cells)
    structure[4:6, 6:8, 6:9] = 255  # in cell 1, outside its nucleus
    structure[4:6, 25:28, 30:33] = 255  # in nucleus 2
    structure[0:2, 0:3, 0:3] = 255  # background: belongs to no cell
    return cells, nuclei, structure


def test_border_cells_dropped_and_structure_masked():
    cells, nuclei, structure = _fov()
    out = split_fov(cells, nuclei, structure, min_voxels=10)
    assert [c.label for c in out] == [1, 2]
    by = {c.label: c for c in out}
    assert by[1].structure.sum() == 2 * 2 * 3 and by[2].structure.sum() == 2 * 3 * 3
    assert by[1].cell.sum() == 6 * 10 * 15
    kept = split_fov(cells, nuclei, structure, keep_border=True, min_voxels=10)
    assert [(c.label, c.touches_border) for c in kept] == [(1, False), (2, False), (3, True)]
    # nuclear structures: cell 1's piece lies outside its nucleus and disappears
    nuc = {c.label: c for c in split_fov(cells, nuclei, structure, structure_in="nucleus", min_voxels=10)}
    assert nuc[1].structure.sum() == 0 and nuc[2].structure.sum() == 2 * 3 * 3


def test_anisotropic_voxels_resampled_to_isotropic():
    cells, nuclei, structure = _fov()
    assert isotropic_zoom((0.29, 0.108, 0.108)) == pytest.approx((0.29 / 0.108, 1.0, 1.0))
    out = split_fov(cells, nuclei, structure, voxel_size_zyx=(0.3, 0.1, 0.1), min_voxels=10)
    c1 = out[0]
    # the crop (cell box plus 2 voxels of margin) grows 3x along z only
    assert c1.cell.shape == (30, 14, 19)
    # physical volume is kept within a few percent: 6*10*15 voxels of 0.003 um^3 = 0.54 um^3
    assert c1.cell.sum() * 0.1**3 == pytest.approx(6 * 10 * 15 * 0.3 * 0.1 * 0.1, rel=0.05)


def test_bad_inputs_raise_clear_errors():
    cells, nuclei, structure = _fov()
    with pytest.raises(ValueError, match="3D ZYX"):
        split_fov(cells[0])
    with pytest.raises(ValueError, match="differs"):
        split_fov(cells, nuclei[:, :10])
    with pytest.raises(ValueError, match="needs nucleus labels"):
        split_fov(cells, None, structure, structure_in="nucleus")
    with pytest.raises(ValueError, match="positive"):
        isotropic_zoom((0.0, 0.1, 0.1))


def test_fit_to_grid_scales_longest_side():
    m = np.zeros((20, 50, 30), bool)
    m[5:15, 5:45, 10:20] = True
    out, zoom = fit_to_grid(m, 32, fill=0.9)
    assert zoom == pytest.approx(0.9 * 32 / 40)
    assert max(out.shape) <= 32 and out[1:-1, 1:-1, 1:-1].any()


@pytest.mark.skipif(not REAL.exists(), reason="real Allen data not present next to the project")
def test_real_tomm20_fov_splits_into_cells_with_mitochondria():
    import tifffile

    cells = tifffile.imread(REAL / "cell_segmentation.tiff")
    nuclei = tifffile.imread(REAL / "nucleus_segmentation.tiff")
    structure = tifffile.imread(REAL / "structure_segmentation.tiff")
    out = split_fov(cells, nuclei, structure, voxel_size_zyx=(0.29, 0.108, 0.108))
    labels = [c.label for c in out]
    assert 1 <= len(out) <= 13 and len(set(labels)) == len(labels)
    for c in out:
        assert c.structure is not None and c.structure.any()
        assert not (c.structure & ~c.cell).any()
