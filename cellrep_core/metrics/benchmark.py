"""The multi-metric benchmark of one trained model on one data set (definitions in REFERENCE.md).

Every metric becomes one row ``(metric, value, std, n, note)``; a metric that cannot apply to a model or a
data set is a row with ``value`` NULL and the reason in ``note``, never a missing row. The functions here
work for every model family through the protocol of ``cellrep_core/models/zoo.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist

from cellrep_core.metrics.end_to_end import TurnedClouds, end_to_end_invariance
from cellrep_core.metrics.measures import (
    classification_accuracy,
    compactness_k,
    eval_batch,
    evolution_energy,
    interpolation_distance,
    latents_and_targets,
    levina_bickel,
    measure_emissions,
    model_device,
    n_parameters,
    random_pairs,
    reconstruction,
    regression_r2,
)
from cellrep_core.metrics.rotation import random_rotations, rotation_invariance_error, z90_rotations
from cellrep_core.models.inference import EMBED_DRAWS, embed_batch_size, embed_items, embed_points
from cellrep_core.models.zoo import model_inputs, n_draws
from cellrep_core.pointclouds.items import CloudItem

COLUMNS = ["metric", "value", "std", "n", "note"]

# (labels in the cells table's ``label`` column by shape type, as the synthetic generators write them)
LABEL_OF_SHAPE = {"punctate": "rule", "polymorphic": "piece_count"}
REGRESSION_FEATURES = ("volume", "surface_area", "mean_piece_distance")
# Whether a larger value is better, per metric (prefix match for the label- and feature-specific ones).
HIGHER_IS_BETTER = {
    "n_parameters": False,
    "inference_seconds_per_cell": False,
    "embedding_seconds_per_cell": False,
    "emissions_g_co2eq_per_cell": False,
    "reconstruction_error": False,
    "reconstruction_1_minus_iou": False,
    "evolution_energy": False,
    "interpolation_distance": False,
    "rotation_invariance_error": False,
    "rotation_invariance_error_z90": False,
    "rotation_invariance_error_spread": False,
    "rotation_invariance_error_end_to_end": False,
    "rotation_invariance_error_end_to_end_noise_floor": False,
    "intrinsic_dimension": False,
    "classification_top1_": True,
    "classification_top2_": True,
    "regression_r2_": True,
    "train_seconds": False,
    "input_seconds_per_cell": False,
}
# Informational rows left out of scores and plots: training cost depends on epochs and reuse, input
# preparation (rendering an image, drawing a point subset) on where the data set's inputs are stored, not on
# the model, and the end-to-end noise floor is the yardstick of the end-to-end invariance error, not a quality.
# Emissions are the offline tracker's constant power times the inference time on a CPU, and the time per stored
# code is the inference time times the draws: scoring them would count speed two or three times.
NOT_SCORED = ("train_seconds", "input_seconds_per_cell", "rotation_invariance_error_end_to_end_noise_floor",
              "emissions_g_co2eq_per_cell", "embedding_seconds_per_cell")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (``KeyError`` for an unknown one)."""
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    for k, v in HIGHER_IS_BETTER.items():
        if k.endswith("_") and metric.startswith(k):
            return v
    raise KeyError(f"unknown benchmark metric {metric!r}")


def row(metric: str, value: float | None, std: float | None = None, n: int | None = None, note: str = "") -> dict:
    """One metric row; a ``None``/NaN value needs a note saying why."""
    if value is None or not np.isfinite(value):
        if not note:
            raise ValueError(f"metric {metric}: a NULL value needs a reason in the note")
        value = None
    return {"metric": metric, "value": None if value is None else float(value),
            "std": None if std is None or not np.isfinite(std) else float(std), "n": n, "note": note}


# ------------------------------------------------------------------------------------- the table


