"""The measures behind the benchmark's rows, each a function of codes, reconstructions or timings: compactness
(Levina-Bickel), classification and regression from codes, reconstruction and interpolation in the canonical
frame, emissions, parameter counts."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import RepeatedKFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import default_collate

from cellrep_core.models.zoo import make_dataset
from cellrep_core.pointclouds.items import CloudItem

INTERPOLATION_STEPS = tuple(np.round(np.arange(0.1, 1.0, 0.1), 1))


# Grid carbon intensity and power used when codecarbon cannot run (declared, not measured).
DECLARED_CPU_WATTS = 65.0


DECLARED_KG_CO2_PER_KWH = 0.4


CO2_COUNTRY = "USA"


def levina_bickel(x: np.ndarray, k1: int, k2: int) -> tuple[float, float]:
    """Levina–Bickel maximum-likelihood intrinsic dimension of the rows of ``x``, averaged over k1..k2.

    For each point and each k: ``m_k(x) = [1/(k-1) Σ_{j<k} log(T_k/T_j)]⁻¹`` with ``T_j`` the distance to the
    j-th neighbour; per k the estimate is the mean over points (Levina & Bickel 2004); returns the mean and
    std over k. Duplicate points (zero distances) are dropped first.
    """
    x = np.unique(np.asarray(x, dtype=np.float64), axis=0)
    if k1 < 2 or k2 < k1:
        raise ValueError(f"need 2 <= k1 <= k2, got k1={k1}, k2={k2}")
    if len(x) <= k2:
        raise ValueError(f"need more than k2={k2} distinct points, got {len(x)}")
    dist, _ = NearestNeighbors(n_neighbors=k2 + 1).fit(x).kneighbors(x)
    logd = np.log(np.maximum(dist[:, 1:], 1e-300))  # [n, k2]: log T_1 .. log T_k2
    est = []
    for k in range(k1, k2 + 1):
        s = (logd[:, k - 1 : k] - logd[:, : k - 1]).sum(1) / (k - 1)
        est.append(np.mean(1.0 / np.maximum(s, 1e-12)))
    return float(np.mean(est)), float(np.std(est))


def compactness_k(n: int, lo: float = 0.008, hi: float = 0.016, min_k: int = 5) -> tuple[int, int]:
    """Neighbour range k at 0.8–1.6 % of N, raised to at least ``min_k``..``2·min_k`` for small sets."""
    k1 = max(min_k, int(round(lo * n)))
    return k1, max(2 * min_k, int(round(hi * n)), k1)


def classification_accuracy(x: np.ndarray, y: Sequence, n_splits: int = 5, seed: int = 0) -> dict:
    """Top-1 and top-2 accuracy of a multinomial logistic regression on standardised ``x``, stratified k-fold.

    Classes with fewer than two cells are left out; the number of folds drops to the smallest class size
    when that is below ``n_splits``. Raises ``ValueError`` (with the reason) when fewer than two classes
    remain."""
    y = np.asarray([str(v) for v in y])
    classes, counts = np.unique(y, return_counts=True)
    keep_cls = classes[counts >= 2]
    mask = np.isin(y, keep_cls)
    if len(keep_cls) < 2:
        sizes = {str(c): int(n) for c, n in zip(classes, counts, strict=True)}
        raise ValueError(f"fewer than two classes with at least two cells (cells per class: {sizes})")
    x, y = np.asarray(x, dtype=np.float64)[mask], y[mask]
    folds = int(min(n_splits, counts[counts >= 2].min()))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    top1, top2 = [], []
    for tr, te in skf.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(x[tr], y[tr])
        proba = clf.predict_proba(x[te])
        order = np.argsort(-proba, axis=1)
        cls = clf.classes_
        top1.append(np.mean(cls[order[:, 0]] == y[te]))
        k = min(2, len(cls))
        top2.append(np.mean([y[te][i] in cls[order[i, :k]] for i in range(len(te))]))
    return {"top1": float(np.mean(top1)), "top1_std": float(np.std(top1)), "top2": float(np.mean(top2)),
            "top2_std": float(np.std(top2)), "n": int(len(y)), "folds": folds, "n_classes": len(keep_cls),
            "dropped_classes": [str(c) for c in classes[counts < 2]]}


def regression_r2(x: np.ndarray, y: np.ndarray, n_splits: int = 5, n_repeats: int = 20, seed: int = 0) -> dict:
    """R² of a linear (ridge, penalty chosen by internal CV) regression on standardised ``x``, repeated k-fold."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 * n_splits:
        raise ValueError(f"need at least {2 * n_splits} cells for {n_splits}-fold CV, got {len(y)}")
    if np.std(y) == 0:
        raise ValueError("the feature is constant over the cells")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    cv = RepeatedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    scores = cross_val_score(model, np.asarray(x, dtype=np.float64), y, cv=cv, scoring="r2")
    return {"mean": float(scores.mean()), "std": float(scores.std()), "n": int(len(y)), "folds": len(scores)}


