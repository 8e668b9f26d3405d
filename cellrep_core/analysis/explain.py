"""What a drug does: an LDA axis between a treatment and DMSO, the real cells along it, and its baseline.

The space is the one drug profiling uses for the base model (zero-shot, shared by every plate): each plate's
whitened codes, robust z-scored per plate and well position (``profiling.mapping``), then the top principal
components (20 by default) of every cell of the plate or screen. In that space:

* **LDA axis**: linear discriminant (shrinkage LDA, Ledoit-Wolf) between the treatment's cells and DMSO's,
  oriented from DMSO towards the treatment. Each cell's position on it is in units of DMSO's standard
  deviation on the axis, 0 at DMSO's mean.
* **Separation**: the difference of the two groups' means on the axis over their pooled standard deviation
  (Cohen's d on the discriminant). An LDA fitted on the same cells always separates them somewhat, more so
  with few cells; the **baseline** is therefore the separation of random splits of the DMSO cells into
  groups of the same sizes (the treatment's size, the rest as control), fitted the same way. Effect size =
  separation / mean baseline separation (the paper's unit); ``empirical_p`` = share of baseline splits at or
  above the separation (with the usual +1).
* **Walk**: ``n_steps`` evenly spaced positions from DMSO's 5th percentile to the treatment's 95th on the axis;
  at each, the DMSO cell and the treated cell whose axis position is closest (each cell shown once). The
  picture of a hit is these cells in a row; the descriptors along the walk (true piece count and volume
  where a cell's truth is known, else the hand-crafted features) say what changes, with Spearman's ρ over all
  of the two groups' cells.

Dagster-free: ``assets/screens.py`` and ``cellrep explain`` are thin layers over this module.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellrep_core.atomic import write_text

log = logging.getLogger(__name__)
CONTROL = "DMSO"
N_PCS = 20
N_SPLITS = 200
N_STEPS = 7
# descriptors followed along the axis: the simulator's truth where it exists, the hand-crafted features always
DESCRIPTORS = ("truth_n_pieces", "truth_total_volume", "truth_nuclear_volume", "volume", "n_pieces", "surface_area",
               "mean_piece_distance")


@dataclass
class ScopeData:
    """Every valid cell of a plate or screen with the base model's normalised codes and its descriptors."""

    scope: str  # "plate" or "screen"
    scope_id: str
    model_version: str
    meta: pd.DataFrame  # cell_id, plate_id, drug, concentration, well, source_path, channels, descriptors
    features: np.ndarray  # [n, d] robust z-scored whitened codes
    structure: str = ""  # the structure group of a plate or screen of several ("" when it has one)
    # the scope's PCA and DMSO-split baselines are the same for every treatment of the scope: computed once
    _pcs: dict = field(default_factory=dict, repr=False)
    _baselines: dict = field(default_factory=dict, repr=False)

    def pcs(self, n_pcs: int, seed: int) -> tuple[np.ndarray, list[float]]:
        """Scores of every cell on the top principal components, and their explained variance ratios."""
        from sklearn.decomposition import PCA

        k = int(min(n_pcs, self.features.shape[1], len(self.meta) - 1))
        if (k, seed) not in self._pcs:
            pca = PCA(n_components=k, random_state=seed).fit(self.features)
            self._pcs[(k, seed)] = (pca.transform(self.features), [float(v) for v in pca.explained_variance_ratio_])
        return self._pcs[(k, seed)]


