"""kill -9 at write stages: nothing partial is visible in between, and running again gives exactly what a run
that was never killed gives (``cellrep_core.faultcheck``; every stage: ``make bench-faults``)."""

import pytest

from cellrep_core import faultcheck


def _meta(prefix: str, version: str, n: int):
    """Feature-store rows of ``n`` cells ``<prefix>0..`` under one model version."""
    import pandas as pd

    return pd.DataFrame({"cell_id": [f"{prefix}{i}" for i in range(n)], "dataset": "d", "plate_id": "", "drug": "",
                         "structure_name": "", "model_name": "m", "model_version": version})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    manifest = faultcheck.make_manifest(work / "data")
    assert faultcheck.run_stages(work / "reference", manifest) == 0
    return work, manifest, faultcheck.snapshot(work / "reference")


@pytest.mark.parametrize("stage", ["point clouds: Parquet rename",
                                   "training: weights and record written, before model.pt",
                                   "embeddings: during the LanceDB commit"])
def test_killed_stage_leaves_nothing_partial_and_a_rerun_is_identical(reference, stage):
    work, manifest, ref = reference
    res = faultcheck.check_fault(work, manifest, stage, faultcheck.FAULTS[stage], ref)
    assert res["killed"], res
    seen = res["reader_after_kill"]
    if stage.startswith("point clouds"):
        assert seen["cells"] == 10 and seen["pointcloud_index"] == 0  # the index commit never happened
        assert seen["parquet_rows"] is None and seen["parquet_tmp_left"]  # no file: never a part of one
    if stage.startswith("training"):
        assert seen["models"] == 0 and seen["model_pt"] == 0  # no model.pt without its record, none registered
    if stage.startswith("embeddings"):
        assert seen["lance_rows"] in (None, 0, 10)  # all of the commit or none of it
    assert res["identical"], res["differs"]


def test_a_report_killed_while_written_leaves_the_earlier_one_whole(tmp_path):
    res = faultcheck.check_report_fault(tmp_path)
    assert res["killed"] and res["reader_after_kill"]["report"] == "the earlier plot, whole", res
    assert res["identical"], res


def test_torn_cloud_file_and_checkpoint_are_named_and_repaired_by_materializing_again(home, tmp_path):
    """A truncated point-cloud Parquet and a truncated model.pt: the error names the file and the fix; running the
    stage again rewrites the cloud file, and training the same version again replaces the checkpoint."""
    from cellrep_core import pipeline
    from cellrep_core.errors import CorruptFileError
    from cellrep_core.models.config import get_config
    from cellrep_core.models.inference import load_model
    from cellrep_core.pointclouds.build import SamplingConfig, read_pointclouds
    from cellrep_core.store.warehouse import Warehouse

    manifest = faultcheck.make_manifest(tmp_path / "data", n=8)
    wh = Warehouse()
    pipeline.ingest(manifest, wh, "torn")
    cfg = SamplingConfig(n_surface=256, grid=16)
    pipeline.pointclouds(wh, "torn", "all", cfg=cfg, n_workers=1)
    path = pipeline.paths.pointcloud_path("torn", "all")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="all.parquet: unreadable point-cloud file.*materialize the point"):
        read_pointclouds(path)
    pipeline.pointclouds(wh, "torn", "all", cfg=cfg, n_workers=1)
    assert len(read_pointclouds(path)) == 8
    tm = pipeline.train(wh, "torn", "all", get_config("sdf_tiny", max_epochs=1))
    ckpt = tm.path / "model.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="model.pt: unreadable checkpoint.*materialize the model asset"):
        load_model(tm.path)
    again = pipeline.train(wh, "torn", "all", get_config("sdf_tiny", max_epochs=1))
    assert again.version == tm.version and not again.reused
    assert load_model(again.path) is not None


def test_a_torn_lance_data_file_is_named_and_repaired_by_rolling_back_and_writing_again(home, capsys):
    """A Lance data file cut short (a crash or a full disk under the writer) makes reads and writes of the table
    fail with a CorruptFileError naming the file and the command; `cellrep store repair` rolls the table back to
    its newest version that reads whole, and writing the lost embeddings again restores the table."""
    import os

    import numpy as np

    from cellrep_core.cli import main as core_main
    from cellrep_core.errors import CorruptFileError
    from cellrep_core.store.feature_store import FeatureStore

    def meta(prefix, version):
        return _meta(prefix, version, 40)

    fs = FeatureStore()
    fs.upsert(meta("a", "v1"), np.ones((40, 8), np.float32))
    fs.upsert(meta("b", "v2"), np.full((40, 8), 2, np.float32))
    assert fs.readable() and fs.unreadable_files() == []
    newest = max((home / "lancedb" / "cell_embeddings.lance" / "data").glob("*.lance"), key=os.path.getmtime)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    for call in (fs.load, lambda: fs.upsert(meta("c", "v3"), np.ones((40, 8), np.float32))):
        with pytest.raises(CorruptFileError, match="cellrep store repair --table cell_embeddings") as err:
            call()
        assert str(newest) in str(err.value)
    assert core_main(["store", "repair"]) == 0
    assert "cell_embeddings: rolled back to version 1 (40 rows" in capsys.readouterr().out
    m, _ = fs.load()
    assert len(m) == 40 and set(m.model_version) == {"v1"}
    fs.upsert(meta("b", "v2"), np.full((40, 8), 2, np.float32))  # materializing the lost embeddings again
    m, v = fs.load()
    assert len(m) == 80 and m.cell_id.is_unique and v[m.model_version == "v2"].min() == 2
    assert core_main(["store", "repair"]) == 0
    assert "reads whole" in capsys.readouterr().out


