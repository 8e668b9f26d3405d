"""The data-set landing sensor: a manifest dropped as ``$CELLREP_HOME/landing/datasets/<name>/manifest.csv``
registers data set ``<name>`` (its scale derived from its cells) and adds its ``datasets`` partition; a changed
manifest re-runs its cells → embeddings chain."""

import json

import dagster as dg

from assets.datasets import datasets_partitions
from assets.plate_landing import plate_folder_complete
from cellrep_core import datasets, paths
from cellrep_core.store.warehouse import Warehouse


def add_partition(inst: dg.DagsterInstance, name: str) -> bool:
    """Add the data set's partition to the instance; False when it was there already."""
    if inst.has_dynamic_partition(datasets_partitions.name, name):
        return False
    inst.add_dynamic_partitions(datasets_partitions.name, [name])
    return True


def scan_landing_datasets(known: dict[str, float], rejected: dict[str, float]) -> tuple[dict, dict, dict]:
    """Register each complete ``landing/datasets/<name>/`` manifest that is new or changed since it was seen.

    Returns ``(registered name -> mtime, rejected name -> why, rejected name -> mtime)``; a bad manifest is
    reported once and tried again when it changes."""
    root = paths.landing_datasets_dir()
    done, bad, rejected = {}, {}, dict(rejected)
    if not root.exists():
        return done, bad, rejected
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name
        if not plate_folder_complete(folder):
            continue
        mtime = (folder / "manifest.csv").stat().st_mtime
        if known.get(name) == mtime or rejected.get(name) == mtime:
            continue
        try:
            spec = datasets.build_spec(name, folder / "manifest.csv")
        except (ValueError, OSError) as err:
            bad[name] = f"{err}; fix the manifest (it is read again when it changes)"
            rejected[name] = mtime
            continue
        datasets.register(Warehouse(), spec)
        rejected.pop(name, None)
        done[name] = mtime
    return done, bad, rejected


@dg.sensor(
    name="landing_datasets_sensor",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each manifest dropped as landing/datasets/<name>/manifest.csv as data set <name> "
                "(scale derived from its cells) and adds its datasets partition; a changed manifest re-runs its "
                "cells → embeddings chain.",
)
def landing_datasets_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen = cursor.get("seen", {})
    done, bad, rejected = scan_landing_datasets(seen, cursor.get("rejected", {}))
    for name, why in bad.items():
        context.log.warning(f"data set {name} rejected: {why}")
    known = set(context.instance.get_dynamic_partitions(datasets_partitions.name))
    new = [n for n in done if n not in known]
    changed = [n for n in done if n in known]
    new_cursor = json.dumps({"seen": {**seen, **done}, "rejected": rejected}, sort_keys=True)
    if not done and not bad:
        return dg.SkipReason("no new or changed manifest under landing/datasets/")
    chain = [dg.AssetKey(a) for a in ("dataset_cells", "dataset_pointclouds", "dataset_model", "dataset_embeddings")]
    return dg.SensorResult(
        dynamic_partitions_requests=[datasets_partitions.build_add_request(new)] if new else [],
        run_requests=[dg.RunRequest(partition_key=n, asset_selection=chain, run_key=f"{n}:{done[n]}")
                      for n in changed],
        cursor=new_cursor,
    )
