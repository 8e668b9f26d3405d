"""Synthetic cells whose structure is coupled to the nucleus, and plates that separate the two (seed 003).

A coupled cell is a nucleolus-like cell (``synthetic.polymorphic_cell``) whose nucleus size varies over a wide
range and whose structure's total volume is a fixed fraction of the nucleus volume (with a modest spread), so the
structure's size is mostly explained by the nucleus. A coupled plate adds two kinds of drug:

- ``nucleus_size``: the nucleus shrinks (every semi-axis x ``NUCLEUS_SIZE_FACTOR``); the structure follows it
  through the coupling (same fraction of a smaller nucleus), so the structure alone looks smaller too;
- ``structure_size``: the structure's fraction of the nucleus shrinks (x ``STRUCTURE_SIZE_FACTOR``) in a nucleus
  of the usual size.

Plain structure embeddings see both as "the structure got smaller"; a model of the structure *given* the
nucleus should see only the second (``models/statcell.py``). Drugs with effect ``none`` are nulls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellrep_core.data.plates import CONTROL_DRUG, CONTROL_LABEL, PLATES_DATASET, plate_plan
from cellrep_core.data.synthetic import (
    Nucleus,
    _name_key,
    _row,
    _to_u8,
    _write_cell_tiff,
    _write_manifest,
    key_seed,
    polymorphic_cell,
    random_nucleus,
)

COUPLED_STRUCTURE = "coupled_nucleolus"
COUPLED_DATASET = "synthetic_coupled"
COUPLED_EFFECTS: tuple[str, ...] = ("none", "nucleus_size", "structure_size")
# every semi-axis of a plate's nucleus times U(NUCLEUS_SCALE) (the random_nucleus sizes): volumes over ~3.9x;
# the reference set spans every plate condition, the nucleus_size drug's smaller nuclei included (a model of
# structure given shape has to have seen the shapes a drug can produce)
NUCLEUS_SCALE: tuple[float, float] = (0.7, 1.1)
REFERENCE_NUCLEUS_SCALE: tuple[float, float] = (0.55, 1.1)
# structure volume = fraction x nucleus volume, fraction ~ U(STRUCTURE_FRACTION)
STRUCTURE_FRACTION: tuple[float, float] = (0.05, 0.07)
COUPLED_PIECES: tuple[int, int] = (2, 4)
COUPLED_ELONGATION: tuple[float, float] = (1.0, 1.8)
NUCLEUS_SIZE_FACTOR = 0.8  # semi-axes: the nucleus volume x 0.51
STRUCTURE_SIZE_FACTOR = 0.6  # the structure's fraction of the nucleus
DEFAULT_COUPLED_DRUGS: dict[str, str] = {
    "nuc_small": "nucleus_size",
    "struct_small": "structure_size",
    "null_a": "none",
    "null_b": "none",
}


def coupled_cell(rng: np.random.Generator, grid: int = 64, effect: str = "none",
                 nucleus_scale: tuple[float, float] = NUCLEUS_SCALE) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return (nucleus bool mask, structure bool mask, info) of one coupled cell under ``effect``."""
    if effect not in COUPLED_EFFECTS:
        raise ValueError(f"unknown coupled effect {effect!r}; expected one of {COUPLED_EFFECTS}")
    base = random_nucleus(rng, grid)
    scale = float(rng.uniform(*nucleus_scale)) * (NUCLEUS_SIZE_FACTOR if effect == "nucleus_size" else 1.0)
    nucleus = Nucleus(center=base.center, semi_axes=base.semi_axes * scale, rotation=base.rotation)
    fraction = float(rng.uniform(*STRUCTURE_FRACTION)) * (STRUCTURE_SIZE_FACTOR if effect == "structure_size" else 1.0)
    nucleus_volume = 4.0 / 3.0 * math.pi * float(np.prod(nucleus.semi_axes))
    n_pieces = int(rng.integers(COUPLED_PIECES[0], COUPLED_PIECES[1] + 1))
    nmask, smask, info = polymorphic_cell(rng, grid, n_pieces, fraction * nucleus_volume, COUPLED_ELONGATION,
                                          nucleus=nucleus)
    info.update(nucleus_scale=scale, structure_fraction=fraction, nucleus_volume=int(nmask.sum()), effect=effect)
    return nmask, smask, info


