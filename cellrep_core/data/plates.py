"""Synthetic drug plates: planted effects on polymorphic cells (shrink, fragment, elongate; nulls) in
wells around DMSO controls, and mixed plates whose cells carry a polymorphic and a punctate structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellrep_core.data.synthetic import (
    _name_key,
    _row,
    _to_u8,
    _write_cell_tiff,
    _write_manifest,
    grid_scale,
    key_seed,
    polymorphic_cell,
    punctate_cell,
)

PLANTED_EFFECTS: tuple[str, ...] = ("none", "shrink", "fragment", "elongate")


DEFAULT_DRUGS: dict[str, str] = {
    "cmpd_01": "shrink",
    "cmpd_02": "fragment",
    "cmpd_03": "elongate",
    "cmpd_04": "none",
    "cmpd_05": "none",
    "cmpd_06": "none",
}


CONTROL_DRUG = "DMSO"


CONTROL_LABEL = "control"


CONTROL_WELL = "B01"


PLATES_DATASET = "drug_plates"


SHRINK_FACTOR = 0.6


def plate_cell_parameters(
    rng: np.random.Generator, effect: str, grid: int = 64
) -> tuple[int, float, tuple[float, float]]:
    """Draw (n_pieces, total_volume, elongation_range) of a plate cell under a planted effect."""
    if effect not in PLANTED_EFFECTS:
        raise ValueError(f"unknown planted effect {effect!r}; expected one of {PLANTED_EFFECTS}")
    vol_scale = grid_scale(grid) ** 3
    low, high = (5, 8) if effect == "fragment" else (1, 3)
    n_pieces = int(rng.integers(low, high + 1))
    volume = float(rng.uniform(1600.0, 2600.0)) * vol_scale
    if effect == "shrink":
        volume *= SHRINK_FACTOR
    elongation = (2.6, 3.4) if effect == "elongate" else (1.0, 1.6)
    return n_pieces, volume, elongation


def well_name(index: int) -> str:
    """Return the plate well name of a 0-based well index: 0 -> B01, 11 -> B12, 12 -> C01, ..."""
    row, col = divmod(int(index), 12)
    if row > 5:
        raise ValueError(f"well index {index} is beyond the 72 wells (rows B..G) used by synthetic plates")
    return f"{'BCDEFG'[row]}{col + 1:02d}"


def plate_plan(drugs: dict[str, str], effects: tuple[str, ...], n_dmso: int, n_per_drug: int, what: str = "planted",
               ) -> list[tuple[str, str, str, int]]:
    """A plate's wells as ``(drug, effect, well, n_cells)``: DMSO in B01, then one well per drug; an unknown
    effect or a drug named like the control is refused by name."""
    for name, effect in drugs.items():
        if effect not in effects:
            raise ValueError(f"unknown {what} effect {effect!r} for drug {name!r}; expected one of {effects}")
        if name == CONTROL_DRUG:
            raise ValueError(f"{CONTROL_DRUG!r} is the plate control and cannot be listed among the drugs")
    return [(CONTROL_DRUG, "none", CONTROL_WELL, n_dmso),
            *[(name, effect, well_name(j + 1), n_per_drug) for j, (name, effect) in enumerate(drugs.items())]]


def generate_drug_plate(
    out_dir: Path,
    plate_id: str,
    seed: int,
    n_dmso: int = 32,
    n_per_drug: int = 20,
    drugs: dict[str, str] | None = None,
    n_bad: int = 2,
    grid: int = 64,
) -> pd.DataFrame:
    """Write one plate of polymorphic cells (DMSO + drugs with planted effects, plus bad cells).

    Writes the cell TIFFs, ``manifest.csv`` and ``drug_truth.csv`` (plate_id, drug, planted_effect) into
    ``out_dir`` and returns the manifest. The ``n_bad`` extra DMSO cells alternate between an empty
    structure segmentation and a TIFF truncated to half its bytes; nothing in the manifest marks them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drugs = dict(DEFAULT_DRUGS if drugs is None else drugs)
    plan = plate_plan(drugs, PLANTED_EFFECTS, n_dmso + n_bad, n_per_drug)
    channels = ("nucleus", "structure")
    rows: list[dict[str, Any]] = []
    for drug, effect, well, n in plan:
        key = _name_key(drug)
        for i in range(n):
            cseed = key_seed(seed, key, i)
            rng = np.random.default_rng(cseed)
            n_pieces, volume, elongation = plate_cell_parameters(rng, effect, grid)
            nmask, smask, _ = polymorphic_cell(rng, grid, n_pieces, volume, elongation)
            bad = drug == CONTROL_DRUG and i >= n_dmso
            bad_kind = (i - n_dmso) % 2 if bad else -1
            if bad_kind == 0:
                smask = np.zeros_like(smask)
            cell_id = f"{plate_id}_{well}_{i:03d}"
            path = out_dir / f"{cell_id}.tiff"
            _write_cell_tiff(path, np.stack([_to_u8(nmask), _to_u8(smask)]))
            if bad_kind == 1:
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
            label = CONTROL_LABEL if drug == CONTROL_DRUG else effect
            rows.append(
                _row(
                    cell_id,
                    PLATES_DATASET,
                    "polymorphic",
                    "synthetic_nucleolus",
                    label,
                    channels,
                    cseed,
                    plate_id=plate_id,
                    well=well,
                    drug=drug,
                )
            )
    truth = pd.DataFrame(
        {
            "plate_id": pd.Series([plate_id] * len(drugs), dtype=str),
            "drug": pd.Series(list(drugs), dtype=str),
            "planted_effect": pd.Series(list(drugs.values()), dtype=str),
        }
    )
    truth.to_csv(out_dir / "drug_truth.csv", index=False)
    return _write_manifest(out_dir, rows)


