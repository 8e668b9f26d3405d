"""Training-throughput benchmark: cellrep's VN-DGCNN and classical DGCNN against the published VN-DGCNN layer.

Paper configuration (``punctate_paper``): batch 32, 2,048 points with intensity (4-d input), k = 20,
hidden 64, latent 256, FoldingNet (plane) decoder, Chamfer loss; one step = forward + backward + Adam
step. The published layer runs at the same batch by default (``--ref-batch``; its materialised edge
tensors take about 11 GB at 32). Each model runs in its own subprocess (so that peak memory is its
own): one warm-up step (it includes ``torch.compile``'s compilation of the fused edge kernels), then the
median of ``--steps`` timed steps. CUDA when available (the training's precision: bf16 autocast, or fp16 with a
gradient scaler on devices without bf16; peak =
``max_memory_allocated``), CPU otherwise (peak = the process's maximum resident set).

Models:

- ``vn_dgcnn``: cellrep's VN-DGCNN (``cellrep_core/models/vn.py``): VN-linear maps per point, the gather,
  VN-LeakyReLU and mean over neighbours fused into one kernel pair (``use_compiled_edges``) that saves no
  edge tensor;
- ``dgcnn``: cellrep's classical DGCNN (``cellrep_core/models/dgcnn.py``), same decoder and loss;
- ``published_vn``: the published VN-DGCNN layer written plainly here (``ReferenceVNDGCNN``): edge
  features ``(x_j - x_i, x_j x x_i, x_i)`` materialised as ``[B, C, 3, N, k]``, VN-linear + VN-LeakyReLU on
  them (a second VN-linear map gives the ReLU direction), mean pooling over neighbours, graph on the input
  coordinates, an intensity channel riding along as ``s * x``; same mixing layer, pooled-norm code,
  decoder and loss as ours.

Run: ``make bench-train`` (or ``python benchmarks/bench_train.py [--quick] [--steps N]``). The last line
is ``vn_dgcnn_samples_per_s=<x> dgcnn_samples_per_s=<y> vn_speed_vs_published=<x> vn_peak_memory_vs_published=<y>``
(the ratios against the published layer measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cellrep_core.models.config import get_config  # noqa: E402
from cellrep_core.models.decoders import FoldingNetDecoder  # noqa: E402
from cellrep_core.models.losses import chamfer_distance  # noqa: E402
from cellrep_core.models.vn import (  # noqa: E402
    VNBatchNorm,
    VNLinear,
    VNLinearLeakyReLU,
    knn,
    rotation_from_vectors,
    vn_leaky_relu,
)

MODELS = ("vn_dgcnn", "dgcnn", "published_vn")


class ReferenceVNLayer(nn.Module):
    """The published VN EdgeConv: VN-linear + VN-LeakyReLU on materialised ``[B, 3C, 3, N, k]`` edges."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.lin = VNLinear(c_in, c_out)
        self.dir = VNLinear(c_in, c_out)

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        return vn_leaky_relu(self.lin(edges), self.dir(edges), 0.2).mean(-1)


def reference_edges(f: torch.Tensor, idx: torch.Tensor, cross: bool) -> torch.Tensor:
    """``(f_j - f_i, [f_j x f_i,] f_i)`` as ``[B, 2C|3C, 3, N, k]``."""
    b, c, _, n = f.shape
    k = idx.shape[-1]
    fj = torch.gather(f.reshape(b, c * 3, n), 2, idx.reshape(b, 1, n * k).expand(b, c * 3, n * k))
    fj = fj.view(b, c, 3, n, k)
    fi = f.unsqueeze(-1).expand_as(fj)
    parts = [fj - fi, torch.cross(fj, fi, dim=2), fi] if cross else [fj - fi, fi]
    return torch.cat(parts, dim=1)


class ReferenceVNDGCNN(nn.Module):
    """Published-style VN-DGCNN punctate autoencoder (encoder layer as published, rest as cellrep's)."""

    def __init__(self, latent_dim: int, hidden: int, n_layers: int, k: int, decoder_hidden: int) -> None:
        super().__init__()
        self.k = k
        c0 = 2  # x and s * x
        self.convs = nn.ModuleList(
            [ReferenceVNLayer(3 * c0 if i == 0 else 2 * hidden, hidden) for i in range(n_layers)]
        )
        self.bn = VNBatchNorm(hidden * n_layers)
        self.mix = VNLinearLeakyReLU(hidden * n_layers, latent_dim)
        self.to_rot = VNLinear(latent_dim, 2)
        self.decoder = FoldingNetDecoder(latent_dim, decoder_hidden, out_dim=4)

    def per_item_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pts = batch["points"]
        xyz = pts[..., :3]
        idx = knn(xyz, self.k)
        x = xyz.transpose(1, 2).unsqueeze(1)
        f = torch.cat([x, x * pts[..., 3].unsqueeze(1).unsqueeze(1)], dim=1)
        outs = []
        for i, conv in enumerate(self.convs):
            f = conv(reference_edges(f, idx, cross=i == 0))
            outs.append(f)
        h = self.mix(self.bn(torch.cat(outs, dim=1)))
        vectors = h.mean(-1)
        rotation = rotation_from_vectors(self.to_rot(vectors.unsqueeze(-1)).squeeze(-1))
        y = self.decoder(vectors.norm(dim=-1))
        y = torch.cat([y[..., :3] @ rotation.transpose(1, 2), y[..., 3:]], dim=-1)
        return chamfer_distance(y, pts)


