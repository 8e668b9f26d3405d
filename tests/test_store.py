"""Warehouse and feature store: idempotent writes, read-only reads, nearest cells with filters."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from cellrep_core.store.feature_store import FeatureStore, where_clause
from cellrep_core.store.warehouse import Warehouse


def _meta(n, version="v1", plate="p1"):
    return pd.DataFrame({
        "cell_id": [f"c{i:03d}" for i in range(n)], "dataset": "d", "plate_id": plate,
        "drug": ["DMSO" if i % 2 else "x" for i in range(n)], "structure_name": "s",
        "model_name": "m", "model_version": version,
    })


def test_feature_store_upsert_never_duplicates(tmp_path):
    fs = FeatureStore(tmp_path / "lance")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 8))
    fs.upsert(_meta(20), v)
    fs.upsert(_meta(20), v + 1)
    assert fs.count() == 20
    meta, vecs = fs.load({"model_version": "v1"})
    assert np.allclose(vecs, (v + 1).astype(np.float32))  # the second write replaced the first
    fs.upsert(_meta(20, "v2"), v)
    assert fs.count() == 40
    with pytest.raises(ValueError, match="duplicate key"):
        fs.upsert(pd.concat([_meta(2), _meta(2)]), rng.normal(size=(4, 8)))


def test_nearest_self_first_and_filters(tmp_path):
    fs = FeatureStore(tmp_path / "lance")
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 8))
    fs.upsert(_meta(30), v)
    fs.upsert(_meta(30, plate="p2").assign(cell_id=lambda d: d.cell_id + "_b"), rng.normal(size=(30, 8)))
    res = fs.nearest(v[7], k=5, filters={"plate_id": "p1"})
    assert res.iloc[0]["cell_id"] == "c007" and res.iloc[0]["distance"] < 1e-5
    assert (res.plate_id == "p1").all() and len(res) == 5
    res = fs.nearest(v[7], k=5, filters={"drug": "DMSO", "plate_id": ["p1", "p2"]})
    assert (res.drug == "DMSO").all()
    # cosine distances are sorted and agree with numpy
    vv = np.concatenate([v, fs.load({"plate_id": "p2"})[1]])
    cos = 1 - (vv @ v[7]) / (np.linalg.norm(vv, axis=1) * np.linalg.norm(v[7]))
    assert np.isclose(res.distance.iloc[1], np.sort(cos[[i for i in range(60) if (i % 30) % 2]])[1], atol=1e-4)
    with pytest.raises(ValueError, match="cannot filter"):
        where_clause({"vector": 1})


def test_warehouse_replace_is_atomic_and_idempotent(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    df = pd.DataFrame({"plate_id": ["p1"] * 3, "drug": ["a", "b", "c"], "planted_effect": ["none"] * 3})
    wh.replace("drug_truth", df, {"plate_id": "p1"})
    wh.replace("drug_truth", df, {"plate_id": "p1"})
    wh.replace("drug_truth", df.assign(plate_id="p2"), {"plate_id": "p2"})
    assert wh.query("select count(*) n from drug_truth").n[0] == 6
    # a failing write rolls back: the delete of p1 does not stick
    with pytest.raises(duckdb.Error):
        wh.replace("drug_truth", pd.DataFrame({"plate_id": ["p1"], "no_such_column": [1]}), {"plate_id": "p1"})
    assert wh.query("select count(*) n from drug_truth where plate_id='p1'").n[0] == 3


def test_warehouse_reads_are_read_only(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    with wh.read() as con, pytest.raises(duckdb.Error, match="read-only"):
        con.execute("insert into drug_truth (plate_id, drug, planted_effect) values ('p', 'd', 'none')")


def test_ann_index_built_above_threshold_and_kept_fresh(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_search import exact_topk, synthetic_embeddings

    fs = FeatureStore(tmp_path / "lance")
    data = synthetic_embeddings(4000, seed=3, n_clusters=50)
    meta = _meta(4000)
    meta["cell_id"] = [f"c{i:05d}" for i in range(4000)]
    fs.upsert(meta.iloc[:3000], data[:3000])
    assert fs.ensure_index(min_rows=3500) is None and fs.vector_index() is None  # small: exact search
    built = fs.ensure_index(min_rows=2000)
    assert built.startswith("IVF_HNSW_SQ") and fs.vector_index()["indexed_rows"] == 3000
    assert fs.ensure_index(min_rows=2000) is None  # up to date: nothing rebuilt
    fs.upsert(meta.iloc[3000:], data[3000:])  # a third of the rows unindexed: rebuild
    assert fs.vector_index()["unindexed_rows"] == 1000
    assert fs.ensure_index(min_rows=2000) is not None and fs.vector_index()["unindexed_rows"] == 0
    # indexed search: high recall against brute force, filters honoured, no vectors returned
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    recall = []
    for q in synthetic_embeddings(20, seed=4, n_clusters=50):
        truth = set(exact_topk(unit, q, 10)[0].tolist())
        res = fs.nearest(q, k=10)
        assert "vector" not in res.columns and res["distance"].is_monotonic_increasing
        recall.append(len({int(c[1:]) for c in res.cell_id} & truth) / 10)
    assert np.mean(recall) >= 0.9
    only = fs.nearest(data[0], k=5, filters={"drug": "DMSO"})
    assert len(only) == 5 and set(only.drug) == {"DMSO"}


def test_time_travel_by_version_and_date_and_maintenance(tmp_path):
    import time
    from datetime import datetime, timedelta

    fs = FeatureStore(tmp_path / "lance")
    rng = np.random.default_rng(1)
    fs.upsert(_meta(10), rng.normal(size=(10, 8)))
    time.sleep(0.05)
    t_first = datetime.utcnow()
    time.sleep(0.05)
    fs.upsert(_meta(10, "v2"), rng.normal(size=(10, 8)))
    vs = fs.versions()
    assert list(vs.rows)[0] == 10 and list(vs.rows)[-1] == 20
    old, _ = fs.load(as_of=t_first)
    assert len(old) == 10 and set(old.model_version) == {"v1"}
    first, _ = fs.load(version=int(vs.version.iloc[0]))
    assert len(first) == 10
    assert len(fs.load()[0]) == 20  # the latest version by default
    with pytest.raises(LookupError, match="did not exist"):
        fs.load(as_of=t_first - timedelta(days=1))
    # maintenance keeps every row and the latest version; recent versions stay readable
    res = fs.optimize(keep=timedelta(days=7))
    assert res[0]["rows"] == 20 and res[0]["versions_after"] >= 1
    assert len(fs.load(as_of=t_first)[0]) == 10
    fs.optimize(keep=timedelta(0))
    assert len(fs.versions()) <= 2 and len(fs.load()[0]) == 20


def test_feature_store_replace_swaps_one_partition_in_one_commit(tmp_path):
    fs = FeatureStore(tmp_path / "lance")
    rng = np.random.default_rng(2)
    other = _meta(10, plate="p2").assign(cell_id=lambda d: d.cell_id + "_b")
    fs.upsert(other, rng.normal(size=(10, 8)))
    fs.replace({"dataset": "d", "plate_id": "p1", "model_version": "v1"}, _meta(20), rng.normal(size=(20, 8)))
    before = len(fs.versions())
    new = rng.normal(size=(15, 8))
    fs.replace({"dataset": "d", "plate_id": "p1", "model_version": "v1"}, _meta(15), new)
    assert len(fs.versions()) == before + 1  # delete of the 5 dropped cells and update of 15: one commit
    meta, vecs = fs.load({"plate_id": "p1"})
    assert list(meta.cell_id) == [f"c{i:03d}" for i in range(15)] and np.allclose(vecs, new.astype(np.float32))
    assert len(fs.load({"plate_id": "p2"})[0]) == 10  # the other plate is untouched
    with pytest.raises(ValueError, match="no rows"):
        fs.replace({"plate_id": "p1"}, _meta(0), np.zeros((0, 8)))


def _hold_write(path, started, seconds):
    wh = Warehouse(path)
    with wh.write() as con:
        con.execute("INSERT INTO plates (plate_id) VALUES ('p_writer')")
        started.set()
        import time

        time.sleep(seconds)


def test_reader_waits_for_a_writer_in_another_process(tmp_path):
    """DuckDB refuses a read-only open while another process writes; the shared lock makes the reader wait."""
    import multiprocessing as mp
    import time

    path = tmp_path / "w.duckdb"
    Warehouse(path).query("SELECT 1")
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_hold_write, args=(path, started, 1.5))
    proc.start()
    assert started.wait(60)
    with pytest.raises(duckdb.IOException, match="lock"):  # what a reader without the lock would get
        duckdb.connect(str(path), read_only=True)
    t0 = time.perf_counter()
    rows = Warehouse(path).query("SELECT plate_id FROM plates")  # waits for the commit instead of failing
    waited = time.perf_counter() - t0
    proc.join(30)
    assert proc.exitcode == 0 and list(rows.plate_id) == ["p_writer"] and waited > 0.2
