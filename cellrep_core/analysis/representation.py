"""What the representation has learned, for a data set and a model (the paper's Figs. 3-5, Methods):

* **Cell shape features** per cell from its masks (``shape_features``): nuclear volume, surface area,
  sphericity and principal extents, cell volume where a cell mask exists, structure volume and surface area.
* **PCA** of the codes (raw: whitening, which profiling uses, gives every axis of the training cells unit
  variance, and their principal components would be arbitrary): explained variance, and the Pearson
  correlation of every principal component with every shape and hand-crafted feature.
* **Latent walks** along the top PCs (-2σ … +2σ): at each point the closest real cell (in the top PCs) and a
  decoded shape. The invariant code alone does not drive the SO(3) SDF decoder (it also takes the latent
  vectors), so the decoder input of a walk point is the mean canonical-frame latent of its 5 nearest real
  cells (``model.latent``: the latent vectors rotated into the model's own frame, so cells line up); the
  decoded signed distance is drawn as its inside (SDF < 0), punctate decodings as their points.
* **Archetypes** (archetypal analysis, Cutler & Breiman: every archetype a convex mixture of cells, every
  cell approximated by a convex mixture of archetypes, alternating non-negative least squares); the number
  of archetypes is the elbow of the residual sum of squares over 2…8 (the k after which one more archetype
  reduces it by less than 10 % of the reduction from 1 to 2 archetypes), and the closest real cell to each.
* **Nuclear-volume bins** (a pseudo cell cycle): cells in quantile bins of nuclear volume, the mean code of each
  bin, its closest real cell and decoded shape.
* **A 2-D map** of every cell's code (t-SNE, scikit-learn; the paper uses PaCMAP), coloured by a label.

Dagster-free; ``assets/reference.py`` materializes it per reference data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellrep_core.atomic import save_figure

SHAPE_FEATURES = ("nuclear_volume", "nuclear_surface_area", "nuclear_sphericity", "nuclear_extent_1",
                  "nuclear_extent_2", "nuclear_extent_3", "cell_volume", "structure_volume",
                  "structure_surface_area")
WALK_SIGMAS = (-2.0, -1.0, 0.0, 1.0, 2.0)
N_WALK_PCS = 3
DECODE_NEIGHBOURS = 5


def _surface_area(mask: np.ndarray, s: float) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    if not mask.any():
        return 0.0
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), level=0.5, spacing=(s, s, s))
    return float(mesh_surface_area(verts, faces))


def shape_features(images: dict[str, np.ndarray], voxel_size_um: float = 1.0) -> dict[str, float]:
    """Shape numbers of one cell's masks (µm, µm², µm³); NaN for a mask the cell does not have (a punctate
    cell's structure is an intensity image, not a mask)."""
    s = float(voxel_size_um)
    out = dict.fromkeys(SHAPE_FEATURES, float("nan"))
    nuc = np.asarray(images.get("nucleus", np.zeros((1, 1, 1)))) > 0
    if nuc.any():
        vol = nuc.sum() * s**3
        area = _surface_area(nuc, s)
        coords = np.argwhere(nuc).astype(np.float64) * s
        ev = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))[::-1] if len(coords) > 3 else np.zeros(3)
        ext = 4.0 * np.sqrt(np.maximum(ev, 0))  # ±2 sd along each principal axis
        out.update(nuclear_volume=float(vol), nuclear_surface_area=area,
                   nuclear_sphericity=float(np.pi ** (1 / 3) * (6 * vol) ** (2 / 3) / area) if area > 0 else np.nan,
                   nuclear_extent_1=float(ext[0]), nuclear_extent_2=float(ext[1]), nuclear_extent_3=float(ext[2]))
    if "cell" in images:
        out["cell_volume"] = float((np.asarray(images["cell"]) > 0).sum() * s**3)
    struct = images.get("structure")
    if struct is not None:
        m = np.asarray(struct) > 0
        out.update(structure_volume=float(m.sum() * s**3), structure_surface_area=_surface_area(m, s))
    return out  # a punctate cell's raw intensity has no mask: its structure volume stays NaN


