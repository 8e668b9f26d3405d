"""Pictures of cells: three orthogonal maximum projections of a cell's masks, tiles of several cells, PNG.

A cell is drawn from the image it was ingested from (``cells.source_path`` and ``cells.channels``): the
nucleus in blue, the cell outline (when a ``cell`` channel exists) in grey, the structure in magenta
(intensity for punctate cells), as its top view (max over z), front view (max over y) and side view (max
over x), side by side. Every analysis that shows a cell uses these tiles, so a picture of a cell looks the
same in the UI, in ``reports/`` and in ``cellrep explain``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from cellrep_core.atomic import write_bytes

NUCLEUS_RGB = np.array([0.25, 0.45, 1.0])
STRUCTURE_RGB = np.array([1.0, 0.15, 0.75])
CELL_RGB = np.array([0.55, 0.55, 0.55])


def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _views(vol: np.ndarray) -> list[np.ndarray]:
    """Max projections of a ZYX volume: top (YX), front (ZX), side (ZY)."""
    return [vol.max(axis=0), vol.max(axis=1), vol.max(axis=2)]


def cell_views(images: dict[str, np.ndarray]) -> np.ndarray:
    """One RGB image ``[H, W, 3]`` (float, 0..1) of a cell: its three orthogonal max projections side by side,
    separated by a white line. ``images`` maps channel names (``nucleus``, ``structure`` or ``raw``, optionally
    ``cell``) to ZYX arrays of one shape."""
    struct = images.get("structure", images.get("raw"))
    if struct is None:
        raise ValueError(f"a cell picture needs a 'structure' or 'raw' channel, got {sorted(images)}")
    layers = [(_norm(struct), STRUCTURE_RGB)]
    if "nucleus" in images:
        layers.append((_norm(images["nucleus"]) * 0.6, NUCLEUS_RGB))
    if "cell" in images:
        cell = _norm(images["cell"]) > 0.5
        # the cell's outline only: a mask minus its erosion, projected
        from scipy.ndimage import binary_erosion

        layers.append(((cell & ~binary_erosion(cell)).astype(np.float32) * 0.5, CELL_RGB))
    panels = []
    for k in range(3):
        rgb = np.zeros((*_views(struct)[k].shape, 3), np.float32)
        for vol, colour in layers:
            rgb = np.maximum(rgb, _views(vol)[k][..., None] * colour)
        panels.append(rgb)
    h = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, h - p.shape[0]), (0, 1), (0, 0)), constant_values=1.0) for p in panels]
    return np.clip(np.concatenate(padded, axis=1)[:, :-1], 0, 1)


def read_cell_views(source_path: str | Path, channels: str, cell_id: str) -> np.ndarray:
    """The three-view picture of a stored cell, read from its image file (``cells`` table columns)."""
    from cellrep_core.data.images import read_cell_image

    return cell_views(read_cell_image(Path(source_path), channels, cell_id))


def tiles_png(tiles: list[list[tuple[np.ndarray | None, str]]], out: Path | None, title: str = "",
              row_labels: list[str] | None = None, dpi: int = 90) -> bytes:
    """A grid of pictures (``tiles[row][col] = (rgb or None, caption)``) as PNG bytes, also written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols + 0.6, 1.3 * n_rows + 0.6), squeeze=False)
    for i, row in enumerate(tiles):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j >= len(row):
                continue
            img, caption = row[j]
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(caption, fontsize=7)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return figure_png(fig, out, dpi)


def figure_png(fig, out: Path | None = None, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes (laid out, then closed), also written to ``out``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    if out is not None:
        write_bytes(out, data, f"the picture {Path(out).name}")
    return data


def png_data_uri(data: bytes | Path) -> str:
    """``data:image/png;base64,...`` of PNG bytes or a PNG file (self-contained HTML, inline UI metadata)."""
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
