"""The landing-folder sensor adds each new, complete plate folder as a ``plates`` partition; the automation
sensor then runs that plate's chain and the cross-plate SQL models (declarative automation).

A plate folder ``$CELLREP_HOME/landing/plates/<plate_id>/`` is complete when its ``manifest.csv`` exists
and no ``manifest.csv.tmp`` is beside it: write the images first and the manifest last, by writing
``manifest.csv.tmp`` and renaming it (``cellrep synth-plate`` does this). A plate already known is never
added twice; a
folder whose manifest cannot be read is reported in the tick and in ``quarantine`` (stage ``landing``)
and not tried again until its manifest changes.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.plates import plates_partitions
from cellrep_core import paths
from cellrep_core.data.cells import read_manifest
from cellrep_core.store.warehouse import Warehouse

PLATE_ASSETS = ["plate_cells", "plate_pointclouds", "plate_model", "plate_embeddings", "plate_qvalues"]


def plate_folder_complete(folder: Path) -> bool:
    """The manifest is there and not still being written."""
    return (folder / "manifest.csv").exists() and not (folder / "manifest.csv.tmp").exists()


def _quarantine_plate(plate_id: str, manifest: Path, detail: str) -> None:
    row = pd.DataFrame(
        [
            {
                "cell_id": plate_id,
                "dataset": "drug_plates",
                "plate_id": plate_id,
                "stage": "landing",
                "reason": "bad_manifest",
                "detail": detail,
                "source_path": str(manifest),
            }
        ]
    )
    Warehouse().replace("quarantine", row, {"plate_id": plate_id, "stage": "landing"})


def scan_landing(known: set[str], rejected: dict[str, float]) -> tuple[list[str], dict[str, str], dict[str, float]]:
    """New complete plates, newly rejected plates (id -> why) and the updated rejected map (id -> mtime)."""
    landing = paths.landing_plates_dir()
    new, bad = [], {}
    rejected = dict(rejected)
    if not landing.exists():
        return new, bad, rejected
    for folder in sorted(p for p in landing.iterdir() if p.is_dir()):
        pid = folder.name
        if pid in known or not plate_folder_complete(folder):
            continue
        manifest = folder / "manifest.csv"
        mtime = manifest.stat().st_mtime
        if rejected.get(pid) == mtime:
            continue  # same bad manifest as last time: reported once, not retried
        try:
            df = read_manifest(manifest)
            if df.empty:
                raise ValueError(f"manifest {manifest} has no rows")
        except (ValueError, OSError) as err:
            bad[pid] = f"{err}; fix the manifest (the plate is picked up again when it changes)"
            rejected[pid] = mtime
            continue
        rejected.pop(pid, None)
        new.append(pid)
    return new, bad, rejected


@dg.sensor(
    name="landing_plates_sensor",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds each complete plate folder in the landing area as a plates partition; the automation "
                "sensor materializes it.",
)
def landing_plates_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(plates_partitions.name))
    new, bad, rejected = scan_landing(known, cursor.get("rejected", {}))
    for pid, why in bad.items():
        context.log.warning(f"plate {pid} rejected: {why}")
        _quarantine_plate(pid, paths.landing_plates_dir() / pid / "manifest.csv", why)
    new_cursor = json.dumps({"rejected": rejected}, sort_keys=True)
    if not new and not bad:
        return dg.SkipReason(f"no new complete plate folder in {paths.landing_plates_dir()}")
    if new:
        context.log.info(f"new plates: {', '.join(new)}")
    return dg.SensorResult(
        dynamic_partitions_requests=[plates_partitions.build_add_request(new)] if new else [],
        cursor=new_cursor,
    )


# Declarative automation of the plate chain and the SQL models (conditions on the assets). Dagster's
# default automation sensor starts stopped; this one runs as soon as the daemon does.
plates_automation_sensor = dg.AutomationConditionSensorDefinition(
    "plates_automation_sensor",
    target=dg.AssetSelection.groups("plates", "sql_models", "datasets"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Materializes each new plate partition (cells → point clouds → fine-tuned model → embeddings "
                "→ q-values) and then the cross-plate SQL models; each new data set partition (cells → point "
                "clouds → base model → embeddings).",
)
