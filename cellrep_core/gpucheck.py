"""``make gpu-check``: what a machine with a GPU runs first (``python -m cellrep_core.gpucheck``).

Every model family (VN-DGCNN, DGCNN, SO(3)-steerable CNN, CNN; punctate and SDF; tiny configs) trains with an
interruption in its second epoch and resumes, is fine-tuned, embeds and is benchmarked on the inference device
(``models.inference.inference_device``); its codes there are compared with the CPU's codes of the same weights, and
the equivariant ones' invariance is measured there. On CUDA, one training step of the paper configs at batch 32
reports its peak memory and time. On a machine without CUDA the CPU parts run and each CUDA part is printed as
``SKIP`` with the reason. Exits non-zero when any check fails.

    python -m cellrep_core.gpucheck [--configs sdf_tiny,...] [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("punctate_tiny", "sdf_tiny", "punctate_dgcnn_tiny", "sdf_dgcnn_tiny", "punctate_so3cnn_tiny",
            "sdf_so3cnn_tiny", "punctate_cnn_tiny", "sdf_cnn_tiny")
PAPER_CONFIGS = ("punctate_paper", "sdf_paper")
# GPU codes against CPU codes of the same weights, over the mean distance between two cells' codes: cuDNN's
# convolutions (TF32) and reordered reductions move codes by ~1e-4 of that; a device bug moves them by ~1.
CODE_TOLERANCE = 1e-2
# rotation invariance ‖z_R − z‖ / (‖z‖ + ‖z_R‖): VN layers under random rotations of the drawn points, the
# steerable CNN under the 90° turns of the grid (exact for its filters; test_models / test_image_models: 1e-3)
INVARIANCE_TOLERANCE = 1e-3


@dataclass
class Check:
    """One line of the report: ``status`` PASS, FAIL or SKIP."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:4s} {self.name:44s} {self.seconds:6.1f} s  {self.detail}"


class _Stop(RuntimeError):
    """Raised by ``_InterruptInSecondEpoch``: a training cut short, as a lost machine would."""


def _interrupt_callback():
    import lightning as L

    class _InterruptInSecondEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # the epoch's last.ckpt is written by now
            if trainer.current_epoch == 1:  # epoch 1's checkpoint (or epoch 2's, saved at validation) is there
                raise _Stop("interrupted in epoch 2")

    return _InterruptInSecondEpoch()


def cells(kind: str, n: int, seed: int = 0):
    """``n`` analytic cells of a kind: punctate clouds (puncta along a line or in a ball, intensity) or
    ellipsoids (surface points and the SDF on the 32³ grid), two shapes alternating."""
    from scipy.spatial.transform import Rotation

    from cellrep_core.pointclouds.items import CloudItem
    from cellrep_core.pointclouds.sdf import query_grid

    out = []
    for i in range(n):
        rng = np.random.default_rng(seed * 1000 + i)
        if kind == "punctate":
            spots = (np.outer(np.linspace(-14, 14, 24), rng.normal(size=3) / np.sqrt(3)) if i % 2
                     else rng.normal(size=(24, 3)) * 7)
            # voxel centres, jittered as the sampler does (exact lattice ties would make the kNN graph depend on
            # rounding, and so on the orientation)
            xyz = np.rint(spots[rng.integers(0, 24, 3000)] + rng.normal(0, 1.0, (3000, 3))) + 0.3
            xyz = xyz + rng.normal(0, 1e-3, xyz.shape)
            pts = np.column_stack([xyz, rng.uniform(0.5, 1.0, 3000)]).astype(np.float32)
            out.append(CloudItem(f"p{seed}_{i:02d}", pts))
            continue
        axes = np.array([0.55, 0.35, 0.25]) * (1.0 if i % 2 else 0.7)
        rot = Rotation.random(random_state=seed * 1000 + i).as_matrix()
        d = rng.normal(size=(2048, 3))
        surface = (d / np.linalg.norm(d, axis=1, keepdims=True) * axes) @ rot.T
        k = np.linalg.norm((query_grid(32) @ rot) / axes, axis=1)
        out.append(CloudItem(f"e{seed}_{i:02d}", surface.astype(np.float32),
                             ((k - 1.0) * axes.min()).astype(np.float32)))
    return out