def efficiency_rows(model, test: list[CloudItem], emissions: bool, train_metrics: dict | None,
                    draws: int) -> tuple[list[dict], np.ndarray]:
    """Parameters, input preparation, inference and per-code time (``draws``: the input draws a stored code
    averages), emissions and training time; returns the rows and the held-out cells' inputs as the model takes
    them (images rendered, point subsets drawn)."""
    cfg = model.cfg
    rows = [row("n_parameters", n_parameters(model), n=1, note="trainable and frozen parameters")]
    # inputs timed apart from the model: inference time and emissions are the model's forward pass alone
    t0 = time.perf_counter()
    inputs = np.stack([model_inputs(it, cfg) for it in test])
    prep = (time.perf_counter() - t0) / max(len(test), 1)
    rows.append(row("input_seconds_per_cell", prep, n=len(test),
                    note=f"{'image rendering' if cfg.family == 'image' else 'point draw'} from the stored "
                         "clouds, one CPU thread of numpy/scipy (not scored)"))
    embed_points(model, inputs[:2])  # warm-up (first-call allocations, escnn filter expansion)
    t0 = time.perf_counter()
    embed_points(model, inputs)  # one forward pass per cell
    per_cell = (time.perf_counter() - t0) / max(len(test), 1)
    shape = "×".join(str(v) for v in inputs.shape[1:])
    rows.append(row("inference_seconds_per_cell", per_cell, n=len(test),
                    note=f"encoder forward pass on {shape} inputs, {model_device(model)}, "
                         f"batch {embed_batch_size(model)}"))
    rows.append(row("embedding_seconds_per_cell", per_cell * draws + prep * draws, n=len(test),
                    note=f"what a user pays per stored code: {draws} input draws (prepared and encoded) averaged "
                         "into one code (not scored: the same speed as inference_seconds_per_cell)"))
    if emissions:
        g, note = measure_emissions(lambda: (embed_points(model, inputs), len(test))[1], device=model_device(model))
        rows.append(row("emissions_g_co2eq_per_cell", g, n=len(test), note=note))
    else:
        rows.append(row("emissions_g_co2eq_per_cell", None, note="emissions measurement switched off"))
    tm = train_metrics or {}
    rows.append(row("train_seconds", tm.get("train_seconds"), n=tm.get("n_train"),
                    note=f"{tm.get('epochs')} epochs on {tm.get('device')}" if tm else "no training record"))
    return rows, inputs


def reconstruction_rows(model, test: list[CloudItem], test_note: str, pairs: np.ndarray) -> list[dict]:
    """Reconstruction error (and 1 − IoU of SDF models) and evolution energy on held-out cells, in the model's
    canonical frame."""
    cfg = model.cfg
    eb = eval_batch(cfg, test)
    lat, tgt = latents_and_targets(model, eb)
    rec = reconstruction(model, eb, lat, tgt)
    what = {"punctate": "Chamfer distance of point clouds", "sdf": f"L1 of SDF clipped at ±{cfg.sdf_clip}"}
    volume = cfg.image_input if cfg.kind == "sdf" else "intensity"
    what = what[cfg.kind] if cfg.family == "pointcloud" else f"MSE of {volume} volumes"
    rows = [row("reconstruction_error", rec["error"].mean(), rec["error"].std(), len(rec["error"]),
                f"{what}, {test_note}")]
    if "one_minus_iou" in rec and len(rec["one_minus_iou"]):
        r = rec["one_minus_iou"]
        rows.append(row("reconstruction_1_minus_iou", r.mean(), r.std(), len(r),
                        f"inside = {'segmentation > 0.5' if cfg.image_input == 'segmentation' else 'SDF < 0'}, "
                        f"canonical evaluation grid, {test_note}"))
    else:
        rows.append(row("reconstruction_1_minus_iou", None,
                        note="not a signed-distance model" if cfg.kind != "sdf" else "no inside voxels"))
    dev = model_device(model)
    ee = evolution_energy(lambda lt, ia: model.decode_latent(lt.to(dev), eb.take(ia, dev)).float().cpu(),
                          model.reconstruction_error, lat, tgt, pairs)
    rows.append(row("evolution_energy", ee[0], ee[1], ee[2],
                    f"t = 0.1..0.9 between random pairs of {test_note}; loss: {what}"
                    if ee[2] else "fewer than two distinct held-out cells"))
    return rows


def rotation_rows(model, inputs: np.ndarray, n_rotations: int, seed: int, test_note: str) -> list[dict]:
    """Rotation invariance of the codes of held-out inputs turned as drawn: random SO(3) rotations (and the
    change over the spread of codes) and the 90° turns about z."""
    rows = []
    for name, rots, what_rot in (("rotation_invariance_error", random_rotations(n_rotations, seed),
                                  f"{n_rotations} random SO(3) rotations"),
                                 ("rotation_invariance_error_z90", z90_rotations(), "90°, 180°, 270° about z")):
        r = rotation_invariance_error(model, inputs, rots)
        rows.append(row(name, r["mean"], r["std"], r["n"], f"{what_rot}, max {r['max']:.2e}, {test_note}"))
        if name == "rotation_invariance_error":
            ok = np.isfinite(r["spread_mean"])
            rows.append(row("rotation_invariance_error_spread", r["spread_mean"], r["spread_std"], r["n"],
                            f"‖z_R − z‖ / mean distance between two held-out cells' codes "
                            f"({r['code_spread']:.3g}), {what_rot}, {test_note}" if ok
                            else "fewer than two distinct held-out codes"))
    return rows


