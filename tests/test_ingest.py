"""Ingestion: every bad cell is quarantined with its reason and file, good cells go on, re-runs add nothing."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellrep_core import pipeline
from cellrep_core.data.plates import generate_drug_plate
from cellrep_core.ingest import ingest_manifest
from cellrep_core.store.warehouse import Warehouse


def _plate(tmp_path):
    out = tmp_path / "plate"
    generate_drug_plate(out, "P1", seed=3, n_dmso=4, n_per_drug=2, drugs={"a": "shrink", "b": "none"}, n_bad=2)
    return out


def test_bad_inputs_quarantined_with_reasons(tmp_path):
    out = _plate(tmp_path)
    man = pd.read_csv(out / "manifest.csv")
    good = man.iloc[0]
    extra = []
    # duplicate cell id, path escaping the manifest folder, unknown channel, wrong dimensionality
    extra.append(good.to_dict())
    outside = tmp_path / "outside.tiff"
    shutil.copy(out / good.path, outside)
    extra.append({**good.to_dict(), "cell_id": "P1_escape", "path": "../outside.tiff"})
    extra.append({**good.to_dict(), "cell_id": "P1_chan", "channels": "nucleus;membrane"})
    tifffile.imwrite(out / "flat.tiff", np.ones((4, 4), np.uint8))
    extra.append({**good.to_dict(), "cell_id": "P1_flat", "path": "flat.tiff"})
    man = pd.concat([man, pd.DataFrame(extra)], ignore_index=True)
    man.to_csv(out / "manifest.csv", index=False)
    res = ingest_manifest(out / "manifest.csv", dataset="drug_plates", plate_id="P1")
    reasons = dict(zip(res.quarantine.cell_id + "|" + res.quarantine.reason, res.quarantine.detail, strict=True))
    assert len(res.cells) == 4 + 2 * 2
    keys = set(reasons)
    assert f"{good.cell_id}|duplicate_cell_id" in keys
    assert "P1_escape|path_outside_root" in keys
    assert "P1_chan|unknown_channel" in keys or "P1_chan|wrong_dimensionality" in keys
    assert "P1_flat|wrong_dimensionality" in keys
    assert any(k.endswith("|empty_segmentation") for k in keys) and any(k.endswith("|unreadable") for k in keys)
    assert all(d for d in reasons.values())
    # the escaping path is accepted when the data root covers it
    res2 = ingest_manifest(out / "manifest.csv", dataset="drug_plates", plate_id="P1", data_root=tmp_path)
    assert "P1_escape" in set(res2.cells.cell_id)


def test_ingest_twice_adds_nothing(tmp_path, home):
    out = _plate(tmp_path)
    wh = Warehouse()
    first = pipeline.ingest(out / "manifest.csv", wh, "drug_plates", plate_id="P1")
    second = pipeline.ingest(out / "manifest.csv", wh, "drug_plates", plate_id="P1")
    assert first == second
    n = wh.query("select (select count(*) from cells) c, (select count(*) from quarantine) q").iloc[0]
    assert (n.c, n.q) == (first["cells"], first["quarantined"]) == (8, 2)


# ------------------------------------------------------------------------------------ fields of view

FOV_CHANNELS = "cell_labels;nucleus_labels;structure"


def _write_fov(folder):
    """A 12 x 60 x 80 FOV at 0.3 x 0.1 x 0.1 um: cells 1 and 2 inside, cell 3 on the x border."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = np.zeros((12, 60, 80), np.uint16)
    cells[2:10, 5:25, 5:30] = 1
    cells[2:10, 30:55, 35:60] = 2
    cells[2:10, 10:40, 65:80] = 3
    nuclei = np.zeros_like(cells)
    nuclei[4:8, 10:20, 10:20] = 1
    nuclei[4:8, 38:48, 42:52] = 2
    nuclei[4:8, 20:30, 70:78] = 3
    structure = np.zeros((12, 60, 80), np.uint8)
    structure[3:9, 6:9, 22:28] = 255  # cell 1, outside its nucleus
    structure[3:9, 50:54, 36:44] = 255  # cell 2
    structure[3:9, 15:20, 66:70] = 255  # cell 3
    for name, arr in (("cells", cells), ("nuclei", nuclei), ("structure", structure)):
        tifffile.imwrite(folder / f"{name}.tiff", arr)
    return "cells.tiff;nuclei.tiff;structure.tiff"


