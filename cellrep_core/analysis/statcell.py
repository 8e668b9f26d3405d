"""Training and analyses of the stacked conditional beta-VAE (seed 003), free of the warehouse and of Dagster.

- ``train_statcell``: the reference model on the cells' reference volumes, its posterior means as conditions
  (with a one-hot structure label), then the conditional model of the structure; both through ``train_model``
  (content-addressed versions, lineage, resumable checkpoints).
- ``structure_given_shape``: a cell's conditional latent (posterior mean) given its own reference latent, the
  feature set profiled as ``structure_given_shape``.
- ``kl_per_dimension``, ``coupling``, ``beta_sweep``, ``conditional_generation``: the seed's analyses, and
  ``plot_beta_sweep`` / ``generation_png`` their pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellrep_core.models.config import ModelConfig, variant
from cellrep_core.models.inference import embed_items, load_model
from cellrep_core.models.statcell import StatCellVAE
from cellrep_core.models.train import TrainedModel, train_model
from cellrep_core.pointclouds.items import CloudItem

# a latent dimension counts as used when its mean KL over cells exceeds this (nats)
ACTIVE_KL = 0.05


@dataclass
class CellVolumes:
    """One cell in its nucleus frame: reference channels ``[C, S, S, S]``, structure ``[1, S, S, S]``, label."""

    cell_id: str
    reference: np.ndarray
    structure: np.ndarray
    label: str


@dataclass
class StatCell:
    """A trained pair: reference and conditional models, and the structure labels of the one-hot condition."""

    ref: TrainedModel
    cond: TrainedModel
    labels: list[str]


def one_hot(labels: list[str], vocab: list[str], cell_ids: list[str] | None = None) -> np.ndarray:
    """``[n, len(vocab)]`` one-hot rows; a label outside ``vocab`` raises naming the cell."""
    out = np.zeros((len(labels), len(vocab)), np.float32)
    for i, lab in enumerate(labels):
        if lab not in vocab:
            who = f"cell {cell_ids[i]}: " if cell_ids else ""
            raise LookupError(f"{who}structure {lab!r} was not in the conditional model's training set {vocab}")
        out[i, vocab.index(lab)] = 1.0
    return out


def reference_items(cells: list[CellVolumes]) -> list[CloudItem]:
    return [CloudItem(c.cell_id, np.zeros((0, 3), np.float32), volume=c.reference) for c in cells]


def conditions(ref_model: StatCellVAE, cells: list[CellVolumes], vocab: list[str]) -> np.ndarray:
    """The condition of each cell: its reference latent (posterior mean) and its one-hot structure label."""
    z = embed_items(ref_model, reference_items(cells))
    return np.concatenate([z, one_hot([c.label for c in cells], vocab, [c.cell_id for c in cells])], 1)


def structure_items(cells: list[CellVolumes], cond: np.ndarray) -> list[CloudItem]:
    return [CloudItem(c.cell_id, np.zeros((0, 3), np.float32), volume=c.structure, condition=cond[i])
            for i, c in enumerate(cells)]


def train_statcell(cells: list[CellVolumes], ref_cfg: ModelConfig, cond_cfg: ModelConfig, models_root: Path,
                   lineage: dict | None = None, force: bool = False) -> StatCell:
    """Train (or reuse) the reference model, then the conditional model on the reference's posterior means."""
    if len(cells) < 8:
        raise ValueError(f"the stacked beta-VAE needs at least 8 cells, got {len(cells)}")
    n_ref = {c.reference.shape[0] for c in cells}
    if len(n_ref) != 1:
        raise ValueError(f"cells disagree on the number of reference channels: {sorted(n_ref)}")
    ref_cfg = variant(ref_cfg, ref_channels=n_ref.pop(), image_size=cells[0].reference.shape[-1])
    ref = train_model(ref_cfg, reference_items(cells), models_root, lineage={**(lineage or {}), "role": "reference"},
                      force=force)
    vocab = sorted({c.label for c in cells})
    cond = conditions(load_model(ref.path), cells, vocab)
    cond_cfg = variant(cond_cfg, cond_dim=cond.shape[1], n_labels=len(vocab), image_size=cells[0].structure.shape[-1])
    tm = train_model(cond_cfg, structure_items(cells, cond), models_root,
                     lineage={**(lineage or {}), "role": "conditional", "reference_version": ref.version,
                              "labels": vocab}, force=force)
    return StatCell(ref, tm, vocab)


