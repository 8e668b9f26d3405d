"""kill -9 at write stages: nothing partial is visible in between, and running again gives exactly what a run
that was never killed gives (``cellrep_core.faultcheck``; every stage: ``make bench-faults``)."""

import pytest

from cellrep_core import faultcheck


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    manifest = faultcheck.make_manifest(work / "data")
    assert faultcheck.run_stages(work / "reference", manifest) == 0
    return work, manifest, faultcheck.snapshot(work / "reference")


@pytest.mark.parametrize("stage", ["point clouds: Parquet rename", "point clouds: DuckDB commit",
                                   "training: after epoch 2's checkpoint", "embeddings: during the LanceDB commit"])
def test_killed_stage_leaves_nothing_partial_and_a_rerun_is_identical(reference, stage):
    work, manifest, ref = reference
    res = faultcheck.check_fault(work, manifest, stage, faultcheck.FAULTS[stage], ref)
    assert res["killed"], res
    seen = res["reader_after_kill"]
    if stage.startswith("point clouds"):
        assert seen["cells"] == 10 and seen["pointcloud_index"] == 0  # the index commit never happened
        assert seen["parquet_rows"] in (None, 10)  # no file, or the whole file: never a part of one
    if stage.startswith("training"):
        assert seen["models"] == 0  # nothing registered until the training finished
    if stage.startswith("embeddings"):
        assert seen["lance_rows"] in (None, 0, 10)  # all of the commit or none of it
    assert res["identical"], res["differs"]