def _timed(name: str, fn) -> Check:
    t0 = time.perf_counter()
    try:
        status, detail = fn()
    except Exception as err:  # noqa: BLE001 - a check reports any failure and the next one runs
        status, detail = "FAIL", f"{type(err).__name__}: {err}"
    return Check(name, status, detail, time.perf_counter() - t0)


def train_checks(name: str, root: Path) -> tuple[list[Check], dict]:
    """Train with an interruption after epoch 1, resume, fine-tune; returns the checks and the trained versions."""
    from cellrep_core.models.config import get_config
    from cellrep_core.models.inference import device_accelerator
    from cellrep_core.models.train import train_model, train_precision

    cfg = get_config(name, max_epochs=3, patience=5)
    data = cells(cfg.kind, 16)
    out: dict = {"cfg": cfg, "items": data}

    def resume():
        try:
            train_model(cfg, data, root, callbacks=[_interrupt_callback()])
            return "FAIL", "the interruption callback did not stop training"
        except _Stop:
            pass
        tm = train_model(cfg, data, root)
        out["tm"] = tm
        at = tm.metrics.get("resumed_at_epoch")
        ok = at in (1, 2) and tm.metrics.get("epochs") == cfg.max_epochs
        return ("PASS" if ok else "FAIL"), (f"{tm.version} on {device_accelerator()} ({train_precision()}): resumed "
                                            f"at epoch {at}, {tm.metrics.get('epochs')} epochs")

    def finetune():
        tm = out["tm"]
        ft = train_model(get_config(name, max_epochs=1), cells(cfg.kind, 8, seed=1), root, parent=tm)
        ok = ft.version != tm.version and (ft.path / "model.pt").exists()
        return ("PASS" if ok else "FAIL"), f"{ft.version} from {tm.version}"

    checks = [_timed(f"{name}: train, interrupt, resume", resume)]
    checks.append(_timed(f"{name}: fine-tune", finetune) if "tm" in out
                  else Check(f"{name}: fine-tune", "SKIP", "no trained model"))
    return checks, out


def inference_checks(name: str, trained: dict, device: torch.device) -> list[Check]:
    """Embed on ``device`` (against the CPU), benchmark there, and measure invariance there."""
    import pandas as pd
    from scipy.spatial.distance import pdist

    from cellrep_core.metrics.benchmark import benchmark_model
    from cellrep_core.metrics.rotation import random_rotations, rotation_invariance_error, z90_rotations
    from cellrep_core.models.inference import embed_items, load_model
    from cellrep_core.models.zoo import model_inputs

    if "tm" not in trained:
        return [Check(f"{name}: inference", "SKIP", "no trained model")]
    tm, data, cfg = trained["tm"], trained["items"], trained["cfg"]
    model = load_model(tm.path, device)
    where = str(device)

    def codes():
        z = embed_items(model, data)
        if not np.isfinite(z).all():
            return "FAIL", f"non-finite codes on {where}"
        if device.type == "cpu":
            return "PASS", f"{z.shape} codes on the CPU (no other device to compare with)"
        zc = embed_items(load_model(tm.path), data)
        rel = float(np.linalg.norm(z - zc, axis=1).max() / pdist(zc.astype(np.float64)).mean())
        return ("PASS" if rel < CODE_TOLERANCE else "FAIL"), (f"max ‖z_{device.type} − z_cpu‖ / mean code distance "
                                                              f"{rel:.2e} (tolerance {CODE_TOLERANCE:g})")

    def bench():
        meta = pd.DataFrame({"cell_id": [it.cell_id for it in data], "shape_type": "polymorphic",
                             "label": [str(i % 2) for i in range(len(data))], "structure_name": "check"})
        df = benchmark_model(model, data, [it.cell_id for it in data[:6]], meta, None, tm.metrics,
                             n_rotations=2, n_pairs=8, emissions=False).set_index("metric")
        need = ["reconstruction_error", "evolution_energy", "rotation_invariance_error", "inference_seconds_per_cell"]
        bad = [m for m in need if not np.isfinite(float(df.loc[m, "value"] if df.loc[m, "value"] is not None
                                                        else np.nan))]
        return ("FAIL", f"NULL or non-finite: {', '.join(bad)}") if bad else (
            "PASS", f"{len(df)} metrics on {where}; reconstruction {df.loc['reconstruction_error', 'value']:.4g}, "
                    f"{df.loc['inference_seconds_per_cell', 'value'] * 1e3:.2f} ms/cell")

    def invariance():
        inputs = np.stack([model_inputs(it, cfg) for it in data[:8]])
        rots = random_rotations(4, seed=0) if cfg.family == "pointcloud" else z90_rotations()
        r = rotation_invariance_error(model, inputs, rots)
        ok = r["max"] < INVARIANCE_TOLERANCE
        what = "4 random rotations" if cfg.family == "pointcloud" else "90° turns about z"
        return ("PASS" if ok else "FAIL"), f"{what} on {where}: mean {r['mean']:.2e}, max {r['max']:.2e}"

    checks = [_timed(f"{name}: embed on {where}", codes), _timed(f"{name}: benchmark on {where}", bench)]
    if cfg.equivariant:
        checks.append(_timed(f"{name}: invariance on {where}", invariance))
    return checks


