"""Phenotype classifiers on single-cell features and phenotype enrichment per treatment (seed 004).

* **Classifier**: standardised features → multinomial logistic regression with an elastic-net penalty
  (scikit-learn, ``saga``), C and the l1 ratio chosen by inner cross-validation on macro-F1 (grouped, so a
  group's cells never sit on both sides of an inner split either).
* **Validation**: leave-one-group-out (group = image / field of view, well or plate, whatever the data set
  says a unit of acquisition is), each held-out group predicted by a model that never saw it; per-class F1,
  macro-F1 and one-vs-rest precision–recall curves from those held-out predictions; the **shuffled-label
  baseline** runs the same procedure with the training labels permuted (the held-out labels stay true).
* **Enrichment**: each treatment's cells' phenotype probabilities against DMSO's, per phenotype, by a
  two-sample Kolmogorov–Smirnov test; Benjamini–Hochberg over every treatment × phenotype of the screen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

C_GRID = (0.01, 0.1, 1.0, 10.0)
L1_GRID = (0.1, 0.5, 0.9)


def _pipeline(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(solver="saga", l1_ratio=0.5, C=1.0, max_iter=2000,
                                                              tol=1e-3, random_state=seed))


def _search(groups: np.ndarray, seed: int, c_grid=C_GRID, l1_grid=L1_GRID):
    from sklearn.model_selection import GridSearchCV, GroupKFold

    n_inner = min(3, len(np.unique(groups)))
    if n_inner < 2:
        raise ValueError("inner cross-validation needs at least 2 groups in the training data")
    return GridSearchCV(_pipeline(seed), {"logisticregression__C": list(c_grid),
                                          "logisticregression__l1_ratio": list(l1_grid)},
                        scoring="f1_macro", cv=GroupKFold(n_splits=n_inner), n_jobs=1)


@dataclass
class ClassifierReport:
    classes: list[str]
    macro_f1: float
    per_class_f1: dict[str, float]
    shuffled_macro_f1: float
    shuffled_per_class_f1: dict[str, float]
    heldout: pd.DataFrame  # row, group, true, pred, proba_<class>
    best_params: dict
    n_groups: int
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class -> (recall, prec)

    def summary(self) -> dict:
        return {"macro_f1": round(self.macro_f1, 4), "shuffled_macro_f1": round(self.shuffled_macro_f1, 4),
                "n_groups": self.n_groups, "best_C": self.best_params.get("logisticregression__C"),
                "best_l1_ratio": self.best_params.get("logisticregression__l1_ratio"),
                **{f"f1_{c}": round(v, 4) for c, v in self.per_class_f1.items()}}


def _outer_splits(groups: np.ndarray, max_folds: int | None):
    """Leave-one-group-out, or, with more groups than ``max_folds``, groups held out ``max_folds`` at a time
    (GroupKFold: every group still held out exactly once, never split)."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    n = len(np.unique(groups))
    return LeaveOneGroupOut() if max_folds is None or n <= max_folds else GroupKFold(n_splits=max_folds)


