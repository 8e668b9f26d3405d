"""Ingestion: every bad cell is quarantined with its reason and file, good cells go on, re-runs add nothing."""

import shutil

import numpy as np
import pandas as pd
import tifffile

from cellrep_core import pipeline
from cellrep_core.data.synthetic import generate_drug_plate
from cellrep_core.ingest import ingest_manifest
from cellrep_core.store.warehouse import Warehouse


def _plate(tmp_path):
    out = tmp_path / "plate"
    generate_drug_plate(out, "P1", seed=3, n_dmso=4, n_per_drug=2, drugs={"a": "shrink", "b": "none"}, n_bad=2)
    return out


def test_bad_inputs_quarantined_with_reasons(tmp_path):
    out = _plate(tmp_path)
    man = pd.read_csv(out / "manifest.csv")
    good = man.iloc[0]
    extra = []
    # duplicate cell id, path escaping the manifest folder, unknown channel, wrong dimensionality
    extra.append(good.to_dict())
    outside = tmp_path / "outside.tiff"
    shutil.copy(out / good.path, outside)
    extra.append({**good.to_dict(), "cell_id": "P1_escape", "path": "../outside.tiff"})
    extra.append({**good.to_dict(), "cell_id": "P1_chan", "channels": "nucleus;membrane"})
    tifffile.imwrite(out / "flat.tiff", np.ones((4, 4), np.uint8))
    extra.append({**good.to_dict(), "cell_id": "P1_flat", "path": "flat.tiff"})
    man = pd.concat([man, pd.DataFrame(extra)], ignore_index=True)
    man.to_csv(out / "manifest.csv", index=False)
    res = ingest_manifest(out / "manifest.csv", dataset="drug_plates", plate_id="P1")
    reasons = dict(zip(res.quarantine.cell_id + "|" + res.quarantine.reason, res.quarantine.detail, strict=True))
    assert len(res.cells) == 4 + 2 * 2
    keys = set(reasons)
    assert f"{good.cell_id}|duplicate_cell_id" in keys
    assert "P1_escape|path_outside_root" in keys
    assert "P1_chan|unknown_channel" in keys or "P1_chan|wrong_dimensionality" in keys
    assert "P1_flat|wrong_dimensionality" in keys
    assert any(k.endswith("|empty_segmentation") for k in keys) and any(k.endswith("|unreadable") for k in keys)
    assert all(d for d in reasons.values())
    # the escaping path is accepted when the data root covers it
    res2 = ingest_manifest(out / "manifest.csv", dataset="drug_plates", plate_id="P1", data_root=tmp_path)
    assert "P1_escape" in set(res2.cells.cell_id)


def test_ingest_twice_adds_nothing(tmp_path, home):
    out = _plate(tmp_path)
    wh = Warehouse()
    first = pipeline.ingest(out / "manifest.csv", wh, "drug_plates", plate_id="P1")
    second = pipeline.ingest(out / "manifest.csv", wh, "drug_plates", plate_id="P1")
    assert first == second
    n = wh.query("select (select count(*) from cells) c, (select count(*) from quarantine) q").iloc[0]
    assert (n.c, n.q) == (first["cells"], first["quarantined"]) == (8, 2)
