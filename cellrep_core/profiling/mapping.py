"""Per-plate drug activity: mAP of each drug against its plate's DMSO controls, with BH q-values.

Follows Chandrasekaran et al. / copairs as used by Vasan et al. 2025: per plate, features are z-scored
to the plate's controls, every cell of a drug is a query whose positives are the other cells of the same
drug and whose negatives are the plate's control cells only (never other drugs' cells); the drug's mAP
gets an exact label-permutation p-value (``cellrep_core.profiling.permutation``; copairs' null of random rank
lists, which is conservative for a mean over queries, stays available as ``null="copairs"`` and is the
reference mAP in the tests), and Benjamini-Hochberg runs over the drugs of the plate. Where a plate has DMSO
in edge and interior wells, cells are normalised and exchanged within their own well position.

With the permutation null, features get a robust z-score over *all* cells of the plate (median, MAD; per well
position), not a z-score to the controls: a transform fitted on the controls depends on the labels (it centres
the controls exactly, so a drug's cells keep their own sampling offset as a shared direction, which no permuted
group has). Measured on pure-noise plates (32 controls, 6 null drugs of 10 cells, 32 features, 60 seeds):
22.5 % of null p-values below 0.05 with the control z-score, 5.8 % with the plate-wide robust z-score
(``tests/test_profiling.py`` asserts the difference). ``null="copairs"`` keeps the paper's control
normalisation.

copairs notes (0.5.5):

* Negatives restricted to controls with copairs' reference-index trick: a column that is a unique
  value for every control cell and -1 for every drug cell. ``pos_sameby=[drug, ref]`` then pairs only
  cells of the same drug (controls never pair with each other: unique ref), and
  ``neg_diffby=[drug, ref]`` pairs only cells that differ in both, i.e. drug x control (two drug cells
  share ref -1, two control cells share the drug). Control rows get no positives, so copairs drops them
  (NaN AP) before the mAP step.
* copairs caches null distributions under ``~/.copairs`` keyed by (seed, null_size, n_pos, n_total)
  but not by the per-configuration sub-seed it actually used, so cached p-values depend on the cache's
  history. Each plate therefore gets a fresh temporary cache directory: results depend only on the
  data and ``seed``, and nothing is written to the home directory.
* copairs' mAP null is the element-wise mean of its queries' AP nulls; queries with the same
  (n_pos, n_total) share one null row, so for a drug (all its cells have the same configuration) the
  mAP null is a single query's AP null. That is conservative, and the smallest p-value is
  ``1 / (null_size + 1)``.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
from copairs.map import average_precision, mean_average_precision

from cellrep_core.profiling.permutation import map_permutation_test

RESULT_COLUMNS = ("plate_id", "drug", "concentration", "n_cells", "mean_average_precision", "p_value", "q_value",
                  "is_hit")
_META_COLUMNS = ("plate_id", "drug", "cell_id")


def normalize_to_controls(feats: np.ndarray, is_control: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Z-score every feature with the controls' mean and std (std floored at eps)."""
    x = np.asarray(feats, dtype=np.float64)
    ctrl = np.asarray(is_control, dtype=bool)
    if x.ndim != 2:
        raise ValueError(f"feats must be 2D (cells, features), got shape {x.shape}")
    if ctrl.shape != (x.shape[0],):
        raise ValueError(f"is_control must have one entry per row of feats ({x.shape[0]}), got {ctrl.shape}")
    if int(ctrl.sum()) < 2:
        raise ValueError(f"need at least 2 control cells to normalise, got {int(ctrl.sum())}")
    mu = x[ctrl].mean(axis=0)
    sd = np.maximum(x[ctrl].std(axis=0), eps)
    return (x - mu) / sd


