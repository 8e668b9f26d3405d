"""Search benchmark: cellrep's nearest-cell search against exact brute force, in the same run.

Synthetic 256-d embeddings shaped like real ones: cells fall into many phenotype clusters spread over a
low-dimensional manifold, plus isotropic noise (real codes are far from uniform noise, which no ANN
index can search well). For each size (100k and 1M rows) the vectors go into a LanceDB table through
``FeatureStore``; ``FeatureStore.ensure_index`` builds the ANN index when the table is large enough
(``ANN_MIN_ROWS``); 100 held-out queries are searched with ``FeatureStore.nearest`` (cosine, k = 10),
and the same queries by exact brute force (numpy, normalised dot products over all rows).
Reports p50 / p95 latency and recall@10 against the exact top 10.

Run: ``make bench-search`` (or ``python benchmarks/bench_search.py --sizes 100000,1000000``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellrep_core.store.feature_store import FeatureStore

DIM = 256


def synthetic_embeddings(n: int, seed: int = 0, n_clusters: int = 2000, latent: int = 32) -> np.ndarray:
    """Clustered vectors on a ``latent``-dimensional manifold embedded in 256-d, plus noise (float32)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, latent)))[0].T  # [latent, DIM], orthonormal rows
    centres = rng.normal(size=(n_clusters, latent)) * 3.0
    out = np.empty((n, DIM), dtype=np.float32)
    step = 200_000
    for s in range(0, n, step):
        m = min(step, n - s)
        lab = rng.integers(0, n_clusters, m)
        z = centres[lab] + rng.normal(size=(m, latent))
        out[s : s + m] = (z @ basis + rng.normal(scale=0.3, size=(m, DIM))).astype(np.float32)
    return out


def exact_topk(data_unit: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Indices of the k most cosine-similar rows, and the seconds it took (one query)."""
    t0 = time.perf_counter()
    qn = q / np.linalg.norm(q)
    sims = data_unit @ qn
    idx = np.argpartition(-sims, k)[:k]
    idx = idx[np.argsort(-sims[idx])]
    return idx, time.perf_counter() - t0


def run_size(n: int, n_queries: int, k: int, root: Path) -> dict:
    data = synthetic_embeddings(n + n_queries, seed=n)
    queries, data = data[:n_queries], data[n_queries:]
    meta = pd.DataFrame(
        {
            "cell_id": [f"c{i:07d}" for i in range(n)],
            "dataset": "bench",
            "plate_id": "",
            "drug": "",
            "structure_name": "",
            "model_name": "bench",
            "model_version": "bench-v1",
        }
    )
    fs = FeatureStore(root / f"lance_{n}")
    t0 = time.perf_counter()
    fs.upsert(meta, data)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = fs.ensure_index(fs.table_for_dim(DIM))
    t_index = time.perf_counter() - t0
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    fs.nearest(queries[0], k=k)  # warm-up: opens the table and loads the index
    lat, exact_lat, recalls = [], [], []
    for q in queries:
        truth, te = exact_topk(unit, q, k)
        t0 = time.perf_counter()
        res = fs.nearest(q, k=k)
        lat.append(time.perf_counter() - t0)
        exact_lat.append(te)
        got = {int(c[1:]) for c in res["cell_id"]}
        recalls.append(len(got & set(truth.tolist())) / k)
    return {
        "rows": n,
        "index": built or "none (exact)",
        "write_s": t_write,
        "index_s": t_index,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
        "recall_at_10": float(np.mean(recalls)),
        "exact_p50_ms": float(np.percentile(exact_lat, 50) * 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in sizes:
            r = run_size(n, args.queries, args.k, Path(tmp))
            rows.append(r)
            print(
                f"rows={n:>8} index={r['index']:<14} write {r['write_s']:.1f} s, index build {r['index_s']:.1f} s | "
                f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, recall@10 {r['recall_at_10']:.3f} | "
                f"exact p50 {r['exact_p50_ms']:.1f} ms (x{r['exact_p50_ms'] / r['p50_ms']:.1f})",
                flush=True,
            )
    last = rows[-1]
    print(
        f"p50_ms={last['p50_ms']:.1f} p95_ms={last['p95_ms']:.1f} recall_at_10={last['recall_at_10']:.3f} "
        f"exact_p50_ms={last['exact_p50_ms']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
