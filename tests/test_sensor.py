"""Landing sensor + declarative automation: a new plate becomes a partition, automation takes it from cells to
q-values (base and fine-tuned models) and the SQL models; only that plate is materialized."""

import dagster as dg
import pytest

from assets.plate_landing import PLATE_ASSETS, landing_plates_sensor
from cellrep_core import paths
from cellrep_core.cli import write_synthetic_plate
from cellrep_core.pipeline import latest_model
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse
from orchestration.demo import _materialize, automate

QUICK = {"ops": {
    "synthetic_polymorphic_cells": {"config": {"size": 24}},
    "synthetic_polymorphic_model": {"config": {"model": "sdf_tiny"}},
}}
AUTO_RUN = {"ops": {"plate_qvalues": {"config": {"null_size": 200}}}}
# the SQL models and screen assets that read plate tables (model_leaderboard reads benchmark_metrics only)
SQL_MODELS = {"cell_embeddings_meta", "drug_hits", "drug_hits_compare", "plate_qc",
              "screen_qvalues", "screen_hits", "dose_response", "hit_explanations",
              "phenotype_enrichment", "phenotype_hits", "screen_shape_modes", "shape_mode_ranking",
              "screen_truth"}


def _tick(inst, cursor):
    """One landing-sensor tick; returns the partitions it added."""
    ctx = dg.build_sensor_context(instance=inst, cursor=cursor)
    res = landing_plates_sensor(ctx)
    if isinstance(res, dg.SkipReason):
        return [], cursor, res
    assert not res.run_requests  # the automation sensor starts the runs
    added = [k for req in res.dynamic_partitions_requests for k in req.partition_keys]
    for req in res.dynamic_partitions_requests:
        inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return added, res.cursor, res


def _materialized(inst, after_id: int) -> set[tuple[str, str | None]]:
    out = set()
    for key in [*PLATE_ASSETS, *SQL_MODELS]:
        recs = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), after_storage_id=after_id), limit=1000
        ).records
        out |= {(r.asset_key.to_user_string(), r.partition_key) for r in recs}
    return out


def _last_storage_id(inst) -> int:
    ids = [r.storage_id for key in [*PLATE_ASSETS, *SQL_MODELS]
           for r in inst.fetch_materializations(dg.AssetKey(key), limit=1).records]
    return max(ids, default=0)