def normalize_blocks(feats: np.ndarray, blocks: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Z-score the rows of every block (plate, or plate x well position) to that block's ``reference`` rows."""
    x = np.asarray(feats, dtype=np.float64).copy()
    blocks = np.asarray(blocks).astype(str)
    ref = np.ones(len(x), dtype=bool) if reference is None else np.asarray(reference, dtype=bool)
    for b in pd.unique(blocks):
        sel = blocks == b
        x[sel] = normalize_to_controls(x[sel], ref[sel])
    return x


def robust_normalize_blocks(feats: np.ndarray, blocks: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Robust z-score of every block (plate, or plate x well position) over all of its cells: median and
    1.4826 x MAD per feature (the standard deviation where the MAD is 0, e.g. a piece count that most cells
    share). It does not depend on which cells are treated, so within-plate label permutations stay exact, and
    the median ignores the minority of active treatments."""
    x = np.asarray(feats, dtype=np.float64).copy()
    blocks = np.asarray(blocks).astype(str)
    for b in pd.unique(blocks):
        sel = blocks == b
        xb = x[sel]
        med = np.median(xb, axis=0)
        scale = 1.4826 * np.median(np.abs(xb - med), axis=0)
        sd = xb.std(axis=0)
        scale = np.where(scale > eps, scale, np.maximum(sd, eps))
        x[sel] = (xb - med) / scale
    return x


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up, monotone in p, capped at 1)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p must be 1D, got shape {p.shape}")
    if p.size == 0:
        return p.copy()
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("p-values must be finite and within [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def _well_row_col(well: str) -> tuple[int, int] | None:
    """('B', 3) -> (1, 3) for a well name such as 'B03' or 'AA12'; None when it is not one."""
    w = str(well).strip().upper()
    letters = w.rstrip("0123456789")
    digits = w[len(letters):]
    if not letters or not digits or not letters.isalpha():
        return None
    row = 0
    for ch in letters:
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return row, int(digits)


# (rows, columns) of the standard plate formats; a plate's format is the smallest that holds all of its wells
PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))


def position_classes(meta: pd.DataFrame, control: str = "DMSO", min_controls: int = 2) -> np.ndarray:
    """Well position class of each cell: ``edge`` (first or last row or column of the plate's format: 96, 384 or
    1536 wells, the smallest that holds the plate's wells) or ``interior``, per plate; ``plate`` for every cell
    of a plate whose wells cannot be parsed or fit no format, or that has fewer than ``min_controls`` control
    cells in either class (the plate is then one stratum)."""
    out = np.full(len(meta), "plate", dtype=object)
    if "well" not in meta.columns:
        return out
    plates = meta["plate_id"].to_numpy(dtype=object)
    wells = meta["well"].to_numpy(dtype=object)
    ctrl = meta["drug"].to_numpy(dtype=object) == control
    for p in pd.unique(plates):
        idx = np.flatnonzero(plates == p)
        rc = [_well_row_col(w) for w in wells[idx]]
        if any(v is None for v in rc):
            continue
        rows, cols = np.array([v[0] for v in rc]), np.array([v[1] for v in rc])
        fmt = next(((r, c) for r, c in PLATE_FORMATS if rows.max() <= r and cols.max() <= c), None)
        if fmt is None or cols.min() < 1:
            continue
        edge = np.isin(rows, [1, fmt[0]]) | np.isin(cols, [1, fmt[1]])
        if int((edge & ctrl[idx]).sum()) < min_controls or int((~edge & ctrl[idx]).sum()) < min_controls:
            continue
        out[idx] = np.where(edge, "edge", "interior")
    return out


def _empty_result() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plate_id": pd.Series([], dtype=object),
            "drug": pd.Series([], dtype=object),
            "concentration": pd.Series([], dtype=np.float64),
            "n_cells": pd.Series([], dtype=np.int64),
            "mean_average_precision": pd.Series([], dtype=np.float64),
            "p_value": pd.Series([], dtype=np.float64),
            "q_value": pd.Series([], dtype=np.float64),
            "is_hit": pd.Series([], dtype=bool),
        }
    )


def _cells_per_treatment(plate_id: object, drugs: np.ndarray, drug_names, control: str) -> dict:
    """Cells of every non-control treatment; at least 2 control cells and 2 cells a treatment, else ValueError."""
    n_ctrl = int((drugs == control).sum())
    if n_ctrl < 2:
        raise ValueError(f"plate {plate_id!r}: need at least 2 {control!r} control cells, got {n_ctrl}")
    n_cells = {}
    for d in drug_names:
        n = int((drugs == d).sum())
        if n < 2:
            raise ValueError(f"plate {plate_id!r}, drug {d!r}: {n} cell; need at least 2 cells per drug for mAP")
        n_cells[d] = n
    return n_cells


def _permutation_maps(plate_id, drugs, drug_names, is_ctrl, x, null_size, threshold, seed, strata
                      ) -> tuple[np.ndarray, np.ndarray]:
    """mAP and exact label-permutation p of every treatment against the controls (permutations within strata)."""
    from cellrep_core.progress import Progress

    maps_, p = [], []
    with Progress(f"mAP permutation tests of plate {plate_id}", len(drug_names), unit="treatments") as prog:
        for k, d in enumerate(drug_names):
            sel = is_ctrl | (drugs == d)
            m_, p_, _ = map_permutation_test(x[sel], drugs[sel] == d, np.zeros(int(sel.sum())), False,
                                             null_size, seed + k, threshold / (10 * len(drug_names)),
                                             blocks=strata[sel])
            maps_.append(m_)
            p.append(p_)
            prog.update()
    return np.asarray(maps_, dtype=np.float64), np.asarray(p, dtype=np.float64)


def _copairs_maps(drugs, drug_names, is_ctrl, x, null_size, threshold, seed) -> tuple[np.ndarray, np.ndarray]:
    """mAP and p of every treatment against the controls by copairs (the reference implementation)."""
    # Integer codes keep copairs/duckdb away from pandas' string dtypes; ref is copairs' reference index.
    code_of = {d: i + 1 for i, d in enumerate(drug_names)}
    codes = np.array([0 if c else code_of[d] for d, c in zip(drugs, is_ctrl, strict=True)], dtype=np.int64)
    ref = np.where(is_ctrl, np.arange(len(drugs)), -1).astype(np.int64)
    cmeta = pd.DataFrame({"drug_code": codes, "ref_index": ref})
    ap = average_precision(cmeta, x, pos_sameby=["drug_code", "ref_index"], pos_diffby=[], neg_sameby=[],
                           neg_diffby=["drug_code", "ref_index"], distance="cosine", progress_bar=False)
    with tempfile.TemporaryDirectory(prefix="copairs_null_") as cache_dir:
        maps = mean_average_precision(ap, sameby=["drug_code"], null_size=null_size, threshold=threshold, seed=seed,
                                      progress_bar=False, cache_dir=cache_dir)
    maps = maps.set_index("drug_code").loc[[code_of[d] for d in drug_names]]
    return maps["mean_average_precision"].to_numpy(dtype=np.float64), maps["p_value"].to_numpy(dtype=np.float64)


def _plate_map(
    plate_id: object,
    drugs: np.ndarray,  # treatment labels (see treatment_keys)
    cell_ids: np.ndarray,
    x: np.ndarray,
    control: str,
    null_size: int,
    threshold: float,
    seed: int,
    normalize: bool,
    null: str = "permutation",
    strata: np.ndarray | None = None,
) -> pd.DataFrame | None:
    """mAP, p and q for every non-control drug of one plate (None if the plate has no drug). ``strata``: well
    position class per cell (``position_classes``): normalisation and permutations per class."""
    if null not in ("permutation", "copairs"):
        raise ValueError(f"null must be 'permutation' or 'copairs', got {null!r}")
    is_ctrl = drugs == control
    drug_names = pd.unique(drugs[~is_ctrl])
    n_cells = _cells_per_treatment(plate_id, drugs, drug_names, control)
    if len(drug_names) == 0:
        return None
    strata = np.full(len(drugs), "plate", dtype=object) if strata is None else np.asarray(strata, dtype=object)
    if normalize:
        x = robust_normalize_blocks(x, strata) if null == "permutation" else normalize_blocks(x, strata, is_ctrl)
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        bad = cell_ids[norms == 0][:5].tolist()
        raise ValueError(f"plate {plate_id!r}: cells {bad} have an all-zero profile; cosine is undefined")
    if null == "permutation":
        maps, p = _permutation_maps(plate_id, drugs, drug_names, is_ctrl, x, null_size, threshold, seed, strata)
    else:
        maps, p = _copairs_maps(drugs, drug_names, is_ctrl, x, null_size, threshold, seed)
    q = benjamini_hochberg(p)
    return pd.DataFrame({
        "plate_id": [plate_id] * len(drug_names), "drug": list(drug_names),
        "n_cells": np.array([n_cells[d] for d in drug_names], dtype=np.int64),
        "mean_average_precision": maps, "p_value": p, "q_value": q, "is_hit": q < threshold,
    })


def drug_map_qvalues(
    meta: pd.DataFrame,
    feats: np.ndarray,
    control: str = "DMSO",
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    normalize: bool = True,
    null: str = "permutation",
    by_position: bool = True,
) -> pd.DataFrame:
    """Per plate and drug: mAP against the plate's controls, p-value, BH q-value and hit flag.

    ``null="permutation"`` (default): exact within-plate label permutations of the treatment's and the controls'
    cells (``cellrep_core.profiling.permutation``), at most ``null_size``, stopping early as described there;
    ``null="copairs"``: copairs' null of random rank lists (conservative; the reference). With ``by_position``
    and a ``well`` column, cells are normalised to, and exchanged with, the controls of the same well position
    (edge or interior; ``position_classes``)."""
    missing = [c for c in _META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"meta is missing columns {missing}; needs {list(_META_COLUMNS)}")
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"feats must be 2D (cells, features), got shape {x.shape}")
    if len(meta) != x.shape[0]:
        raise ValueError(f"meta has {len(meta)} rows but feats has {x.shape[0]}; they must be aligned")
    if not np.all(np.isfinite(x)):
        raise ValueError("feats contain NaN or inf")
    if meta[list(_META_COLUMNS)].isna().any(axis=None):
        raise ValueError("meta columns plate_id, drug and cell_id must not contain missing values")
    if null_size < 1:
        raise ValueError(f"null_size must be positive, got {null_size}")

    plates = meta["plate_id"].to_numpy(dtype=object)
    treatments, conc_of = treatment_keys(meta, control)
    cell_ids = meta["cell_id"].to_numpy(dtype=object)
    strata = position_classes(meta, control) if by_position else np.full(len(meta), "plate", dtype=object)
    frames = []
    for plate_id in pd.unique(plates):
        sel = plates == plate_id
        res = _plate_map(
            plate_id, treatments[sel], cell_ids[sel], x[sel], control, null_size, threshold, seed, normalize,
            null, strata[sel],
        )
        if res is not None:
            frames.append(res)
    if not frames:
        return _empty_result()
    out = pd.concat(frames, ignore_index=True)
    out["concentration"] = out["drug"].map(lambda t: conc_of[t][1]).astype(np.float64)
    out["drug"] = out["drug"].map(lambda t: conc_of[t][0])
    return out[list(RESULT_COLUMNS)]


def treatment_keys(meta: pd.DataFrame, control: str = "DMSO") -> tuple[np.ndarray, dict[str, tuple[str, float]]]:
    """One label per cell for its treatment, (drug, concentration) when ``meta`` has a concentration column
    (a drug at two concentrations is two treatments; the control is one treatment at any concentration), and
    the map label -> (drug, concentration)."""
    drugs = meta["drug"].to_numpy(dtype=object)
    if "concentration" in meta.columns:
        conc = pd.to_numeric(meta["concentration"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        conc = np.full(len(meta), np.nan)
    labels, conc_of = np.empty(len(meta), dtype=object), {}
    for i, (d, c) in enumerate(zip(drugs, conc, strict=True)):
        if d == control or not np.isfinite(c):
            key, value = str(d), (d, np.nan)
        else:
            key, value = f"{d} @ {c:g}", (d, float(c))
        labels[i] = key
        conc_of.setdefault(key, value)
    return labels, conc_of