def _fov_manifest(folder, rows):
    cols = {"dataset": "fovs", "shape_type": "polymorphic", "structure_name": "mito", "channels": FOV_CHANNELS,
            "voxel_size_zyx_um": "0.3,0.1,0.1", "structure_in": "cell"}
    pd.DataFrame([{**cols, **r} for r in rows]).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_field_of_view_rows_become_cells(tmp_path):
    d = tmp_path / "fov"
    files = _write_fov(d)
    np.save(d / "not_a_tiff.tiff", np.zeros(3))
    man = _fov_manifest(
        d,
        [
            {"cell_id": "F1", "path": files},
            {"cell_id": "F2", "path": files, "channels": "cell_labels;nucleus;structure"},  # unknown channel
            {"cell_id": "F3", "path": "cells.tiff;nuclei.tiff"},  # two files for three channels
            {"cell_id": "F4", "path": files, "voxel_size_zyx_um": "0.3,0.1"},  # bad voxel size
            {"cell_id": "F5", "path": "not_a_tiff.tiff.npy", "channels": "cell_labels"},  # unreadable
        ],
    )
    crops = tmp_path / "crops"
    res = ingest_manifest(man, crops_dir=crops)
    # stored ids carry the data set's name (the manifest folder "fovs"): cells.cell_id is one key for all data
    assert list(res.cells.cell_id) == ["fovs_F1_c001", "fovs_F1_c002"]
    assert set(res.cells.channels) == {"cell;nucleus;structure"}
    assert (res.cells.voxel_size_um == 0.1).all()
    q = dict(zip(res.quarantine.cell_id, res.quarantine.reason, strict=True))
    assert q == {
        "fovs_F1_c003": "touches_border",
        "fovs_F2": "unknown_channel",
        "fovs_F3": "unknown_channel",
        "fovs_F4": "bad_voxel_size",
        "fovs_F5": "unreadable",
    }
    assert all(res.quarantine.detail.str.len() > 20)
    # crops are isotropic (z resampled 3x) and the structure is masked by its cell
    crop = tifffile.imread(crops / "fovs_F1_c001.tiff")
    assert crop.shape[0] == 3 and crop.shape[1] == (8 + 4) * 3
    assert crop[2].any() and not (crop[2] & ~crop[0]).any()
    # a second run writes the same cells
    again = ingest_manifest(man, crops_dir=crops)
    pd.testing.assert_frame_equal(again.cells, res.cells)


def test_field_of_view_paths_under_data_root(tmp_path):
    data = tmp_path / "data"
    files = _write_fov(data / "fov")
    rel = ";".join(f"fov/{f}" for f in files.split(";"))
    man_dir = tmp_path / "manifests"
    man_dir.mkdir()
    man = _fov_manifest(man_dir, [{"cell_id": "F1", "path": rel, "target_voxel_um": "0.2"}])
    refused = ingest_manifest(man, crops_dir=tmp_path / "crops")
    assert list(refused.quarantine.reason) == ["unreadable"]  # not under the manifest's folder
    res = ingest_manifest(man, data_root=data, crops_dir=tmp_path / "crops")
    assert len(res.cells) == 2 and (res.cells.voxel_size_um == 0.2).all()
    escape = _fov_manifest(man_dir, [{"cell_id": "F1", "path": "../../" + rel}])
    assert list(ingest_manifest(escape, data_root=data).quarantine.reason) == ["path_outside_root"]


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "allen_tomm20_fov").exists(), reason="real Allen data not present")
def test_cli_ingests_the_real_tomm20_field_of_view(home):
    from cellrep_core.pointclouds.build import read_pointclouds
    from orchestration.datasets import ingest_command

    root = Path(__file__).resolve().parents[1]
    lines = ingest_command(root / "examples" / "allen_tomm20" / "manifest.csv", data_root=REAL, workers=1)
    assert lines[1] == "allen_tomm20: 13 cells, 13 point clouds, 0 quarantined"
    assert "embeddings skipped" in lines[2]  # no trained model in a fresh home
    wh = Warehouse()
    n = wh.query("select count(*) n from cells where dataset = 'allen_tomm20'").n.iloc[0]
    items = read_pointclouds(pipeline.paths.pointcloud_path("allen_tomm20", "all"))
    assert n == len(items) == 13
    assert all(it.sdf is not None and np.isfinite(it.sdf).all() for it in items)
    again = ingest_command(root / "examples" / "allen_tomm20" / "manifest.csv", data_root=REAL, workers=1)
    assert again[:3] == lines[:3]
    assert wh.query("select count(*) n from cells").n.iloc[0] == 13


