"""cellrep's dense EdgeConv against torch-geometric's EdgeConv (message passing, max aggregation), same graph,
same weights, forward + backward, on this machine's threads. Prints ms per batch and the ratio (PyG / cellrep).

    python benchmarks/bench_pyg.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from cellrep_core.models.dgcnn import EdgeConv, feature_knn
from cellrep_core.models.pyg_reference import dense_to_edge_index, pyg_edgeconv_like, pyg_forward

SIZES = [("demo", 16, 512, 64, 64, 20), ("demo wide layer", 16, 512, 128, 256, 20),
         ("paper points", 4, 2048, 64, 64, 20)]  # name, batch, points, C_in, C_out, k


def _time(fn, repeats: int) -> float:
    fn()  # warm-up, both sides alike
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"threads: {torch.get_num_threads()}")
    print("| size | B x N x C_in -> C_out, k | cellrep ms | PyG ms | PyG / cellrep | max abs diff |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for name, b, n, cin, cout, k in SIZES:
        ours = EdgeConv(cin, cout)
        ref = pyg_edgeconv_like(ours)
        f = torch.randn(b, cin, n, requires_grad=True)
        idx = feature_knn(f, k)
        ei = dense_to_edge_index(idx)
        with torch.no_grad():
            diff = float((ours(f, idx) - pyg_forward(ref, f, ei)).abs().max())

        t_ours = _time(lambda o=ours, x=f, i=idx: o(x, i).sum().backward(), args.repeats)
        t_pyg = _time(lambda r=ref, x=f, e=ei: pyg_forward(r, x, e).sum().backward(), args.repeats)
        ratios.append(t_pyg / t_ours)
        print(f"| {name} | {b} x {n} x {cin} -> {cout}, {k} | {1e3 * t_ours:.1f} | {1e3 * t_pyg:.1f} | "
              f"{t_pyg / t_ours:.2f} | {diff:.1e} |")
    print("pyg_over_cellrep=" + ",".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