def shape_feature_table(cells: pd.DataFrame) -> pd.DataFrame:
    """``shape_features`` of every row of ``cells`` (cell_id, source_path, channels, voxel_size_um); a cell whose
    image cannot be read gets NaN and its reason in ``error`` (the rest go on)."""
    from cellrep_core.data.images import read_cell_image

    rows = []
    for r in cells.itertuples(index=False):
        try:
            feats = shape_features(read_cell_image(Path(r.source_path), r.channels, r.cell_id),
                                   float(getattr(r, "voxel_size_um", 1.0) or 1.0))
            err = ""
        except Exception as e:  # noqa: BLE001 - one unreadable cell must not stop the table
            feats, err = dict.fromkeys(SHAPE_FEATURES, float("nan")), f"{type(e).__name__}: {e}"
        rows.append({"cell_id": r.cell_id, **feats, "error": err})
    return pd.DataFrame(rows, columns=["cell_id", *SHAPE_FEATURES, "error"])


# ---------------------------------------------------------------------------- PCA and correlations

@dataclass
class PCAResult:
    scores: np.ndarray  # [n, k]
    explained_variance_ratio: np.ndarray
    sd: np.ndarray  # [k] standard deviation of each PC's scores


def pca(features: np.ndarray, n_components: int = 20, seed: int = 0) -> PCAResult:
    from sklearn.decomposition import PCA

    k = int(min(n_components, features.shape[1], len(features) - 1))
    p = PCA(n_components=k, random_state=seed).fit(features)
    scores = p.transform(features)
    return PCAResult(scores, p.explained_variance_ratio_, scores.std(axis=0, ddof=1))


