"""Vector-neuron (SO(3)-equivariant) layers and the VN-DGCNN encoder with a learned rotation.

Tensors of vector features are laid out ``[B, C, 3, N]`` (batch, channels, xyz, points).

Edge convolutions use the linearity of a VN-linear map: ``W [f_j - f_i ; f_i] = A f_j + B f_i``, so the
maps are applied once per point (``[B, C, 3, N]``) and only their results are gathered over the k
neighbours. The ``[B, C, 3, N, k]`` edge tensor then exists only for the non-linearity and the mean over
neighbours, which run chunk by chunk over points to bound peak memory.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

EPS = 1e-6


def knn(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, N, k]`` of the k nearest neighbours (self included) of ``[B, N, 3]`` points.

    Distances are computed in float64: in float32 the ``|x|² - 2x·y + |y|²`` expansion cancels
    catastrophically for close points, which makes the graph (and the code) depend on the orientation.
    """
    p = points.detach().double()
    sq = (p * p).sum(-1)
    dist = sq.unsqueeze(2) - 2.0 * p @ p.transpose(1, 2) + sq.unsqueeze(1)
    return dist.topk(k, dim=-1, largest=False).indices


def gather_neighbours(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather ``[B, C, 3, N]`` features at ``[B, M, k]`` indices into ``[B, C, 3, M, k]``."""
    b, c, d, _ = feat.shape
    m, k = idx.shape[1], idx.shape[2]
    flat = feat.reshape(b, c * d, -1)
    out = torch.gather(flat, 2, idx.reshape(b, 1, m * k).expand(b, c * d, m * k))
    return out.view(b, c, d, m, k)


class VNLinear(nn.Module):
    """Bias-free linear map over the channels of vector features (equivariant)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``[B, C_in, 3, ...]`` and return ``[B, C_out, 3, ...]``."""
        shape = x.shape
        out = torch.matmul(self.weight, x.reshape(shape[0], shape[1], -1))
        return out.view(shape[0], -1, *shape[2:])


def vn_leaky_relu(x: torch.Tensor, d: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    """VN-LeakyReLU: remove (most of) the component of ``x`` along ``d`` where ``<x, d> < 0``."""
    dot = (x * d).sum(2, keepdim=True)
    dsq = (d * d).sum(2, keepdim=True)
    coef = dot.clamp(max=0.0) / (dsq + EPS)
    return x - (1.0 - negative_slope) * coef * d


class VNLinearLeakyReLU(nn.Module):
    """VN-linear map followed by VN-LeakyReLU with a learned direction, per point."""

    def __init__(self, c_in: int, c_out: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.lin = VNLinear(c_in, c_out)
        self.dir = VNLinear(c_in, c_out)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, 3, ...]`` to ``[B, C_out, 3, ...]``."""
        return vn_leaky_relu(self.lin(x), self.dir(x), self.negative_slope)


class VNBatchNorm(nn.Module):
    """Batch norm of the vector norms, keeping directions (equivariant)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[B, C, 3, N]`` features."""
        norm = x.norm(dim=2) + EPS
        b, c, n = norm.shape
        normed = self.bn(norm)
        return x / norm.unsqueeze(2) * normed.unsqueeze(2)


def _edge_block(
    nb: torch.Tensor,
    centre: torch.Tensor,
    idx: torch.Tensor,
    extra: torch.Tensor | None,
    negative_slope: float,
) -> torch.Tensor:
    """Gather, add the centre term (and the cross-product term), VN-LeakyReLU, mean over neighbours."""
    c2 = nb.shape[1]
    g = gather_neighbours(nb, idx) + centre.unsqueeze(-1)
    if extra is not None:
        g = g + extra
    x, d = g[:, : c2 // 2], g[:, c2 // 2 :]
    return vn_leaky_relu(x, d, negative_slope).mean(-1)


class VNEdgeConv(nn.Module):
    """Equivariant EdgeConv on a fixed graph: edge features ``(f_j - f_i, f_i)`` (first layer: plus
    ``x_j x x_i``), VN-LeakyReLU, mean over the k neighbours."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        cross: bool = False,
        negative_slope: float = 0.2,
        chunk_points: int = 0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # neighbour and centre maps for both the feature and the ReLU direction
        self.nb = VNLinear(c_in, 2 * c_out)
        self.centre = VNLinear(c_in, 2 * c_out)
        self.cross = nn.Parameter(torch.randn(2 * c_out) / math.sqrt(3 * c_in)) if cross else None
        self.c_out = c_out
        self.negative_slope = negative_slope
        self.chunk_points = chunk_points
        self.checkpointing = checkpointing

    def forward(self, f: torch.Tensor, idx: torch.Tensor, xyz: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, C_in, 3, N]`` features on graph ``idx`` to ``[B, C_out, 3, N]``."""
        nb = self.nb(f)
        centre = self.centre(f)
        n = f.shape[-1]
        chunk = self.chunk_points if self.chunk_points > 0 else n
        outs = []
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            sub_idx = idx[:, sl]
            extra = None
            if self.cross is not None:
                # x_j x x_i for the 1-channel coordinates: [B, 1, 3, M, k]
                xj = gather_neighbours(xyz, sub_idx)
                xi = xyz[..., sl].unsqueeze(-1).expand_as(xj)
                extra = self.cross.view(1, -1, 1, 1, 1) * torch.cross(xj, xi, dim=2)
            args = (nb, centre[..., sl], sub_idx, extra, self.negative_slope)
            if self.checkpointing and torch.is_grad_enabled():
                outs.append(checkpoint(_edge_block, *args, use_reentrant=False))
            else:
                outs.append(_edge_block(*args))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def rotation_from_vectors(v: torch.Tensor) -> torch.Tensor:
    """Gram–Schmidt on two ``[B, 2, 3]`` vectors; returns ``[B, 3, 3]`` rotations with columns u1, u2, u3."""
    u1 = torch.nn.functional.normalize(v[:, 0], dim=-1, eps=1e-12)
    v2 = v[:, 1] - (v[:, 1] * u1).sum(-1, keepdim=True) * u1
    u2 = torch.nn.functional.normalize(v2, dim=-1, eps=1e-12)
    u3 = torch.cross(u1, u2, dim=-1)
    return torch.stack([u1, u2, u3], dim=-1)


class VNDGCNNEncoder(nn.Module):
    """SO(3)-equivariant DGCNN encoder: equivariant latent vectors, a learned rotation and invariant norms.

    Input ``[B, N, 3]`` points, optionally ``[B, N, 4]`` with an intensity that rides along as a scalar:
    its edge channel is ``(s x)_j - (s x)_i``, equivariant because ``s`` is invariant.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: int = 64,
        n_layers: int = 4,
        k: int = 20,
        intensity: bool = False,
        chunk_points: int = 0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.k = k
        self.intensity = intensity
        c0 = 2 if intensity else 1  # per-point inputs: x (and s*x)
        self.convs = nn.ModuleList()
        c_in = c0
        for i in range(n_layers):
            self.convs.append(
                VNEdgeConv(
                    c_in, hidden, cross=(i == 0), chunk_points=chunk_points, checkpointing=checkpointing
                )
            )
            c_in = hidden
        self.bn = VNBatchNorm(hidden * n_layers)
        self.mix = VNLinearLeakyReLU(hidden * n_layers, latent_dim)
        self.to_rot = VNLinear(latent_dim, 2)
        self.n_moments = max(4, latent_dim // 4)
        self.to_moments = VNLinear(latent_dim, self.n_moments)
        self.latent_dim = latent_dim
        self.code_dim = 2 * latent_dim + 2 * self.n_moments

    def forward(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode ``[B, N, 3|4]`` points: ``vectors [B, L, 3]``, ``rotation [B, 3, 3]``, ``z [B, code_dim]``."""
        xyz = pts[..., :3]
        idx = knn(xyz, self.k)
        x = xyz.transpose(1, 2).unsqueeze(1)  # [B, 1, 3, N]
        feats = [x]
        if self.intensity:
            feats.append(x * pts[..., 3].unsqueeze(1).unsqueeze(1))
        f = torch.cat(feats, dim=1)
        outs = []
        for i, conv in enumerate(self.convs):
            f = conv(f, idx, xyz=x if i == 0 else None)
            outs.append(f)
        h = self.mix(self.bn(torch.cat(outs, dim=1)))  # [B, L, 3, N]
        vectors = h.mean(-1)  # [B, L, 3]
        rotation = rotation_from_vectors(self.to_rot(vectors.unsqueeze(-1)).squeeze(-1))
        # invariant code, four parts: norms of the pooled latent vectors; the mean over points of the
        # per-point norms (VN layers commute with -I, so the pooled vectors of a centrally symmetric shape
        # cancel out, while per-point norms do not); and, for a few learned channels a, the second-moment
        # tensor S_a = mean_n p_an p_an^T over points, through its invariants sqrt(tr S_a) (size) and
        # |S_a|_F / tr S_a (anisotropy: 1/sqrt(3) for an isotropic spread, 1 for a line). S_a -> R S_a R^T
        # under a rotation R, so both are invariant; they carry the global elongation that norms miss.
        p = self.to_moments(h)  # [B, m, 3, N]
        moments = torch.einsum("bmin,bmjn->bmij", p, p) / p.shape[-1]  # [B, m, 3, 3]
        trace = moments.diagonal(dim1=-2, dim2=-1).sum(-1)
        aniso = moments.flatten(-2).norm(dim=-1) / (trace + EPS)
        z = torch.cat([vectors.norm(dim=-1), h.norm(dim=2).mean(-1), (trace + EPS).sqrt(), aniso], dim=1)
        return {"vectors": vectors, "rotation": rotation, "z": z}
