"""Screen-level drug activity: each drug x concentration across replicate plates, BH over the whole screen.

Aggregation (what is defended here):

1. **Normalisation per plate and well position.** Every plate's features are z-scored within the plate, which
   removes a plate's batch effect (a global shift or scale of the features) before plates are pooled; where a
   plate has DMSO in edge wells and in interior wells (at least 2 cells each), edge-well and interior cells are
   z-scored separately (``position_classes``). With the permutation null the z-score is robust (median, MAD)
   over every cell of that plate and position, a label-free transform that keeps the permutation p-value exact
   (``cellrep_core.profiling.mapping`` explains why z-scoring to DMSO alone is anti-conservative, and by how
   much); with ``null="copairs"`` it is the DMSO cells, as in the paper. Edge wells differ systematically
   (evaporation, temperature); a treatment whose wells happen to be interior on every plate otherwise
   resembles its replicates more than the edge/interior mixture of DMSO, and a null drug is called.
2. **Pooled mAP with replicate positives** (``method = "replicate_positives"``), for feature spaces shared by
   the screen's plates (the base model's codes, any other model that embedded every plate, hand-crafted
   features). A treatment's cells are queries; their positives are the cells of the *same treatment on the
   other plates* and their negatives the DMSO cells of every plate. On a plate a treatment sits in one well,
   so within-plate positives would reward anything the well itself adds (an edge well, a local artefact);
   a treatment scores only where its cells resemble its replicates on other plates, in other wells, more
   than they resemble DMSO. This is the replicate-retrieval question of profiling work (copairs'
   ``pos_diffby``). A treatment present on one plate only falls back to within-plate positives
   (``method = "within_plate"``).
3. **Per-plate models** (a plate's own fine-tuned model: its codes live in a space of their own, so cells of
   two plates cannot be compared): per-plate p-values (the plate tables) are combined by Fisher's method
   (``method = "fisher"``; independent plates, each p-value valid under the null), mAP is their mean.
4. **Benjamini-Hochberg over every treatment of the screen** (all drugs x concentrations, per feature set).

p-values are exact label-permutation p-values (``cellrep_core.profiling.permutation``: copairs' null of random
rank lists is kept as ``null="copairs"`` and is far too conservative for a mean over a treatment's queries);
labels are exchanged within the same plate x well-position strata as the normalisation, so a treatment's cells
are only ever exchanged with DMSO cells they could have been under the null; the
permutations stop once 50 reached the observed mAP, or once p < threshold / (10 m) for m treatments (then q is
below a tenth of the threshold whatever the other treatments), else at ``null_size`` (default REFERENCE.md's
100,000): every q near 0.05 is resolved.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
from copairs.map import average_precision, mean_average_precision
from scipy import stats

from cellrep_core.profiling.mapping import (
    benjamini_hochberg,
    normalize_blocks,
    position_classes,
    robust_normalize_blocks,
    treatment_keys,
)
from cellrep_core.profiling.permutation import map_permutation_test

SCREEN_NULL_SIZE = 100_000
SCREEN_COLUMNS = ["drug", "concentration", "method", "n_plates", "n_cells", "mean_average_precision", "p_value",
                  "q_value", "is_hit"]


def _codes(values: np.ndarray) -> np.ndarray:
    _, inv = np.unique(values.astype(str), return_inverse=True)
    return inv.astype(np.int64)


def _pooled_map(treat: np.ndarray, plates: np.ndarray, x: np.ndarray, control: str, cross_plate: bool,
                null_size: int, seed: int, null: str = "permutation", resolve_below: float = 0.0,
                blocks: np.ndarray | None = None, normalize: bool = True) -> pd.DataFrame:
    """mAP per treatment against the pooled controls (positives on other plates when cross_plate), with the
    permutation p-value (``null="permutation"``) or copairs' (``null="copairs"``)."""
    is_ctrl = treat == control
    names = list(pd.unique(treat[~is_ctrl]))
    blocks = plates if blocks is None else blocks
    if null == "permutation":
        if normalize:
            x = robust_normalize_blocks(x, blocks)
        from cellrep_core.progress import Progress

        rows = []
        with Progress(f"screen mAP permutation tests ({len(set(plates))} plates)", len(names),
                      unit="treatments") as prog:
            for k, t in enumerate(names):
                sel = is_ctrl | (treat == t)
                m, p, _ = map_permutation_test(x[sel], treat[sel] == t, plates[sel], cross_plate, null_size,
                                               seed + k, resolve_below, blocks=blocks[sel])
                rows.append({"treatment": t, "mean_average_precision": m, "p_value": p})
                prog.update()
        return pd.DataFrame(rows, columns=["treatment", "mean_average_precision", "p_value"])
    if null != "copairs":
        raise ValueError(f"null must be 'permutation' or 'copairs', got {null!r}")
    if normalize:
        x = normalize_blocks(x, blocks, is_ctrl)
    code_of = {t: i + 1 for i, t in enumerate(names)}
    codes = np.array([0 if c else code_of[t] for t, c in zip(treat, is_ctrl, strict=True)], dtype=np.int64)
    ref = np.where(is_ctrl, np.arange(len(treat)), -1).astype(np.int64)
    cmeta = pd.DataFrame({"treat": codes, "ref_index": ref, "plate": _codes(plates)})
    ap = average_precision(
        cmeta, x, pos_sameby=["treat", "ref_index"], pos_diffby=["plate"] if cross_plate else [],
        neg_sameby=[], neg_diffby=["treat", "ref_index"], distance="cosine", progress_bar=False,
    )
    with tempfile.TemporaryDirectory(prefix="copairs_null_") as cache_dir:
        maps = mean_average_precision(ap, sameby=["treat"], null_size=null_size, threshold=0.05, seed=seed,
                                      progress_bar=False, cache_dir=cache_dir)
    maps = maps.set_index("treat").reindex([code_of[t] for t in names])
    return pd.DataFrame({"treatment": names, "mean_average_precision": maps["mean_average_precision"].to_numpy(float),
                         "p_value": maps["p_value"].to_numpy(float)})