def compactness_rows(z: np.ndarray) -> list[dict]:
    """The intrinsic dimension of all cells' codes (Levina–Bickel)."""
    k1, k2 = compactness_k(len(z))
    try:
        idim, idim_sd = levina_bickel(z, k1, k2)
    except ValueError as err:
        return [row("intrinsic_dimension", None, note=f"Levina–Bickel: {err}")]
    return [row("intrinsic_dimension", idim, idim_sd, len(z),
                f"Levina–Bickel MLE, k = {k1}..{k2} (0.8–1.6 % of N, at least 5..10), all cells")]


def benchmark_model(
    model,
    items: list[CloudItem],
    held_out: list[str],
    cells: pd.DataFrame,
    features: pd.DataFrame | None = None,
    train_metrics: dict | None = None,
    n_rotations: int = 8,
    n_pairs: int = 32,
    seed: int = 0,
    draws: int = EMBED_DRAWS,
    emissions: bool = True,
    turned: TurnedClouds | None = None,
    held_kind: str = "held-out cells",
) -> pd.DataFrame:
    """Every benchmark metric of ``model`` on a data set: ``items`` all cells, ``held_out`` the cell ids the
    model did not train on (reconstruction, interpolation, rotation invariance), ``cells`` the data set's
    rows of the ``cells`` table (labels), ``features`` its hand-crafted features (regression targets),
    ``turned`` a few held-out cells sampled again from their turned images (``metrics/end_to_end.py``;
    None: the end-to-end rows are NULL), ``held_kind`` what the held-out cells are (in every note)."""
    model.eval()
    held = set(held_out)
    test = [it for it in items if it.cell_id in held]
    test_note = held_kind
    if len(test) < 2:
        test, test_note = items, "no held-out cells recorded: all cells"
    test_note += f" (n={len(test)})"

    draws = n_draws(model.cfg, draws)  # point clouds: the stored code averages draws; an image is one
    rows, inputs = efficiency_rows(model, test, emissions, train_metrics, draws)
    pairs = random_pairs(len(test), n_pairs, seed)
    rows += reconstruction_rows(model, test, test_note, pairs)
    # codes of every cell (the stored embedding: mean over input draws)
    z = embed_items(model, items, draws=draws)
    ids = [it.cell_id for it in items]
    pos = {c: i for i, c in enumerate(ids)}
    zt = z[[pos[it.cell_id] for it in test]]
    idist = interpolation_distance(zt, pairs)
    rows.append(row("interpolation_distance", idist[0], idist[1], idist[2],
                    "nearest real code (pair ends excluded) / median real nearest-neighbour distance, "
                    f"codes of {test_note}" if idist[2] else "fewer than four held-out cells"))
    rows += rotation_rows(model, inputs, n_rotations, seed, test_note)
    rows += end_to_end_rows(model, turned, zt, draws, test_note)
    rows += compactness_rows(z)
    rows += label_rows(z, ids, cells, seed)
    rows += regression_rows(z, ids, features, cells, seed)
    return pd.DataFrame(rows, columns=COLUMNS)


def end_to_end_rows(model, turned: TurnedClouds | None, z_test: np.ndarray, draws: int, test_note: str) -> list[dict]:
    """``rotation_invariance_error_end_to_end`` and its noise floor: codes of cells turned before sampling,
    and of the same cells sampled again unturned, against the codes of the cells as stored, over the mean
    distance between two held-out cells' codes ``z_test`` (``metrics/end_to_end.py``)."""
    names = ("rotation_invariance_error_end_to_end", "rotation_invariance_error_end_to_end_noise_floor")
    if turned is None:
        return [row(n, None, note="no cell images given to turn (pipeline.benchmark passes the data set's "
                                  "cells and sampling config)") for n in names]
    spread = float(pdist(np.asarray(z_test, np.float64)).mean()) if len(z_test) >= 2 else 0.0
    r = end_to_end_invariance(model, turned, spread, draws=draws)
    if not r["n"] or not np.isfinite(r["e2e_spread"]):
        why = "; ".join(f"{k}: {v}" for k, v in list(turned.failed.items())[:3]) or "no cell"
        reason = ("fewer than two distinct held-out codes" if r["n"] and spread <= 0
                  else f"the pipeline sampled no turned cell ({why})")
        return [row(n, None, note=reason) for n in names]
    n_cells, n_rot = len(turned.cell_ids), len(turned.turned)
    failed = f"; {len(turned.failed)} runs refused by the pipeline" if turned.failed else ""
    draw = f"{n_draws(model.cfg, draws)} input draws"
    vs_floor = (f"{r['e2e_spread'] / r['floor_spread']:.2f}× the noise floor ({r['floor_spread']:.3g})"
                if r["floor_spread"] > 0 else "noise floor 0 (the model's input does not depend on the seeds)")
    e2e_note = (f"cells turned before sampling (images and masks padded, rotated, resampled trilinearly), "
                f"sampled and embedded again ({draw}): ‖z_turned − z‖ / mean distance between two held-out "
                f"cells' codes ({spread:.3g}); ratio form {r['e2e_ratio']:.3g} ± {r['e2e_ratio_std']:.2g}; "
                f"{vs_floor}; resampling the unturned image by a "
                f"sub-voxel shift alone: {r['resampling_spread']:.3g} (ratio form {r['resampling_ratio']:.3g}); "
                f"{n_cells} cells of {test_note} × {n_rot} random rotations{failed}")
    floor_note = (f"the same unturned cells sampled and embedded again with other seeds (point draws, "
                  f"{draw}): ‖z_repeat − z‖ / mean distance between two held-out cells' codes; ratio form "
                  f"{r['floor_ratio']:.3g} ± {r['floor_ratio_std']:.2g}; {n_cells} cells × {n_rot} runs "
                  "(not scored: the yardstick of the end-to-end error)")
    return [row(names[0], r["e2e_spread"], r["e2e_spread_std"], r["n"], e2e_note),
            row(names[1], r["floor_spread"], r["floor_spread_std"], r["n"], floor_note)]


