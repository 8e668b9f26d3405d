"""Structure given cell shape (seed 003) as a stage over the warehouse and the feature store.

For a data set of polymorphic cells with a nucleus channel:

1. every cell's nucleus (and cell, when there is a ``cell`` channel) and structure masks are resampled into
   the nucleus frame (``models/statcell.py``); a cell that cannot be is skipped with its file and reason;
2. the stacked beta-VAE is trained (reference, then structure given reference; ``analysis/statcell.py``), with
   the seed's analyses: coupling (true vs shuffled reference), KL per latent dimension, a beta sweep
   (``statcell_beta_sweep``) and structures generated for small and large nuclei (pictures under
   ``reports/<dataset>/statcell/``);
3. the **shape residual** is fitted: a ridge regression of the data set's base-model codes (whitened, as
   profiled) on the reference latent, over the data set's cells. A cell's ``structure_given_shape`` code is
   its base code minus what its reference shape predicts, whitened on the data set's residuals. Why not the
   conditional latent itself: DESIGN.md has the measurement (a conditional decoder that uses the reference
   leaves the latent blind to a structure that is smaller than its nucleus predicts).

The record of a data set's models is one row of ``statcell_models``. A plate whose structure group is routed to
that data set gets a ``structure_given_shape`` embedding (``embed_plate``) and q-values beside the base,
fine-tuned and hand-crafted ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellrep_core import paths
from cellrep_core.analysis import statcell as sa
from cellrep_core.models.config import get_config
from cellrep_core.models.inference import embed_items, load_model
from cellrep_core.models.whitening import Whitening, load_whitening
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse

log = logging.getLogger("cellrep_core")

FEATURE_SET = "structure_given_shape"
DEFAULT_IMAGE_SIZE = 32
DEFAULT_BETAS = (0.25, 1.0, 4.0, 16.0)
RIDGE_ALPHA = 1.0


def _structure_of(row) -> str:
    name = str(row.structure_name) if isinstance(row.structure_name, str) and row.structure_name else ""
    return name or "structure"


def cell_volumes(cells: pd.DataFrame, half_extent: float, size: int = DEFAULT_IMAGE_SIZE,
                 ) -> tuple[list[sa.CellVolumes], list[dict]]:
    """The cells' masks in their nucleus frame; ``(volumes, problems)``, a problem naming the cell, its file and
    the reason (punctate cells, a missing nucleus channel, an unreadable file). Every other cell goes on."""
    from cellrep_core.data.cells import channel_names, split_list
    from cellrep_core.data.images import read_cell_image
    from cellrep_core.data.validate import binarize
    from cellrep_core.errors import CellInputError
    from cellrep_core.models.statcell import cell_frame_volumes

    out, problems = [], []
    for r in cells.itertuples():
        path = str(r.source_path)
        channels = split_list(r.channels)
        names = set(channel_names(channels))
        try:
            if r.shape_type != "polymorphic":
                raise ValueError("the structure-given-shape model takes polymorphic (mask) cells only")
            if not {"nucleus", "structure"} <= names:
                raise ValueError(f"needs 'nucleus' and 'structure' channels, the cell has {sorted(names)}")
            images = read_cell_image(Path(path), channels, r.cell_id)
            nucleus, structure = binarize(images["nucleus"]), binarize(images["structure"])
            cell = binarize(images["cell"]) if "cell" in images else None
            if not structure.any():
                raise ValueError("the structure mask is empty")
            ref, st = cell_frame_volumes(nucleus, structure, half_extent, size, cell=cell, cell_id=r.cell_id)
            out.append(sa.CellVolumes(r.cell_id, ref, st, _structure_of(r)))
        except (CellInputError, ValueError, OSError) as err:
            problems.append({"cell_id": r.cell_id, "source_path": path, "reason": str(err)})
    for p in problems:
        log.warning("structure given shape: cell %s (%s) skipped: %s", p["cell_id"], p["source_path"], p["reason"])
    return out, problems


def _half_extent(wh: Warehouse, dataset: str) -> float:
    from cellrep_core import datasets

    try:
        return float(datasets.get(wh, dataset).half_extent_vox)
    except (LookupError, ValueError):  # a synthetic reference set, not registered
        return float(datasets.DEFAULT_HALF_EXTENT_VOX)


def sgs_version(ref_version: str, base_version: str, cell_ids: list[str]) -> str:
    key = json.dumps({"ref": ref_version, "base": base_version, "cells": sorted(cell_ids), "alpha": RIDGE_ALPHA})
    return f"sgs-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class ShapeResidual:
    """``code - (z_ref @ coef + intercept)``: a base code minus what the reference latent predicts (ridge)."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef, self.intercept = coef, intercept

    @classmethod
    def fit(cls, z_ref: np.ndarray, codes: np.ndarray, alpha: float = RIDGE_ALPHA) -> ShapeResidual:
        from sklearn.linear_model import Ridge

        reg = Ridge(alpha=alpha).fit(np.asarray(z_ref, np.float64), np.asarray(codes, np.float64))
        return cls(reg.coef_.T, reg.intercept_)

    def transform(self, z_ref: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return (np.asarray(codes, np.float64) - (np.asarray(z_ref, np.float64) @ self.coef + self.intercept)
                ).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, coef=self.coef, intercept=self.intercept)

    @classmethod
    def load(cls, path: Path) -> ShapeResidual:
        with np.load(path) as d:
            return cls(d["coef"], d["intercept"])


