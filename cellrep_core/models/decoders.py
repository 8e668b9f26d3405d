"""Decoders: FoldingNet for point clouds and an invariant implicit decoder for signed distances."""

from __future__ import annotations

import math

import torch
from torch import nn

from cellrep_core.models.vn import VNLinear


def plane_template(n_side: int = 45, extent: float = 0.3) -> torch.Tensor:
    """Return ``[n_side², 2]`` grid points in ``[-extent, extent]²`` (FoldingNet's plane)."""
    lin = torch.linspace(-extent, extent, n_side)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def sphere_template(n: int = 2025, radius: float = 0.3) -> torch.Tensor:
    """Return ``[n, 3]`` points spread evenly on a sphere (Fibonacci lattice)."""
    i = torch.arange(n, dtype=torch.float32) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return radius * torch.stack(
        [torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], dim=-1
    )


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class FoldingNetDecoder(nn.Module):
    """Two folds of a template conditioned on the latent; returns ``[B, M, out_dim]`` in the canonical frame."""

    def __init__(self, latent_dim: int, hidden: int = 512, out_dim: int = 3, template: str = "plane") -> None:
        super().__init__()
        grid = plane_template() if template == "plane" else sphere_template()
        self.register_buffer("template", grid, persistent=False)
        t = grid.shape[1]
        self.fold1 = _mlp([latent_dim + t, hidden, hidden, 3])
        self.fold2 = _mlp([latent_dim + 3, hidden, hidden, out_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode invariant codes ``[B, L]``."""
        b, m = z.shape[0], self.template.shape[0]
        zz = z.unsqueeze(1).expand(b, m, z.shape[1])
        f1 = self.fold1(torch.cat([zz, self.template.unsqueeze(0).expand(b, m, -1)], dim=-1))
        return self.fold2(torch.cat([zz, f1], dim=-1))


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(torch.relu(x))))


class ImplicitSDFDecoder(nn.Module):
    """Signed distance at query points from equivariant latent vectors, using only invariant inputs.

    Per query point ``p``: ``|p|²``, ``<p, c_i>`` for each latent vector ``c_i``, and ``<c_i, (W c)_i>``.
    Rotating the query points and the latent vectors together leaves the output unchanged.
    """

    def __init__(self, latent_dim: int, hidden: int = 256, n_blocks: int = 3, code_dim: int = 0) -> None:
        super().__init__()
        self.vn = VNLinear(latent_dim, latent_dim)
        self.fc_in = nn.Linear(1 + 2 * latent_dim + code_dim, hidden)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(n_blocks)])
        self.fc_out = nn.Linear(hidden, 1)

    def forward(self, vectors: torch.Tensor, query: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``[B, M]`` SDF values from ``[B, L, 3]`` latent vectors, an optional invariant code
        ``[B, D]`` and ``[B, M, 3]`` queries."""
        pp = (query * query).sum(-1, keepdim=True)
        pc = torch.einsum("bmi,bci->bmc", query, vectors)
        cc = (vectors * self.vn(vectors.unsqueeze(-1)).squeeze(-1)).sum(-1)
        if code is not None:
            cc = torch.cat([cc, code], dim=-1)
        cc = cc.unsqueeze(1).expand(-1, query.shape[1], -1)
        h = self.fc_in(torch.cat([pp, pc, cc], dim=-1))
        return self.fc_out(torch.relu(self.blocks(h))).squeeze(-1)


class ClassicalImplicitSDFDecoder(nn.Module):
    """Signed distance at query points from a classical code: the raw query coordinates next to the code
    ``[B, D]`` → the same residual MLP as the invariant decoder. Not invariant to rotations (a classical
    encoder has no equivariant vectors to pair the query point with)."""

    def __init__(self, code_dim: int, hidden: int = 256, n_blocks: int = 3) -> None:
        super().__init__()
        self.fc_in = nn.Linear(3 + code_dim, hidden)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(n_blocks)])
        self.fc_out = nn.Linear(hidden, 1)

    def forward(self, query: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Predict ``[B, M]`` SDF values at ``[B, M, 3]`` queries from codes ``[B, D]``."""
        cc = code.unsqueeze(1).expand(-1, query.shape[1], -1)
        h = self.fc_in(torch.cat([query, cc], dim=-1))
        return self.fc_out(torch.relu(self.blocks(h))).squeeze(-1)
