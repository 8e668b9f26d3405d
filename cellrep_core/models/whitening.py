"""The whitening of a model's codes that profiling compares cells in, fitted on the model's training cells and
stored beside its weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellrep_core.models.inference import embed_items
from cellrep_core.models.module import PointCloudAutoencoder
from cellrep_core.pointclouds.items import CloudItem

WHITENING_FILE = "whitening.npz"


@dataclass(frozen=True)
class Whitening:
    """PCA whitening of a model's invariant codes, fitted on the cells the model was trained on.

    Raw codes have many strongly correlated dimensions (most of them track size), so a cosine similarity
    over them is dominated by one direction and blind to effects orthogonal to it. Profiling compares
    cells in the whitened space instead: the training set's principal axes, each scaled to unit variance.
    The transform depends on the model and its training cells only, never on a plate's labels, so it
    cannot make a null drug look different from DMSO.
    """

    mean: np.ndarray
    components: np.ndarray  # [k, code_dim]
    scale: np.ndarray  # [k]: 1 / sqrt(explained variance)

    @classmethod
    def fit(cls, z: np.ndarray, max_axes_fraction: float = 0.25, floor: float = 1e-6) -> Whitening:
        """Fit on codes ``[n, code_dim]``, keeping the principal axes whose variance is above ``floor``
        times the largest (the others are numerical noise), at most ``max_axes_fraction`` of the cells
        (every kept axis is then estimated from several cells) and at least two.

        No variance-fraction cut: a dominant size factor can hold 99 % of the variance, and keeping only
        its axis would leave a cosine similarity that sees nothing but a sign.
        """
        z = np.asarray(z, dtype=np.float64)
        if len(z) < 8:
            raise ValueError(f"whitening needs at least 8 cells, got {len(z)}")
        mean = z.mean(0)
        _, sv, vt = np.linalg.svd(z - mean, full_matrices=False)
        var = sv**2 / (len(z) - 1)
        k = min(int(len(z) * max_axes_fraction), int((var > var[0] * floor).sum()))
        k = max(k, min(2, len(var)))
        return cls(mean, vt[:k], 1.0 / np.sqrt(np.maximum(var[:k], 1e-30)))

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Project codes ``[n, code_dim]`` onto the whitened axes ``[n, k]``."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"codes have {z.shape[-1]} dimensions, the whitening expects {self.mean.shape[0]}")
        return ((z - self.mean) @ self.components.T * self.scale).astype(np.float32)


def fit_whitening(model: PointCloudAutoencoder, items: list[CloudItem], out: Path | None = None) -> Whitening:
    """Fit (and save to ``out/whitening.npz``) the whitening of ``model``'s codes of ``items``."""
    w = Whitening.fit(embed_items(model, items))
    if out is not None:
        import io

        from cellrep_core.atomic import write_bytes

        buf = io.BytesIO()
        np.savez(buf, mean=w.mean, components=w.components, scale=w.scale)
        write_bytes(Path(out) / WHITENING_FILE, buf.getvalue(), "the whitening of a model version",
                    fault="record_write")
    return w


def load_whitening(path: Path) -> Whitening:
    """The whitening saved beside a model version's weights."""
    f = Path(path) / WHITENING_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f} is missing: re-run training of this model version to create it")
    with np.load(f) as d:
        return Whitening(d["mean"], d["components"], d["scale"])
