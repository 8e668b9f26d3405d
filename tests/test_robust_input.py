"""Data nobody here made: anisotropic voxels on all three axes, touching cells, interpolated 8-bit masks, very
large crops (memory bound of the resampling)."""

import tracemalloc

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from cellrep_core.data.fov import block_mean, resample_mask, split_fov
from cellrep_core.data.validate import binarize
from cellrep_core.ingest import ingest_manifest


def _ball(shape, centre, radii):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii, strict=True)) <= 1


def test_anisotropic_on_all_three_axes_keeps_the_physical_shape(tmp_path):
    """A 6 µm ball imaged at 0.4 × 0.2 × 0.1 µm is resampled to cubic 0.1 µm voxels with its volume and extents."""
    vz, vy, vx = 0.4, 0.2, 0.1
    shape = (40, 80, 160)  # 16 µm on every axis
    cell = _ball(shape, (20, 40, 80), (7 / vz, 7 / vy, 7 / vx))
    nucleus = _ball(shape, (20, 40, 80), (3 / vz, 3 / vy, 3 / vx))
    tifffile.imwrite(tmp_path / "c.tiff", np.stack([nucleus, cell]).astype(np.uint8) * 255)
    pd.DataFrame([{"cell_id": "c", "path": "c.tiff", "channels": "nucleus;structure", "shape_type": "polymorphic",
                   "voxel_size_zyx_um": f"{vz},{vy},{vx}", "dataset": "aniso"}]).to_csv(tmp_path / "m.csv",
                                                                                         index=False)
    res = ingest_manifest(tmp_path / "m.csv", crops_dir=tmp_path / "crops")
    assert len(res.cells) == 1 and res.cells.voxel_size_um.iloc[0] == vx
    img = tifffile.imread(res.cells.source_path.iloc[0])
    assert img.shape[1:] == (160, 160, 160)  # 16 µm at 0.1 µm on every axis
    s = img[1] > 0
    volume = s.sum() * vx ** 3
    assert abs(volume - 4 / 3 * np.pi * 7 ** 3) / (4 / 3 * np.pi * 7 ** 3) < 0.05
    extents = [(np.nonzero(s.any(axis=tuple(a for a in range(3) if a != ax)))[0].ptp() + 1) * vx for ax in range(3)]
    assert np.allclose(extents, 14.0, atol=0.5)


def test_touching_cells_sharing_a_border_are_split_apart():
    """Two cells whose labels touch (no background between them): each crop holds its own cell and structure."""
    labels = np.zeros((10, 40, 60), np.uint16)
    labels[1:9, 5:35, 5:30] = 1
    labels[1:9, 5:35, 30:55] = 2  # shares the plane x = 29 | 30 with cell 1
    structure = np.zeros(labels.shape, np.uint8)
    structure[3:7, 10:30, 20:40] = 255  # one object straddling the shared border
    cells = split_fov(labels, None, structure, voxel_size_zyx=(1, 1, 1))
    assert [c.label for c in cells] == [1, 2]
    for c in cells:
        own = labels[c.bbox] == c.label
        assert np.array_equal(c.cell, own)  # the neighbour's voxels inside the crop box are not this cell's
        assert not (c.structure & ~own).any()  # the structure is cut at the shared border
    assert cells[0].structure.sum() + cells[1].structure.sum() == (structure > 0).sum()


def test_interpolated_8bit_masks_are_cut_at_half_their_maximum():
    """A binary ball upsampled with linear interpolation (0 … 255 at the edge): ``> 0`` grows it by the halo,
    ``binarize`` recovers the ball; a label image's pieces (different values, apart) are all kept."""
    ball = _ball((24, 24, 24), (12, 12, 12), (7, 7, 7)).astype(np.float32)
    up = np.clip(np.rint(ndimage.zoom(ball, 3, order=1) * 255), 0, 255).astype(np.uint8)
    truth = ndimage.zoom(ball, 3, order=0) > 0
    assert len(np.unique(up)) > 10
    grown = (up > 0).sum() / truth.sum()
    cut = binarize(up)
    assert grown > 1.1  # the halo
    assert abs(cut.sum() / truth.sum() - 1) < 0.05
    pieces = np.zeros((20, 20, 40), np.uint8)
    pieces[5:10, 5:10, 2:8] = 1
    pieces[5:10, 5:10, 15:21] = 2
    pieces[5:10, 5:10, 30:36] = 3
    assert binarize(pieces).sum() == (pieces > 0).sum()
    assert binarize(up > 0).sum() == (up > 0).sum()  # bool stays as it is


