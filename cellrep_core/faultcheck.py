"""Kill a small pipeline at a write stage, run it again, and compare everything with a run never killed.

Used by ``tests/test_faults.py`` (a few stages) and ``benchmarks/bench_faults.py`` (every stage). The pipeline is
a registered-style data set of synthetic polymorphic cells: ingest (DuckDB) → point clouds (Parquet + DuckDB)
→ training (checkpoints, the version's record and weights, model registry in DuckDB) → embeddings (LanceDB);
reports are checked on a plot written over an earlier one (``check_report_fault``). Each run is a fresh Python process
(``run_stages``), killed by ``CELLREP_FAULT`` (``cellrep_core.faults``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

DATASET = "faults"
# stage -> fault spec; counts follow the order of writes in a fresh storage root (see run_stages)
FAULTS = {
    "ingest: DuckDB commit": "duckdb_commit:1",
    "point clouds: Parquet rename": "parquet_replace:1",
    "point clouds: DuckDB commit": "duckdb_commit:2",
    "training: after epoch 2's checkpoint": "epoch_end:2",
    "training: the version's lineage being written": "record_write:2",
    "training: weights and record written, before model.pt": "model_commit:1",
    "model registry: DuckDB commit": "duckdb_commit:3",
    "embeddings: before the LanceDB commit": "lance_commit:1",
    "embeddings: during the LanceDB commit": "lance_commit:1@0.01",
}

STAGES = r"""
import sys
from pathlib import Path
from cellrep_core import pipeline
from cellrep_core.models.config import get_config, variant
from cellrep_core.pointclouds.build import SamplingConfig
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse
man = Path(sys.argv[1])
wh = Warehouse()
pipeline.ingest(man, wh, "faults")
pipeline.pointclouds(wh, "faults", "all", cfg=SamplingConfig(n_surface=512, grid=16), n_workers=1)
cfg = variant(get_config("sdf_tiny"), name="sdf_faults", per_item_draws=True, max_epochs=3, patience=5)
tm = pipeline.train(wh, "faults", "all", cfg)
pipeline.embed(wh, FeatureStore(), tm, "faults", "all")
"""


def make_manifest(folder: Path, n: int = 10, seed: int = 6) -> Path:
    """Synthetic polymorphic cells to run the stages on."""
    from cellrep_core.data import synthetic

    synthetic.generate_polymorphic_dataset(folder, n_cells=n, seed=seed, grid=32, dataset=DATASET)
    return folder / "manifest.csv"


def _run_script(script: str, args: list[str], fault: str = "", timeout: int = 600, **env_extra: str) -> int:
    """Run ``script`` in a fresh Python process, killed by ``fault`` (``CELLREP_FAULT``) if given; returns its exit
    code (-9 when the fault killed it), any other failure raises with the end of its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("CELLREP_FAULT", None)
    if fault:
        env["CELLREP_FAULT"] = fault
    res = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode not in (0, -9):
        raise RuntimeError(f"script failed ({res.returncode}): {res.stderr[-3000:]}")
    return res.returncode


def run_stages(home: Path, manifest: Path, fault: str = "") -> int:
    """Run the pipeline in a fresh process on ``home``; returns its exit code (-9 when the fault killed it)."""
    return _run_script(STAGES, [str(manifest)], fault, CELLREP_HOME=str(home))


def reader_view(home: Path) -> dict:
    """What a reader sees right now: row counts of the data set's tables, whether the cloud file exists and
    reads whole, the LanceDB rows, leftovers of interrupted writes."""
    import duckdb
    import pyarrow.parquet as pq

    out: dict = {}
    db = home / "warehouse.duckdb"
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        for t in ("cells", "pointcloud_index", "handcrafted_features", "models"):
            out[t] = con.execute(f"SELECT count(*) FROM {t} WHERE dataset = ?", [DATASET]).fetchone()[0]
        con.close()
    pc = home / "pointclouds" / DATASET / "all.parquet"
    out["parquet_rows"] = pq.read_table(pc).num_rows if pc.exists() else None
    out["parquet_tmp_left"] = pc.with_suffix(".parquet.tmp").exists()
    out["model_pt"] = len(list((home / "models").glob("*/*/model.pt")))
    from cellrep_core.store.feature_store import FeatureStore

    lance = home / "lancedb"
    if lance.exists():
        fs = FeatureStore(lance, lock=False)
        out["lance_rows"] = sum(fs.count(t) for t in fs.table_names())
    else:
        out["lance_rows"] = None
    return out


