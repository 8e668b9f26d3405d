"""Model size and inference time per cell: the image autoencoders against the point-cloud ones.

For each data kind, the four families at the same latent size (demo: latent 64, 512 points, 16³ images;
``--paper``: the published sizes, latent 256 / 512, 2,048 / 8,192 points, 96³ punctate images (the
paper's 118³, rounded down to what five stride-2 layers divide) and 32³ SDF images), built with random
weights; times the encoder on a batch of inputs shaped as in training, in eval mode, on one CPU thread
(``--threads``), after one warm-up pass (escnn expands its filters once in eval mode). Prints parameter
counts (whole autoencoder and encoder), seconds per cell and, per kind, the ratios image / point cloud
(> 1: the point-cloud model is the smaller or faster one).

Run: ``python benchmarks/bench_image_models.py [--paper] [--batch 16] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cellrep_core.models.config import get_config
from cellrep_core.models.zoo import build_model

FAMILIES = ("", "dgcnn_", "so3cnn_", "cnn_")  # VN-DGCNN, DGCNN, SO(3) CNN, CNN
DEMO = {kind: [f"{kind}_{f}demo" for f in FAMILIES] for kind in ("punctate", "sdf")}
PAPER = {kind: [f"{kind}_{f}paper" for f in FAMILIES] for kind in ("punctate", "sdf")}


def _inputs(cfg, batch: int, rng: np.random.Generator) -> torch.Tensor:
    if cfg.family == "image":
        s = cfg.image_size
        return torch.from_numpy(rng.random((batch, 1, s, s, s), dtype=np.float32))
    d = 4 if cfg.kind == "punctate" else 3
    return torch.from_numpy(rng.normal(size=(batch, cfg.n_points, d)).astype(np.float32))


def measure(name: str, batch: int, repeats: int) -> dict:
    """Parameters and median encoder seconds per cell of one config."""
    cfg = get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = _inputs(cfg, batch, np.random.default_rng(0))
    times = []
    with torch.no_grad():
        model(x)  # warm-up (escnn builds its filters on the first eval pass)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {
        "config": name,
        "family": f"{cfg.encoder}",
        "latent_dim": cfg.latent_dim,
        "code_dim": model.encoder.code_dim,
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "s_per_cell": float(np.median(times)) / batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper", action="store_true", help="published sizes instead of the demo ones")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = PAPER if args.paper else DEMO
    print(f"{'config':26s} {'encoder':9s} {'latent':>6s} {'code':>5s} {'params':>11s} {'enc_params':>11s} "
          f"{'ms/cell':>9s}")
    for kind, names in sets.items():
        rows = [measure(n, args.batch, args.repeats) for n in names]
        for r in rows:
            print(f"{r['config']:26s} {r['family']:9s} {r['latent_dim']:6d} {r['code_dim']:5d} {r['params']:11,d} "
                  f"{r['encoder_params']:11,d} {1e3 * r['s_per_cell']:9.2f}", flush=True)
        vn, dg, so3, cnn = rows
        ratios = " ".join(
            f"{what}_{img['family']}/{pc['family']}={img[key] / pc[key]:.2f}"
            for what, key in (("params", "params"), ("time", "s_per_cell"))
            for img in (so3, cnn) for pc in (vn, dg)
        )
        print(f"{kind}: {ratios}", flush=True)

if __name__ == "__main__":
    main()