@dataclass
class EvalBatch:
    """Held-out cells as one collated batch of the model's evaluation data set."""

    batch: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def take(self, idx: Sequence[int] | np.ndarray | slice, device: torch.device | None = None
             ) -> dict[str, torch.Tensor]:
        """The cells at ``idx``, moved to ``device`` (the model's) when given."""
        return {k: v[idx] if device is None else v[idx].to(device) for k, v in self.batch.items()}


def model_device(model) -> torch.device:
    """The device a model's parameters are on (its inputs go there; its outputs come back to the CPU); the CPU
    for a stand-in without parameters."""
    params = getattr(model, "parameters", None)
    return next(params()).device if params is not None else torch.device("cpu")


def eval_batch(cfg, items: list[CloudItem]) -> EvalBatch:
    """Collate the evaluation (fixed-draw) data set of ``items`` for ``cfg``'s family."""
    ds = make_dataset(cfg, items, train=False)
    return EvalBatch(default_collate([ds[i] for i in range(len(ds))]))


def _chunked(fn: Callable[[np.ndarray], torch.Tensor], n: int, chunk: int) -> torch.Tensor:
    return torch.cat([fn(np.arange(s, min(n, s + chunk))) for s in range(0, n, chunk)])


@torch.no_grad()
def latents_and_targets(model, eb: EvalBatch, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical-frame latents and targets of every cell of ``eb``, computed on the model's device in chunks,
    returned on the CPU."""
    model.eval()
    dev = model_device(model)
    lat = _chunked(lambda i: model.latent(eb.take(i, dev)).float().cpu(), len(eb), chunk)
    tgt = _chunked(lambda i: model.target(eb.take(i, dev)).float().cpu(), len(eb), chunk)
    return lat, tgt


@torch.no_grad()
def reconstruction(model, eb: EvalBatch, lat: torch.Tensor, tgt: torch.Tensor, chunk: int = 16) -> dict:
    """Per-cell reconstruction error and, for signed-distance outputs, 1 − IoU of the inside (value < 0)."""
    dev = model_device(model)
    rec = _chunked(lambda i: model.decode_latent(lat[i].to(dev), eb.take(i, dev)).float().cpu(), len(eb), chunk)
    err = model.reconstruction_error(rec, tgt).double().numpy()
    out = {"error": err}
    if model.cfg.kind == "sdf":
        if model.cfg.image_input == "segmentation":
            a, b = rec.flatten(1) > 0.5, tgt.flatten(1) > 0.5
        else:
            a, b = rec.flatten(1) < 0, tgt.flatten(1) < 0
        union = (a | b).sum(1)
        ok = union > 0
        out["one_minus_iou"] = (1.0 - (a & b).sum(1)[ok].double() / union[ok].double()).numpy()
    return out


def random_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """``[m, 2]`` distinct index pairs (i ≠ j), at most ``n_pairs``, deterministic by seed."""
    if n < 2:
        return np.zeros((0, 2), np.int64)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=4 * n_pairs)
    b = rng.integers(0, n, size=4 * n_pairs)
    keep = a != b
    return np.stack([a[keep], b[keep]], 1)[:n_pairs]


@torch.no_grad()
def evolution_energy(
    decode: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    error: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lat: torch.Tensor,
    tgt: torch.Tensor,
    pairs: np.ndarray,
    steps: Sequence[float] = INTERPOLATION_STEPS,
) -> tuple[float, float, int]:
    """Mean over pairs (a, b) and steps t of ``[L(x̂_t, x_a) + L(x̂_t, x_b)] / L(x_a, x_b)``, where ``x̂_t``
    decodes ``(1 − t) lat_a + t lat_b``. ``decode(lat, idx_a)`` gets the indices of ``a`` (query points).
    Pairs whose targets coincide (``L(x_a, x_b) = 0``) are left out. Returns mean, std over pairs, pairs."""
    ia, ib = pairs[:, 0], pairs[:, 1]
    base = error(tgt[ia], tgt[ib]).double()
    ok = (base > 0).numpy()
    ia, ib, base = ia[ok], ib[ok], base[ok]
    if len(ia) == 0:
        return float("nan"), float("nan"), 0
    per_pair = torch.zeros(len(ia), dtype=torch.float64)
    for t in steps:
        xt = decode((1 - t) * lat[ia] + t * lat[ib], ia)
        per_pair += (error(xt, tgt[ia]).double() + error(xt, tgt[ib]).double()) / base
    per_pair /= len(steps)
    return float(per_pair.mean()), float(per_pair.std()), int(len(ia))


def interpolation_distance(
    z: np.ndarray, pairs: np.ndarray, steps: Sequence[float] = INTERPOLATION_STEPS
) -> tuple[float, float, int]:
    """Distance from interpolated codes to the nearest real code other than the pair's two ends, in units of
    the median nearest-neighbour distance between real codes (1 ≈ as close as real cells are to each other).
    Returns mean, std over pairs, pairs."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) < 4 or len(pairs) == 0:
        return float("nan"), float("nan"), 0
    nn = NearestNeighbors(n_neighbors=3).fit(z)
    d_real, _ = nn.kneighbors(z, n_neighbors=2)
    scale = np.median(d_real[:, 1])
    if scale <= 0:
        return float("nan"), float("nan"), 0
    per_pair = np.zeros(len(pairs))
    for t in steps:
        zt = (1 - t) * z[pairs[:, 0]] + t * z[pairs[:, 1]]
        d, idx = nn.kneighbors(zt, n_neighbors=3)
        own = (idx == pairs[:, :1]) | (idx == pairs[:, 1:2])
        d = np.where(own, np.inf, d).min(1)
        per_pair += d / scale
    per_pair /= len(steps)
    return float(per_pair.mean()), float(per_pair.std()), int(len(pairs))


def measure_emissions(fn: Callable[[], int], min_seconds: float = 2.0, device: torch.device | None = None
                      ) -> tuple[float | None, str]:
    """Grams CO2-eq per cell of ``fn`` (which processes and returns a number of cells), repeated for at
    least ``min_seconds``: codecarbon's offline tracker, or time × declared power when it cannot run.

    ``device``: where ``fn`` computes. On a CUDA device the tracker follows that device only (its whole power:
    other processes on it count too); on the CPU a GPU's energy is left out, since the model never used it."""
    def work() -> tuple[int, float]:
        t0, cells = time.perf_counter(), 0
        while True:
            cells += fn()
            if time.perf_counter() - t0 >= min_seconds:
                return cells, time.perf_counter() - t0

    on_gpu = device is not None and device.type == "cuda"
    try:
        import logging

        from codecarbon import OfflineEmissionsTracker
        from codecarbon import __version__ as cc_version

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        gpu = {"gpu_ids": [device.index or 0]} if on_gpu else {}
        tracker = OfflineEmissionsTracker(
            country_iso_code=CO2_COUNTRY, save_to_file=False, log_level="error", measure_power_secs=1,
            tracking_mode="process", **gpu,
        )
        tracker.start()
        try:
            cells, seconds = work()
        finally:
            kg = tracker.stop()
        d = tracker.final_emissions_data
        counted = d.energy_consumed if on_gpu else d.cpu_energy + d.ram_energy
        share = counted / d.energy_consumed if d.energy_consumed > 0 else 1.0
        gpu_note = (f"GPU {d.gpu_power:.1f} W counted (device {device})" if on_gpu
                    else f"GPU {d.gpu_power:.1f} W not counted: inference on the CPU")
        note = (f"codecarbon {cc_version} offline ({CO2_COUNTRY} grid), {counted / cells:.3g} kWh/cell "
                f"(CPU {d.cpu_power:.1f} W, RAM {d.ram_power:.1f} W, {gpu_note}), {cells} cells in {seconds:.1f} s")
        return float(kg) * share * 1000.0 / max(cells, 1), note
    except ImportError as err:
        cells, seconds = work()
        kwh = seconds * DECLARED_CPU_WATTS / 3.6e6
        where = "; the GPU's power is not declared, so this counts the CPU only" if on_gpu else ""
        note = (f"codecarbon unavailable ({err}); energy = inference time × declared {DECLARED_CPU_WATTS:.0f} W, "
                f"× {DECLARED_KG_CO2_PER_KWH} kg CO2/kWh; {kwh / cells:.3g} kWh/cell{where}")
        return kwh * DECLARED_KG_CO2_PER_KWH * 1000.0 / max(cells, 1), note


def n_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))