def test_a_torn_lance_manifest_is_named_and_repaired_by_moving_it_aside(home, capsys):
    """The newest version manifest cut short: opening the table fails with a CorruptFileError naming the manifest
    and the command; `cellrep store repair` moves it aside, the table reads at the version before, and writing
    the lost embeddings again restores it (no duplicate, nothing else lost)."""
    import numpy as np

    from cellrep_core.cli import main as core_main
    from cellrep_core.errors import CorruptFileError
    from cellrep_core.store.feature_store import FeatureStore

    def meta(prefix, version):
        return _meta(prefix, version, 30)

    fs = FeatureStore()
    fs.upsert(meta("a", "v1"), np.ones((30, 8), np.float32))
    fs.upsert(meta("b", "v2"), np.full((30, 8), 2, np.float32))
    table_dir = home / "lancedb" / "cell_embeddings.lance"
    # Lance names manifests u64::MAX - version: the newest version has the smallest name
    newest = min((table_dir / "_versions").glob("*.manifest"), key=lambda f: int(f.stem))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert fs.unreadable_files() == [str(newest)] and not fs.readable()
    fresh = FeatureStore()
    for call in (fresh.load, lambda: fresh.upsert(meta("c", "v3"), np.ones((30, 8), np.float32))):
        with pytest.raises(CorruptFileError, match="cellrep store repair --table cell_embeddings") as err:
            call()
        assert str(newest) in str(err.value)
    assert core_main(["store", "repair"]) == 0
    out = capsys.readouterr().out
    assert "cell_embeddings: rolled back to version 1 (30 rows" in out and str(newest) in out
    assert not newest.exists() and len(list((table_dir / "_torn").iterdir())) == 1
    fs = FeatureStore()
    m, _ = fs.load()
    assert len(m) == 30 and set(m.model_version) == {"v1"} and fs.unreadable_files() == []
    fs.upsert(meta("b", "v2"), np.full((30, 8), 2, np.float32))  # materializing the lost embeddings again
    m, v = fs.load()
    assert len(m) == 60 and m.cell_id.is_unique and v[m.model_version == "v2"].min() == 2
    assert FeatureStore().readable()


def test_fault_spec_and_an_interrupted_atomic_write(tmp_path, monkeypatch):
    """``CELLREP_FAULT`` names a point, the hit that kills and an optional delay; a write interrupted between its
    bytes and its rename leaves the earlier file whole, and the next write replaces both."""
    from cellrep_core import atomic, faults

    monkeypatch.setenv("CELLREP_FAULT", "lance_commit:2@0.5")
    assert faults._spec() == ("lance_commit", 2, 0.5)
    faults.point("report_write")  # another point: nothing happens
    target = tmp_path / "r" / "page.html"
    atomic.write_text(target, "earlier")

    def interrupted(name):
        raise KeyboardInterrupt(name)

    monkeypatch.setattr(faults, "point", interrupted)
    with pytest.raises(KeyboardInterrupt, match="report_write"):
        atomic.write_text(target, "new")
    assert target.read_text() == "earlier" and target.with_name("page.html.tmp").read_text() == "new"
    monkeypatch.undo()
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and not target.with_name("page.html.tmp").exists()


def test_a_table_whose_creation_was_killed_is_absent_until_written(home):
    """Killed while the first version of a table was written: data files, no manifest. Readers see no table (no
    error), and the next write creates it whole."""
    import numpy as np

    from cellrep_core.store.feature_store import FeatureStore

    data = home / "lancedb" / "cell_embeddings.lance" / "data"
    data.mkdir(parents=True)
    (data / "torn.lance").write_bytes(b"partial")
    fs = FeatureStore()
    assert fs.table_names() == [] and fs.count() == 0 and len(fs.load()[0]) == 0
    fs.upsert(_meta("c", "v", 12), np.ones((12, 4), np.float32))
    assert fs.table_names() == ["cell_embeddings"] and fs.count() == 12 and fs.readable()
