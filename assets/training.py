"""Training in several processes from an asset: ``torchrun`` started through Dagster Pipes.

Lightning's own DDP launcher re-runs the current process's command line, which inside a Dagster step is
Dagster itself; so the asset writes a training request and starts ``torchrun`` with
``PipesSubprocessClient``. Rank 0 reports the version and metrics back through Pipes (they land in the
asset's materialization and its log), the asset registers the version with its lineage as a one-process
training would.
"""

import json
import tempfile
from pathlib import Path

import dagster as dg

from assets.ddp_worker import MODULE
from cellrep_core import paths, pipeline
from cellrep_core.models.ddp import distributed_command, write_request
from cellrep_core.models.train import TrainedModel


def train_distributed(context: dg.AssetExecutionContext, wh, dataset: str, partition: str, cfg, processes: int,
                      parent: TrainedModel | None = None, force: bool = False, plate_id: str = "",
                      cell_ids: list[str] | None = None, structure_name: str = "") -> tuple[TrainedModel, dict]:
    """Train ``cfg`` on a partition's clouds in ``processes`` DDP processes; returns the registered model and
    the metadata rank 0 reported."""
    if processes < 2:
        raise ValueError(f"train_distributed needs at least 2 processes, got {processes}")
    lineage = {"dataset": dataset, "partition": partition, "plate_id": plate_id,
               **({"structure_name": structure_name} if structure_name else {})}
    with tempfile.TemporaryDirectory(prefix="cellrep-ddp-") as tmp:
        req = write_request(Path(tmp) / "request.json", cfg, paths.pointcloud_path(dataset, partition),
                            paths.models_dir(), cell_ids=cell_ids, parent_path=parent.path if parent else None,
                            lineage=lineage, force=force)
        command = distributed_command(req, processes, module=MODULE)
        invocation = dg.PipesSubprocessClient().run(command=command, context=context)
        reported = invocation.get_materialize_result().metadata or {}
        res = json.loads(req.with_suffix(".result.json").read_text())
    tm = TrainedModel(res["name"], res["version"], Path(res["path"]), cfg, res["metrics"], reused=res["reused"])
    pipeline.register_model(wh, tm, dataset, plate_id, structure_name)
    return tm, {k: (v.value if hasattr(v, "value") else v) for k, v in reported.items()}
