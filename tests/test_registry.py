"""The model registry (``models`` table): a version is recorded once with its lineage, the latest version of a
data set is the one trained last, a plate's pair is its fine-tuned model and that model's parent."""

import json
import time

import pytest

from cellrep_core.data.plates import PLATES_DATASET
from cellrep_core.models.config import get_config
from cellrep_core.models.train import TrainedModel
from cellrep_core.registry import latest_model, model_by_version, plate_models, register_model
from cellrep_core.store.warehouse import Warehouse


def _version(root, name: str, version: str, parent: str | None = None) -> TrainedModel:
    cfg = get_config("sdf_tiny")
    out = root / name / version
    out.mkdir(parents=True)
    (out / "config.json").write_text(cfg.model_dump_json())
    (out / "lineage.json").write_text(json.dumps({"parent_version": parent, "data_hash": "h", "metrics": {"e": 1}}))
    return TrainedModel(name, version, out, cfg, {"e": 1})


def test_register_latest_and_plate_pair(home, tmp_path):
    wh = Warehouse()
    base = _version(tmp_path, "sdf_tiny", "v-base")
    register_model(wh, base, "ref")
    time.sleep(0.01)
    newer = _version(tmp_path, "sdf_tiny", "v-newer")
    register_model(wh, newer, "ref")
    register_model(wh, newer, "ref")  # recording a version again replaces its row
    assert wh.query("SELECT count(*) n FROM models WHERE dataset = 'ref'").n.iloc[0] == 2
    assert latest_model(wh, "ref").version == "v-newer"
    assert latest_model(wh, "ref", model_name="sdf_tiny").metrics == {"e": 1}
    tuned = _version(tmp_path, "sdf_tiny_p1", "v-tuned", parent="v-base")
    register_model(wh, tuned, PLATES_DATASET, plate_id="p1")
    parent, ft = plate_models(wh, "p1")
    assert (parent.version, ft.version) == ("v-base", "v-tuned") and parent.path == base.path
    with pytest.raises(LookupError, match="model version nope is not in the models table"):
        model_by_version(wh, "nope")
    with pytest.raises(LookupError, match="no trained model for ref plate p9; materialize the model asset first"):
        latest_model(wh, "ref", plate_id="p9")