def base_codes(fs: FeatureStore, base, filters: dict, vols: list[sa.CellVolumes],
               ) -> tuple[list[sa.CellVolumes], np.ndarray, list[dict]]:
    """The cells of ``vols`` that have a base-model code (rows of the feature store matching ``filters``), their
    whitened codes, and a problem row for each cell without one (quarantined at the point-cloud stage)."""
    meta, vecs = fs.load({**filters, "model_version": base.version}, table=fs.table_for_dim(base.code_dim))
    pos = {c: i for i, c in enumerate(meta.cell_id)}
    kept = [v for v in vols if v.cell_id in pos]
    problems = [{"cell_id": v.cell_id, "source_path": "", "reason": f"no embedding of the base model {base.version} "
                 "(quarantined at the point-cloud stage?)"} for v in vols if v.cell_id not in pos]
    codes = load_whitening(base.path).transform(vecs[[pos[v.cell_id] for v in kept]]) if kept \
        else np.zeros((0, 0), np.float32)
    return kept, codes, problems


class _Base:
    def __init__(self, version: str, path: Path, code_dim: int) -> None:
        self.version, self.path, self.code_dim = version, Path(path), code_dim


def _base_model(wh: Warehouse, version: str) -> _Base:
    from cellrep_core.registry import model_by_version

    tm = model_by_version(wh, version)
    return _Base(tm.version, tm.path, int(load_whitening(tm.path).mean.shape[0]))