@dataclass
class Explanation:
    """The LDA explanation of one treatment (a drug at one concentration, or at all of them)."""

    scope: str
    scope_id: str
    drug: str
    concentration: float | None
    model_version: str
    n_treated: int
    n_control: int
    n_pcs: int
    explained_variance: list[float]
    separation: float
    baseline: np.ndarray
    positions: pd.DataFrame  # cell_id, group ('treated'/'DMSO'), position, descriptors
    walk: pd.DataFrame  # step, position, treated_cell_id, dmso_cell_id (+ their positions)
    trends: dict[str, float] = field(default_factory=dict)  # Spearman rho of axis position vs descriptor
    structure: str = ""  # the structure group explained (a plate or screen of several structures)

    @property
    def baseline_mean(self) -> float:
        return float(self.baseline.mean())

    @property
    def baseline_p95(self) -> float:
        return float(np.percentile(self.baseline, 95))

    @property
    def effect_size(self) -> float:
        return float(self.separation / self.baseline_mean) if self.baseline_mean > 0 else float("inf")

    @property
    def empirical_p(self) -> float:
        return float((1 + (self.baseline >= self.separation).sum()) / (1 + len(self.baseline)))

    def summary(self) -> dict:
        top = max(self.trends.items(), key=lambda kv: abs(kv[1])) if self.trends else ("", float("nan"))
        return {
            "scope": self.scope, "scope_id": self.scope_id, "drug": self.drug,
            "concentration": self.concentration, "model_version": self.model_version,
            "n_treated": self.n_treated, "n_control": self.n_control, "n_pcs": self.n_pcs,
            "separation": round(self.separation, 4), "baseline_mean": round(self.baseline_mean, 4),
            "baseline_p95": round(self.baseline_p95, 4), "effect_size": round(self.effect_size, 4),
            "empirical_p": round(self.empirical_p, 4), "exceeds_baseline_p95": self.separation > self.baseline_p95,
            "top_descriptor": top[0], "top_descriptor_rho": round(float(top[1]), 4),
            "structure_name": self.structure,
        }


def scope_structures(wh, plates: list[str]) -> list[str]:
    """The structure groups with fine-tuned models on any of ``plates`` (``""``: models from before groups)."""
    from cellrep_core import pipeline

    return sorted({s for pid in plates for s in pipeline.plate_structures(wh, pid)} - {""})


def load_scope(wh, fs, plate_id: str | None = None, screen_id: str | None = None,
               feature_set: str = "embedding", structure: str | None = None) -> ScopeData:
    """A plate's or a screen's cells in the base model's profiling space (see the module docstring), or with
    ``feature_set="handcrafted"`` their hand-crafted features, normalised the same way. A plate or screen of
    several structures is explained one structure at a time (``structure``; each has its own base model)."""
    from cellrep_core import pipeline
    from cellrep_core.profiling.mapping import position_classes, robust_normalize_blocks
    from cellrep_core.structures import plate_groups

    if (plate_id is None) == (screen_id is None):
        raise ValueError("give a plate or a screen (one of them)")
    if screen_id is not None:
        plates = pipeline.screens(wh).get(screen_id)
        if not plates:
            known = sorted(pipeline.screens(wh))
            raise LookupError(f"no screen {screen_id!r} in the warehouse; screens: {known or 'none yet'}")
    else:
        known = set(wh.query("SELECT plate_id FROM plates").plate_id)
        if plate_id not in known:
            raise LookupError(f"no plate {plate_id!r} in the warehouse; plates: {sorted(known) or 'none yet'}")
        plates = [plate_id]
    found = scope_structures(wh, plates)
    if structure is None and len(found) > 1:
        raise LookupError(f"{'screen ' + screen_id if screen_id else 'plate ' + str(plate_id)} has several "
                          f"structures {found}; explain one at a time (structure=..., --structure)")
    if structure is not None and structure not in found:
        raise LookupError(f"no structure {structure!r} with a fine-tuned model in {plates}; structures: {found}")
    structure = structure if structure is not None else (found[0] if found else "")
    metas, feats, versions = [], [], set()
    for pid in plates:
        groups = plate_groups(wh, pid)
        try:
            base, _ = pipeline.plate_models(wh, pid, structure or None)
        except LookupError as err:
            raise LookupError(f"plate {pid} has no base model embedding yet ({err}); "
                              "materialize its plate assets") from err
        versions.add(base.version)
        ids = groups[structure]["cell_ids"] if structure in groups else None
        sets = pipeline.plate_feature_sets(wh, fs, pid, [base.version] if feature_set == "embedding" else [],
                                           cell_ids=ids)
        _, _, meta, x = next(st for st in sets if st[0] == feature_set)
        meta = meta.reset_index(drop=True)
        blocks = meta["plate_id"].astype(str).to_numpy() + "|" + position_classes(meta, control=CONTROL)
        metas.append(meta)
        feats.append(robust_normalize_blocks(x, blocks))
    if len(versions) > 1:
        raise LookupError(f"screen {screen_id}: its plates were embedded by different base models {sorted(versions)}; "
                          "re-embed them with one base model to explain a drug across plates")
    meta = pd.concat(metas, ignore_index=True)
    meta = meta.merge(_descriptors(wh, plates), on="cell_id", how="left")
    return ScopeData("screen" if screen_id else "plate", screen_id or plate_id, versions.pop(), meta,
                     np.concatenate(feats), structure=structure if len(found) > 1 else "")


