"""The model registry: model versions with their lineage in the ``models`` table, and the lookups every stage
uses (a data set's latest model, a version, a plate's base / fine-tuned pair per structure group)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cellrep_core.data.plates import PLATES_DATASET
from cellrep_core.models.config import ModelConfig
from cellrep_core.models.inference import read_lineage
from cellrep_core.models.train import TrainedModel
from cellrep_core.store.warehouse import Warehouse


def register_model(wh: Warehouse, tm: TrainedModel, dataset: str, plate_id: str = "", structure_name: str = "") -> None:
    """Record a model version with its lineage in the ``models`` table (``structure_name``: the structure group
    a plate's fine-tuned model was trained on)."""
    lin = read_lineage(tm.path)
    row = pd.DataFrame(
        [
            {
                "model_name": tm.name,
                "model_version": tm.version,
                "parent_version": lin.get("parent_version"),
                "dataset": dataset,
                "plate_id": plate_id,
                "path": str(tm.path),
                "config_json": tm.config.model_dump_json(),
                "data_hash": lin.get("data_hash"),
                "metrics_json": json.dumps(lin.get("metrics", {})),
                "structure_name": structure_name,
            }
        ]
    )
    wh.upsert("models", row, on=["model_version"])


def plate_structures(wh: Warehouse, plate_id: str) -> list[str]:
    """The structure groups of a plate that have cells and a fine-tuned model, in name order (``""``: a model from
    before structure groups)."""
    from cellrep_core.structures import plate_groups

    df = wh.query("SELECT DISTINCT coalesce(structure_name, '') s FROM models WHERE dataset = ? AND plate_id = ? "
                  "ORDER BY s", [PLATES_DATASET, plate_id])
    present = plate_groups(wh, plate_id)
    return [s for s in df.s if s == "" or s in present]


def plate_models(wh: Warehouse, plate_id: str, structure: str | None = None) -> tuple[TrainedModel, TrainedModel]:
    """The (base, fine-tuned) model pair of a plate (of one structure group): its latest fine-tuned version and
    that version's parent. Without ``structure`` the plate must have one structure group."""
    if structure is None:
        groups = plate_structures(wh, plate_id)
        if len(groups) > 1:
            raise LookupError(f"plate {plate_id} has models for several structures {groups}; name one")
        structure = groups[0] if groups else None
    if structure is None:
        ft = latest_model(wh, PLATES_DATASET, plate_id=plate_id)
    else:
        df = wh.query("SELECT * FROM models WHERE dataset = ? AND plate_id = ? AND coalesce(structure_name, '') = ? "
                      "ORDER BY trained_at DESC LIMIT 1", [PLATES_DATASET, plate_id, structure])
        if df.empty:
            raise LookupError(f"no fine-tuned model of structure {structure} on plate {plate_id}; materialize "
                              "plate_model first")
        ft = _trained_model(df.iloc[0])
    parent = read_lineage(ft.path).get("parent_version")
    if not parent:
        raise LookupError(f"model {ft.version} of plate {plate_id} has no parent version in {ft.path}/lineage.json")
    return model_by_version(wh, parent), ft


def latest_model(wh: Warehouse, dataset: str, plate_id: str = "", model_name: str | None = None) -> TrainedModel:
    """The most recently trained model version of a data set (and plate), optionally of one config name."""
    sql = "SELECT * FROM models WHERE dataset = ? AND plate_id = ?"
    params: list = [dataset, plate_id]
    if model_name:
        sql += " AND model_name = ?"
        params.append(model_name)
    df = wh.query(sql + " ORDER BY trained_at DESC LIMIT 1", params)
    if df.empty:
        what = f"{model_name or 'model'} for {dataset}" + (f" plate {plate_id}" if plate_id else "")
        raise LookupError(f"no trained {what}; materialize the model asset first")
    return _trained_model(df.iloc[0])


def model_by_version(wh: Warehouse, model_version: str) -> TrainedModel:
    """A registered model version."""
    df = wh.query("SELECT * FROM models WHERE model_version = ?", [model_version])
    if df.empty:
        raise LookupError(f"model version {model_version} is not in the models table")
    return _trained_model(df.iloc[0])


def _trained_model(r: pd.Series) -> TrainedModel:
    return TrainedModel(
        r.model_name, r.model_version, Path(r.path), ModelConfig.model_validate_json(r.config_json),
        json.loads(r.metrics_json),
    )
