"""A realistic synthetic drug screen: replicate plates, dose series, graded effects and the nuisance of real screens.

A screen is a set of replicate plates of polymorphic (nucleolus-like) cells. Every drug is given at several
concentrations; the strength of its planted effect rises with the dose along a Hill curve (strength 0 = no
effect, 1 = the size of the demo plates' effects). The truth of every cell (drug, concentration, effect,
strength, and each nuisance applied to it) is written next to the manifest as ``cell_truth.csv``; the truth
per plate, drug and concentration as ``drug_truth.csv``.

Effects (``EFFECTS``), each a function of ``strength``:

* ``shrink``: total structure volume x (1 - 0.4 s);
* ``fragment``: 1-3 pieces plus Binomial(5, s) extra pieces (same total volume);
* ``elongate``: piece elongation range shifted up by 1.1 s;
* ``unequal``: piece volumes drawn from a Dirichlet whose concentration falls from 2 (DMSO) to 0.2 at s = 1:
  one large piece and small ones, at the same total volume, piece count and elongation;
* ``flatten``: each piece oblate (two long axes) instead of prolate with probability s, at the same volume,
  piece count and elongation (longest / shortest semi-axis).

``unequal`` and ``flatten`` are invisible by construction to the piece count, the total volume and the mean
distance between pieces, three of the four hand-crafted features (the surface area moves by a few per cent:
``tests/test_screen.py`` measures how little); the other three effects move at least one of them.

Nuisance, as on real screens: every plate has its own random layout (a drug's wells differ between
replicates), DMSO is spread over several wells including edge wells, a per-plate batch factor multiplies every
cell's structure volume, cells in edge wells are smaller (evaporation), the structure's volume follows the
nuclear volume (cell-cycle heterogeneity), a few per cent of cells are debris (tiny fragments) and every
structure mask carries mild segmentation noise (boundary voxels flipped).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cellrep_core.data.plates import CONTROL_DRUG, CONTROL_LABEL, PLATES_DATASET
from cellrep_core.data.synthetic import (
    _name_key,
    _row,
    _to_u8,
    _write_cell_tiff,
    _write_manifest,
    grid_scale,
    key_seed,
    polymorphic_cell,
    random_nucleus,
)

EFFECTS: tuple[str, ...] = ("none", "shrink", "fragment", "elongate", "unequal", "flatten")
# Effects built so that piece count, total volume and mean piece distance do not change with them.
HANDCRAFTED_INVISIBLE: tuple[str, ...] = ("unequal", "flatten")

ROWS = "ABCDEFGH"  # a 96-well plate
N_COLS = 12
N_WELLS = len(ROWS) * N_COLS

# DMSO cell parameters of a screen (volumes in voxels on the 64-grid)
BASE_PIECES = (1, 3)
BASE_VOLUME = (1600.0, 2600.0)
BASE_ELONGATION = (1.3, 2.3)
BASE_DIRICHLET = 2.0
DEBRIS_VOLUME = (150.0, 400.0)
# the mean nuclear volume of ``random_nucleus`` on the 64-grid (semi-axes a~U(20,27), b~U(15,20), c~U(11,14))
MEAN_NUCLEAR_VOLUME = 4.0 / 3.0 * math.pi * 23.5 * 17.5 * 12.5

DEFAULT_SCREEN_DRUGS: tuple[tuple[str, str], ...] = (
    ("cmpd_01", "shrink"), ("cmpd_02", "fragment"), ("cmpd_03", "elongate"), ("cmpd_04", "unequal"),
    ("cmpd_05", "flatten"), ("cmpd_06", "none"), ("cmpd_07", "none"), ("cmpd_08", "none"),
)

# Screens generated from seeds at or above this value are the held-out evaluation of ``make bench-screen``;
# nothing else (defaults, the demo, tests, development) may use them, and ``ScreenSpec`` refuses them unless
# it is marked as an evaluation screen.
EVAL_SEED_START = 900_000

SHRINK_AT_1 = 0.4
EXTRA_PIECES_AT_1 = 5
ELONGATION_SHIFT_AT_1 = 1.1
DIRICHLET_AT_1 = 0.2


def dose_strength(concentration: float, max_strength: float, ec50: float, top: float, hill: float = 1.5) -> float:
    """Effect strength at a concentration: a Hill curve scaled so that the top concentration gives
    ``max_strength`` (0 at concentration 0)."""
    if concentration <= 0 or max_strength == 0:
        return 0.0

    def h(c: float) -> float:
        return c**hill / (c**hill + ec50**hill)

    return float(max_strength * h(concentration) / h(top))


@dataclass(frozen=True)
class Drug:
    """A screened compound: its planted effect and the strength it reaches at the top concentration."""

    name: str
    effect: str = "none"
    max_strength: float = 1.0

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise ValueError(f"unknown effect {self.effect!r} for drug {self.name!r}; expected one of {EFFECTS}")
        if self.name == CONTROL_DRUG:
            raise ValueError(f"{CONTROL_DRUG!r} is the screen's control and cannot be listed among the drugs")
        if not (self.max_strength >= 0 and math.isfinite(self.max_strength)):
            raise ValueError(f"drug {self.name!r}: max_strength must be a finite number >= 0, got {self.max_strength}")

    @classmethod
    def parse(cls, spec: str) -> Drug:
        """``NAME=EFFECT`` or ``NAME=EFFECT:MAX_STRENGTH`` (e.g. ``cmpd_07=unequal:0.6``)."""
        name, sep, rest = spec.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"drug spec {spec!r}: expected NAME=EFFECT[:MAX_STRENGTH], e.g. cmpd_01=shrink:0.5")
        effect, _, strength = rest.partition(":")
        try:
            s = float(strength) if strength.strip() else 1.0
        except ValueError:
            raise ValueError(f"drug spec {spec!r}: MAX_STRENGTH {strength!r} is not a number") from None
        return cls(name.strip(), effect.strip() or "none", s if effect.strip() not in ("", "none") else 0.0)


@dataclass(frozen=True)
class Nuisance:
    """Sizes of the nuisance effects (0 switches one off)."""

    batch_sd: float = 0.06  # sd of log of the per-plate structure-volume factor
    edge_volume_factor: float = 0.92  # structure volume in edge wells
    cell_cycle_exponent: float = 1.0  # structure volume ~ nuclear volume ** exponent
    debris_fraction: float = 0.03  # cells replaced by debris (1-2 tiny fragments)
    segmentation_noise: float = 0.3  # sd (voxels) of the smooth noise added to the structure's boundary

    @classmethod
    def off(cls) -> Nuisance:
        return cls(0.0, 1.0, 0.0, 0.0, 0.0)


@dataclass
class ScreenSpec:
    """What ``generate_screen`` writes: drugs, concentrations (µM), replicate plates, cells per well."""

    screen_id: str
    seed: int
    drugs: list[Drug]
    concentrations: tuple[float, ...] = (0.3, 1.0, 3.0)
    n_replicates: int = 2
    n_per_well: int = 12
    n_dmso_wells: int = 6
    n_edge_dmso_wells: int = 2
    ec50: float | None = None  # default: the middle concentration
    nuisance: Nuisance = field(default_factory=Nuisance)
    grid: int = 64
    evaluation: bool = False
    n_bad: int = 0  # extra DMSO cells per plate that must end in quarantine (empty mask, truncated TIFF)

    def __post_init__(self) -> None:
        if self.seed >= EVAL_SEED_START and not self.evaluation:
            raise ValueError(
                f"seed {self.seed}: seeds from {EVAL_SEED_START} on are reserved for the held-out evaluation "
                "(make bench-screen); use a smaller seed"
            )
        if not self.drugs:
            raise ValueError("a screen needs at least one drug")
        names = [d.name for d in self.drugs]
        if len(set(names)) != len(names):
            raise ValueError(f"drug names must be unique, got {names}")
        if not self.concentrations or any(not (c > 0) for c in self.concentrations):
            raise ValueError(f"concentrations must be positive numbers (µM), got {self.concentrations}")
        if self.n_replicates < 1:
            raise ValueError(f"n_replicates must be >= 1, got {self.n_replicates}")
        if self.n_per_well < 2:
            raise ValueError(f"n_per_well must be >= 2 (mAP needs two cells of a treatment), got {self.n_per_well}")
        if not 1 <= self.n_dmso_wells or not 0 <= self.n_edge_dmso_wells <= self.n_dmso_wells:
            raise ValueError("need n_dmso_wells >= 1 and 0 <= n_edge_dmso_wells <= n_dmso_wells")
        n_wells = len(self.drugs) * len(self.concentrations) + self.n_dmso_wells
        if n_wells > N_WELLS:
            raise ValueError(
                f"{len(self.drugs)} drugs x {len(self.concentrations)} concentrations + {self.n_dmso_wells} DMSO "
                f"wells = {n_wells} wells; a plate has {N_WELLS} (rows A-H x 12 columns)"
            )

    def plate_ids(self) -> list[str]:
        return [f"{self.screen_id}_r{k + 1}" for k in range(self.n_replicates)]

    def strength(self, drug: Drug, concentration: float) -> float:
        concs = sorted(self.concentrations)
        ec50 = self.ec50 if self.ec50 is not None else concs[len(concs) // 2]
        return dose_strength(concentration, drug.max_strength, ec50, concs[-1]) if drug.effect != "none" else 0.0


def is_edge_well(well: str) -> bool:
    """Wells on the outer rows (A, H) or columns (1, 12) of the 96-well plate."""
    return well[0] in (ROWS[0], ROWS[-1]) or int(well[1:]) in (1, N_COLS)


def all_wells() -> list[str]:
    return [f"{r}{c:02d}" for r in ROWS for c in range(1, N_COLS + 1)]


def plate_layout(spec: ScreenSpec, replicate: int) -> dict[tuple, str]:
    """Random well of every (drug, concentration) on one replicate plate, and the DMSO wells (key
    ``(DMSO, 0.0, i)``); ``n_edge_dmso_wells`` of the DMSO wells are edge wells."""
    rng = np.random.default_rng(key_seed(spec.seed, 7, replicate))
    wells = all_wells()
    edge = [w for w in wells if is_edge_well(w)]
    inner = [w for w in wells if not is_edge_well(w)]
    rng.shuffle(edge)
    rng.shuffle(inner)
    dmso = edge[: spec.n_edge_dmso_wells] + inner[: spec.n_dmso_wells - spec.n_edge_dmso_wells]
    rest = [w for w in wells if w not in dmso]
    rng.shuffle(rest)
    layout: dict = {(CONTROL_DRUG, 0.0, i): w for i, w in enumerate(dmso)}
    treatments = [(d.name, c) for d in spec.drugs for c in spec.concentrations]
    for (name, c), w in zip(treatments, rest, strict=False):
        layout[(name, c)] = w
    return layout


def effect_parameters(rng: np.random.Generator, effect: str, strength: float, grid: int = 64) -> dict[str, Any]:
    """Piece count, total volume (before nuisance), elongation range, Dirichlet concentration and the
    probability of oblate pieces of one cell under an effect of a given strength."""
    if effect not in EFFECTS:
        raise ValueError(f"unknown effect {effect!r}; expected one of {EFFECTS}")
    s = float(strength) if effect != "none" else 0.0
    n_pieces = int(rng.integers(BASE_PIECES[0], BASE_PIECES[1] + 1))
    volume = float(rng.uniform(*BASE_VOLUME)) * grid_scale(grid) ** 3
    elongation = BASE_ELONGATION
    alpha, oblate = BASE_DIRICHLET, 0.0
    if effect == "shrink":
        volume *= max(1.0 - SHRINK_AT_1 * s, 0.05)
    elif effect == "fragment":
        n_pieces += int(rng.binomial(EXTRA_PIECES_AT_1, min(s, 1.0)))
    elif effect == "elongate":
        elongation = (BASE_ELONGATION[0] + ELONGATION_SHIFT_AT_1 * s, BASE_ELONGATION[1] + ELONGATION_SHIFT_AT_1 * s)
    elif effect == "unequal":
        alpha = BASE_DIRICHLET * (DIRICHLET_AT_1 / BASE_DIRICHLET) ** s
    elif effect == "flatten":
        oblate = min(s, 1.0)
    return {"n_pieces": n_pieces, "volume": volume, "elongation": elongation, "alpha": alpha, "oblate": oblate}


def segmentation_noise(mask: np.ndarray, rng: np.random.Generator, amplitude: float, sigma: float = 1.5) -> np.ndarray:
    """Move the structure's boundary by smooth random noise: threshold the mask's signed distance (voxels)
    plus Gaussian-smoothed noise of standard deviation ``amplitude`` voxels (correlation length ``sigma``):
    bumps and dents of about a voxel, as a segmentation of a real image has. A mask that would vanish is
    returned unchanged."""
    if amplitude <= 0:
        return mask
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    phi = np.where(mask, -(inside - 0.5), outside - 0.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
    noise *= amplitude / max(float(noise.std()), 1e-12)
    out = phi + noise < 0
    return out if out.any() else mask


def screen_cell(
    rng: np.random.Generator, effect: str, strength: float, nuisance: Nuisance, batch_factor: float, edge: bool,
    grid: int = 64,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One cell of a screen plate: (nucleus mask, structure mask, truth)."""
    nucleus = random_nucleus(rng, grid)
    nuc_vol = float(np.prod(nucleus.semi_axes)) * 4.0 / 3.0 * math.pi / grid_scale(grid) ** 3
    debris = bool(rng.random() < nuisance.debris_fraction)
    if debris:
        params = {"n_pieces": int(rng.integers(1, 3)), "elongation": (1.0, 1.3), "alpha": BASE_DIRICHLET,
                  "oblate": 0.0, "volume": float(rng.uniform(*DEBRIS_VOLUME)) * grid_scale(grid) ** 3}
    else:
        params = effect_parameters(rng, effect, strength, grid)
    volume = params["volume"] * batch_factor * (nuc_vol / MEAN_NUCLEAR_VOLUME) ** nuisance.cell_cycle_exponent
    if edge:
        volume *= nuisance.edge_volume_factor
    nmask, smask, info = polymorphic_cell(
        rng, grid, params["n_pieces"], volume, params["elongation"], nucleus=nucleus,
        dirichlet_alpha=params["alpha"], oblate_probability=params["oblate"],
    )
    smask = segmentation_noise(smask, rng, nuisance.segmentation_noise) & nmask
    truth = {
        "debris": debris, "edge_well": edge, "batch_factor": batch_factor, "nuclear_volume": nuc_vol,
        "n_pieces": params["n_pieces"], "total_volume": volume, "structure_voxels": int(smask.sum()),
        "n_oblate": sum(p.get("oblate", False) for p in info["pieces"]),
    }
    return nmask, smask, truth


