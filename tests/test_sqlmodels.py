"""SQL models: dependencies parsed from the SQL, order, errors naming file and line, assets."""

import pandas as pd
import pytest

from cellrep_core import sqlmodels
from cellrep_core.store.warehouse import Warehouse


def test_parse_deps_skips_ctes_comments_and_strings():
    sql = """
    -- from not_a_table
    with a as (select * from cells), b as (select * from a join quarantine q using (cell_id))
    select * from b left join drug_truth t on t.drug = 'from fake' join main.models m on true
    """
    assert sqlmodels.parse_deps(sql) == ["cells", "quarantine", "drug_truth", "models"]


def test_shipped_models_parse_and_order():
    models = sqlmodels.topo_order(sqlmodels.load_models())
    names = [m.name for m in models]
    assert {"drug_hits", "plate_qc", "model_leaderboard"} <= set(names)
    assert dict((m.name, m.deps) for m in models)["drug_hits"] == ("drug_qvalues", "drug_truth", "models")


def test_model_chain_materializes_in_order_and_errors_name_file_and_line(tmp_path):
    d = tmp_path / "sql"
    d.mkdir()
    (d / "b_model.sql").write_text("select plate_id, count(*) n from a_model group by plate_id")
    (d / "a_model.sql").write_text("select * from drug_truth")
    models = sqlmodels.topo_order(sqlmodels.load_models(d))
    assert [m.name for m in models] == ["a_model", "b_model"]
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("drug_truth", pd.DataFrame({"plate_id": ["p"], "drug": ["x"], "planted_effect": ["none"]}),
               {"plate_id": "p"})
    assert [sqlmodels.materialize(wh, m) for m in models] == [1, 1]
    (d / "c_bad.sql").write_text("select *\nfrom drug_truth\nwhere drug = = 'x'")
    bad = [m for m in sqlmodels.load_models(d) if m.name == "c_bad"][0]
    with pytest.raises(sqlmodels.SqlModelError, match=r"c_bad\.sql:3"):
        sqlmodels.materialize(wh, bad)


def test_sql_files_become_assets_with_upstream_deps(tmp_path):
    import dagster as dg

    from assets.sql_models import sql_model_assets

    d = tmp_path / "sql"
    d.mkdir()
    (d / "hits_per_plate.sql").write_text("with x as (select * from drug_qvalues) select plate_id from x")
    (d / "summary.sql").write_text("select * from hits_per_plate")
    defs = {a.key.to_user_string(): a for a in sql_model_assets(d)}
    deps = {k.to_user_string() for k in defs["hits_per_plate"].asset_deps[dg.AssetKey("hits_per_plate")]}
    assert deps == {"plate_qvalues"}
    assert {k.to_user_string() for k in defs["summary"].asset_deps[dg.AssetKey("summary")]} == {"hits_per_plate"}
    (d / "broken.sql").write_text("select * from nowhere")
    with pytest.raises(sqlmodels.SqlModelError, match="unknown table 'nowhere'"):
        sql_model_assets(d)
