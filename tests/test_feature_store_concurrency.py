"""The feature store without file locks: primary-key schema, migration, concurrent writers, tagged versions."""

import subprocess
import sys
import time
from datetime import timedelta

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa

from cellrep_core.store.feature_store import KEY, META_COLUMNS, TABLE, FeatureStore, has_primary_key

# each round inserts keys no one has written yet, half of them also inserted by the next worker at the same
# moment: the case that left duplicates before the primary key (240 of 1,240 rows in a run of this test with
# the key's field metadata removed)
WORKER = r"""
import sys, time, numpy as np, pandas as pd
from cellrep_core.store.feature_store import FeatureStore
uri, w, rounds, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fs = FeatureStore(uri, lock=False)
while time.time() < start:
    time.sleep(0.001)
for r in range(rounds):
    ids = [f"r{r}_c{i:04d}" for i in range(w * 40, w * 40 + 80)]
    meta = pd.DataFrame({"cell_id": ids, "dataset": "d", "plate_id": "p", "drug": "", "structure_name": "",
                         "model_name": "m", "model_version": "v1"})
    fs.upsert(meta, np.full((len(ids), 8), 100 * w + r, np.float32))
print(fs.commit_retries)
"""


def _meta(ids, version="v1"):
    return pd.DataFrame({"cell_id": ids, "dataset": "d", "plate_id": "p", "drug": "", "structure_name": "",
                         "model_name": "m", "model_version": version})


def test_concurrent_writers_without_locks_leave_no_duplicate_and_lose_no_row(tmp_path):
    uri = tmp_path / "lancedb"
    n_workers, rounds = 4, 4
    FeatureStore(uri).upsert(_meta(["seed"]), np.zeros((1, 8), np.float32))  # the table exists: merges race
    start = time.time() + 6  # after every worker has imported
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(uri), str(w), str(rounds), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(n_workers)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    fs = FeatureStore(uri)
    meta, vecs = fs.load()
    expected = {"seed"} | {f"r{r}_c{i:04d}" for r in range(rounds) for i in range(0, 40 * n_workers + 40)}
    assert set(meta.cell_id) == expected  # no row lost
    assert not meta.duplicated(KEY).any() and len(meta) == len(expected)  # no duplicate
    for cid, v in zip(meta.cell_id, vecs[:, 0], strict=True):  # each row holds the value of a writer of it
        if cid == "seed":
            continue
        r, i = int(cid[1:cid.index("_")]), int(cid.split("_c")[1])
        writers = {w for w in range(n_workers) if w * 40 <= i < w * 40 + 80}
        assert int(v) // 100 in writers and int(v) % 100 == r
    assert has_primary_key(fs.open_table().schema)


def test_old_tables_are_migrated_to_the_primary_key_and_keep_their_history(tmp_path):
    uri = tmp_path / "lancedb"
    db = lancedb.connect(str(uri))
    old = pa.table({**{c: pa.array(_meta(["a", "b"])[c].tolist(), pa.string()) for c in META_COLUMNS},
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 4)})
    db.create_table(TABLE, data=old)  # nullable, no primary key: a table from before
    assert not has_primary_key(db.open_table(TABLE).schema)
    fs = FeatureStore(uri)
    fs.upsert(_meta(["b", "c"]), np.full((2, 4), 2.0, np.float32))
    assert has_primary_key(fs.open_table().schema)
    meta, vecs = fs.load()
    assert list(meta.cell_id) == ["a", "b", "c"] and list(vecs[:, 0]) == [1.0, 2.0, 2.0]
    first, _ = fs.load(version=1)
    assert list(first.cell_id) == ["a", "b"]  # the version before the migration is still readable


def test_tagged_versions_survive_maintenance(tmp_path):
    fs = FeatureStore(tmp_path / "lancedb")
    fs.upsert(_meta(["a", "b"]), np.ones((2, 4), np.float32))
    tagged = fs.tag_versions("plate_qvalues_p1")
    for k in range(3):
        fs.upsert(_meta(["a", "b"]), np.full((2, 4), 2.0 + k, np.float32))
    out = fs.optimize(keep=timedelta(0))
    assert out[0]["tagged"] == 1
    meta, vecs = fs.load(version=tagged[TABLE])
    assert list(vecs[:, 0]) == [1.0, 1.0]  # what the q-values read is still there
    assert fs.tag_versions("plate_qvalues_p1")[TABLE] > tagged[TABLE]  # the tag moves with a re-profile