def paper_step(name: str) -> Check:
    """One training step (forward, backward, Adam) of a paper config at its batch size on CUDA, in the training
    precision: peak memory and time (after a warm-up step)."""
    from cellrep_core.models.config import get_config
    from cellrep_core.models.module import PointCloudAutoencoder
    from cellrep_core.models.train import release_accelerator_memory, train_precision

    if not torch.cuda.is_available():
        return Check(f"{name}: paper-size training step", "SKIP", "torch sees no CUDA device")

    def run():
        cfg = get_config(name)
        dev = torch.device("cuda")
        model = PointCloudAutoencoder(cfg.model_dump()).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(train_precision())
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        from cellrep_core.models.zoo import make_dataset

        data = cells(cfg.kind, cfg.batch_size)
        ds = make_dataset(cfg, data, train=True)
        batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
        batch = {k: v.to(dev) for k, v in batch.items()}

        def step() -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model.per_item_loss(batch).mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            torch.cuda.synchronize()
            return time.perf_counter() - t0

        step()
        torch.cuda.reset_peak_memory_stats()
        seconds = min(step() for _ in range(3))
        peak = torch.cuda.max_memory_allocated() / 2**30
        return "PASS", (f"batch {cfg.batch_size} × {cfg.n_points} points, {train_precision()}: {seconds:.3f} s/step "
                        f"({cfg.batch_size / seconds:.1f} samples/s), peak {peak:.2f} GiB on "
                        f"{torch.cuda.get_device_name()}")

    check = _timed(f"{name}: paper-size training step", run)
    release_accelerator_memory()
    return check


def run(configs: list[str], root: Path, out=None) -> list[Check]:
    """Every check, printed (to ``out``, default stdout) as it finishes; returns them."""
    out = out or sys.stdout
    from cellrep_core.models.inference import inference_device

    device = inference_device()
    cuda = torch.cuda.is_available()
    gpu = f"CUDA {torch.cuda.get_device_name()}" if cuda else "no CUDA device"
    print(f"gpu-check: torch {torch.__version__}, {gpu}; inference device {device}", file=out, flush=True)
    checks: list[Check] = []

    def emit(new: list[Check]) -> None:
        for c in new:
            print(c.line(), file=out, flush=True)
        checks.extend(new)

    for name in configs:
        trained_checks, trained = train_checks(name, root)
        emit(trained_checks)
        emit(inference_checks(name, trained, device))
        if not cuda:
            emit([Check(f"{name}: CUDA codes against CPU codes", "SKIP", "torch sees no CUDA device")])
    for name in PAPER_CONFIGS:
        emit([paper_step(name)])
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(FAMILIES), help="comma-separated model configs (default: all)")
    ap.add_argument("--root", type=Path, default=None, help="folder for the trained versions (default: a temp dir)")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellrep-gpucheck-") as tmp:
        checks = run(configs, args.root or Path(tmp))
    n = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_check passed={n['PASS']} failed={n['FAIL']} skipped={n['SKIP']} "
          f"seconds={time.perf_counter() - t0:.0f}", flush=True)
    return 1 if n["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
