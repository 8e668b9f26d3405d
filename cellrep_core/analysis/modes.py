"""Shape modes by deep embedded clustering (seed 002, cellshape): IDEC on a trained point-cloud autoencoder.

* Codes: the encoder's invariant code ``z``, standardised per dimension with the mean and sd of the initial
  codes (fixed buffers: the code's components are norms on very different scales, and an unscaled Euclidean
  distance would cluster on the largest one only).
* Centres: k-means (scikit-learn, 10 starts) on the initial standardised codes; ``k`` by the best silhouette
  over a range (``choose_k``) unless given.
* Soft assignment q_ij ∝ (1 + ‖z_i − μ_j‖²/α)^−(α+1)/2, α = 1; target p_ij = q_ij² / Σ_i q_ij, row-normalised,
  recomputed on every cell (fixed input draw) every ``update_interval`` training steps.
* Loss: the autoencoder's reconstruction loss + γ · KL(P‖Q) (γ = 100 as published), so the encoder is
  fine-tuned with the clustering (IDEC: the reconstruction keeps the code meaningful); Adam on encoder,
  decoder and centres.
* Stop when fewer than ``tol`` of the cells changed their hard mode between two target updates, or at
  ``max_epochs``.

Comparison of treatments (``mode_distributions``): each treatment's mean soft assignment (its shape-mode
profile, the 3DQMS), the KL divergence of it from DMSO's on the same plate or screen, and a hierarchical
clustering of treatments by those profiles.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cellrep_core.atomic import save_figure

log = logging.getLogger(__name__)
ALPHA = 1.0
GAMMA = 100.0


def soft_assign(z: torch.Tensor, centres: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Student-t soft assignment ``[n, k]`` of codes ``[n, d]`` to centres ``[k, d]``."""
    d2 = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
    q = (1.0 + d2 / alpha) ** (-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """Sharpened target p_ij = q_ij² / f_j (f_j = Σ_i q_ij), row-normalised."""
    w = q**2 / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def choose_k(codes: np.ndarray, k_range=range(2, 9), seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k of the best silhouette of k-means over ``k_range`` on standardised codes."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    scores = {}
    for k in k_range:
        if k >= len(codes):
            break
        lab = KMeans(k, n_init=10, random_state=seed).fit_predict(codes)
        scores[k] = float(silhouette_score(codes, lab)) if len(set(lab)) > 1 else -1.0
    return max(scores, key=scores.get), scores


class _Indexed(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], "index": torch.tensor(i)}


class IDEC(L.LightningModule):
    """An autoencoder fine-tuned with a clustering loss on its standardised invariant code."""

    def __init__(self, autoencoder, centres: np.ndarray, mean: np.ndarray, sd: np.ndarray, n_cells: int,
                 gamma: float = GAMMA, lr: float = 1e-4) -> None:
        super().__init__()
        self.ae = autoencoder
        self.centres = torch.nn.Parameter(torch.as_tensor(centres, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32))
        self.register_buffer("target", torch.full((n_cells, len(centres)), 1.0 / len(centres)))
        self.gamma, self.lr = gamma, lr

    def codes(self, points: torch.Tensor) -> torch.Tensor:
        return (self.ae.encoder(points)["z"] - self.mean) / self.sd

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        rec = self.ae.per_item_loss(batch).mean()
        q = soft_assign(self.codes(batch["points"]), self.centres)
        p = self.target[batch["index"]]
        kl = (p * (torch.log(p + 1e-12) - torch.log(q + 1e-12))).sum(1).mean()
        loss = rec + self.gamma * kl
        self.log_dict({"rec": rec, "kl": kl}, batch_size=len(batch["index"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class _TargetUpdate(L.Callback):
    """Recompute the target every ``interval`` steps on every cell; stop once < ``tol`` of the modes change."""

    def __init__(self, inputs: torch.Tensor, interval: int, tol: float) -> None:
        self.inputs, self.interval, self.tol = inputs, interval, tol
        self.labels: np.ndarray | None = None
        self.changes: list[float] = []

    @torch.no_grad()
    def assign(self, m: IDEC) -> torch.Tensor:
        was = m.training
        m.eval()
        q = torch.cat([soft_assign(m.codes(self.inputs[s:s + 64].to(m.device)), m.centres)
                       for s in range(0, len(self.inputs), 64)])
        m.train(was)
        return q

    def on_train_batch_start(self, trainer, m: IDEC, batch, batch_idx: int) -> None:
        if trainer.global_step % self.interval:
            return
        q = self.assign(m)
        m.target.copy_(target_distribution(q))
        lab = q.argmax(1).cpu().numpy()
        if self.labels is not None:
            changed = float((lab != self.labels).mean())
            self.changes.append(changed)
            if changed < self.tol:
                trainer.should_stop = True
        self.labels = lab


@dataclass
class ModeFit:
    k: int
    soft: np.ndarray  # [n, k] final soft assignments
    modes: np.ndarray  # [n] hard modes
    kmeans_modes: np.ndarray  # [n] k-means on the frozen initial codes, same k
    initial_codes: np.ndarray  # [n, d] standardised initial codes
    final_codes: np.ndarray  # [n, d] standardised codes after fine-tuning
    centres: np.ndarray
    silhouette: dict[int, float]
    label_changes: list[float]
    epochs: int


def fit_modes(model, items, k: int | None = None, gamma: float = GAMMA, update_interval: int | None = None,
              tol: float = 0.001, max_epochs: int = 20, lr: float = 1e-4, batch_size: int = 16,
              seed: int = 0) -> ModeFit:
    """IDEC on ``model`` (a copy is fine-tuned; the given model is not changed) over ``items``."""
    from sklearn.cluster import KMeans

    from cellrep_core.models.zoo import make_dataset, model_inputs

    L.seed_everything(seed, workers=True, verbose=False)
    ae = copy.deepcopy(model).train()
    inputs = torch.as_tensor(np.stack([model_inputs(it, model.cfg, 0) for it in items]), dtype=torch.float32)
    with torch.no_grad():
        ae.eval()
        z0 = torch.cat([ae.encoder(inputs[s:s + 64])["z"] for s in range(0, len(inputs), 64)]).numpy()
    ae.train()
    mean, sd = z0.mean(0), np.maximum(z0.std(0), 1e-6)
    zs = (z0 - mean) / sd
    sil = {}
    if k is None:
        k, sil = choose_k(zs, seed=seed)
    km = KMeans(k, n_init=10, random_state=seed).fit(zs)
    idec = IDEC(ae, km.cluster_centers_, mean, sd, len(items), gamma=gamma, lr=lr)
    data = DataLoader(_Indexed(make_dataset(model.cfg, items, train=True, seed=seed)), batch_size=batch_size,
                      shuffle=True, generator=torch.Generator().manual_seed(seed))
    # the target is recomputed every ``update_interval`` steps (default: once an epoch)
    upd = _TargetUpdate(inputs, update_interval or max(1, len(data)), tol)
    from cellrep_core.models.train import _quiet_lightning
    from cellrep_core.progress import epoch_progress

    with _quiet_lightning():
        trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[upd, epoch_progress(f"shape modes (IDEC, k={k}) on {len(items)} cells",
                                                           max_epochs)])
        trainer.fit(idec, data)
    q = upd.assign(idec).cpu().numpy()
    with torch.no_grad():
        idec.eval()
        zf = torch.cat([idec.codes(inputs[s:s + 64]) for s in range(0, len(inputs), 64)]).numpy()
    return ModeFit(k, q, q.argmax(1), km.labels_, zs, zf, idec.centres.detach().numpy(), sil, upd.changes,
                   trainer.current_epoch)


def mode_distributions(meta: pd.DataFrame, soft: np.ndarray,
                       control: str = "DMSO") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per treatment (drug x concentration): its mean soft assignment and the KL divergence of it from DMSO's
    (KL(treatment ‖ DMSO), natural log). Returns (profiles [treatments x k], kl table)."""
    drug = meta["drug"].astype(str).to_numpy()
    conc = pd.to_numeric(meta["concentration"], errors="coerce").fillna(0.0).to_numpy()
    key = np.where(drug == control, control, pd.Series(drug) + " @ " + pd.Series(conc).map(lambda c: f"{c:g}"))
    prof = pd.DataFrame(soft, columns=[f"mode_{j + 1}" for j in range(soft.shape[1])]).groupby(key).mean()
    if control not in prof.index:
        raise ValueError(f"no {control} cells: the mode distributions are compared with {control}'s")
    ref = np.clip(prof.loc[control].to_numpy(), 1e-12, None)
    rows = []
    for t, p in prof.drop(index=control).iterrows():
        pv = np.clip(p.to_numpy(), 1e-12, None)
        d, c = t.split(" @ ")
        rows.append({"drug": d, "concentration": float(c), "kl_from_dmso": float((pv * np.log(pv / ref)).sum()),
                     "n_cells": int((key == t).sum())})
    return prof, pd.DataFrame(rows).sort_values("kl_from_dmso", ascending=False).reset_index(drop=True)


# ---------------------------------------------------------------------------- data sets and screens

def dataset_modes(wh, dataset: str, partition: str = "reference", k: int | None = None, max_epochs: int = 10,
                  seed: int = 0) -> tuple[ModeFit, pd.DataFrame, dict]:
    """IDEC on a reference data set with its base model: the fit, a per-cell table (cell_id, label, mode,
    kmeans_mode, soft) and agreement with the label (adjusted Rand index of DEC and of k-means on the frozen
    codes at the same k)."""
    from sklearn.metrics import adjusted_rand_score

    from cellrep_core import paths, pipeline
    from cellrep_core.models.inference import load_model
    from cellrep_core.pointclouds.build import read_pointclouds

    tm = pipeline.latest_model(wh, dataset)
    items = read_pointclouds(paths.pointcloud_path(dataset, partition))
    fit = fit_modes(load_model(tm.path), items, k=k, max_epochs=max_epochs, seed=seed)
    labels = wh.query("SELECT cell_id, label FROM cells WHERE dataset = ?", [dataset]).set_index("cell_id")
    lab = labels.reindex([it.cell_id for it in items]).label.astype(str).to_numpy()
    cells = pd.DataFrame({"scope": "dataset", "scope_id": dataset, "cell_id": [it.cell_id for it in items],
                          "label": lab, "mode": fit.modes + 1, "kmeans_mode": fit.kmeans_modes + 1,
                          "soft": [list(map(float, r)) for r in fit.soft], "model_version": tm.version})
    stats = {"k": fit.k, "ari_dec": float(adjusted_rand_score(lab, fit.modes)),
             "ari_kmeans": float(adjusted_rand_score(lab, fit.kmeans_modes)), "epochs": fit.epochs,
             "silhouette": fit.silhouette, "label_changes": fit.label_changes}
    return fit, cells, stats


def screen_modes(wh, screen_id: str, k: int | None = None, max_epochs: int = 3,
                 seed: int = 0) -> tuple[ModeFit, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """IDEC on a screen's cells with the base model that embedded its plates: the fit, per-cell modes, mode
    profiles per treatment, and each treatment's KL divergence from DMSO (with its planted effect, if any)."""
    from cellrep_core import paths, pipeline
    from cellrep_core.models.inference import load_model
    from cellrep_core.pointclouds.build import read_pointclouds

    plates = pipeline.screens(wh).get(screen_id)
    if not plates:
        raise LookupError(f"no plate registered for screen {screen_id!r}")
    bases = {pipeline.plate_models(wh, p)[0].version for p in plates}
    if len(bases) > 1:
        raise LookupError(f"screen {screen_id}: plates embedded by different base models {sorted(bases)}")
    tm = pipeline.model_by_version(wh, bases.pop())
    items = [it for p in plates for it in read_pointclouds(paths.pointcloud_path(pipeline.PLATES_DATASET, p))]
    ph = ", ".join("?" * len(plates))
    meta = wh.query(f"SELECT cell_id, plate_id, drug, concentration FROM cells WHERE plate_id IN ({ph})", plates)
    meta = meta.set_index("cell_id").loc[[it.cell_id for it in items]].reset_index()
    fit = fit_modes(load_model(tm.path), items, k=k, max_epochs=max_epochs, seed=seed)
    prof, kl = mode_distributions(meta, fit.soft)
    truth = wh.query(f"SELECT drug, concentration, any_value(planted_effect) AS planted_effect, avg(strength) AS "
                     f"strength FROM drug_truth WHERE plate_id IN ({ph}) GROUP BY ALL", plates)
    kl = kl.merge(truth, on=["drug", "concentration"], how="left").assign(screen_id=screen_id, k=fit.k,
                                                                          model_version=tm.version)
    cells = meta.assign(scope="screen", scope_id=screen_id, mode=fit.modes + 1,
                        soft=[list(map(float, r)) for r in fit.soft], model_version=tm.version)
    return fit, cells, prof, kl


def dendrogram_plot(prof: pd.DataFrame, out, title: str = ""):
    """Hierarchical clustering (average linkage, Jensen-Shannon distance) of treatments by mode profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import jensenshannon, pdist

    d = pdist(prof.to_numpy(), metric=lambda a, b: jensenshannon(a, b))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.25 * len(prof) + 2), gridspec_kw={"width_ratios": [1, 1.3]})
    den = dendrogram(linkage(d, "average"), labels=list(prof.index), orientation="left", ax=a,
                     leaf_font_size=7, color_threshold=0)
    a.set_title("treatments by shape-mode profile (JS distance)", fontsize=9)
    order = den["ivl"][::-1]
    im = b.imshow(prof.loc[order].to_numpy(), aspect="auto", cmap="viridis", vmin=0)
    b.set_yticks(range(len(order)), order, fontsize=7)
    b.set_xticks(range(prof.shape[1]), prof.columns, fontsize=7, rotation=45)
    fig.colorbar(im, ax=b, label="mean soft assignment")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out, dpi=90)