def pc_correlations(scores: np.ndarray, descriptors: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of every PC with every numeric descriptor column (pairwise complete cells)."""
    rows = []
    for c in descriptors.columns:
        v = pd.to_numeric(descriptors[c], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(v)
        if ok.sum() < 4 or np.nanstd(v[ok]) == 0:
            continue
        for j in range(scores.shape[1]):
            r = np.corrcoef(scores[ok, j], v[ok])[0, 1]
            rows.append({"pc": j + 1, "descriptor": c, "pearson_r": float(r), "n": int(ok.sum())})
    return pd.DataFrame(rows, columns=["pc", "descriptor", "pearson_r", "n"])


def nearest_rows(points: np.ndarray, space: np.ndarray, k: int = 1) -> np.ndarray:
    """Indices ``[m, k]`` of the k rows of ``space`` closest (Euclidean) to each point."""
    d = ((points[:, None, :] - space[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def pc_walk_points(res: PCAResult, pc: int, sigmas=WALK_SIGMAS, n_dims: int | None = None) -> np.ndarray:
    """Points ``[len(sigmas), d]`` along principal component ``pc`` (0-based) at ``sigmas`` of its sd, the
    other components at 0 (the mean); ``d`` the number of PCs compared (default all)."""
    d = n_dims or res.scores.shape[1]
    pts = np.zeros((len(sigmas), d))
    pts[:, pc] = np.asarray(sigmas) * res.sd[pc]
    return pts


# ---------------------------------------------------------------------------- archetypes

def archetypes(x: np.ndarray, k: int, n_iter: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Archetypal analysis: archetypes ``Z = B X`` (rows of B convex weights over cells) and cell weights ``A``
    (rows convex over archetypes) minimising ``|X - A Z|²``; alternating projected gradient steps on the
    simplex, furthest-sum initialisation. Returns (archetypes [k, d], A [n, k], residual sum of squares)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    # furthest-sum initialisation: start from a random cell, add the cell furthest from those chosen
    idx = [int(rng.integers(n))]
    for _ in range(k - 1):
        d = np.sqrt(((x[:, None, :] - x[idx][None]) ** 2).sum(-1)).sum(1)
        d[idx] = -1
        idx.append(int(np.argmax(d)))
    b = np.zeros((k, n))
    b[np.arange(k), idx] = 1.0
    a = np.full((n, k), 1.0 / k)
    prev = np.inf
    for _ in range(n_iter):
        z = b @ x
        a = _simplex_ls(z, x, a)
        z_target = np.linalg.lstsq(a, x, rcond=None)[0]  # unconstrained archetypes, then projected on the hull
        b = _simplex_ls(x, z_target, b)
        rss = float(((x - a @ (b @ x)) ** 2).sum())
        if prev - rss < 1e-6 * prev:  # converged
            break
        prev = rss
    z = b @ x
    return z, a, float(((x - a @ z) ** 2).sum())


def _simplex_ls(basis: np.ndarray, target: np.ndarray, w0: np.ndarray, steps: int = 10) -> np.ndarray:
    """Rows w of ``W`` on the simplex minimising ``|target - W basis|²`` (projected gradient, warm start)."""
    w = w0.copy()
    lip = max(float(np.linalg.norm(basis, 2)) ** 2, 1e-12)  # largest eigenvalue of basis basisᵀ
    for _ in range(steps):
        grad = (w @ basis - target) @ basis.T
        w = _project_simplex(w - grad / lip)
    return w


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008)."""
    n, k = v.shape
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1
    ind = np.arange(1, k + 1)
    cond = u - css / ind > 0
    rho = k - 1 - np.argmax(cond[:, ::-1], axis=1)
    theta = css[np.arange(n), rho] / (rho + 1)
    return np.maximum(v - theta[:, None], 0)


def choose_n_archetypes(x: np.ndarray, k_range=range(2, 9), seed: int = 0, tol: float = 0.1) -> tuple[int, dict]:
    """The elbow of the residual sum of squares: the smallest k after which one more archetype reduces the RSS
    by less than ``tol`` of the reduction from 1 archetype (the mean) to 2. Returns (k, {k: rss})."""
    rss = {1: float(((x - x.mean(0)) ** 2).sum())}
    for k in k_range:
        rss[k] = archetypes(x, k, seed=seed)[2]
    first = rss[1] - rss[min(k_range)]
    ks = sorted(k_range)
    for k, k_next in zip(ks[:-1], ks[1:], strict=False):
        if rss[k] - rss[k_next] < tol * first:
            return k, rss
    return ks[-1], rss


# ---------------------------------------------------------------------------- nuclear-volume bins, map

def nuclear_volume_bins(nuclear_volume: np.ndarray, scores: np.ndarray, n_bins: int = 5) -> pd.DataFrame:
    """Quantile bins of nuclear volume: per bin its range, cell count, mean code and closest real cell."""
    v = np.asarray(nuclear_volume, dtype=float)
    ok = np.isfinite(v)
    edges = np.quantile(v[ok], np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = ok & (which == b)
        if not sel.any():
            continue
        centre = scores[sel].mean(0)
        rows.append({"bin": b, "nuclear_volume_lo": float(edges[b]), "nuclear_volume_hi": float(edges[b + 1]),
                     "n_cells": int(sel.sum()), "closest_row": int(nearest_rows(centre[None], scores)[0, 0]),
                     "mean_code": centre})
    return pd.DataFrame(rows)


def embedding_map(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of the codes (perplexity ≤ 30, at most a third of the cells)."""
    from sklearn.manifold import TSNE

    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


# ---------------------------------------------------------------------------- decoding

def canonical_latents(model, items) -> tuple[np.ndarray, object]:
    """Every cell's canonical-frame decoder input (``model.latent``) and the evaluation batch it came from."""
    from cellrep_core.metrics.measures import eval_batch, latents_and_targets

    eb = eval_batch(model.cfg, items)
    lat, _ = latents_and_targets(model, eb)
    return lat.numpy(), eb


def decode_shapes(model, latents: np.ndarray, eb, inside_fraction: float | None = None) -> tuple[list, float]:
    """Decoded shapes of decoder inputs ``[m, D]``: boolean inside volumes on the 16³ evaluation grid (SDF models)
    or ``[n, 4]`` points (punctate), and the SDF level used.

    The inside is SDF < 0. A decoder that has not learned the shapes well predicts too little inside (1 - IoU
    near 1 in the benchmark) and every decoded shape would be empty; when the zero level holds less than half of
    ``inside_fraction`` (the real cells' mean share of inside grid points), one level for all the shapes of a
    strip is taken instead, the quantile of their pooled SDF values at that share, so the shapes keep their
    differences and the caption says so."""
    import torch

    with torch.no_grad():
        out = model.decode_latent(torch.as_tensor(latents, dtype=torch.float32), eb.take(np.zeros(len(latents), int)))
    out = out.numpy()
    if model.cfg.kind == "punctate":
        return list(out), 0.0
    level = 0.0
    if inside_fraction is not None and (out < 0).mean() < 0.5 * inside_fraction:
        level = float(np.quantile(out, inside_fraction))
    side = round(out.shape[1] ** (1 / 3))
    return [o.reshape(side, side, side) < level for o in out], level


def shape_views(shape: np.ndarray) -> np.ndarray:
    """Three-view picture of a decoded shape (inside volume, or points rasterised onto a 32³ grid)."""
    from cellrep_core.analysis.render import cell_views

    if shape.ndim == 2:  # points in [-1, 1]
        grid = np.zeros((32, 32, 32), np.float32)
        ijk = np.clip(((shape[:, :3] + 1) / 2 * 31).round().astype(int), 0, 31)
        grid[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = 1.0
        return cell_views({"structure": grid})
    return cell_views({"structure": shape.astype(np.float32)})


# ---------------------------------------------------------------------------- one data set, end to end

@dataclass
class Interpretation:
    dataset: str
    model_version: str
    cells: pd.DataFrame  # cell_id, label, shape features, hand-crafted features
    pca: PCAResult
    correlations: pd.DataFrame
    walks: dict[int, pd.DataFrame]  # pc (1-based) -> sigma, closest cell_id
    archetype_cells: pd.DataFrame
    archetype_rss: dict[int, float]
    bins: pd.DataFrame
    pictures: dict[str, Path]

    def volume_pc(self, descriptor: str = "structure_volume") -> tuple[int, float]:
        return best_pc(self.correlations, descriptor)


def best_pc(corr: pd.DataFrame, descriptor: str = "structure_volume") -> tuple[int, float]:
    """The PC most correlated (|r|) with a descriptor, and its r (0, NaN when the descriptor is absent)."""
    c = corr[corr.descriptor == descriptor]
    if c.empty:
        return 0, float("nan")
    r = c.loc[c.pearson_r.abs().idxmax()]
    return int(r.pc), float(r.pearson_r)


class _Tiles:
    """What the pictures of one data set share: the codes' PCA, the cells, and decoding of points in PC space
    (the canonical latents of the closest cells, averaged, through the model's decoder)."""

    def __init__(self, model, lat, eb, inside, res: PCAResult, cells: pd.DataFrame, out_dir: Path) -> None:
        self.model, self.lat, self.eb, self.inside, self.res, self.cells = model, lat, eb, inside, res, cells
        self.out_dir = out_dir
        self.d_near = min(10, res.scores.shape[1])  # closest cells in the top PCs
        self.levels: list[float] = []

    def nearest(self, points: np.ndarray, k: int = 1) -> np.ndarray:
        return nearest_rows(points[:, : self.d_near], self.res.scores[:, : self.d_near], k)

    def decoded(self, points: np.ndarray) -> list[np.ndarray]:
        shapes, level = decode_shapes(self.model, self.lat[self.nearest(points, DECODE_NEIGHBOURS)].mean(axis=1),
                                      self.eb, self.inside)
        self.levels.append(level)
        return shapes

    def dlabel(self, text: str) -> str:
        lv = self.levels
        return f"decoded {text}" + (f"\n(SDF < {lv[-1]:.3f})" if lv and lv[-1] != 0 else "")

    def real(self, i: int) -> np.ndarray | None:
        from cellrep_core.analysis.render import read_cell_views

        r = self.cells.iloc[i]
        try:
            return read_cell_views(r.source_path, r.channels, r.cell_id)
        except Exception:  # noqa: BLE001 - a moved image leaves an empty tile, not a failed analysis
            return None

    def caption(self, i: int, extra: str = "") -> str:
        r = self.cells.iloc[i]
        vol = r.get("structure_volume")
        return f"{r.cell_id}{extra}\nV {vol:.0f}" if pd.notna(vol) else f"{r.cell_id}{extra}"

    def page(self, name: str, real_row: list, decoded_row: list, title: str) -> Path:
        from cellrep_core.analysis.render import tiles_png

        path = self.out_dir / f"{name}.png"
        tiles_png([real_row, decoded_row], path, title, row_labels=["closest cell", "decoded"])
        return path


def _walk_pictures(t: _Tiles, corr: pd.DataFrame, dataset: str, pictures: dict) -> dict[int, pd.DataFrame]:
    """Walks along the top PCs (and the PC that follows structure volume): closest cells and decoded shapes."""
    res, walks = t.res, {}
    vol_pc, _ = best_pc(corr)
    walk_pcs = sorted(set(range(1, min(N_WALK_PCS, res.scores.shape[1]) + 1)) | ({vol_pc} if vol_pc else set()))
    for pc in walk_pcs:
        pts = pc_walk_points(res, pc - 1)
        near = t.nearest(pts)[:, 0]
        walks[pc] = pd.DataFrame({"sigma": WALK_SIGMAS, "cell_id": t.cells.cell_id.iloc[near].to_numpy(),
                                  "score": res.scores[near, pc - 1]})
        decoded = t.decoded(pts)
        r_vol = corr[(corr.pc == pc) & (corr.descriptor == "structure_volume")].pearson_r
        tag = f"; r with structure volume {r_vol.iloc[0]:+.2f}" if len(r_vol) else ""
        pictures[f"walk_pc{pc}"] = t.page(
            f"walk_pc{pc}", [(t.real(i), t.caption(i, f" ({s:+g}σ)")) for i, s in zip(near, WALK_SIGMAS, strict=True)],
            [(shape_views(d), t.dlabel(f"{s:+g}σ")) for d, s in zip(decoded, WALK_SIGMAS, strict=True)],
            f"{dataset}: PC {pc} ({100 * res.explained_variance_ratio[pc - 1]:.0f} % of the variance{tag}), "
            "-2σ … +2σ")
    return walks


def _archetype_pictures(t: _Tiles, dataset: str, seed: int, pictures: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """Archetypes of the codes in the top PCs (their number by the elbow of the residual), closest cells and
    decoded shapes; returns the archetype table and the residuals."""
    xa = t.res.scores[:, : t.d_near]
    k, rss = choose_n_archetypes(xa, seed=seed)
    z, _, _ = archetypes(xa, k, seed=seed)
    near = nearest_rows(z, xa, 1)[:, 0]
    decoded = t.decoded(np.pad(z, ((0, 0), (0, t.res.scores.shape[1] - t.d_near))))
    pictures["archetypes"] = t.page(
        "archetypes", [(t.real(i), t.caption(i, f" (A{j + 1})")) for j, i in enumerate(near)],
        [(shape_views(d), t.dlabel(f"A{j + 1}")) for j, d in enumerate(decoded)],
        f"{dataset}: {k} archetypes (elbow of the residual over 2-8)")
    return pd.DataFrame({"archetype": np.arange(1, k + 1), "cell_id": t.cells.cell_id.iloc[near].to_numpy()}), rss


def _bin_pictures(t: _Tiles, dataset: str, pictures: dict) -> pd.DataFrame:
    """Mean code per nuclear-volume bin (a pseudo cell cycle): closest cell and decoded shape per bin."""
    cells = t.cells
    if cells.nuclear_volume.notna().sum() < 10:
        return pd.DataFrame()
    bins = nuclear_volume_bins(cells.nuclear_volume.to_numpy(float), t.res.scores)
    dec = t.decoded(np.stack(bins.mean_code.to_numpy()))
    pictures["nuclear_volume_bins"] = t.page(
        "nuclear_volume_bins",
        [(t.real(int(r.closest_row)), f"{r.nuclear_volume_lo:.0f}-{r.nuclear_volume_hi:.0f} µm³\n"
          f"{cells.cell_id.iloc[int(r.closest_row)]}") for r in bins.itertuples()],
        [(shape_views(d), t.dlabel(f"bin {b}")) for b, d in zip(bins.bin, dec, strict=True)],
        f"{dataset}: mean code per nuclear-volume bin (pseudo cell cycle)")
    return bins.assign(closest_cell_id=cells.cell_id.iloc[bins.closest_row].to_numpy()).drop(
        columns=["closest_row", "mean_code"])


def _described_cells(wh, meta: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The embedded cells with their shape features and hand-crafted features."""
    cells = wh.query("SELECT cell_id, label, source_path, channels, voxel_size_um FROM cells WHERE dataset = ?",
                     [dataset])
    cells = meta[["cell_id"]].merge(cells, on="cell_id", how="left")
    shapes = shape_feature_table(cells)
    hc = wh.query("SELECT cell_id, volume, surface_area, n_pieces, mean_piece_distance FROM handcrafted_features "
                  "WHERE dataset = ?", [dataset])
    return cells.merge(shapes, on="cell_id", how="left").merge(hc, on="cell_id", how="left")


def interpret_dataset(wh, fs, dataset: str, out_dir: Path, model_version: str | None = None,
                      partition: str = "reference", n_components: int = 20, seed: int = 0,
                      progress=None) -> Interpretation:
    """PCA, correlations, walks (real and decoded), archetypes, nuclear-volume bins and a 2-D map of a data set's
    codes by its base model (or ``model_version``); pictures under ``out_dir``."""
    from cellrep_core import paths, pipeline
    from cellrep_core.models.inference import load_model
    from cellrep_core.pointclouds.build import read_pointclouds

    say = progress or (lambda msg: None)
    tm = pipeline.model_by_version(wh, model_version) if model_version else pipeline.latest_model(wh, dataset)
    meta, vecs = fs.load({"dataset": dataset, "model_version": tm.version})
    if len(meta) < 8:
        raise LookupError(f"{dataset}: {len(meta)} cells embedded by {tm.version}; embed the data set first "
                          "(at least 8 cells)")
    # PCA of the raw codes: the whitened ones have unit variance along every axis of the training cells, so their
    # principal components would be arbitrary (explained variance 1/d each on the reference set itself)
    x = np.asarray(vecs, dtype=np.float64)
    say(f"{dataset}: shape features of {len(meta)} cells")
    cells = _described_cells(wh, meta, dataset)
    res = pca(x, n_components, seed)
    desc_cols = [c for c in (*SHAPE_FEATURES, "volume", "surface_area", "n_pieces", "mean_piece_distance")
                 if c in cells.columns]
    corr = pc_correlations(res.scores, cells[desc_cols])
    say(f"{dataset}: canonical latents for decoding")
    model = load_model(tm.path)
    items = {it.cell_id: it for it in read_pointclouds(paths.pointcloud_path(dataset, partition))}
    lat, eb = canonical_latents(model, [items[c] for c in meta.cell_id])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = _Tiles(model, lat, eb, _true_inside_fraction(model, eb), res, cells, out_dir)
    pictures: dict[str, Path] = {}
    say(f"{dataset}: walks along the top PCs")
    walks = _walk_pictures(tiles, corr, dataset, pictures)
    say(f"{dataset}: archetypes")
    arch, rss = _archetype_pictures(tiles, dataset, seed, pictures)
    say(f"{dataset}: nuclear-volume bins")
    bins = _bin_pictures(tiles, dataset, pictures)
    say(f"{dataset}: 2-D map")
    pictures["map"] = _map_plot(embedding_map(x, seed), cells, out_dir / "map.png", dataset)
    pictures["correlations"] = _corr_plot(corr, res, out_dir / "pc_correlations.png", dataset)
    return Interpretation(dataset, tm.version, cells.drop(columns=["source_path", "channels"]), res, corr, walks,
                          arch, rss, bins, pictures)


def _true_inside_fraction(model, eb) -> float | None:
    """The real cells' mean share of inside points on the evaluation grid (SDF models), else None."""
    if model.cfg.kind == "punctate":
        return None
    import torch

    with torch.no_grad():
        tgt = model.target(eb.take(slice(0, min(len(eb), 64))))
    return float((tgt < 0).float().mean())


def _map_plot(xy: np.ndarray, cells: pd.DataFrame, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = cells["label"].astype(str).fillna("")
    for lab in sorted(set(labels)):
        sel = (labels == lab).to_numpy()
        a.scatter(xy[sel, 0], xy[sel, 1], s=10, label=lab)
    if labels.nunique() <= 12:
        a.legend(fontsize=7, title="label", markerscale=1.5)
    a.set_title(f"{title}: t-SNE of the codes by label", fontsize=9)
    vol = pd.to_numeric(cells.get("structure_volume"), errors="coerce")
    sc = b.scatter(xy[:, 0], xy[:, 1], s=10, c=vol, cmap="viridis")
    fig.colorbar(sc, ax=b, label="structure volume")
    b.set_title("by structure volume", fontsize=9)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out, dpi=90)


def _corr_plot(corr: pd.DataFrame, res: PCAResult, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = corr[corr.pc <= 8].pivot(index="descriptor", columns="pc", values="pearson_r")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(top) + 1.5))
    im = ax.imshow(top.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(top)), top.index, fontsize=8)
    ax.set_xticks(range(top.shape[1]),
                  [f"PC{p}\n{100 * res.explained_variance_ratio[p - 1]:.0f}%" for p in top.columns], fontsize=7)
    for (i, j), v in np.ndenumerate(top.to_numpy()):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="Pearson r")
    ax.set_title(f"{title}: principal components of the codes against shape features", fontsize=9)
    return save_figure(fig, out, dpi=90)