def snapshot(home: Path) -> dict:
    """Every table's content (timestamps and storage paths left out), the clouds, the embeddings and the model
    weights, as comparable values."""
    import duckdb
    import pyarrow.parquet as pq
    import torch

    from cellrep_core.store.feature_store import FeatureStore

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    snap = {}
    drop = {"ingested_at", "created_at", "trained_at", "recorded_at", "source_path", "parquet_path", "path"}
    for t, key in (("cells", "cell_id"), ("quarantine", "cell_id"), ("pointcloud_index", "cell_id"),
                   ("handcrafted_features", "cell_id"), ("models", "model_version")):
        df = con.execute(f"SELECT * FROM {t} WHERE dataset = ?", [DATASET]).df()
        df = df.drop(columns=[c for c in df.columns if c in drop]).sort_values(key).reset_index(drop=True)
        if "metrics_json" in df:  # training seconds and throughput differ between any two runs
            timing = ("train_seconds", "samples_per_s", "resumed_at_epoch")
            df["metrics_json"] = [json.dumps({k: v for k, v in json.loads(m).items() if k not in timing},
                                             sort_keys=True) for m in df.metrics_json]
        snap[t] = df.to_csv(index=False)
    con.close()
    snap["parquet"] = hashlib.sha256(pq.read_table(home / "pointclouds" / DATASET / "all.parquet")
                                     .to_pandas().to_csv(index=False).encode()).hexdigest()
    fs = FeatureStore(home / "lancedb", lock=False)
    meta, vecs = fs.load()
    snap["lance"] = hashlib.sha256(meta.to_csv(index=False).encode() + vecs.tobytes()).hexdigest()
    version = pd.read_csv(io.StringIO(snap["models"])).model_version.iloc[0]
    sd = torch.load(next((home / "models").glob(f"*/{version}/model.pt")), map_location="cpu")
    snap["weights"] = hashlib.sha256(b"".join(v.numpy().tobytes() for v in sd.values())).hexdigest()
    return snap


REPORT_STAGE = r"""
import sys
from pathlib import Path
import pandas as pd
from cellrep_core.profiling.plots import inverse_q_plot
df = pd.DataFrame({"drug": ["a", "a", "b", "b"], "concentration": [1.0, 3.0, 1.0, 3.0],
                   "q_value": [0.2, 0.01, 0.5, 0.4], "model_role": "base", "model_version": "v"})
inverse_q_plot(df, Path(sys.argv[1]), sys.argv[2])
"""
REPORT_FAULT = ("reports: a plot being written over an earlier one", "report_write:1")


def _write_report(path: Path, title: str, fault: str = "") -> int:
    return _run_script(REPORT_STAGE, [str(path), title], fault, timeout=300)


def check_report_fault(work: Path) -> dict:
    """Write a plot, then kill the process writing a new version of it between its bytes and the rename: a reader
    sees the earlier plot whole; writing again gives the bytes of a run never killed (every report, plot and
    HTML page goes through ``cellrep_core.atomic``)."""
    def digest(p: Path) -> str | None:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None

    _write_report(work / "reference_report" / "q.png", "new")
    ref = digest(work / "reference_report" / "q.png")
    target = work / "killed_report" / "q.png"
    _write_report(target, "earlier")
    earlier = digest(target)
    code = _write_report(target, "new", REPORT_FAULT[1])
    seen = {"report": "the earlier plot, whole" if digest(target) == earlier else
            ("absent" if not target.exists() else "changed"), "tmp_left": target.with_name("q.png.tmp").exists()}
    _write_report(target, "new")
    same = digest(target) == ref
    return {"stage": REPORT_FAULT[0], "fault": REPORT_FAULT[1], "killed": code == -9, "reader_after_kill": seen,
            "identical": same, "differs": [] if same else ["report"]}


def check_fault(work: Path, manifest: Path, name: str, spec: str, reference: dict) -> dict:
    """Kill the stages at ``spec``, record what a reader saw, run again, compare with ``reference``."""
    home = work / name.replace(" ", "_").replace(":", "").replace("'", "")
    code = run_stages(home, manifest, spec)
    seen = reader_view(home)
    run_stages(home, manifest)
    snap = snapshot(home)
    differ = [k for k in reference if snap.get(k) != reference[k]]
    return {"stage": name, "fault": spec, "killed": code == -9, "reader_after_kill": seen,
            "identical": not differ, "differs": differ}
