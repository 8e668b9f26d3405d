"""A full disk: a small tmpfs as CELLREP_HOME, filled to the last few KiB. Every store's write fails with a
DiskFullError naming the file and the free space, keeps nothing partial, and once there is space again the same
materialization gives what a run that never failed gives. (Mounting a tmpfs needs root; elsewhere: skipped.)"""

import subprocess

import numpy as np
import pandas as pd
import pytest

from cellrep_core import paths, pipeline
from cellrep_core.data.synthetic import generate_polymorphic_dataset
from cellrep_core.errors import DiskFullError, disk_full, is_disk_full
from cellrep_core.pointclouds.build import read_pointclouds
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    monkeypatch.setenv("CELLREP_HOME", str(mnt / "home"))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt, leave: int):
    import shutil

    free = shutil.disk_usage(mnt).free
    filler = mnt / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * 2**20
        left = free - leave
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return filler


def _reference_clouds(tmp_path, manifest, monkeypatch):
    monkeypatch.setenv("CELLREP_HOME", str(tmp_path / "roomy"))
    wh = Warehouse()
    pipeline.ingest(manifest, wh, "full")
    pipeline.pointclouds(wh, "full", "full", n_workers=1)
    return read_pointclouds(paths.pointcloud_path("full", "full"))


def test_is_disk_full_reads_the_errors_of_each_store():
    import errno

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("lance error: IO error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    e = disk_full(OSError(errno.ENOSPC, "x"), "/nonexistent/dir/file.parquet", "the clouds")
    assert isinstance(e, DiskFullError) and "writing the clouds to /nonexistent/dir/file.parquet" in str(e)
    assert "MiB free on the device of /" in str(e)


def test_full_disk_gives_a_clear_error_and_no_partial_write(small_disk, tmp_path, monkeypatch):
    src = tmp_path / "src"
    generate_polymorphic_dataset(src, n_cells=12, seed=3, grid=64, dataset="full")
    reference = _reference_clouds(tmp_path, src / "manifest.csv", monkeypatch)
    monkeypatch.setenv("CELLREP_HOME", str(small_disk / "home"))
    wh, fs = Warehouse(), FeatureStore()
    pipeline.ingest(src / "manifest.csv", wh, "full")
    fs.upsert(pd.DataFrame({"cell_id": ["a"], "dataset": "full", "plate_id": "", "drug": "", "structure_name": "",
                            "model_name": "m", "model_version": "v"}), np.ones((1, 64), np.float32))
    n_cells = len(pipeline.cells_of(wh, "full"))
    filler = _fill(small_disk, leave=64 * 1024)

    # point clouds: the Parquet write fails whole; no temporary file, no partition, no index rows
    with pytest.raises(DiskFullError, match=r"no space left on device writing the point clouds of 12 cells to "
                                            r".*full/full\.parquet \(0\.\d MiB free"):
        pipeline.pointclouds(wh, "full", "full", n_workers=1)
    folder = paths.pointcloud_path("full", "full").parent
    assert not list(folder.glob("*.tmp")) and not paths.pointcloud_path("full", "full").exists()
    assert wh.query("SELECT count(*) n FROM pointcloud_index WHERE dataset = 'full'").n.iloc[0] == 0

    # the feature store: the commit is not made, the table keeps its one row
    meta = pd.DataFrame({"cell_id": [f"c{i}" for i in range(4000)], "dataset": "full", "plate_id": "", "drug": "",
                         "structure_name": "", "model_name": "m", "model_version": "v"})
    with pytest.raises(DiskFullError, match="embeddings"):
        fs.upsert(meta, np.random.default_rng(0).random((4000, 64), dtype=np.float32))
    assert FeatureStore().count() == 1

    # the warehouse: the transaction is rolled back, and the warehouse still answers
    big = pd.DataFrame({"cell_id": [f"x{i:07d}" for i in range(300_000)], "plate_id": "p", "well": "B01",
                        "drug": "d", "effect": "none" * 8})
    with pytest.raises(DiskFullError, match="writing a warehouse transaction to .*warehouse.duckdb"):
        wh.replace("cell_truth", big, {"plate_id": "p"})
    assert wh.query("SELECT count(*) n FROM cell_truth").n.iloc[0] == 0
    assert wh.query("SELECT count(*) n FROM cells WHERE dataset = 'full'").n.iloc[0] == n_cells

    # space again: the same materialization gives what the run on a roomy disk gave
    filler.unlink()
    wh.replace("cell_truth", big, {"plate_id": "p"})
    assert wh.query("SELECT count(*) n FROM cell_truth").n.iloc[0] == len(big)
    res = pipeline.pointclouds(wh, "full", "full", n_workers=1)
    assert res["clouds"] == len(reference)
    again = read_pointclouds(paths.pointcloud_path("full", "full"))
    assert [c.cell_id for c in again] == [c.cell_id for c in reference]
    for a, b in zip(again, reference, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.sdf, b.sdf)
    fs.upsert(meta, np.random.default_rng(0).random((4000, 64), dtype=np.float32))
    assert FeatureStore().count() == 4001