def test_crop_channels_by_index_and_anisotropic_voxels_resampled(tmp_path):
    d = tmp_path / "crops_in"
    d.mkdir()
    img = np.zeros((5, 10, 40, 40), np.uint8)  # five channels, only three used
    img[0, 3:7, 15:25, 15:25] = 255  # nucleus
    img[1, 1:9, 5:35, 5:35] = 255  # cell
    img[3, 4:6, 8:12, 8:30] = 255  # structure, in the cell, outside the nucleus
    tifffile.imwrite(d / "c1.ome.tiff", img)
    rows = [
        {"cell_id": "c1", "path": "c1.ome.tiff", "channels": "nucleus=0;cell=1;structure=3",
         "voxel_size_zyx_um": "0.3,0.1,0.1", "shape_type": "polymorphic", "dataset": "crops"},
        {"cell_id": "c2", "path": "c1.ome.tiff", "channels": "nucleus=0;cell=1;structure=7",
         "voxel_size_zyx_um": "0.3,0.1,0.1", "shape_type": "polymorphic", "dataset": "crops"},
        {"cell_id": "c3", "path": "c1.ome.tiff", "channels": "nucleus=0;cell=1;structure=3",
         "voxel_size_zyx_um": "0.3,0.1,0.1", "target_voxel_um": "fine", "shape_type": "polymorphic",
         "dataset": "crops"},
    ]
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    res = ingest_manifest(d / "manifest.csv", crops_dir=tmp_path / "out")
    assert list(res.cells.cell_id) == ["crops_c1"]
    assert dict(zip(res.quarantine.cell_id, res.quarantine.reason, strict=True)) == {
        "crops_c2": "unknown_channel",
        "crops_c3": "bad_voxel_size",
    }
    row = res.cells.iloc[0]
    assert row.channels == "nucleus;cell;structure" and row.voxel_size_um == pytest.approx(0.1)
    crop = tifffile.imread(row.source_path)
    assert crop.shape == (3, 30, 40, 40)  # z resampled 3x to isotropic 0.1 um
    # the structure keeps its physical volume: 2 x 4 x 22 voxels of 0.3 x 0.1 x 0.1 um
    assert (crop[2] > 0).sum() == pytest.approx(2 * 4 * 22 * 3, rel=0.1)