def generate_screen(spec: ScreenSpec, out_root: Path) -> list[Path]:
    """Write every replicate plate of a screen as ``<out_root>/<plate_id>/`` (cell TIFFs, ``cell_truth.csv``,
    ``drug_truth.csv``, ``screen.json``, and ``manifest.csv`` last, via a rename). Returns the plate folders."""
    out_root = Path(out_root)
    folders = []
    for k, plate_id in enumerate(spec.plate_ids()):
        out = out_root / plate_id
        out.mkdir(parents=True, exist_ok=True)
        layout = plate_layout(spec, k)
        brng = np.random.default_rng(key_seed(spec.seed, 11, k))
        batch_factor = float(np.exp(brng.normal(0.0, spec.nuisance.batch_sd))) if spec.nuisance.batch_sd else 1.0
        rows, truth_rows = [], []
        plan: list[tuple[str, str, float, float, str]] = []
        for key, well in layout.items():
            if key[0] == CONTROL_DRUG:
                plan.append((CONTROL_DRUG, "none", 0.0, 0.0, well))
        for d in spec.drugs:
            for c in spec.concentrations:
                plan.append((d.name, d.effect, float(c), spec.strength(d, c), layout[(d.name, c)]))
        for j, (drug, effect, conc, strength, well) in enumerate(plan):
            edge = is_edge_well(well)
            n_bad = spec.n_bad if j == 0 else 0
            for i in range(spec.n_per_well + n_bad):
                cseed = key_seed(spec.seed, k, _name_key(drug), _name_key(f"{conc:g}"), _name_key(well), i)
                rng = np.random.default_rng(cseed)
                nmask, smask, truth = screen_cell(rng, effect, strength, spec.nuisance, batch_factor, edge, spec.grid)
                bad = (i - spec.n_per_well) % 2 if i >= spec.n_per_well else -1
                if bad == 0:  # an empty structure segmentation
                    smask = np.zeros_like(smask)
                cell_id = f"{plate_id}_{well}_{i:03d}"
                path = out / f"{cell_id}.tiff"
                _write_cell_tiff(path, np.stack([_to_u8(nmask), _to_u8(smask)]))
                if bad == 1:  # a TIFF truncated to half its bytes
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                label = CONTROL_LABEL if drug == CONTROL_DRUG else effect
                row = _row(cell_id, PLATES_DATASET, "polymorphic", "synthetic_nucleolus", label,
                           ("nucleus", "structure"), cseed, plate_id=plate_id, well=well, drug=drug)
                rows.append({**row, "concentration": conc, "screen_id": spec.screen_id})
                if bad < 0:
                    truth_rows.append({"cell_id": cell_id, "plate_id": plate_id, "well": well, "drug": drug,
                                       "concentration": conc, "effect": effect, "strength": strength, **truth})
        pd.DataFrame(truth_rows).to_csv(out / "cell_truth.csv", index=False)
        drug_truth = pd.DataFrame(
            [{"plate_id": plate_id, "drug": d.name, "concentration": float(c), "planted_effect": d.effect,
              "strength": spec.strength(d, c)} for d in spec.drugs for c in spec.concentrations]
        )
        drug_truth.to_csv(out / "drug_truth.csv", index=False)
        meta = {"screen_id": spec.screen_id, "replicate": k + 1, "plate_id": plate_id, "seed": spec.seed,
                "batch_factor": batch_factor, "spec": _spec_json(spec)}
        (out / "screen.json").write_text(json.dumps(meta, indent=1))
        _write_manifest(out, rows, extra=("screen_id",))
        folders.append(out)
    return folders


def _spec_json(spec: ScreenSpec) -> dict:
    d = asdict(spec)
    d["drugs"] = [asdict(x) for x in spec.drugs]
    return d