def _descriptors(wh, plates: list[str]) -> pd.DataFrame:
    ph = ", ".join("?" * len(plates))
    df = wh.query(
        f"SELECT c.cell_id, c.source_path, c.channels, h.volume, h.n_pieces, h.surface_area, h.mean_piece_distance "
        f"FROM cells c LEFT JOIN handcrafted_features h USING (cell_id) WHERE c.plate_id IN ({ph})", plates)
    truth = wh.query(
        f"SELECT cell_id, effect AS truth_effect, strength AS truth_strength, n_pieces AS truth_n_pieces, "
        f"total_volume AS truth_total_volume, nuclear_volume AS truth_nuclear_volume FROM cell_truth "
        f"WHERE plate_id IN ({ph})", plates)
    return df.merge(truth, on="cell_id", how="left")


def _lda_axis(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit LDA direction (towards class 1) and the separation of the two classes on it (Cohen's d)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)
    w = lda.coef_[0] / max(np.linalg.norm(lda.coef_[0]), 1e-12)
    s = x @ w
    a, b = s[y == 1], s[y == 0]
    if a.mean() < b.mean():
        w, s, a, b = -w, -s, -a, -b
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / max(len(a) + len(b) - 2, 1))
    return w, float((a.mean() - b.mean()) / max(pooled, 1e-12))


def explain_treatment(data: ScopeData, drug: str, concentration: float | None = None, n_pcs: int = N_PCS,
                      n_splits: int = N_SPLITS, n_steps: int = N_STEPS, seed: int = 0) -> Explanation:
    """LDA axis, separation against the DMSO-split baseline, and the walk of real cells for one treatment
    (``concentration=None``: the drug's cells at every concentration)."""
    from scipy.stats import spearmanr

    meta = data.meta
    is_drug = meta["drug"].astype(str).to_numpy() == drug
    if not is_drug.any():
        drugs = sorted(set(meta["drug"].astype(str)) - {CONTROL})
        raise LookupError(f"no cells of drug {drug!r} in {data.scope} {data.scope_id}; drugs: {drugs}")
    if concentration is not None:
        conc = meta["concentration"].to_numpy(dtype=float)
        at = is_drug & np.isclose(conc, concentration)
        if not at.any():
            have = sorted({float(c) for c in conc[is_drug] if np.isfinite(c)})
            raise LookupError(f"drug {drug!r} has no cells at {concentration} µM in {data.scope} {data.scope_id}; "
                              f"concentrations: {have}")
        is_drug = at
    is_ctrl = meta["drug"].astype(str).to_numpy() == CONTROL
    n_t, n_c = int(is_drug.sum()), int(is_ctrl.sum())
    if n_t < 2 or n_c < 4:
        raise ValueError(f"{data.scope} {data.scope_id}: {n_t} cells of {drug} and {n_c} DMSO cells; an LDA "
                         "explanation needs at least 2 treated and 4 DMSO cells")
    pcs, explained = data.pcs(n_pcs, seed)
    k = pcs.shape[1]
    sel = is_drug | is_ctrl
    x, y = pcs[sel], is_drug[sel].astype(int)
    w, separation = _lda_axis(x, y)
    # the baseline: random splits of DMSO into a pseudo-treatment of the treatment's size and the rest (the same
    # for every treatment of that size in the scope)
    n_pseudo = min(n_t, n_c // 2)
    key = (k, n_pseudo, n_splits, seed)
    if key not in data._baselines:
        rng = np.random.default_rng(seed)
        xc = pcs[is_ctrl]
        base = np.empty(n_splits)
        for i in range(n_splits):
            yy = np.zeros(n_c, dtype=int)
            yy[rng.choice(n_c, n_pseudo, replace=False)] = 1
            base[i] = _lda_axis(xc, yy)[1]
        data._baselines[key] = base
    base = data._baselines[key]
    s = pcs @ w
    mu_c, sd_c = s[is_ctrl].mean(), max(s[is_ctrl].std(ddof=1), 1e-12)
    pos = (s - mu_c) / sd_c
    cols = ["cell_id", "plate_id", "drug", "concentration", "well", "source_path", "channels",
            *[c for c in DESCRIPTORS if c in meta.columns]]
    positions = meta.loc[sel, cols].assign(group=np.where(is_drug[sel], "treated", CONTROL), position=pos[sel])
    positions = positions.sort_values("position").reset_index(drop=True)
    trends = {}
    for c in DESCRIPTORS:
        if c in positions.columns:
            v = pd.to_numeric(positions[c], errors="coerce")
            ok = v.notna().to_numpy()
            if ok.sum() >= 4 and v[ok].nunique() > 1:
                trends[c] = float(spearmanr(positions.position[ok], v[ok]).statistic)
    lo = float(np.percentile(pos[is_ctrl], 5))
    hi = max(float(np.percentile(pos[is_drug], 95)), lo + 1e-6)
    walk = _walk(positions, np.linspace(lo, hi, n_steps))
    return Explanation(data.scope, data.scope_id, drug, concentration, data.model_version, n_t, n_c, k,
                       explained, separation, base, positions, walk, trends, structure=data.structure)


def _walk(positions: pd.DataFrame, steps: np.ndarray) -> pd.DataFrame:
    """At each step, the closest cell of each group by axis position, no cell twice within a group."""
    rows = [{"step": i, "position": float(t)} for i, t in enumerate(steps)]
    for group, key in (("treated", "treated"), (CONTROL, "dmso")):
        g = positions[positions.group == group]
        used: set[str] = set()
        for r in rows:
            cand = g[~g.cell_id.isin(used)]
            if cand.empty:
                r[f"{key}_cell_id"], r[f"{key}_position"] = None, np.nan
                continue
            j = (cand.position - r["position"]).abs().idxmin()
            used.add(cand.at[j, "cell_id"])
            r[f"{key}_cell_id"], r[f"{key}_position"] = cand.at[j, "cell_id"], float(cand.at[j, "position"])
    return pd.DataFrame(rows)


def walk_trend(expl: Explanation, descriptor: str) -> float:
    """Spearman ρ between the walk's step positions and ``descriptor`` of the cell nearest each step (either
    group: the closer of the treated and the DMSO cell)."""
    from scipy.stats import spearmanr

    pos = expl.positions.set_index("cell_id")
    xs, vs = [], []
    for r in expl.walk.itertuples():
        cands = [(abs(getattr(r, f"{k}_position") - r.position), getattr(r, f"{k}_cell_id"))
                 for k in ("treated", "dmso") if pd.notna(getattr(r, f"{k}_cell_id"))]
        if not cands:
            continue
        cid = min(cands)[1]
        v = pd.to_numeric(pos.at[cid, descriptor], errors="coerce")
        if pd.notna(v):
            xs.append(r.position)
            vs.append(float(v))
    if len(xs) < 3 or len(set(vs)) < 2:
        return float("nan")
    return float(spearmanr(xs, vs).statistic)


# ---- pictures and the report ----

def _caption(row: pd.Series) -> str:
    bits = [f"{row.position:+.1f}σ"]
    if pd.notna(row.get("truth_n_pieces")):
        bits.append(f"{int(row.truth_n_pieces)} pc")
    elif pd.notna(row.get("n_pieces")):
        bits.append(f"{int(row.n_pieces)} pc")
    vol = row.get("truth_total_volume") if pd.notna(row.get("truth_total_volume")) else row.get("volume")
    if pd.notna(vol):
        bits.append(f"V {float(vol):.0f}")
    return " · ".join(bits)


class ScopeDecoder:
    """The scope's base model and canonical latents, loaded once for all of its treatments' decoded walks:
    each plate's clouds are read once, each cell's latent computed once."""

    def __init__(self, wh, data: ScopeData) -> None:
        from cellrep_core import pipeline
        from cellrep_core.models.inference import load_model

        self.model = load_model(pipeline.model_by_version(wh, data.model_version).path)
        self._items: dict[str, object] = {}
        self._plates_read: set[str] = set()
        self._lat: dict[str, np.ndarray] = {}
        self._eb = None
        self._inside: float | None = None

    def latents(self, cells: pd.DataFrame) -> np.ndarray:
        """Canonical latents ``[n, D]`` of ``cells`` (cell_id, plate_id)."""
        from cellrep_core import paths, pipeline
        from cellrep_core.analysis.representation import canonical_latents
        from cellrep_core.pointclouds.build import read_pointclouds

        for pid in set(cells.plate_id.astype(str)) - self._plates_read:
            for it in read_pointclouds(paths.pointcloud_path(pipeline.PLATES_DATASET, pid)):
                self._items[it.cell_id] = it
            self._plates_read.add(pid)
        todo = [c for c in dict.fromkeys(cells.cell_id) if c not in self._lat]
        missing = [c for c in todo if c not in self._items]
        if missing:
            raise LookupError(f"no stored clouds for cells {missing[:5]}")
        if todo:
            lat, eb = canonical_latents(self.model, [self._items[c] for c in todo])
            self._lat.update(zip(todo, lat, strict=True))
            if self._eb is None:  # any cells' batch serves as the decoder's query grid and inside share
                from cellrep_core.analysis.representation import _true_inside_fraction

                self._eb, self._inside = eb, _true_inside_fraction(self.model, eb)
        return np.stack([self._lat[c] for c in cells.cell_id])

    def walk(self, expl: Explanation, k: int = 5) -> tuple[list[np.ndarray], float]:
        """Decoded shapes along the walk: at each step the decoder output for the mean canonical latent of the
        ``k`` cells (either group) closest to the step on the axis (``analysis/representation.py`` explains
        why a code alone cannot be decoded)."""
        from cellrep_core.analysis.representation import decode_shapes

        pos = expl.positions.reset_index(drop=True)
        near = [np.argsort(np.abs(pos.position.to_numpy() - t), kind="stable")[:k] for t in expl.walk.position]
        means = np.stack([self.latents(pos.iloc[n]).mean(0) for n in near])
        return decode_shapes(self.model, means, self._eb, self._inside)


def decoded_walk(wh, expl: Explanation, decoder: ScopeDecoder | None) -> tuple[list[np.ndarray], float] | None:
    """The decoded walk, or None (with a warning) when the model or the clouds are not at hand."""
    if decoder is None:
        return None
    try:
        return decoder.walk(expl)
    except (LookupError, OSError) as err:
        log.warning("decoded walk of %s skipped: %s", expl.drug, err)
        return None


def walk_strip(expl: Explanation, out: Path | None = None,
               decoded: tuple[list[np.ndarray], float] | None = None) -> bytes:
    """PNG: the walk's DMSO cells (top row) and treated cells (second row) from DMSO to the treatment,
    each as three orthogonal projections, captioned with its axis position and descriptors; with ``decoded``
    (``decoded_walk``) a third row of decoded shapes."""
    from cellrep_core.analysis.render import read_cell_views, tiles_png
    from cellrep_core.analysis.representation import shape_views

    pos = expl.positions.set_index("cell_id")
    rows = []
    for key in ("dmso", "treated"):
        row = []
        for r in expl.walk.itertuples():
            cid = getattr(r, f"{key}_cell_id")
            if pd.isna(cid):  # fewer cells in the group than steps
                row.append((None, f"step {r.step}: none"))
                continue
            c = pos.loc[cid]
            try:
                img = read_cell_views(c.source_path, c.channels, cid)
            except Exception as err:  # a moved or unreadable image: say so in the tile, keep the rest
                img, cid = None, f"{cid}: {type(err).__name__}"
            row.append((img, f"{cid}\n{_caption(c)}"))
        rows.append(row)
    labels = ["DMSO", expl.drug]
    if decoded is not None:
        shapes, level = decoded
        lvl = f" (SDF < {level:.3f})" if level else ""
        rows.append([(shape_views(sh), f"decoded {t:+.1f}σ{lvl}") for sh, t in zip(shapes, expl.walk.position,
                                                                                   strict=True)])
        labels.append("decoded")
    conc = "" if expl.concentration is None else f" @ {expl.concentration:g} µM"
    title = (f"{expl.drug}{conc} vs DMSO along the LDA axis ({expl.scope} {expl.scope_id}); separation "
             f"{expl.separation:.2f} = {expl.effect_size:.1f}x the DMSO-split baseline")
    return tiles_png(rows, out, title, row_labels=labels)


def axis_plot(expl: Explanation, out: Path | None = None) -> bytes:
    """PNG: positions of DMSO and treated cells on the axis, and the separation against its baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellrep_core.analysis.render import figure_png

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    p = expl.positions
    bins = np.linspace(p.position.min(), p.position.max(), 25)
    a.hist(p[p.group == CONTROL].position, bins=bins, alpha=0.6, density=True, label=f"DMSO (n={expl.n_control})")
    a.hist(p[p.group == "treated"].position, bins=bins, alpha=0.6, density=True,
           label=f"{expl.drug} (n={expl.n_treated})")
    a.set_xlabel("position on the LDA axis (DMSO sd)")
    a.legend(fontsize=7)
    b.hist(expl.baseline, bins=30, color="grey", alpha=0.7, label="random DMSO splits")
    b.axvline(expl.separation, color="crimson", label=f"{expl.drug}: {expl.separation:.2f}")
    b.axvline(expl.baseline_p95, color="black", ls="--", lw=0.8, label=f"baseline 95th pct {expl.baseline_p95:.2f}")
    b.set_xlabel("separation (Cohen's d on the LDA axis)")
    b.legend(fontsize=7)
    return figure_png(fig, out)


def qvalue_rows(wh, expl: Explanation) -> pd.DataFrame:
    """The treatment's q-values of the scope (screen_qvalues for a screen, drug_qvalues for a plate)."""
    only, st = "AND (? = '' OR coalesce(structure_name, '') = ?)", [expl.structure, expl.structure]
    if expl.scope == "screen":
        df = wh.query("SELECT drug, concentration, model_role, feature_set, method, n_cells, mean_average_precision, "
                      f"p_value, q_value, is_hit FROM screen_qvalues WHERE screen_id = ? AND drug = ? {only} "
                      "ORDER BY concentration, model_role", [expl.scope_id, expl.drug, *st])
    else:
        df = wh.query("SELECT drug, concentration, model_version, feature_set, n_cells, mean_average_precision, "
                      f"p_value, q_value, is_hit FROM drug_qvalues WHERE plate_id = ? AND drug = ? {only} "
                      "ORDER BY concentration, feature_set", [expl.scope_id, expl.drug, *st])
    return df


def write_report(wh, expl: Explanation, out_dir: Path, decoder: ScopeDecoder | None = None) -> Path:
    """One self-contained HTML file (pictures inline): q-values, the separation against its DMSO-split
    baseline, the walk strip with the real cells at both ends (and decoded shapes, given the scope's
    ``decoder``), descriptor trends. PNGs are written beside it."""
    from cellrep_core.analysis.render import png_data_uri

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(expl)
    strip = walk_strip(expl, out_dir / f"{stem}_walk.png", decoded_walk(wh, expl, decoder))
    axis = axis_plot(expl, out_dir / f"{stem}_axis.png")
    s = expl.summary()
    q = qvalue_rows(wh, expl)
    trends = pd.DataFrame({"descriptor": list(expl.trends), "spearman_rho_vs_axis": list(expl.trends.values())})
    walk = expl.walk.round(3)
    conc = "all concentrations" if expl.concentration is None else f"{expl.concentration:g} µM"
    verdict = ("exceeds" if s["exceeds_baseline_p95"] else "does not exceed")
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(stem)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(expl.drug)} ({html.escape(conc)}) against DMSO — {expl.scope} {html.escape(expl.scope_id)}</h1>
<p>Base model <code>{html.escape(expl.model_version)}</code>, whitened codes robust z-scored per plate and well
position, top {expl.n_pcs} principal components ({100 * sum(expl.explained_variance):.0f} % of the variance).
{expl.n_treated} treated and {expl.n_control} DMSO cells.</p>
<h2>Separation</h2>
<p>Separation on the LDA axis (Cohen's d) <b>{expl.separation:.2f}</b>; random DMSO splits of the same sizes:
mean {expl.baseline_mean:.2f}, 95th percentile {expl.baseline_p95:.2f}. Effect size
<b>{expl.effect_size:.2f}</b> baselines; the separation {verdict} the baseline's 95th percentile
(empirical p {expl.empirical_p:.3f}, {len(expl.baseline)} splits).</p>
<img alt="axis and baseline" src="{png_data_uri(axis)}">
<h2>Real cells along the axis</h2>
<p>From DMSO's 5th percentile to the treatment's 95th: the closest DMSO cell (top) and treated cell (middle)
to each step; each cell as top, front and side max projections (nucleus blue, structure magenta). Bottom: the
base model's decoded shape at each step (decoder input: the mean canonical latent of the 5 cells closest to
the step on the axis).</p>
<img alt="walk along the LDA axis" src="{png_data_uri(strip)}">
{walk.to_html(index=False)}
<h2>What changes along the axis</h2>
{trends.round(3).to_html(index=False)}
<h2>q-values</h2>
{q.round(5).to_html(index=False)}
</body></html>"""
    path = out_dir / f"{stem}.html"
    return write_text(path, body, f"the report {path.name}")


def base_hits(wh, scope: str, scope_id: str, structure: str = "") -> set[tuple[str, float | None]]:
    """(drug, concentration) called by the base model's codes in a screen or plate (of one structure group when
    ``structure`` is given)."""
    only = "AND (? = '' OR coalesce(q.structure_name, '') = ?)"
    if scope == "screen":
        df = wh.query("SELECT drug, concentration FROM screen_qvalues q WHERE screen_id = ? AND model_role = 'base' "
                      f"AND is_hit {only}", [scope_id, structure, structure])
    else:
        df = wh.query("SELECT q.drug, q.concentration FROM drug_qvalues q JOIN models m USING (model_version) "
                      f"WHERE q.plate_id = ? AND q.is_hit AND coalesce(m.plate_id, '') = '' {only}",
                      [scope_id, structure, structure])
    return {(str(d), None if pd.isna(c) else float(c)) for d, c in df.itertuples(index=False)}


def report_stem(expl: Explanation) -> str:
    conc = "all" if expl.concentration is None else f"{expl.concentration:g}uM"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in expl.drug)
    return f"{safe}_{conc}"


def explain_scope(data: ScopeData, treatments: list[tuple[str, float | None]] | None = None,
                  **kwargs) -> list[Explanation]:
    """Explanations of every treatment of a scope (each drug x concentration), or of ``treatments``."""
    if treatments is None:
        t = data.meta[data.meta.drug.astype(str) != CONTROL][["drug", "concentration"]].drop_duplicates()
        treatments = [(str(d), None if pd.isna(c) else float(c)) for d, c in t.itertuples(index=False)]
    from cellrep_core.progress import Progress

    out = []
    with Progress(f"explaining the treatments of {data.scope} {data.scope_id}", len(treatments),
                  unit="treatments") as prog:
        for d, c in sorted(treatments, key=lambda dc: (dc[0], dc[1] or 0)):
            out.append(explain_treatment(data, d, c, **kwargs))
            prog.update()
    return out
