"""Landing-folder sensor: a new plate becomes a partition and a run; only that plate is materialized."""

import dagster as dg
import pytest

from cellrep_core import paths
from cellrep_core.cli import write_synthetic_plate
from cellrep_core.store.warehouse import Warehouse
from orchestration.demo import _materialize
from orchestration.sensors import PLATE_ASSETS, landing_plates_sensor

QUICK = {"ops": {
    "synthetic_polymorphic_cells": {"config": {"size": 24}},
    "synthetic_polymorphic_model": {"config": {"model": "sdf_tiny"}},
}}
PLATE_RUN = {"ops": {"plate_qvalues": {"config": {"null_size": 200}}}}


def _tick(inst, cursor):
    ctx = dg.build_sensor_context(instance=inst, cursor=cursor)
    res = landing_plates_sensor(ctx)
    if isinstance(res, dg.SkipReason):
        return [], cursor, res
    for req in res.dynamic_partitions_requests:
        inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return [r.partition_key for r in res.run_requests], res.cursor, res


def _run(inst, pid):
    """What the daemon does with a run request: materialize the plate assets for that partition."""
    res = _materialize(inst, dg.AssetSelection.assets(*PLATE_ASSETS), partition_key=pid, run_config=PLATE_RUN)
    checks = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert checks == {"plate_pointclouds_valid": True}


def _materialized_partitions(inst, after_id: int) -> set[tuple[str, str]]:
    recs = inst.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("plate_cells"), after_storage_id=after_id), limit=1000
    ).records
    return {(r.asset_key.to_user_string(), r.partition_key) for r in recs}


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_new_plates_trigger_only_their_own_runs(home):
    with dg.instance_for_test() as inst:
        reference = dg.AssetSelection.assets("synthetic_polymorphic_cells", "synthetic_polymorphic_pointclouds",
                                             "synthetic_polymorphic_model")
        _materialize(inst, reference, run_config=QUICK)
        requested, cursor, res = _tick(inst, None)
        assert requested == [] and isinstance(res, dg.SkipReason)

        # plate A: written by synth-plate (manifest last, by rename) -> one partition, one run
        write_synthetic_plate("plate_A", seed=1, n_dmso=8, n_per_drug=5, drugs={"d1": "fragment", "d2": "none"})
        requested, cursor, _ = _tick(inst, cursor)
        assert requested == ["plate_A"]
        _run(inst, "plate_A")
        wh = Warehouse()
        qa = wh.query("select * from drug_qvalues where plate_id = 'plate_A' order by drug, feature_set")
        assert len(qa) == 4
        assert _tick(inst, cursor)[0] == []  # known plates are never added twice

        # plate B arrives with a broken plate C and a half-written plate D
        mark = inst.fetch_materializations(dg.AssetKey("plate_cells"), limit=1000).records[0].storage_id
        write_synthetic_plate("plate_B", seed=2, n_dmso=8, n_per_drug=5, drugs={"d1": "shrink", "d2": "none"})
        bad = paths.landing_plates_dir() / "plate_C"
        bad.mkdir(parents=True)
        (bad / "manifest.csv").write_text("not,a,manifest\n1,2,3\n")
        half = paths.landing_plates_dir() / "plate_D"
        half.mkdir(parents=True)
        (half / "manifest.csv.tmp").write_text("cell_id,path,channels\n")
        requested, cursor, _ = _tick(inst, cursor)
        assert requested == ["plate_B"]
        assert set(inst.get_dynamic_partitions("plates")) == {"plate_A", "plate_B"}
        q = wh.query("select cell_id, stage, reason, detail from quarantine where plate_id = 'plate_C'")
        assert list(q.reason) == ["bad_manifest"] and list(q.stage) == ["landing"] and "cell_id" in q.detail[0]
        assert _tick(inst, cursor)[0] == []  # the bad plate is not retried while its manifest is unchanged
        _run(inst, "plate_B")
        assert _materialized_partitions(inst, mark) == {("plate_cells", "plate_B")}
        pd_a = wh.query("select * from drug_qvalues where plate_id = 'plate_A' order by drug, feature_set")
        assert pd_a.equals(qa)  # plate A's rows untouched
        assert len(wh.query("select * from drug_qvalues where plate_id = 'plate_B'")) == 4
        plates = wh.query("select plate_id, n_cells, n_quarantined from plates order by plate_id")
        assert list(plates.plate_id) == ["plate_A", "plate_B"] and (plates.n_quarantined == 2).all()


def test_pointcloud_check_blocks_a_plate_without_clouds(home):
    from assets.plates import pointcloud_check

    res = pointcloud_check("plate_nothing")
    assert not res.passed and "0 clouds of 0 cells" in res.description
    assert not pointcloud_check(None).passed