def build(name: str, batch: int) -> nn.Module:
    from cellrep_core.models.module import PointCloudAutoencoder

    cfg = get_config("punctate_paper", batch_size=batch)
    if name == "published_vn":
        return ReferenceVNDGCNN(cfg.latent_dim, cfg.hidden, cfg.n_layers, cfg.k, cfg.decoder_hidden)
    if name == "vn_dgcnn":
        from cellrep_core.models.vn import use_compiled_edges

        use_compiled_edges(True)
        return PointCloudAutoencoder(cfg.model_dump())
    return PointCloudAutoencoder(get_config("punctate_dgcnn_paper", batch_size=batch).model_dump())


def measure(name: str, batch: int, steps: int) -> dict:
    """Time ``steps`` training steps (after one warm-up step) of one model in this process."""
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    model = build(name, batch).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    from cellrep_core.models.train import train_precision

    # the training's precision: bf16 autocast where CUDA supports it, fp16 with a gradient scaler otherwise
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(train_precision())
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    cfg = get_config("punctate_paper")
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(batch, cfg.n_points, 4, generator=gen)
    pts[..., 3] = torch.rand(batch, cfg.n_points, generator=gen)
    data = {"points": pts.to(dev)}

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model.per_item_loss(data).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = step()
    times = [step() for _ in range(steps)]
    if cuda:
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    med = statistics.median(times)
    return {
        "model": name,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "batch": batch,
        "warmup_s": warm,
        "step_s": times,
        "samples_per_s": batch / med,
        "peak_gb": peak_gb,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 4, one timed step (smoke test)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32, 4 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (default 2, 1 quick)")
    ap.add_argument("--ref-batch", type=int, default=None,
                    help="batch of the published layer (default: the same batch; its materialised edges take "
                         "about 11 GB at 32)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = ap.parse_args()
    batch = args.batch or (4 if args.quick else 32)
    steps = args.steps or (1 if args.quick else 2)
    ref_batch = args.ref_batch or batch
    if args.one:
        print(json.dumps(measure(args.one, batch, steps)))
        return
    cfg = get_config("punctate_paper")
    print(f"training step (forward + backward + Adam), batch {batch}, {cfg.n_points} points (4-d), k {cfg.k}, "
          f"hidden {cfg.hidden}, latent {cfg.latent_dim}, FoldingNet, Chamfer; 1 warm-up + median of {steps}")
    res = {}
    for name in args.models.split(","):
        b = ref_batch if name == "published_vn" else batch
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(b), "--steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{name}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        res[name] = r
        print(f"{name:13s} {r['device']}, batch {r['batch']}: {r['samples_per_s']:.3f} samples/s "
              f"(steps {', '.join(f'{t:.1f}' for t in r['step_s'])} s; warm-up {r['warmup_s']:.1f} s), "
              f"peak {r['peak_gb']:.2f} GB, {r['params'] / 1e6:.2f} M parameters", flush=True)
    ref = res.get("published_vn")
    ratios = {}
    for name in ("vn_dgcnn", "dgcnn"):
        if ref and name in res:
            ratios[name] = (res[name]["samples_per_s"] / ref["samples_per_s"], res[name]["peak_gb"] / ref["peak_gb"])
            print(f"{name} / published_vn (batch {res[name]['batch']} / {ref['batch']}): speed "
                  f"x{ratios[name][0]:.2f}, peak memory x{ratios[name][1]:.2f}")
    vn_s = res["vn_dgcnn"]["samples_per_s"] if "vn_dgcnn" in res else float("nan")
    dg_s = res["dgcnn"]["samples_per_s"] if "dgcnn" in res else float("nan")
    speed, mem = ratios.get("vn_dgcnn", (float("nan"), float("nan")))
    print(f"vn_dgcnn_samples_per_s={vn_s:.3f} dgcnn_samples_per_s={dg_s:.3f} vn_speed_vs_published={speed:.2f} "
          f"vn_peak_memory_vs_published={mem:.2f}")


if __name__ == "__main__":
    main()
