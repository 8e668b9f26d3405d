"""A trained version in use: loading it (config + weights), its lineage, and embedding cells (the mean code over
fixed input draws) on the device the model is on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from cellrep_core.models.config import ModelConfig
from cellrep_core.models.module import PointCloudAutoencoder
from cellrep_core.models.zoo import build_model, model_inputs, n_draws
from cellrep_core.pointclouds.items import CloudItem

# A cell's code is the mean of its codes over this many fixed input draws: each draw is a random subset
# of the cell's points, and averaging removes that sampling noise (measured on the demo plates: the
# q-value of the shrink drug 0.05-0.06 with one draw, 0.01-0.02 with eight).
EMBED_DRAWS = 8


def device_accelerator() -> str:
    """``gpu`` when CUDA is available, ``cpu`` otherwise."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def inference_device() -> torch.device:
    """Where embedding, benchmark inference and ``nearest --file`` run: ``CELLREP_DEVICE`` when set (``cpu``,
    ``cuda``, ``cuda:1``), else the first CUDA device when there is one, else the CPU."""
    want = os.environ.get("CELLREP_DEVICE", "").strip()
    if want:
        dev = torch.device(want)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"CELLREP_DEVICE={want} but torch sees no CUDA device (torch {torch.__version__})")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embed_batch_size(model: torch.nn.Module) -> int:
    """Cells per forward pass: 32 on the CPU (larger batches are not faster there), 128 on a GPU. The models'
    neighbour searches compute their distances in bounded blocks (``vn.KNN_BLOCK_ENTRIES``), so the paper's
    8,192-point SDF inputs fit a 40 GB device at this size."""
    return 128 if next(model.parameters()).device.type == "cuda" else 32


def load_model(path: Path, device: torch.device | str = "cpu") -> PointCloudAutoencoder:
    """Rebuild a model from ``config.json`` and ``model.pt`` in a version folder, on ``device`` (the CPU by
    default; ``inference_device()`` for embedding); an unreadable checkpoint raises ``CorruptFileError`` naming
    it (training that version again replaces it: ``train_model``)."""
    from cellrep_core.errors import CorruptFileError

    path = Path(path)
    cfg = ModelConfig.model_validate_json((path / "config.json").read_text())
    model = build_model(cfg)
    try:
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torn zip, unpickling error, wrong tensors: all one answer
        raise CorruptFileError(f"{path / 'model.pt'}: unreadable checkpoint ({type(err).__name__}: {err}); "
                               "materialize the model asset again: this version is trained again") from err
    return model.to(device).eval()


def read_lineage(path: Path) -> dict:
    """Lineage and training metrics stored beside a checkpoint."""
    return json.loads((Path(path) / "lineage.json").read_text())


@torch.no_grad()
def embed_points(model: PointCloudAutoencoder, points: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Codes ``[n, code_dim]`` of already-drawn inputs (``[n, N, D]`` points or ``[n, C, S, S, S]`` volumes), in
    batches on the model's device (``embed_batch_size`` by default); codes come back as float32 numpy."""
    model.eval()
    dev = next(model.parameters()).device
    batch_size = batch_size or embed_batch_size(model)
    out = []
    for s in range(0, len(points), batch_size):
        x = torch.as_tensor(points[s : s + batch_size], dtype=torch.float32, device=dev)
        out.append(model(x)["z"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.encoder.code_dim), np.float32)


def embed_items(
    model: PointCloudAutoencoder, items: list[CloudItem], batch_size: int | None = None, draws: int = EMBED_DRAWS
) -> np.ndarray:
    """Invariant codes of cells: the mean over ``draws`` fixed input draws of each cell."""
    if not items:
        return np.zeros((0, model.encoder.code_dim), np.float32)
    from cellrep_core.progress import Progress

    z = np.zeros((len(items), model.encoder.code_dim), np.float64)
    draws = n_draws(model.cfg, draws)
    with Progress(f"embedding {len(items)} cells with {model.cfg.name}", draws, unit="draws") as prog:
        for d in range(draws):
            z += embed_points(model, np.stack([model_inputs(it, model.cfg, d) for it in items]), batch_size)
            prog.update()
    return (z / draws).astype(np.float32)
