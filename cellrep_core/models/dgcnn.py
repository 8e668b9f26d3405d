"""Classical (not rotation-equivariant) DGCNN encoder: scalar EdgeConv on a dynamic graph.

Each layer builds the k-nearest-neighbour graph in its own input feature space (the first one on the xyz
coordinates), forms edge features ``[f_j - f_i, f_i]``, applies a shared linear map, batch norm and
LeakyReLU, and takes the maximum over the k neighbours (Wang et al. 2019). Layer widths are
``hidden, hidden, 2·hidden, 4·hidden`` (64, 64, 128, 256 at the published size); the concatenated layer
outputs go through a 1×1 convolution to ``8·hidden`` channels, global max and mean pooling, and a linear map
to the ``latent_dim`` code. The linear map of an edge is applied per point,
``W [f_j - f_i ; f_i] = A f_j + (B - A) f_i``, so only its result is gathered over the neighbours.
"""

from __future__ import annotations

import torch
from torch import nn

from cellrep_core.models.vn import knn, topk_rows


def feature_knn(f: torch.Tensor, k: int, block_entries: int | None = None) -> torch.Tensor:
    """Indices ``[B, N, k]`` of the k nearest neighbours (self included) of ``[B, C, N]`` point features.

    Distances in float32 whatever the autocast (a training step under mixed precision and an embedding in
    fp32 build the same graph), in blocks of query rows (``vn.KNN_BLOCK_ENTRIES``)."""
    with torch.autocast(f.device.type, enabled=False):
        return topk_rows(f.detach().float().transpose(1, 2), k, block_entries)


def gather_points(f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather ``[B, C, N]`` features at ``[B, N, k]`` indices into ``[B, C, N, k]``."""
    b, c, _ = f.shape
    n, k = idx.shape[1], idx.shape[2]
    out = torch.gather(f, 2, idx.reshape(b, 1, n * k).expand(b, c, n * k))
    return out.view(b, c, n, k)


def layer_widths(hidden: int, n_layers: int) -> list[int]:
    """EdgeConv output widths: hidden, hidden, 2·hidden, 4·hidden (then 4·hidden for deeper nets)."""
    base = [hidden, hidden, 2 * hidden, 4 * hidden]
    return (base + [4 * hidden] * max(0, n_layers - 4))[:n_layers]


class EdgeConv(nn.Module):
    """Scalar EdgeConv: ``max_j LeakyReLU(BN(W [f_j - f_i, f_i]))`` over the k neighbours ``j`` of ``i``."""

    def __init__(self, c_in: int, c_out: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.nb = nn.Conv1d(c_in, c_out, 1, bias=False)  # A: acts on f_j
        self.centre = nn.Conv1d(c_in, c_out, 1, bias=False)  # B - A: acts on f_i
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, N]`` features on graph ``idx`` ``[B, N, k]`` to ``[B, C_out, N]``."""
        edge = gather_points(self.nb(f), idx) + self.centre(f).unsqueeze(-1)
        return self.act(self.bn(edge)).amax(-1)


class DGCNNEncoder(nn.Module):
    """Classical DGCNN: ``[B, N, 3|4]`` points (an intensity column is one more input feature) to a
    ``[B, latent_dim]`` code. Returns the same keys as the VN encoder; ``rotation`` is the identity."""

    def __init__(
        self, latent_dim: int, hidden: int = 64, n_layers: int = 4, k: int = 20, intensity: bool = False
    ) -> None:
        super().__init__()
        self.k = k
        self.intensity = intensity
        c_in = 4 if intensity else 3
        self.convs = nn.ModuleList()
        widths = layer_widths(hidden, n_layers)
        for w in widths:
            self.convs.append(EdgeConv(c_in, w))
            c_in = w
        emb = 8 * hidden
        self.embed = nn.Sequential(nn.Conv1d(sum(widths), emb, 1, bias=False), nn.BatchNorm1d(emb), nn.LeakyReLU(0.2))
        self.head = nn.Linear(2 * emb, latent_dim)
        self.latent_dim = latent_dim
        self.code_dim = latent_dim

    def forward(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode ``[B, N, 3|4]`` points: ``z [B, latent_dim]`` and ``rotation`` (identity ``[B, 3, 3]``)."""
        xyz = pts[..., :3]
        f = (pts if self.intensity else xyz).transpose(1, 2)  # [B, C, N]
        outs = []
        for i, conv in enumerate(self.convs):
            # the first graph on the coordinates (float64 distances), then in each layer's feature space
            idx = knn(xyz, self.k) if i == 0 else feature_knn(f, self.k)
            f = conv(f, idx)
            outs.append(f)
        h = self.embed(torch.cat(outs, dim=1))  # [B, emb, N]
        z = self.head(torch.cat([h.amax(-1), h.mean(-1)], dim=1))
        eye = torch.eye(3, dtype=pts.dtype, device=pts.device).expand(pts.shape[0], 3, 3)
        return {"z": z, "rotation": eye}
