"""Distributed training: 2 torchrun processes (gloo, CPU) train the model one process trains."""

import json
import os
import subprocess

import numpy as np
import pytest

from cellrep_core import pipeline
from cellrep_core.data import synthetic
from cellrep_core.models.config import get_config, variant
from cellrep_core.models.ddp import distributed_command, write_request
from cellrep_core.models.inference import embed_items, load_model
from cellrep_core.models.train import train_model
from cellrep_core.pointclouds.build import SamplingConfig, read_pointclouds
from cellrep_core.store.warehouse import Warehouse


@pytest.fixture
def clouds(home, tmp_path):
    """14 polymorphic cells sampled into a Parquet file (12 train, 2 validation)."""
    synthetic.generate_polymorphic_dataset(tmp_path / "poly", n_cells=14, seed=4, grid=32, dataset="ddp")
    wh = Warehouse()
    pipeline.ingest(tmp_path / "poly" / "manifest.csv", wh, "ddp")
    pipeline.pointclouds(wh, "ddp", "all", cfg=SamplingConfig(n_surface=512, grid=16), n_workers=1)
    return pipeline.paths.pointcloud_path("ddp", "all")


def test_two_gloo_processes_train_the_same_model_as_one(clouds, tmp_path):
    cfg = variant(get_config("sdf_tiny"), per_item_draws=True, batch_size=4, max_epochs=2, patience=5)
    items = read_pointclouds(clouds)
    one = train_model(cfg, items, tmp_path / "one")
    req = write_request(tmp_path / "req.json", cfg, clouds, tmp_path / "two")
    res = subprocess.run(distributed_command(req, 2), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(req.with_suffix(".result.json").read_text())
    assert out["version"] == one.version and out["metrics"]["processes"] == 2
    a, b = load_model(one.path), load_model(out["path"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())
    print(f"max weight difference, 2 processes vs 1: {worst:.2e}")
    assert worst < 1e-4, worst
    za, zb = embed_items(a, items), embed_items(b, items)
    assert np.allclose(za, zb, atol=1e-4 * np.abs(za).max())
    # and a different model when the per-item draws are off (the test can fail)
    other = train_model(variant(cfg, per_item_draws=False, seed=1), items, tmp_path / "three")
    sc = load_model(other.path).state_dict()
    assert max(float((sa[k].double() - sc[k].double()).abs().max()) for k in sa if sa[k].is_floating_point()) > 1e-3


def test_dataset_model_trains_in_two_processes_through_dagster_pipes(clouds, tmp_path):
    """``dataset_model`` with ``processes: 2`` starts torchrun through Dagster Pipes; rank 0's report reaches the
    run log and the version is registered with its lineage like a one-process training."""
    import dagster as dg

    from orchestration.datasets import materialize_dataset, register_dataset

    register_dataset("ddpset", tmp_path / "poly" / "manifest.csv", model="sdf_tiny")
    cfg = {"ops": {"dataset_pointclouds": {"config": {"workers": 1}},
                   "dataset_model": {"config": {"max_epochs": 1, "processes": 2}}}}
    res = materialize_dataset("ddpset", ["dataset_cells", "dataset_pointclouds", "dataset_model"], cfg)
    assert res.success
    md = res.asset_materializations_for_node("dataset_model")[-1].metadata
    assert md["processes"].value == 2
    wh = Warehouse()
    m = wh.query("select * from models where dataset = 'ddpset'")
    assert list(m.model_version) == [md["model_version"].value]
    assert json.loads(m.metrics_json.iloc[0])["processes"] == 2
    logs = [e.message or "" for e in dg.DagsterInstance.get().all_logs(res.run_id)]
    assert any("on 2 processes" in msg for msg in logs)  # reported by rank 0 through Pipes