# a punctate planted effect moves the puncta: towards the nuclear surface, or towards its centre
PUNCTATE_EFFECTS: dict[str, str] = {"none": "random", "peripheral": "surface", "central": "radial"}


POLYMORPHIC_STRUCTURE = "synthetic_nucleolus"


PUNCTATE_STRUCTURE = "synthetic_foci"


# default drugs of a mixed plate: (polymorphic effect, punctate effect)
DEFAULT_MIXED_DRUGS: dict[str, tuple[str, str]] = {
    "shrinkol": ("shrink", "none"),
    "periphin": ("none", "peripheral"),
    "inertol": ("none", "none"),
}


def parse_mixed_effect(spec: str) -> tuple[str, str]:
    """``"shrink"``, ``"peripheral"`` or ``"shrink+peripheral"`` → (polymorphic effect, punctate effect)."""
    poly, punct = "none", "none"
    for part in [p for p in str(spec).split("+") if p]:
        if part in PLANTED_EFFECTS:
            poly = part
        elif part in PUNCTATE_EFFECTS:
            punct = part
        else:
            raise ValueError(f"unknown planted effect {part!r}; polymorphic: {PLANTED_EFFECTS}, punctate: "
                             f"{tuple(PUNCTATE_EFFECTS)}")
    return poly, punct


def generate_mixed_plate(
    out_dir: Path,
    plate_id: str,
    seed: int,
    n_dmso: int = 32,
    n_per_drug: int = 16,
    drugs: dict[str, tuple[str, str]] | None = None,
    grid: int = 64,
) -> pd.DataFrame:
    """Write one plate whose wells hold two structures: polymorphic nucleolus-like cells and punctate foci cells.

    Each drug has a planted effect per structure (``(polymorphic, punctate)``): a polymorphic effect as in
    :func:`generate_drug_plate`, a punctate one as a placement rule of the puncta (``peripheral``: towards the
    nuclear surface, ``central``: towards its centre; DMSO and ``none``: uniform). ``drug_truth.csv`` has one
    row per drug and structure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drugs = dict(DEFAULT_MIXED_DRUGS if drugs is None else drugs)
    for name, (poly, punct) in drugs.items():
        if poly not in PLANTED_EFFECTS or punct not in PUNCTATE_EFFECTS:
            raise ValueError(f"drug {name!r}: effects {(poly, punct)}; polymorphic one of {PLANTED_EFFECTS}, "
                             f"punctate one of {tuple(PUNCTATE_EFFECTS)}")
        if name == CONTROL_DRUG:
            raise ValueError(f"{CONTROL_DRUG!r} is the plate control and cannot be listed among the drugs")
    rows: list[dict[str, Any]] = []
    plan = [(CONTROL_DRUG, ("none", "none"), CONTROL_WELL, n_dmso)]
    plan += [(name, eff, well_name(j + 1), n_per_drug) for j, (name, eff) in enumerate(drugs.items())]
    for drug, (poly, punct), well, n in plan:
        key = _name_key(drug)
        for i in range(n):
            label = CONTROL_LABEL if drug == CONTROL_DRUG else poly
            cseed = key_seed(seed, key, 0, i)
            rng = np.random.default_rng(cseed)
            n_pieces, volume, elongation = plate_cell_parameters(rng, poly, grid)
            nmask, smask, _ = polymorphic_cell(rng, grid, n_pieces, volume, elongation)
            cell_id = f"{plate_id}_{well}_n{i:03d}"
            _write_cell_tiff(out_dir / f"{cell_id}.tiff", np.stack([_to_u8(nmask), _to_u8(smask)]))
            rows.append(_row(cell_id, PLATES_DATASET, "polymorphic", POLYMORPHIC_STRUCTURE, label,
                             ("nucleus", "structure"), cseed, plate_id=plate_id, well=well, drug=drug))
            label = CONTROL_LABEL if drug == CONTROL_DRUG else punct
            cseed = key_seed(seed, key, 1, i)
            raw, pmask, _, _ = punctate_cell(np.random.default_rng(cseed), grid, PUNCTATE_EFFECTS[punct])
            cell_id = f"{plate_id}_{well}_f{i:03d}"
            _write_cell_tiff(out_dir / f"{cell_id}.tiff", np.stack([raw, pmask.astype(np.uint16) * np.uint16(255)]))
            rows.append(_row(cell_id, PLATES_DATASET, "punctate", PUNCTATE_STRUCTURE, label, ("raw", "nucleus"),
                             cseed, plate_id=plate_id, well=well, drug=drug))
    truth = pd.DataFrame(
        [{"plate_id": plate_id, "drug": name, "planted_effect": eff, "structure_name": structure}
         for name, (poly, punct) in drugs.items()
         for structure, eff in ((POLYMORPHIC_STRUCTURE, poly), (PUNCTATE_STRUCTURE, punct))]
    )
    truth.to_csv(out_dir / "drug_truth.csv", index=False)
    return _write_manifest(out_dir, rows)