def _analyses(wh: Warehouse, dataset: str, vols, pair, ref_m, cond_m, labels, cond, cond_cfg, betas, root: Path,
              report: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    """Coupling, KL per latent dimension (both models), generation for a small and a large nucleus and the beta
    sweep (table ``statcell_beta_sweep``), their pictures and tables under ``report``."""
    coupling = sa.coupling(ref_m, cond_m, labels, vols, cond=cond)
    kl = sa.kl_per_dimension(cond_m, sa.structure_items(vols, cond))
    ref_kl = sa.kl_per_dimension(ref_m, sa.reference_items(vols))
    gen = sa.conditional_generation(ref_m, cond_m, labels, vols, cond=cond)
    report.mkdir(parents=True, exist_ok=True)
    sa.generation_png(gen, report / "generation.png", title=f"{dataset}: structures generated for a small and a "
                      "large nucleus")
    if betas:
        sweep = sa.beta_sweep(vols, pair.ref, cond_cfg, labels, list(betas), root, lineage={"dataset": dataset})
        sa.plot_beta_sweep(sweep, report / "beta_sweep.png")
        wh.replace("statcell_beta_sweep", sweep.assign(dataset=dataset), {"dataset": dataset})
    kl.to_csv(report / "kl_per_dimension.csv", index=False)
    return coupling, kl, ref_kl, gen


def train_dataset(wh: Warehouse, fs: FeatureStore, dataset: str, base_version: str | None = None,
                  ref_config: str = "statcell_ref_demo", cond_config: str = "statcell_cond_demo",
                  betas: tuple[float, ...] | list[float] = DEFAULT_BETAS, max_epochs: int = 0,
                  image_size: int = DEFAULT_IMAGE_SIZE, force: bool = False) -> dict:
    """Train the stacked beta-VAE on a data set's cells, run the analyses, fit the shape residual on its base
    model's codes (``base_version``, default its latest model) and record everything in ``statcell_models``."""
    from cellrep_core.pipeline import cells_of_dataset
    from cellrep_core.registry import latest_model

    t0 = time.perf_counter()
    cells = cells_of_dataset(wh, dataset)
    if cells.empty:
        raise LookupError(f"data set {dataset} has no ingested cells; materialize its cells first")
    half = _half_extent(wh, dataset)
    vols, problems = cell_volumes(cells, half, image_size)
    if len(vols) < 8:
        detail = f"; e.g. {problems[0]['cell_id']}: {problems[0]['reason']}" if problems else ""
        raise ValueError(f"data set {dataset}: {len(vols)} usable cells for the structure-given-shape model, need "
                         f">= 8{detail}")
    over = {"max_epochs": max_epochs} if max_epochs else {}
    ref_cfg, cond_cfg = get_config(ref_config, **over), get_config(cond_config, **over)
    root = paths.models_dir()
    pair = sa.train_statcell(vols, ref_cfg, cond_cfg, root, lineage={"dataset": dataset}, force=force)
    ref_m, cond_m, labels = sa.load_statcell(pair.ref.path, pair.cond.path)
    cond = sa.conditions(ref_m, vols, labels)  # each cell's reference latent + label, computed once
    report = paths.reports_dir(dataset) / "statcell"
    coupling, kl, ref_kl, gen = _analyses(wh, dataset, vols, pair, ref_m, cond_m, labels, cond, cond_cfg, betas,
                                          root, report)
    # the shape residual in the base model's whitened space, over the cells that have a base code
    base = _base_model(wh, base_version or latest_model(wh, dataset).version)
    with_code, codes, missing = base_codes(fs, base, {"dataset": dataset}, vols)
    if len(with_code) < 8:
        raise LookupError(f"data set {dataset}: {len(with_code)} cells have an embedding of {base.version}, need "
                          ">= 8; materialize dataset_embeddings first")
    problems += missing
    ids = [v.cell_id for v in with_code]
    row_of = {v.cell_id: i for i, v in enumerate(vols)}
    z_ref = cond[[row_of[c] for c in ids], : ref_m.cfg.latent_dim]
    resid = ShapeResidual.fit(z_ref, codes)
    version = sgs_version(pair.ref.version, base.version, ids)
    out = root / FEATURE_SET / version
    out.mkdir(parents=True, exist_ok=True)
    resid.save(out / "residual.npz")
    r = resid.transform(z_ref, codes)
    w = Whitening.fit(r)
    np.savez(out / "whitening.npz", mean=w.mean, components=w.components, scale=w.scale)
    explained = 1.0 - float(r.var(0).sum() / max(codes.var(0).sum(), 1e-12))
    gen_md = {f"generated_volume_{k}": gen[k]["generated_structure_volume"] for k in ("small", "large")}
    gen_md |= {f"real_volume_{k}": gen[k]["real_structure_volume"] for k in ("small", "large")}
    metrics = {"coupling": coupling, "base_variance_explained_by_shape": explained,
               "active_dims_conditional": int(kl.active.sum()), "active_dims_reference": int(ref_kl.active.sum()),
               **gen_md, "n_skipped": len(problems), "seconds": time.perf_counter() - t0}
    (out / "lineage.json").write_text(json.dumps({
        "version": version, "dataset": dataset, "reference_version": pair.ref.version,
        "conditional_version": pair.cond.version, "base_version": base.version, "cells": ids,
        "ridge_alpha": RIDGE_ALPHA, "metrics": metrics}, indent=2))
    row = pd.DataFrame([{
        "dataset": dataset, "ref_version": pair.ref.version, "cond_version": pair.cond.version,
        "ref_path": str(pair.ref.path), "cond_path": str(pair.cond.path), "base_version": base.version,
        "sgs_version": version, "sgs_path": str(out), "sgs_dim": int(codes.shape[1]), "image_size": image_size,
        "half_extent": half, "n_cells": len(vols), "n_skipped": len(problems),
        "coupling_gain": coupling["relative_gain"], "recon_true": coupling["recon_true"],
        "recon_shuffled": coupling["recon_shuffled"], "active_dims": int(kl.active.sum()),
        "shape_explained": explained, "metrics_json": json.dumps(metrics)}])
    wh.upsert("statcell_models", row, on=["dataset"])
    # the data set's own cells get their structure-given-shape codes too (nearest-cell search, SQL)
    cells_i = cells.set_index("cell_id")
    meta = pd.DataFrame({"cell_id": ids, "dataset": dataset, "plate_id": "",
                         "drug": [cells_i.at[c, "drug"] for c in ids],
                         "structure_name": [cells_i.at[c, "structure_name"] for c in ids],
                         "model_name": FEATURE_SET, "model_version": version})
    fs.replace({"dataset": dataset, "plate_id": "", "model_version": version}, meta, r)
    return {**row.iloc[0].drop("metrics_json").to_dict(), **{k: v for k, v in metrics.items() if k != "coupling"},
            "report_dir": str(report), "problems": problems}


def record(wh: Warehouse, dataset: str) -> dict | None:
    """The ``statcell_models`` row of a data set, or None."""
    import duckdb

    try:
        df = wh.query("SELECT * FROM statcell_models WHERE dataset = ?", [dataset])
    except duckdb.CatalogException:  # a warehouse last written before the table existed
        return None
    return None if df.empty else df.iloc[0].to_dict()


def embed_plate(wh: Warehouse, fs: FeatureStore, plate_id: str, structure: str, cell_ids: list[str],
                base_dataset: str, base_version: str) -> dict:
    """The ``structure_given_shape`` codes of a plate's structure group, when its base data set has a stacked
    model whose residual was fitted on ``base_version`` (the group's zero-shot base); else why not."""
    from cellrep_core.data.plates import PLATES_DATASET
    from cellrep_core.pipeline import cells_of

    rec = record(wh, base_dataset)
    if rec is None:
        return {"skipped": f"no structure-given-shape model for {base_dataset}; `cellrep statcell {base_dataset}`"}
    if rec["base_version"] != base_version:
        return {"skipped": f"the structure-given-shape model of {base_dataset} was fitted on base {rec['base_version']}"
                           f", the plate uses {base_version}; `cellrep statcell {base_dataset}` refits it"}
    cells = cells_of(wh, PLATES_DATASET, plate_id)
    cells = cells[cells.cell_id.isin(set(cell_ids))]
    vols, problems = cell_volumes(cells, float(rec["half_extent"]), int(rec["image_size"]))
    base = _base_model(wh, base_version)
    vols, codes, missing = base_codes(fs, base, {"plate_id": plate_id}, vols)
    problems += missing
    ids = [v.cell_id for v in vols]
    # this group's rows only (another group of the plate may have codes of the same version)
    key = {"dataset": PLATES_DATASET, "plate_id": plate_id, "model_version": rec["sgs_version"],
           "cell_id": list(cell_ids) or ["\x00"]}
    table = fs.table_for_dim(int(rec["sgs_dim"]))
    if not ids:
        fs.delete(key, table=table)
        return {"cells": 0, "skipped_cells": len(problems)}
    ref_m = load_model(Path(rec["ref_path"]))
    z_ref = embed_items(ref_m, sa.reference_items(vols))
    r = ShapeResidual.load(Path(rec["sgs_path"]) / "residual.npz").transform(z_ref, codes)
    ci = cells.set_index("cell_id")
    meta = pd.DataFrame({"cell_id": ids, "dataset": PLATES_DATASET, "plate_id": plate_id,
                         "drug": [ci.at[c, "drug"] for c in ids],
                         "structure_name": [ci.at[c, "structure_name"] for c in ids],
                         "model_name": FEATURE_SET, "model_version": rec["sgs_version"]})
    fs.replace(key, meta, r)
    return {"cells": len(ids), "skipped_cells": len(problems), "sgs_version": rec["sgs_version"]}


def plate_versions(wh: Warehouse, plate_id: str, base_dataset: str, base_version: str) -> list[tuple[str, Path, int]]:
    """``[(sgs_version, folder, dim)]`` to profile for a plate's structure group (empty when none applies)."""
    rec = record(wh, base_dataset)
    if rec is None or rec["base_version"] != base_version:
        return []
    return [(rec["sgs_version"], Path(rec["sgs_path"]), int(rec["sgs_dim"]))]