def _embeddings(plate_id):
    meta, vecs = FeatureStore().load({"plate_id": plate_id})
    return meta, vecs


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning", "ignore::dagster.PreviewWarning")
def test_new_plates_are_automated_plate_by_plate(home):
    with dg.instance_for_test() as inst:
        reference = dg.AssetSelection.assets("synthetic_polymorphic_cells", "synthetic_polymorphic_pointclouds",
                                             "synthetic_polymorphic_model")
        _materialize(inst, reference, run_config=QUICK)
        added, cursor, res = _tick(inst, None)
        assert added == [] and isinstance(res, dg.SkipReason)
        runs, auto = automate(inst, None, AUTO_RUN)  # the SQL models catch up with the reference tables
        assert all(pk is None for pk, _, _ in runs)

        # plate A: written by synth-plate (manifest last, by rename) -> one partition; automation does the rest
        write_synthetic_plate("plate_A", seed=1, n_dmso=8, n_per_drug=5, drugs={"d1": "fragment", "d2": "none"})
        added, cursor, _ = _tick(inst, cursor)
        assert added == ["plate_A"]
        runs, auto = automate(inst, auto, AUTO_RUN)
        # one run takes the plate from cells to q-values (blocking check inside it), then the SQL models
        assert [(pk, keys) for pk, keys, _ in runs] == [("plate_A", sorted(PLATE_ASSETS)), (None, sorted(SQL_MODELS))]
        assert all(r.success for _, _, r in runs)
        checks = {e.check_name: e.passed for e in runs[0][2].get_asset_check_evaluations()}
        assert checks == {"plate_pointclouds_valid": True}

        wh = Warehouse()
        base = latest_model(wh, "synthetic_polymorphic")
        ft = wh.query("select * from models where plate_id = 'plate_A'")
        assert len(ft) == 1
        ft = ft.iloc[0]
        # lineage: warm start from the base version, trained on this plate's clouds with the fine-tune config
        assert ft.parent_version == base.version and ft.dataset == "drug_plates"
        assert ft.model_name == "sdf_tiny_ft" and ft.model_version.startswith("sdf_tiny_ft-")
        assert len(ft.data_hash) == 12 and '"max_epochs":3' in ft.config_json

        qa = wh.query("select * exclude (computed_at) from drug_qvalues where plate_id = 'plate_A' "
                      "order by drug, feature_set, model_version")
        assert len(qa) == 6  # 2 drugs x (base, fine-tuned, hand-crafted)
        emb = qa[qa.feature_set == "embedding"]
        assert set(emb.model_version) == {base.version, ft.model_version}
        side = wh.query("select * from drug_hits_compare where plate_id = 'plate_A' order by drug")
        assert list(side.drug) == ["d1", "d2"] and (side.base_version == base.version).all()
        assert (side.finetuned_version == ft.model_version).all() and side.finetuned_q.notna().all()
        meta_a, vec_a = _embeddings("plate_A")
        n_cells = len(wh.query("select * from cells where plate_id = 'plate_A'"))
        assert len(meta_a) == 2 * n_cells and not meta_a.duplicated(["cell_id", "model_version"]).any()
        assert automate(inst, auto, AUTO_RUN)[0] == []  # quiet: nothing runs twice
        assert _tick(inst, cursor)[0] == []  # known plates are never added twice

        # plate B arrives with a broken plate C and a half-written plate D
        mark = _last_storage_id(inst)
        write_synthetic_plate("plate_B", seed=2, n_dmso=8, n_per_drug=5, drugs={"d1": "shrink", "d2": "none"})
        bad = paths.landing_plates_dir() / "plate_C"
        bad.mkdir(parents=True)
        (bad / "manifest.csv").write_text("not,a,manifest\n1,2,3\n")
        half = paths.landing_plates_dir() / "plate_D"
        half.mkdir(parents=True)
        (half / "manifest.csv.tmp").write_text("cell_id,path,channels\n")
        added, cursor, _ = _tick(inst, cursor)
        assert added == ["plate_B"]
        assert set(inst.get_dynamic_partitions("plates")) == {"plate_A", "plate_B"}
        q = wh.query("select cell_id, stage, reason, detail from quarantine where plate_id = 'plate_C'")
        assert list(q.reason) == ["bad_manifest"] and list(q.stage) == ["landing"] and "cell_id" in q.detail[0]
        assert _tick(inst, cursor)[0] == []  # the bad plate is not retried while its manifest is unchanged
        runs, auto = automate(inst, auto, AUTO_RUN)
        assert [pk for pk, _, _ in runs] == ["plate_B", None] and all(r.success for _, _, r in runs)
        # only B's partitions (and the cross-plate SQL models) were materialized
        assert _materialized(inst, mark) == {(a, "plate_B") for a in PLATE_ASSETS} | {(m, None) for m in SQL_MODELS}
        pd_a = wh.query("select * exclude (computed_at) from drug_qvalues where plate_id = 'plate_A' "
                        "order by drug, feature_set, model_version")
        assert pd_a.equals(qa)  # plate A's rows untouched
        meta_a2, vec_a2 = _embeddings("plate_A")
        assert meta_a2.equals(meta_a) and (vec_a2 == vec_a).all()
        assert len(wh.query("select * from drug_qvalues where plate_id = 'plate_B'")) == 6
        ft_b = wh.query("select parent_version from models where plate_id = 'plate_B'")
        assert list(ft_b.parent_version) == [base.version]
        plates = wh.query("select plate_id, n_cells, n_quarantined from plates order by plate_id")
        assert list(plates.plate_id) == ["plate_A", "plate_B"] and (plates.n_quarantined == 2).all()
        hits = wh.query("select plate_id, model_role, count(*) as n from drug_hits group by all order by all")
        assert hits.n.tolist() == [2] * 6 and set(hits.model_role) == {"base", "finetuned", "handcrafted"}

        # re-materializing plate A replaces its rows: same model versions (content-addressed), no duplicates
        _materialize(inst, dg.AssetSelection.assets(*PLATE_ASSETS), partition_key="plate_A", run_config=AUTO_RUN)
        again = wh.query("select * exclude (computed_at) from drug_qvalues where plate_id = 'plate_A' "
                         "order by drug, feature_set, model_version")
        assert again.equals(qa)
        meta_a3, _ = _embeddings("plate_A")
        assert len(meta_a3) == len(meta_a) and not meta_a3.duplicated(["cell_id", "model_version"]).any()
        assert len(wh.query("select * from models where plate_id = 'plate_A'")) == 1


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning", "ignore::dagster.PreviewWarning")
def test_blocking_check_stops_a_bad_plate_before_training(home):
    with dg.instance_for_test() as inst:
        _materialize(inst, dg.AssetSelection.assets("synthetic_polymorphic_cells", "synthetic_polymorphic_pointclouds",
                                                    "synthetic_polymorphic_model"), run_config=QUICK)
        _, auto = automate(inst, None, AUTO_RUN)
        # 7 cells: fewer than the check's minimum of 10 valid clouds
        write_synthetic_plate("plate_small", seed=3, n_dmso=3, n_per_drug=2, drugs={"d1": "shrink", "d2": "none"})
        assert _tick(inst, None)[0] == ["plate_small"]
        runs, auto = automate(inst, auto, AUTO_RUN)
        assert [pk for pk, _, _ in runs] == ["plate_small", None]
        checks = {e.check_name: e.passed for e in runs[0][2].get_asset_check_evaluations()}
        assert checks == {"plate_pointclouds_valid": False}
        done = {e.asset_key.to_user_string() for e in runs[0][2].get_asset_materialization_events()}
        assert done == {"plate_cells", "plate_pointclouds"}  # no training, embedding or profiling
        wh = Warehouse()
        assert wh.query("select * from models where plate_id = 'plate_small'").empty
        assert wh.query("select * from drug_qvalues where plate_id = 'plate_small'").empty
        assert automate(inst, auto, AUTO_RUN)[0] == []  # stopped, not retried on every tick


def test_pointcloud_check_blocks_a_plate_without_clouds(home):
    from assets.plates import pointcloud_check

    res = pointcloud_check("plate_nothing")
    assert not res.passed and "0 clouds of 0 cells" in res.description
    assert not pointcloud_check(None).passed