def test_one_manifest_with_every_bad_input(tmp_path, home):
    """Good cells and one example of each bad input: every bad one quarantined with its reason, every
    good one kept, and a second run adds nothing."""
    from cellrep_core.data.synthetic import generate_polymorphic_dataset

    d = tmp_path / "ds"
    good = generate_polymorphic_dataset(d, n_cells=3, seed=2, grid=32)
    rows = good.to_dict("records")
    base = {**rows[0], "seed": 0}
    z = np.zeros((16, 16, 16), np.uint8)
    nuc = z.copy()
    nuc[4:12, 4:12, 4:12] = 255

    def add(cell_id, arr, channels="nucleus;structure", **extra):
        tifffile.imwrite(d / f"{cell_id}.tiff", arr)
        rows.append({**base, "cell_id": cell_id, "path": f"{cell_id}.tiff", "channels": channels, **extra})

    (d / "truncated.tiff").write_bytes((d / rows[0]["path"]).read_bytes()[:300])
    rows.append({**base, "cell_id": "bad_truncated", "path": "truncated.tiff"})
    add("bad_2d", np.full((16, 16), 255, np.uint8), channels="structure")
    add("bad_empty", np.stack([nuc, z]))
    add("bad_full", np.stack([nuc, np.full_like(z, 255)]))
    outside = z.copy()
    outside[0:2, 0:2, 0:2] = 255
    add("bad_outside", np.stack([nuc, nuc, outside]), channels="nucleus;cell;structure")
    raw = np.ones((16, 16, 16), np.float32)
    raw[5, 5, 5] = np.nan
    add("bad_nan", np.stack([raw, nuc.astype(np.float32)]), channels="raw;nucleus", shape_type="punctate")
    rows.append({**base, "cell_id": "bad_escape", "path": "../elsewhere.tiff"})
    rows.append({**rows[1]})  # duplicate cell id
    rows.append({**base, "cell_id": "bad_channel", "channels": "nucleus;membrane"})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)

    wh = Warehouse()
    first = pipeline.ingest(d / "manifest.csv", wh, "ds")
    q = wh.query("select cell_id, reason, stage, detail from quarantine order by cell_id")
    got = dict(zip(q.cell_id, q.reason, strict=False))
    assert got == {f"ds_{k}": v for k, v in {
        "bad_truncated": "unreadable",
        "bad_2d": "wrong_dimensionality",
        "bad_empty": "empty_segmentation",
        "bad_full": "all_foreground",
        "bad_outside": "structure_outside_cell",
        "bad_nan": "nan_intensity",
        "bad_escape": "path_outside_root",
        rows[1]["cell_id"]: "duplicate_cell_id",
        "bad_channel": "unknown_channel",
    }.items()}
    assert set(q.stage) == {"ingest"} and all(len(x) > 30 for x in q.detail)
    cells = wh.query("select cell_id from cells order by cell_id").cell_id.tolist()
    assert cells == sorted(f"ds_{c}" for c in good.cell_id)
    second = pipeline.ingest(d / "manifest.csv", wh, "ds")
    assert first == second
    assert wh.query("select (select count(*) from cells) c, (select count(*) from quarantine) q").iloc[0].tolist() == [
        3,
        9,
    ]


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_tiff_is_unreadable_and_tifffile_errors_are_not_printed(tmp_path, caplog, keep):
    """tifffile logs a broken page offset and returns fewer pages instead of raising; the reader turns that
    into the cell's quarantine reason rather than an ERROR line on the console."""
    import logging

    from cellrep_core.data.images import read_cell_image
    from cellrep_core.errors import CellInputError

    path = tmp_path / "cell.tiff"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (2, 24, 24, 24), dtype=np.uint8), compression="zlib",
                     metadata={"axes": "CZYX"})
    assert read_cell_image(path, "nucleus;structure", "c1")["structure"].shape == (24, 24, 24)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with caplog.at_level(logging.DEBUG), pytest.raises(CellInputError) as err:
        read_cell_image(path, "nucleus;structure", "c1")
    assert err.value.reason == "unreadable" and str(path) in str(err.value)
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_an_image_larger_than_the_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """The header's declared size is checked before any pixel is read; the limit is an environment setting."""
    from cellrep_core.data.images import read_cell_image, write_cell_tiff
    from cellrep_core.errors import CellInputError

    path = tmp_path / "c.tiff"
    write_cell_tiff(path, {"nucleus": np.ones((16, 20, 24)), "structure": np.ones((16, 20, 24))})
    assert set(read_cell_image(path, "nucleus;structure", "c")) == {"nucleus", "structure"}
    monkeypatch.setenv("CELLREP_MAX_IMAGE_BYTES", "4000")  # the file holds 2 x 7,680 bytes of pixels
    with pytest.raises(CellInputError) as err:
        read_cell_image(path, "nucleus;structure", "c")
    assert err.value.reason == "image_too_large" and str(path) in str(err.value) and "GiB" in str(err.value)
    monkeypatch.setenv("CELLREP_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ValueError, match="CELLREP_MAX_IMAGE_BYTES"):
        read_cell_image(path, "nucleus;structure", "c")


def test_plates_and_data_sets_that_reuse_local_cell_ids_do_not_collide(home, tmp_path):
    """Users number cells per plate (A01_001 on every plate): two plates with the same local ids, and one
    manifest ingested as two data sets, are all kept; stored ids carry the plate's (else data set's) name."""
    from cellrep_core.ingest import scoped_cell_id

    assert scoped_cell_id("A01_001", "plate_7") == "plate_7_A01_001"
    assert scoped_cell_id("plate_7_A01_001", "plate_7") == "plate_7_A01_001"  # already scoped: unchanged
    assert scoped_cell_id("c1", "") == "c1"
    src = tmp_path / "src"
    generate_drug_plate(src, plate_id="p", seed=3, n_dmso=3, n_per_drug=2, drugs={"d1": "shrink"}, grid=32,
                        n_bad=0)
    man = pd.read_csv(src / "manifest.csv")
    man["cell_id"] = [f"{w}_{i:03d}" for i, w in enumerate(man.well)]  # local ids, the same on both plates
    man.to_csv(src / "manifest.csv", index=False)
    wh = Warehouse()
    for pid in ("plate_a", "plate_a_reimaged"):
        pipeline.ingest(src / "manifest.csv", wh, pipeline.PLATES_DATASET, pid)
    for ds in ("set_one", "set_two"):
        pipeline.ingest(src / "manifest.csv", wh, ds)
    n = len(man)
    got = wh.query("select dataset, plate_id, count(*) n, min(cell_id) first from cells group by all order by all")
    assert got.n.tolist() == [n] * 4
    assert sorted(got["first"].str.split("_A|_B|_C|_D|_E|_F|_G|_H", regex=True).str[0]) == [
        "plate_a", "plate_a_reimaged", "set_one", "set_two"]
    assert wh.query("select count(distinct cell_id) n from cells").n[0] == 4 * n