def screen_map_qvalues(meta: pd.DataFrame, feats: np.ndarray, control: str = "DMSO",
                       null_size: int = SCREEN_NULL_SIZE, threshold: float = 0.05, seed: int = 0,
                       normalize: bool = True, null: str = "permutation", by_position: bool = True) -> pd.DataFrame:
    """mAP, p and BH q of every drug x concentration of one screen from cells of all its plates.

    ``meta``: one row per cell with ``cell_id``, ``plate_id``, ``drug`` and optionally ``concentration``;
    ``feats``: the cells' features in one space shared by every plate. With ``by_position`` and a ``well``
    column, normalisation and permutations are per plate x well position (``position_classes``).
    """
    for col in ("cell_id", "plate_id", "drug"):
        if col not in meta.columns:
            raise ValueError(f"meta lacks column {col!r}; needs cell_id, plate_id, drug (and concentration)")
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(meta) != len(x):
        raise ValueError(f"feats must be [cells, features] aligned with meta ({len(meta)} rows), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("feats contain NaN or inf")
    meta = meta.reset_index(drop=True)
    plates_all = meta["plate_id"].to_numpy(dtype=object)
    is_ctrl_all = meta["drug"].to_numpy(dtype=object) == control
    for p in pd.unique(plates_all):
        n = int((is_ctrl_all & (plates_all == p)).sum())
        if n < 2:
            raise ValueError(f"plate {p!r}: need at least 2 {control!r} cells, got {n}")
    strata = position_classes(meta, control) if by_position else np.full(len(meta), "plate", dtype=object)
    treat, conc_of = treatment_keys(meta, control)
    plates = meta["plate_id"].to_numpy(dtype=object)
    blocks = np.array([f"{p}|{s}" for p, s in zip(plates, strata, strict=True)], dtype=object)
    is_ctrl = treat == control
    n_plates = {t: len(set(plates[treat == t])) for t in pd.unique(treat[~is_ctrl])}
    n_cells = {t: int((treat == t).sum()) for t in n_plates}
    too_few = [t for t, n in n_cells.items() if n < 2]
    if too_few:
        raise ValueError(f"treatments {too_few[:5]} have fewer than 2 cells; mAP needs at least 2")
    frames = []
    for cross in (True, False):
        chosen = {t for t, n in n_plates.items() if (n >= 2) == cross}
        if not chosen:
            continue
        sel = is_ctrl | np.isin(treat, list(chosen))
        res = _pooled_map(treat[sel], plates[sel], x[sel], control, cross, null_size, seed, null,
                          resolve_below=threshold / (10 * len(n_plates)), blocks=blocks[sel], normalize=normalize)
        frames.append(res.assign(method="replicate_positives" if cross else "within_plate"))
    if not frames:
        return pd.DataFrame(columns=SCREEN_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["drug"] = out["treatment"].map(lambda t: conc_of[t][0])
    out["concentration"] = out["treatment"].map(lambda t: conc_of[t][1]).astype(float)
    out["n_plates"] = out["treatment"].map(n_plates).astype(int)
    out["n_cells"] = out["treatment"].map(n_cells).astype(int)
    out["q_value"] = benjamini_hochberg(out["p_value"].to_numpy(float))
    out["is_hit"] = out["q_value"] < threshold
    return out[SCREEN_COLUMNS].sort_values(["drug", "concentration"], ignore_index=True)


def fisher_combine(plate_rows: pd.DataFrame, threshold: float = 0.05) -> pd.DataFrame:
    """Combine per-plate results (``drug``, ``concentration``, ``plate_id``, ``n_cells``, ``mean_average_precision``,
    ``p_value``) of one screen by Fisher's method, then BH over the screen's treatments."""
    if plate_rows.empty:
        return pd.DataFrame(columns=SCREEN_COLUMNS)
    df = plate_rows.assign(concentration=pd.to_numeric(plate_rows["concentration"], errors="coerce"))
    rows = []
    for (drug, conc), g in df.groupby(["drug", "concentration"], dropna=False, sort=True):
        p = np.clip(g["p_value"].to_numpy(float), 1e-300, 1.0)
        rows.append({"drug": drug, "concentration": conc, "method": "fisher",
                     "n_plates": int(g["plate_id"].nunique()), "n_cells": int(g["n_cells"].sum()),
                     "mean_average_precision": float(g["mean_average_precision"].mean()),
                     "p_value": float(stats.combine_pvalues(p, method="fisher").pvalue)})
    out = pd.DataFrame(rows)
    out["q_value"] = benjamini_hochberg(out["p_value"].to_numpy(float))
    out["is_hit"] = out["q_value"] < threshold
    return out[SCREEN_COLUMNS]
