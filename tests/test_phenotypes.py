"""Phenotype classifier (elastic net, leave-one-group-out, shuffled baseline) and KS enrichment on toy features."""

import numpy as np
import pandas as pd
import pytest

from cellrep_core.profiling.phenotypes import fit_classifier, phenotype_enrichment, validate_classifier


def _labelled(seed=0, n_groups=6, per_group=12):
    """Three phenotypes, each in every group (well), separated along two of eight features."""
    rng = np.random.default_rng(seed)
    centres = {"normal": [0, 0], "fragmented": [2.5, 0], "small": [0, -2.5]}
    x, y, g = [], [], []
    for gi in range(n_groups):
        shift = rng.normal(0, 0.3, 8)  # a well effect
        for lab, c in centres.items():
            f = rng.normal(0, 1, (per_group, 8)) + shift
            f[:, :2] += c
            x.append(f)
            y += [lab] * per_group
            g += [f"w{gi}"] * per_group
    return np.concatenate(x), np.array(y), np.array(g)


def test_heldout_macro_f1_far_above_shuffled_labels():
    x, y, g = _labelled()
    rep = validate_classifier(x, y, g, c_grid=(0.1, 1.0), l1_grid=(0.5,))
    assert rep.n_groups == 6 and rep.classes == ["fragmented", "normal", "small"]
    assert rep.macro_f1 > 0.8 and rep.shuffled_macro_f1 < 0.5
    assert min(rep.per_class_f1.values()) > 0.7
    # every cell predicted once, by a model that did not see its well; probabilities sum to one
    assert len(rep.heldout) == len(y)
    p = rep.heldout[[c for c in rep.heldout.columns if c.startswith("proba_")]].to_numpy()
    assert np.allclose(p.sum(1), 1)
    r, prec = rep.pr_curves["fragmented"]
    assert r[0] == 1 and prec.max() == 1


def test_too_few_groups_or_labels_is_a_clear_error():
    x, y, g = _labelled(n_groups=2)
    with pytest.raises(ValueError, match="at least 3 groups"):
        validate_classifier(x, y, g)
    x, y, g = _labelled()
    with pytest.raises(ValueError, match="at least 2 labels"):
        validate_classifier(x, np.full(len(y), "a"), g)


def test_enrichment_flags_the_planted_phenotype_and_not_the_null_drug():
    x, y, g = _labelled()
    clf = fit_classifier(x, y, g, c_grid=(1.0,), l1_grid=(0.5,))
    rng = np.random.default_rng(5)
    plate = {"DMSO": [0, 0], "frag": [2.5, 0], "null": [0, 0]}
    feats, rows = [], []
    for d, c in plate.items():
        n = 60 if d == "DMSO" else 20
        f = rng.normal(0, 1, (n, 8))
        f[:, :2] += c
        feats.append(f)
        rows += [{"drug": d, "concentration": 0.0 if d == "DMSO" else 1.0}] * n
    proba = clf.predict_proba(np.concatenate(feats))
    e = phenotype_enrichment(pd.DataFrame(rows), proba, list(clf.classes_))
    assert len(e) == 2 * 3
    hit = e[(e.drug == "frag") & (e.phenotype == "fragmented")].iloc[0]
    assert hit.enriched and hit.q_value < 0.001
    assert not e[e.drug == "null"].enriched.any() and (e[e.drug == "null"].q_value >= 0.05).all()