def label_rows(z: np.ndarray, ids: list[str], cells: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Classification rows for each label kind: the data set's label (rule / piece count), structure and
    cell-cycle stage; NULL with the reason where the data set does not have the label."""
    meta = cells.set_index("cell_id").reindex(ids)
    shape = meta["shape_type"].dropna().unique()
    label_name = LABEL_OF_SHAPE.get(shape[0], "label") if len(shape) == 1 else "label"
    targets = {label_name: meta["label"], "structure": meta["structure_name"]}
    targets["cell_cycle_stage"] = meta["cell_cycle_stage"] if "cell_cycle_stage" in meta else None
    out = []
    for name, y in targets.items():
        reason = None
        if y is None:
            reason = f"the cells table has no {name} column"
        else:
            y = y.astype("string").fillna("").str.strip()
            have = (y != "").to_numpy()
            values = sorted(set(y[have]))
            if len(values) < 2:
                reason = f"one {name} value in the data set ({', '.join(values) or 'none'})"
        if reason is None:
            try:
                res = classification_accuracy(z[have], y[have].to_numpy(), seed=seed)
            except ValueError as err:
                reason = str(err)
        if reason is not None:
            out += [row(f"classification_top{k}_{name}", None, note=reason) for k in (1, 2)]
            continue
        note = (f"{res['n_classes']} classes, standardised codes, multinomial logistic regression, stratified "
                f"{res['folds']}-fold CV")
        if res["dropped_classes"]:
            note += f"; classes with one cell left out: {', '.join(res['dropped_classes'])}"
        out.append(row(f"classification_top1_{name}", res["top1"], res["top1_std"], res["n"], note))
        out.append(row(f"classification_top2_{name}", res["top2"], res["top2_std"], res["n"],
                       note + ("; two classes: top-2 is trivially 1" if res["n_classes"] == 2 else "")))
    return out


def regression_rows(
    z: np.ndarray, ids: list[str], features: pd.DataFrame | None, cells: pd.DataFrame, seed: int = 0
) -> list[dict]:
    """Feature-regression R² rows (volume, surface area, mean piece distance), NULL where the data set has
    no hand-crafted features."""
    have = features is not None and len(features) and features["cell_id"].isin(ids).any()
    out = []
    for feat in REGRESSION_FEATURES:
        if not have:
            shape = ", ".join(sorted(cells["shape_type"].dropna().unique())) or "these"
            out.append(row(f"regression_r2_{feat}", None,
                           note=f"no hand-crafted features for {shape} cells (computed for polymorphic ones)"))
            continue
        f = features.set_index("cell_id")[feat].reindex(ids)
        ok = f.notna().to_numpy()
        try:
            res = regression_r2(z[ok], f.to_numpy()[ok], seed=seed)
        except ValueError as err:
            out.append(row(f"regression_r2_{feat}", None, note=f"{feat}: {err}"))
            continue
        out.append(row(f"regression_r2_{feat}", res["mean"], res["std"], res["n"],
                       f"ridge on standardised codes (penalty by inner CV), 5-fold CV repeated 20×, "
                       f"mean over {res['folds']} folds"))
    return out