def generate_coupled_dataset(out_dir: Path, n_cells: int = 160, seed: int = 31, grid: int = 64,
                             dataset: str = COUPLED_DATASET) -> pd.DataFrame:
    """Write ``n_cells`` coupled cells (no drug) + ``manifest.csv`` (label: the nucleus-size tercile, small /
    medium / large) and ``cell_truth.csv`` (nucleus and structure volumes); return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for i in range(n_cells):
        cseed = key_seed(seed, i)
        nmask, smask, info = coupled_cell(np.random.default_rng(cseed), grid, nucleus_scale=REFERENCE_NUCLEUS_SCALE)
        cell_id = f"{dataset}_{i:04d}"
        _write_cell_tiff(out_dir / f"{cell_id}.tiff", np.stack([_to_u8(nmask), _to_u8(smask)]))
        lo, hi = REFERENCE_NUCLEUS_SCALE
        tercile = min(int((info["nucleus_scale"] - lo) / (hi - lo) * 3), 2)
        rows.append(_row(cell_id, dataset, "polymorphic", COUPLED_STRUCTURE, ("small", "medium", "large")[tercile],
                         ("nucleus", "structure"), cseed))
        truth.append({"cell_id": cell_id, "nucleus_volume": info["nucleus_volume"],
                      "structure_volume": info["structure_volume"], "nucleus_scale": info["nucleus_scale"],
                      "structure_fraction": info["structure_fraction"]})
    pd.DataFrame(truth).to_csv(out_dir / "cell_truth.csv", index=False)
    return _write_manifest(out_dir, rows)


def generate_coupled_plate(out_dir: Path, plate_id: str, seed: int, n_dmso: int = 40, n_per_drug: int = 24,
                           drugs: dict[str, str] | None = None, grid: int = 64, screen_id: str = "") -> pd.DataFrame:
    """Write one plate of coupled cells: DMSO in B01 and one well per drug (``DEFAULT_COUPLED_DRUGS``: a
    nucleus-size-only drug, a structure-only drug and two nulls), ``manifest.csv`` and ``drug_truth.csv``
    (plate_id, drug, planted_effect, structure_name); return the manifest. ``screen_id``: the plate is a
    replicate of that screen (a ``screen_id`` manifest column)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drugs = dict(DEFAULT_COUPLED_DRUGS if drugs is None else drugs)
    plan = plate_plan(drugs, COUPLED_EFFECTS, n_dmso, n_per_drug, what="coupled")
    rows = []
    for drug, effect, well, n in plan:
        key = _name_key(drug)
        for i in range(n):
            cseed = key_seed(seed, key, i)
            nmask, smask, _ = coupled_cell(np.random.default_rng(cseed), grid, effect)
            cell_id = f"{plate_id}_{well}_{i:03d}"
            _write_cell_tiff(out_dir / f"{cell_id}.tiff", np.stack([_to_u8(nmask), _to_u8(smask)]))
            rows.append(_row(cell_id, PLATES_DATASET, "polymorphic", COUPLED_STRUCTURE,
                             CONTROL_LABEL if drug == CONTROL_DRUG else effect, ("nucleus", "structure"), cseed,
                             plate_id=plate_id, well=well, drug=drug) | ({"screen_id": screen_id} if screen_id else {}))
    pd.DataFrame({"plate_id": plate_id, "drug": list(drugs), "planted_effect": list(drugs.values()),
                  "structure_name": COUPLED_STRUCTURE}).to_csv(out_dir / "drug_truth.csv", index=False)
    return _write_manifest(out_dir, rows, extra=("screen_id",) if screen_id else ())
