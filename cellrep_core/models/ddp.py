"""Multi-process (DDP) training through ``torchrun``: ``python -m torch.distributed.run --nproc-per-node N -m
cellrep_core.models.ddp --request REQUEST.json``.

Every process reads the same request (config, clouds, models folder, parent, lineage), trains its shard of
each batch with Lightning's DDP strategy (gloo on CPU, NCCL on CUDA; batch norm synchronised; batch size per
process = the config's batch size / processes), and rank 0 writes the version folder exactly as a one-process
training does, and the result beside the request (``<request>.result.json``). Lightning's own launcher would
re-run the command line of the parent process (inside a Dagster step: Dagster itself), so the processes come
from torchrun; the model assets start it through Dagster Pipes with ``assets.ddp_worker`` as the entry
module, which adds the Pipes report to ``run_and_save``.

Equivalence with one process: training inputs are drawn per (cell, epoch) (``per_item_draws``) and the batch
order is one permutation per epoch sharded across processes, so the processes together see what one process
sees; ``tests/test_ddp.py`` checks the weights agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def distributed_command(request: Path, processes: int, module: str = "cellrep_core.models.ddp") -> list[str]:
    """The torchrun command line that trains ``request`` on ``processes`` local processes; ``module`` is the entry
    each process runs (its ``main`` takes ``--request``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(processes)}",
            "-m", module, "--request", str(request)]


def write_request(path: Path, cfg, items_path: Path, models_root: Path, cell_ids: list[str] | None = None,
                  parent_path: Path | None = None, lineage: dict | None = None, force: bool = False) -> Path:
    """Write what the processes need to train (config, clouds, where to write, parent, lineage)."""
    path = Path(path)
    path.write_text(json.dumps({
        "config": json.loads(cfg.model_dump_json()), "items": str(items_path), "models_root": str(models_root),
        "cell_ids": cell_ids, "parent_path": str(parent_path) if parent_path else None, "lineage": lineage or {},
        "force": force}, indent=2))
    return path


def _parent(path: str | None):
    from cellrep_core.models.config import ModelConfig
    from cellrep_core.models.train import TrainedModel

    if not path:
        return None
    p = Path(path)
    lin = json.loads((p / "lineage.json").read_text())
    cfg = ModelConfig.model_validate_json((p / "config.json").read_text())
    return TrainedModel(cfg.name, lin["version"], p, cfg, lin.get("metrics", {}))


def run(request: Path) -> dict | None:
    """Train as one process of a torchrun group; rank 0 returns the result (version, path, metrics)."""
    from cellrep_core.models.config import ModelConfig
    from cellrep_core.models.train import train_model
    from cellrep_core.pointclouds.build import read_pointclouds

    req = json.loads(Path(request).read_text())
    cfg = ModelConfig.model_validate(req["config"])
    items = read_pointclouds(Path(req["items"]), req.get("cell_ids"))
    tm = train_model(cfg, items, Path(req["models_root"]), parent=_parent(req.get("parent_path")),
                     lineage=req.get("lineage"), force=bool(req.get("force")), distributed=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return {"name": tm.name, "version": tm.version, "path": str(tm.path), "reused": tm.reused,
            "metrics": tm.metrics}


def run_and_save(request: Path) -> dict | None:
    """``run`` and, on rank 0, write its result to ``<request>.result.json``; returns it (None on other ranks)."""
    res = run(request)
    if res is not None:
        Path(request).with_suffix(".result.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one process of a DDP training (start with torchrun)")
    ap.add_argument("--request", type=Path, required=True)
    run_and_save(ap.parse_args(argv).request)
    return 0


class _AllReduceBatchNorm:
    """Batch norm whose training statistics are the whole distributed batch's: sums and sums of squares are
    all-reduced (with gradients) across the process group. torch's ``SyncBatchNorm`` runs on CUDA only; this is
    what DDP on CPU (gloo) uses instead, so that the processes train the model one process would."""

    def forward(self, x):  # noqa: D401 - a module's forward
        import torch
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
                self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def all_reduce_batchnorm(module):
    """Replace every BatchNorm1d/2d/3d of ``module`` (in place) by an all-reducing one with the same weights and
    statistics; state-dict keys are unchanged, so the saved weights load into the plain model."""
    from torch import nn

    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, _AllReduceBatchNorm):
            cls = type(f"AllReduce{type(child).__name__}", (_AllReduceBatchNorm, type(child)), {})
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            all_reduce_batchnorm(child)
    return module


if __name__ == "__main__":
    raise SystemExit(main())