def load_statcell(ref_path: Path, cond_path: Path) -> tuple[StatCellVAE, StatCellVAE, list[str]]:
    """The two modules of a trained pair and the label vocabulary (from the conditional model's lineage)."""
    import json

    labels = json.loads((Path(cond_path) / "lineage.json").read_text()).get("labels", [])
    return load_model(ref_path), load_model(cond_path), labels


def structure_given_shape(ref_model: StatCellVAE, cond_model: StatCellVAE, labels: list[str],
                          cells: list[CellVolumes]) -> np.ndarray:
    """``[n, latent]``: each cell's conditional latent (posterior mean) given its own reference latent."""
    cond = conditions(ref_model, cells, labels)
    return embed_items(cond_model, structure_items(cells, cond))


# ------------------------------------------------------------------------------------------ analyses


@torch.no_grad()
def per_cell_terms(model: StatCellVAE, items: list[CloudItem], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-cell reconstruction NLL and KL (posterior mean decoded), and KL per dimension ``[n, D]``."""
    from cellrep_core.models.statcell import pack_inputs

    model.eval()
    rec, kl, kld = [], [], []
    for s in range(0, len(items), batch_size):
        x = torch.as_tensor(np.stack([pack_inputs(it) for it in items[s:s + batch_size]]))
        out = model.losses(x, sample=False)
        rec.append(out["recon"].numpy())
        kl.append(out["kl"].numpy())
        kld.append(out["kl_per_dim"].numpy())
    return {"recon": np.concatenate(rec), "kl": np.concatenate(kl), "kl_per_dim": np.concatenate(kld)}


def kl_per_dimension(model: StatCellVAE, items: list[CloudItem]) -> pd.DataFrame:
    """Mean KL (nats) of each latent dimension over the cells, sorted high to low, and whether it is used."""
    kld = per_cell_terms(model, items)["kl_per_dim"].mean(0)
    df = pd.DataFrame({"dimension": np.arange(len(kld)), "mean_kl": kld})
    return df.assign(active=df.mean_kl > ACTIVE_KL).sort_values("mean_kl", ascending=False, ignore_index=True)


def coupling(ref_model: StatCellVAE, cond_model: StatCellVAE, labels: list[str], cells: list[CellVolumes],
             n_shuffles: int = 5, seed: int = 0, cond: np.ndarray | None = None) -> dict[str, float]:
    """How much of the structure the reference explains: the conditional model's mean reconstruction NLL per
    cell with each cell's own reference latent against the same with the reference latents shuffled among the
    cells (labels kept; mean over ``n_shuffles`` permutations). ``relative_gain`` = 1 - true / shuffled.
    ``cond``: the cells' conditions when already computed."""
    cond = conditions(ref_model, cells, labels) if cond is None else cond
    d_ref = ref_model.cfg.latent_dim
    true = per_cell_terms(cond_model, structure_items(cells, cond))["recon"].mean()
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(n_shuffles):
        c = cond.copy()
        c[:, :d_ref] = cond[rng.permutation(len(cond)), :d_ref]
        shuffled.append(per_cell_terms(cond_model, structure_items(cells, c))["recon"].mean())
    sh = float(np.mean(shuffled))
    return {"recon_true": float(true), "recon_shuffled": sh, "relative_gain": 1.0 - float(true) / sh,
            "n_cells": len(cells)}


def beta_sweep(cells: list[CellVolumes], ref: TrainedModel, cond_cfg: ModelConfig, labels: list[str],
               betas: list[float], models_root: Path, eval_cells: list[CellVolumes] | None = None,
               lineage: dict | None = None) -> pd.DataFrame:
    """Train the conditional model at each ``beta`` (same reference) and report, on ``eval_cells`` (default: the
    training cells), the mean reconstruction NLL (distortion) and KL (rate) per cell and the used dimensions."""
    ref_model = load_model(ref.path)
    cond = conditions(ref_model, cells, labels)
    ev = eval_cells or cells
    ev_cond = cond if eval_cells is None else conditions(ref_model, ev, labels)
    rows = []
    for b in betas:
        cfg = variant(cond_cfg, beta=float(b), cond_dim=cond.shape[1], n_labels=len(labels),
                      image_size=cells[0].structure.shape[-1])
        tm = train_model(cfg, structure_items(cells, cond), models_root,
                         lineage={**(lineage or {}), "role": "beta_sweep", "reference_version": ref.version,
                                  "labels": labels})
        terms = per_cell_terms(load_model(tm.path), structure_items(ev, ev_cond))
        rows.append({"beta": float(b), "model_version": tm.version, "reconstruction_nll": float(terms["recon"].mean()),
                     "kl": float(terms["kl"].mean()),
                     "active_dims": int((terms["kl_per_dim"].mean(0) > ACTIVE_KL).sum()),
                     "latent_dim": cfg.latent_dim, "n_cells": len(ev)})
    return pd.DataFrame(rows)


def conditional_generation(ref_model: StatCellVAE, cond_model: StatCellVAE, labels: list[str],
                           cells: list[CellVolumes], n_samples: int = 16, quantile: float = 0.2, seed: int = 0,
                           cond: np.ndarray | None = None) -> dict:
    """Structures generated for the cells with the smallest and the largest nuclei (bottom / top ``quantile`` of
    reference volume): for each group, ``n_samples`` prior draws decoded under every cell's own condition; the
    mean generated structure volume (voxels with probability > 0.5, and the sum of the probabilities, in frame
    voxels) against the real one. ``cond``: the cells' conditions when already computed."""
    cond = conditions(ref_model, cells, labels) if cond is None else cond
    ref_vol = np.array([c.reference[0].sum() for c in cells])
    real = np.array([c.structure.sum() for c in cells])
    lo, hi = np.quantile(ref_vol, [quantile, 1 - quantile])
    gen = torch.Generator().manual_seed(seed)
    out: dict = {}
    for name, sel in (("small", ref_vol <= lo), ("large", ref_vol >= hi)):
        idx = np.flatnonzero(sel)
        vols, sums, first = [], [], None
        for i in idx:
            p = cond_model.sample(torch.from_numpy(cond[i]), n_samples, gen)
            vols.append(float((p > 0.5).sum(dim=(1, 2, 3, 4)).float().mean()))
            sums.append(float(p.sum(dim=(1, 2, 3, 4)).mean()))
            if first is None:
                first = (cells[i].cell_id, cells[i].reference, p[:4].numpy())
        out[name] = {"n_cells": len(idx), "reference_volume": float(ref_vol[idx].mean()),
                     "real_structure_volume": float(real[idx].mean()),
                     "generated_structure_volume": float(np.mean(vols)),
                     "generated_probability_sum": float(np.mean(sums)), "example": first}
    return out


def generation_png(gen: dict, out: Path | None, title: str = "") -> bytes:
    """Tiles: for the small- and the large-nucleus example cell, its nucleus with four generated structures."""
    from cellrep_core.analysis.render import cell_views, tiles_png

    rows = []
    for name in ("small", "large"):
        cell_id, ref, samples = gen[name]["example"]
        rows.append([(cell_views({"nucleus": ref[0], "structure": s[0]}),
                      f"{cell_id}: draw {k + 1}" if k == 0 else f"draw {k + 1}") for k, s in enumerate(samples)])
    labels = [f"{name} nucleus" for name in ("small", "large")]
    return tiles_png(rows, out, title=title or "structures generated for a small and a large nucleus",
                     row_labels=labels)


def plot_beta_sweep(sweep: pd.DataFrame, out: Path | None = None) -> bytes:
    """Rate-distortion curve of a beta sweep: KL per cell (rate) against reconstruction NLL (distortion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellrep_core.analysis.render import figure_png

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(sweep.kl, sweep.reconstruction_nll, "o-", color="tab:purple")
    for r in sweep.itertuples():
        ax.annotate(f"β={r.beta:g} ({r.active_dims} dims)", (r.kl, r.reconstruction_nll), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("rate: KL per cell (nats)")
    ax.set_ylabel("distortion: reconstruction NLL per cell (nats)")
    ax.set_title("structure given shape: β sweep", fontsize=9)
    fig.tight_layout()
    return figure_png(fig, out)
