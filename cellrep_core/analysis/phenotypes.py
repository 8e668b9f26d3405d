"""Phenotype classifiers of a synthetic screen (seed 004) over the stores: the screen's codes and hand-crafted
features, labelled by the planted effect of each cell (``cell_truth``)."""

from __future__ import annotations

import pandas as pd

from cellrep_core.analysis.explain import load_scope
from cellrep_core.profiling.phenotypes import (
    ClassifierReport,
    phenotype_enrichment,
    screen_labels,
    validate_classifier,
)


def screen_phenotypes(wh, fs, screen_id: str, seed: int = 0, c_grid=(0.1, 1.0), l1_grid=(0.2, 0.8),
                      max_folds: int = 6) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, ClassifierReport]]:
    """Phenotype classifiers of a synthetic screen (labels: ``screen_labels``; groups: plate x well, held out
    ``max_folds`` at a time) on the base model's profiling space and on the hand-crafted features, and the
    enrichment of every treatment's held-out phenotype probabilities against DMSO.

    Returns (classifier summary rows, enrichment rows, reports by feature set)."""
    data = load_scope(wh, fs, screen_id=screen_id)
    plates = sorted(set(data.meta.plate_id))
    truth = wh.query(f"SELECT cell_id, effect, strength, debris FROM cell_truth WHERE plate_id IN "
                     f"({', '.join('?' * len(plates))})", plates)
    if truth.empty:
        raise LookupError(f"screen {screen_id} has no cell truth (cell_truth.csv): phenotype labels come from it")
    meta = data.meta.merge(truth, on="cell_id", how="left")
    keep = ~meta.debris.fillna(False).astype(bool).to_numpy() & meta.effect.notna().to_numpy()
    meta = meta[keep].reset_index(drop=True)
    hc = load_scope(wh, fs, screen_id=screen_id, feature_set="handcrafted")
    hcx = pd.DataFrame(hc.features, index=hc.meta.cell_id).loc[meta.cell_id].to_numpy()
    spaces = {"embedding": data.features[keep], "handcrafted": hcx}
    y = screen_labels(meta)
    groups = meta.plate_id.astype(str).to_numpy() + "|" + meta.well.astype(str).to_numpy()
    summary, enrich, reports = [], [], {}
    for fset, x in spaces.items():
        rep = validate_classifier(x, y, groups, seed, c_grid, l1_grid, max_folds)
        reports[fset] = rep
        summary.append({"screen_id": screen_id, "feature_set": fset, "n_cells": len(y), "labels": ",".join(rep.classes),
                        "per_class_f1": str({k: round(v, 3) for k, v in rep.per_class_f1.items()}),
                        **{k: v for k, v in rep.summary().items() if not k.startswith("f1_")}})
        proba = rep.heldout[[f"proba_{c}" for c in rep.classes]].to_numpy()
        e = phenotype_enrichment(meta[["drug", "concentration"]], proba, rep.classes)
        enrich.append(e.assign(screen_id=screen_id, feature_set=fset))
    return pd.DataFrame(summary), pd.concat(enrich, ignore_index=True), reports