def _logo_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, shuffle: bool, classes: list[str],
                  max_folds: int | None = None, **grid) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Held-out predictions and probabilities ``[n, n_classes]`` of leave-one-group-out."""
    rng = np.random.default_rng(seed)
    pred = np.empty(len(y), dtype=object)
    proba = np.zeros((len(y), len(classes)))
    params = []
    for train, test in _outer_splits(groups, max_folds).split(x, y, groups):
        yt = y[train].copy()
        if shuffle:
            yt = yt[rng.permutation(len(yt))]
        if len(np.unique(yt)) < 2:
            raise ValueError("a training fold holds a single phenotype; give more groups per phenotype")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # saga convergence on the small inner folds
            s = _search(groups[train], seed, **grid).fit(x[train], yt, groups=groups[train])
        params.append(s.best_params_)
        pred[test] = s.predict(x[test])
        cols = [classes.index(c) for c in s.classes_]
        proba[np.ix_(test, cols)] = s.predict_proba(x[test])
    return pred, proba, params


def validate_classifier(x: np.ndarray, y, groups, seed: int = 0, c_grid=C_GRID, l1_grid=L1_GRID,
                        max_folds: int | None = None) -> ClassifierReport:
    """Leave-one-group-out validation of the elastic-net classifier and of its shuffled-label twin
    (``max_folds``: hold groups out that many folds at a time when there are more groups)."""
    from sklearn.metrics import f1_score, precision_recall_curve

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(str)
    groups = np.asarray(groups).astype(str)
    if len(x) != len(y) or len(y) != len(groups):
        raise ValueError(f"{len(x)} feature rows, {len(y)} labels and {len(groups)} groups: one each per cell")
    if len(np.unique(groups)) < 3:
        raise ValueError(f"leave-one-group-out needs at least 3 groups, got {len(np.unique(groups))}")
    classes = sorted(np.unique(y))
    if len(classes) < 2:
        raise ValueError(f"a phenotype classifier needs at least 2 labels, got {classes}")
    grid = {"c_grid": c_grid, "l1_grid": l1_grid, "max_folds": max_folds}
    pred, proba, params = _logo_predict(x, y, groups, seed, False, classes, **grid)
    spred, _, _ = _logo_predict(x, y, groups, seed + 1, True, classes, **grid)
    f1 = f1_score(y, pred.astype(str), labels=classes, average=None, zero_division=0)
    sf1 = f1_score(y, spred.astype(str), labels=classes, average=None, zero_division=0)
    pr = {}
    for j, c in enumerate(classes):
        p, r, _ = precision_recall_curve(y == c, proba[:, j])
        pr[c] = (r, p)
    held = pd.DataFrame({"group": groups, "true": y, "pred": pred.astype(str),
                         **{f"proba_{c}": proba[:, j] for j, c in enumerate(classes)}})
    best = pd.Series([tuple(sorted(p.items())) for p in params]).mode().iloc[0]
    return ClassifierReport(classes, float(f1.mean()), dict(zip(classes, map(float, f1), strict=True)),
                            float(sf1.mean()), dict(zip(classes, map(float, sf1), strict=True)), held, dict(best),
                            len(np.unique(groups)), pr)


def fit_classifier(x: np.ndarray, y, groups, seed: int = 0, c_grid=C_GRID, l1_grid=L1_GRID):
    """The classifier on all cells (C and l1 ratio by grouped inner cross-validation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _search(np.asarray(groups).astype(str), seed, c_grid, l1_grid).fit(
            np.asarray(x, np.float64), np.asarray(y).astype(str), groups=np.asarray(groups).astype(str)).best_estimator_


def phenotype_enrichment(meta: pd.DataFrame, proba: np.ndarray, classes: list[str], control: str = "DMSO",
                         threshold: float = 0.05) -> pd.DataFrame:
    """Per treatment (drug x concentration) and phenotype: mean probability of the treatment and of DMSO, the
    two-sample KS statistic and p-value of the treatment's probabilities against DMSO's, BH q over every test,
    ``enriched`` when q < threshold and the treatment's mean probability is the higher."""
    from scipy.stats import ks_2samp

    from cellrep_core.profiling.mapping import benjamini_hochberg

    drug = meta["drug"].astype(str).to_numpy()
    conc = pd.to_numeric(meta.get("concentration", pd.Series(np.nan, index=meta.index)), errors="coerce").to_numpy()
    ctrl = drug == control
    if ctrl.sum() < 2:
        raise ValueError(f"phenotype enrichment needs at least 2 {control} cells, got {int(ctrl.sum())}")
    rows = []
    treatments = pd.DataFrame({"drug": drug[~ctrl], "concentration": conc[~ctrl]}).drop_duplicates()
    for d, c in treatments.itertuples(index=False):
        sel = (drug == d) & ((conc == c) | (np.isnan(conc) & np.isnan(c)))
        for j, ph in enumerate(classes):
            res = ks_2samp(proba[sel, j], proba[ctrl, j])
            rows.append({"drug": d, "concentration": c, "phenotype": ph, "n_cells": int(sel.sum()),
                         "mean_probability": float(proba[sel, j].mean()),
                         "control_mean_probability": float(proba[ctrl, j].mean()),
                         "ks_statistic": float(res.statistic), "p_value": float(res.pvalue)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["q_value"] = benjamini_hochberg(df.p_value.to_numpy())
    df["enriched"] = (df.q_value < threshold) & (df.mean_probability > df.control_mean_probability)
    return df


# ---------------------------------------------------------------------------- a screen with known phenotypes

PHENOTYPE_MIN_STRENGTH = 0.5


def screen_labels(truth: pd.DataFrame, min_strength: float = PHENOTYPE_MIN_STRENGTH) -> np.ndarray:
    """A synthetic screen's phenotype labels from its cell truth: the planted effect where the cell's strength
    is at least ``min_strength``, else ``none`` (DMSO, null drugs, weak doses)."""
    eff = truth["effect"].fillna("none").astype(str).to_numpy()
    strength = pd.to_numeric(truth["strength"], errors="coerce").fillna(0).to_numpy()
    return np.where((eff != "none") & (strength >= min_strength), eff, "none")