def test_downsampling_a_large_crop_never_makes_a_float_copy():
    """Resampling a mask to a coarser grid goes slab by slab: peak memory stays well under one float32 copy of
    the volume (the bound a 300 x 750 x 750 crop needs), and the result equals a whole-volume box average."""
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((60, 300, 300)) > 0.4, iterations=2)
    float_copy = mask.size * 4
    tracemalloc.start()
    out = resample_mask(mask, (1 / 3, 1 / 9, 1 / 9))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == (20, 33, 33)
    assert peak < 0.15 * float_copy
    ref = ndimage.uniform_filter(mask.astype(np.float32), size=(3, 9, 9), mode="constant")[1::3, 4::9, 4::9]
    assert np.allclose(block_mean(mask, (3, 9, 9))[:, :33, :33], ref[:, :33, :33], atol=1e-5)


def test_cytoplasmic_punctate_cells_sample_the_whole_cell(tmp_path):
    """A punctate cell with a ``cell`` channel is sampled over the cell mask (lambda 500, skew floor 25) and
    centred on the cell's centroid: puncta in the cytoplasm get the points; the nuclear recipe (nucleus dilated
    by 8 voxels) would miss them."""
    from cellrep_core.pointclouds.build import SamplingConfig, process_cell

    shape = (40, 96, 96)
    cell = _ball(shape, (20, 48, 48), (18, 44, 44))
    nucleus = _ball(shape, (20, 48, 48), (8, 14, 14))
    centres = [(20, 48, 12), (20, 48, 84), (20, 12, 48), (20, 84, 48), (12, 30, 30), (28, 66, 66)]  # cytoplasm
    spots = np.zeros(shape, np.float32)
    for c in centres:
        spots[c] = 1.0
    raw = (100 + 4000 * ndimage.gaussian_filter(spots, 1.0) / ndimage.gaussian_filter(spots, 1.0).max())
    raw = raw + np.random.default_rng(0).normal(0, 3, shape)
    img = np.stack([raw, nucleus * 255.0, cell * 255.0]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "p.tiff", img)
    row = {"cell_id": "p", "source_path": str(tmp_path / "p.tiff"), "shape_type": "punctate", "dataset": "x",
           "plate_id": "", "voxel_size_um": 1.0}
    cfg = SamplingConfig(n_dense=4096)
    cyto = process_cell({**row, "channels": "raw;nucleus;cell"}, cfg)
    nuc = process_cell({**row, "channels": "raw;nucleus;membrane"}, cfg)  # the cell channel under another name
    assert cyto["ok"] and nuc["ok"]
    origin = np.argwhere(cell).mean(axis=0)[::-1]  # the cell's centroid, xyz
    pts = cyto["points"][:, :3] + origin
    d = np.min(np.linalg.norm(pts[:, None, :] - np.array(centres)[None, :, ::-1], axis=2), axis=1)
    assert (d <= 2.0).mean() > 0.95  # on the cytoplasmic puncta
    share = np.bincount(np.argmin(np.linalg.norm(pts[:, None, :] - np.array(centres)[None, :, ::-1], axis=2), axis=1),
                        minlength=len(centres)) / len(pts)
    assert (share > 0.05).all()  # every punctum gets points
    npts = nuc["points"][:, :3] + np.argwhere(ndimage.distance_transform_edt(~nucleus) <= 8).mean(axis=0)[::-1]
    dn = np.min(np.linalg.norm(npts[:, None, :] - np.array(centres)[None, :, ::-1], axis=2), axis=1)
    assert (dn <= 2.0).mean() < 0.5  # the nuclear recipe misses most of them


def test_a_symlink_out_of_the_manifest_folder_is_refused(tmp_path):
    """A manifest path that is a symlink inside the manifest's folder but points outside it (and outside any
    --data-root) is quarantined as path_outside_root; the real file in the folder is ingested."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    inside = tmp_path / "plate"
    inside.mkdir()
    img = np.stack([_ball((20, 20, 20), (10, 10, 10), (6, 6, 6)), _ball((20, 20, 20), (10, 10, 10), (3, 3, 3))])
    tifffile.imwrite(outside / "secret.tiff", img.astype(np.uint8) * 255)
    tifffile.imwrite(inside / "ok.tiff", img.astype(np.uint8) * 255)
    (inside / "link.tiff").symlink_to(outside / "secret.tiff")
    rows = [{"cell_id": c, "path": p, "channels": "nucleus;structure", "shape_type": "polymorphic", "dataset": "s"}
            for c, p in (("a", "ok.tiff"), ("b", "link.tiff"))]
    pd.DataFrame(rows).to_csv(inside / "manifest.csv", index=False)
    res = ingest_manifest(inside / "manifest.csv", crops_dir=tmp_path / "crops")
    assert list(res.cells.cell_id) == ["s_a"]
    q = res.quarantine.iloc[0]
    assert (q.cell_id, q.reason) == ("s_b", "path_outside_root") and "elsewhere" in q.detail
