"""Hit explanations on features with a known answer: LDA axis, DMSO-split baseline, the walk, pictures."""

import numpy as np
import pandas as pd
import pytest

from cellrep_core.analysis.explain import ScopeData, explain_treatment, walk_trend
from cellrep_core.analysis.render import cell_views, png_data_uri, read_cell_views, tiles_png


def _scope(seed: int = 0, n_dmso: int = 96, n_drug: int = 16, dims: int = 12) -> ScopeData:
    """DMSO and three drugs: 3 of 12 features follow a cell's piece count; 'frag' adds 2-4 pieces, 'weak' shifts
    the 3 features slightly, 'null' nothing."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for drug, shift in (("DMSO", 0.0), ("frag", 1.0), ("weak", 0.15), ("null", 0.0)):
        n = n_dmso if drug == "DMSO" else n_drug
        pieces = rng.integers(1, 4, n) + (rng.integers(2, 5, n) if drug == "frag" else 0)
        x = rng.normal(size=(n, dims))
        x[:, :3] += 0.8 * (pieces[:, None] - 2) + shift * (drug == "weak")  # the codes see the pieces
        feats.append(x)
        rows += [{"cell_id": f"{drug}_{i:03d}", "plate_id": f"p{i % 2}", "drug": drug, "concentration": 1.0,
                  "well": "B02", "source_path": "", "channels": "", "truth_n_pieces": int(p),
                  "volume": float(rng.normal(100, 5))} for i, p in enumerate(pieces)]
    return ScopeData("screen", "toy", "v0", pd.DataFrame(rows), np.concatenate(feats))


def test_planted_effect_separates_beyond_dmso_splits_and_null_does_not():
    data = _scope()
    frag = explain_treatment(data, "frag", 1.0, n_pcs=10, n_splits=100)
    null = explain_treatment(data, "null", 1.0, n_pcs=10, n_splits=100)
    assert frag.n_treated == 16 and frag.n_control == 96 and frag.n_pcs == 10
    assert frag.separation > frag.baseline_p95 and frag.effect_size > 2 and frag.empirical_p < 0.02
    assert null.separation < null.baseline_p95 and null.empirical_p > 0.05
    # the baseline is of the same sizes as the real comparison: the same inflation of an in-sample LDA
    assert 0.3 < null.effect_size < 1.7
    # the axis points from DMSO to the drug and the cells along it gain pieces
    p = frag.positions
    assert p[p.group == "treated"].position.mean() > p[p.group == "DMSO"].position.mean()
    assert abs(p[p.group == "DMSO"].position.mean()) < 1e-6
    assert frag.trends["truth_n_pieces"] > 0.6 and abs(frag.trends["volume"]) < 0.3
    assert walk_trend(frag, "truth_n_pieces") >= 0.8
    # every walk step has a DMSO and a treated cell, none shown twice
    assert frag.walk.treated_cell_id.notna().all() and frag.walk.treated_cell_id.is_unique
    assert frag.walk.dmso_cell_id.is_unique and frag.walk.position.is_monotonic_increasing


def test_null_drugs_rarely_exceed_the_baseline():
    exceed = 0
    for seed in range(10):
        e = explain_treatment(_scope(seed), "null", 1.0, n_pcs=10, n_splits=100, seed=seed)
        exceed += e.separation > e.baseline_p95
    assert exceed <= 3


def test_bad_requests_name_what_exists():
    data = _scope()
    with pytest.raises(LookupError, match=r"no cells of drug 'nope'.*frag"):
        explain_treatment(data, "nope")
    with pytest.raises(LookupError, match=r"no cells at 3.0 µM.*\[1.0\]"):
        explain_treatment(data, "frag", 3.0)
    small = ScopeData("plate", "p", "v", data.meta.iloc[93:].reset_index(drop=True), data.features[93:])
    with pytest.raises(ValueError, match="at least 2 treated and 4 DMSO"):
        explain_treatment(small, "frag")


def test_cell_pictures_show_the_masks(tmp_path):
    from cellrep_core.data.images import write_cell_tiff

    z, y, x = np.mgrid[:16, :20, :24]
    nucleus = ((z - 8) ** 2 + (y - 10) ** 2 + (x - 12) ** 2 < 25).astype(np.uint8) * 255
    structure = np.zeros_like(nucleus)
    structure[4:6, 2:4, 18:22] = 255  # one piece, top right in the top view
    path = tmp_path / "c.tiff"
    write_cell_tiff(path, {"nucleus": nucleus, "structure": structure})
    img = read_cell_views(path, "nucleus;structure", "c")
    # three views side by side: top 20x24, front 16x24, side 16x20, one-pixel separators
    assert img.shape == (20, 24 + 1 + 24 + 1 + 20, 3)
    top = img[:, :24]
    assert top[2:4, 18:22, 0].min() > 0.9 and top[2:4, 18:22, 1].max() < 0.3  # magenta structure
    assert top[10, 12, 2] > 0.5 and top[10, 12, 0] < 0.3  # blue nucleus
    assert top[0, 0].max() == 0  # background black
    with pytest.raises(ValueError, match="'structure' or 'raw'"):
        cell_views({"nucleus": nucleus})
    png = tiles_png([[(img, "a"), (None, "missing")]], tmp_path / "t.png", "title")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "t.png").stat().st_size == len(png)
    assert png_data_uri(png).startswith("data:image/png;base64,iVBOR")


def test_a_group_smaller_than_the_walk_leaves_empty_steps():
    data = _scope(n_drug=4)
    e = explain_treatment(data, "frag", 1.0, n_pcs=5, n_splits=20, n_steps=7)
    assert e.walk.treated_cell_id.notna().sum() == 4 and e.walk.dmso_cell_id.notna().all()
    assert np.isfinite(walk_trend(e, "truth_n_pieces"))
    # the strip draws the missing steps as empty tiles (and unreadable images as named empty tiles)
    from cellrep_core.analysis.explain import walk_strip

    assert walk_strip(e)[:4] == b"\x89PNG"


def test_walk_caption_with_and_without_a_concentration():
    """Plates without a dose series (concentration NULL) get a caption too (it used to raise in the asset)."""
    from assets.screens import walk_caption

    assert walk_caption("d", 3.0, 1.234, 5.67) == "**d @ 3 µM** — separation 1.23, 5.7x the DMSO-split baseline"
    assert walk_caption("d", None, 1.0, 2.0).startswith("**d** — separation 1.00")
    assert walk_caption("d", float("nan"), 1.0, 2.0).startswith("**d** —")
