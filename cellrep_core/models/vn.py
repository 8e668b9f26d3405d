"""Vector-neuron (SO(3)-equivariant) layers and the VN-DGCNN encoder with a learned rotation.

Tensors of vector features are laid out ``[B, C, 3, N]`` (batch, channels, xyz, points).

Edge convolutions use the linearity of a VN-linear map: ``W [f_j - f_i ; f_i] = A f_j + B f_i``, so the
maps are applied once per point (``[B, C, 3, N]``) and only their results are gathered over the k
neighbours. The gather, the VN-LeakyReLU and the mean over neighbours are one autograd function
(``EdgeVNReLUMean``) that runs chunk by chunk over points and saves no edge tensor: its backward
recomputes each chunk's ``[B, C, 3, M, k]`` edges and scatters the gradients back to the points, so
memory is O(B C N) instead of O(B C N k). ``use_compiled_edges`` turns forward and backward into one fused
``torch.compile`` kernel each (one pass over the edges instead of a dozen element-wise ones);
``benchmarks/bench_train.py`` measures both against the published layer.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

EPS = 1e-6


# Distance entries computed at once by ``knn`` / ``feature_knn``: queries go in blocks of rows so that a
# block holds at most this many (128 MiB in float64). The whole ``[B, N, N]`` matrix of the paper's SDF config
# (batch 32 x 8,192 points) would be 2.1e9 entries, 17 GB in float64 and about twice that with temporaries;
# the punctate paper config's (2,048 points) 1.1 GB, and 3 GB with temporaries, of a training step's peak.
KNN_BLOCK_ENTRIES = 2**24


def topk_rows(x: torch.Tensor, k: int, block_entries: int | None = None) -> torch.Tensor:
    """Indices ``[B, N, k]`` of the k smallest squared distances between the rows of ``[B, N, D]`` ``x`` (self
    included), in ``x``'s dtype, computed for blocks of query rows (``KNN_BLOCK_ENTRIES`` entries each)."""
    b, n, _ = x.shape
    block = block_entries or KNN_BLOCK_ENTRIES
    rows = max(1, block // max(b * n, 1))
    sq = (x * x).sum(-1)
    xt = x.transpose(1, 2)
    out = []
    for s in range(0, n, rows):
        d = sq[:, s : s + rows, None] - 2.0 * x[:, s : s + rows] @ xt + sq[:, None, :]
        out.append(d.topk(k, dim=-1, largest=False).indices)
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def knn(points: torch.Tensor, k: int, block_entries: int | None = None) -> torch.Tensor:
    """Indices ``[B, N, k]`` of the k nearest neighbours (self included) of ``[B, N, 3]`` points.

    Distances are computed in float64: in float32 the ``|x|² - 2x·y + |y|²`` expansion cancels
    catastrophically for close points, which makes the graph (and the code) depend on the orientation.
    Mixed precision does not reach them (autocast off); memory is bounded by blocks of query rows.
    """
    with torch.autocast(points.device.type, enabled=False):
        return topk_rows(points.detach().double(), k, block_entries)


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


def _chunk_edges(
    nb: torch.Tensor, centre: torch.Tensor, idx: torch.Tensor, cross: torch.Tensor | None,
    weight: torch.Tensor | None, sl: slice,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edge features of the points in ``sl``: ``x``, ``d`` ``[B, C, 3, M, k]`` and the chunk's indices."""
    sub = idx[:, sl]
    g = gather_neighbours(nb, sub)
    g += centre[..., sl].unsqueeze(-1)
    if cross is not None:
        g += weight.view(1, -1, 1, 1, 1) * cross[..., sl, :]
    c = g.shape[1] // 2
    return g[:, :c], g[:, c:], sub


def _full(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 tensors as fp32, others unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _auto_chunk(nb: torch.Tensor, k: int, chunk_points: int) -> int:
    """Points per chunk: ``chunk_points`` if set, else about 64 MB of edge features per chunk on a CPU
    (256 MB on a GPU)."""
    n = nb.shape[-1]
    if chunk_points > 0:
        return min(chunk_points, n)
    target = (256 if nb.is_cuda else 64) * 2**20
    per_point = nb.shape[0] * nb.shape[1] * nb.shape[2] * k * nb.element_size()
    return max(1, min(n, target // max(per_point, 1)))


def _edges_full(nb, centre, idx, cross, weight):
    """All edge features ``x``, ``d`` ``[B, C, 3, N, k]`` (for the fused kernels: never materialised there)."""
    g = gather_neighbours(nb, idx) + centre.unsqueeze(-1)
    if cross is not None:
        g = g + weight.view(1, -1, 1, 1, 1) * cross
    c = g.shape[1] // 2
    return g[:, :c], g[:, c:]


def _fused_forward(nb, centre, idx, cross, weight, a: float):
    x, d = _edges_full(nb, centre, idx, cross, weight)
    coef = (x * d).sum(2, keepdim=True).clamp(max=0.0) / ((d * d).sum(2, keepdim=True) + EPS)
    return (x - a * coef * d).mean(-1)


def _fused_backward(nb, centre, idx, cross, weight, a: float, grad_out):
    x, d = _edges_full(nb, centre, idx, cross, weight)
    b, c2, _, n = nb.shape
    k = idx.shape[-1]
    go = (grad_out / k).unsqueeze(-1)
    dot = (x * d).sum(2, keepdim=True)
    r = 1.0 / ((d * d).sum(2, keepdim=True) + EPS)
    coef = dot.clamp(max=0.0) * r
    t = a * (go * d).sum(2, keepdim=True) * r * (dot < 0)
    g = torch.cat([go - t * d, t * (2.0 * coef * d - x) - a * coef * go], dim=1)
    grad_centre = g.sum(-1)
    flat = g.reshape(b, c2 * 3, n * k)
    grad_nb = torch.zeros(b, c2 * 3, n, dtype=nb.dtype, device=nb.device).scatter_add(
        2, idx.reshape(b, 1, n * k).expand(b, c2 * 3, n * k), flat
    ).view_as(nb)
    grad_w = (g * cross).sum((0, 2, 3, 4)) if cross is not None else None
    return grad_nb, grad_centre, grad_w


_KERNELS: dict[str, object] = {}
# Fused (torch.compile, inductor) kernels for the edge function: one pass over the edges instead of a
# dozen element-wise passes. Off by default (the first call compiles for tens of seconds per shape);
# ``use_compiled_edges(True)`` turns them on, e.g. for long trainings on a CPU.
_COMPILE = {"on": False}


def use_compiled_edges(on: bool = True) -> None:
    """Run the VN edge function through fused ``torch.compile`` kernels (``True``) or eager chunks."""
    _COMPILE["on"] = bool(on)


@contextlib.contextmanager
def compiled_edges(on: bool = True):
    """Use the fused edge kernels (or not) inside a ``with`` block, restoring the previous setting."""
    before = _COMPILE["on"]
    use_compiled_edges(on)
    try:
        yield
    finally:
        use_compiled_edges(before)


def _kernel(name: str):
    if name not in _KERNELS:
        fn = {"fwd": _fused_forward, "bwd": _fused_backward}[name]
        _KERNELS[name] = torch.compile(fn, dynamic=False)
    return _KERNELS[name]


class EdgeVNReLUMean(torch.autograd.Function):
    """``mean_j VN-LeakyReLU(x_ij, d_ij)`` with ``[x_ij ; d_ij] = nb_j + centre_i (+ w * cross_ij)``.

    Inputs: ``nb``, ``centre`` ``[B, 2C, 3, N]`` (feature maps first, direction maps second), ``idx``
    ``[B, N, k]``, optionally ``cross`` ``[B, 1, 3, N, k]`` (``x_j x x_i``) with per-channel weights ``w``
    ``[2C]``. Output ``[B, C, 3, N]``. Same values as ``_edge_block``; memory O(B C N) instead of
    O(B C N k) because backward recomputes the edges chunk by chunk.
    """

    @staticmethod
    def forward(ctx, nb, centre, idx, cross, weight, negative_slope, chunk):  # noqa: D102
        b, c2, _, n = nb.shape
        a = 1.0 - negative_slope
        ctx.save_for_backward(nb, centre, idx, cross, weight)
        ctx.negative_slope, ctx.chunk = negative_slope, chunk
        if _COMPILE["on"]:
            return _kernel("fwd")(nb, centre, idx, cross, weight, a)
        out = nb.new_empty(b, c2 // 2, 3, n)
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            x, d, _ = _chunk_edges(nb, centre, idx, cross, weight, sl)
            dot = (x * d).sum(2, keepdim=True)
            dsq = (d * d).sum(2, keepdim=True)
            coef = dot.clamp_(max=0.0).div_(dsq.add_(EPS)).mul_(a)
            out[..., sl] = x.mean(-1) - (coef * d).mean(-1)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        nb, centre, idx, cross, weight = ctx.saved_tensors
        a = 1.0 - ctx.negative_slope
        b, c2, _, n = nb.shape
        k = idx.shape[-1]
        if _COMPILE["on"] and not ctx.needs_input_grad[3]:
            grad_nb, grad_centre, grad_w = _kernel("bwd")(nb, centre, idx, cross, weight, a, grad_out)
            return grad_nb, grad_centre, None, None, grad_w, None, None
        grad_nb = torch.zeros_like(nb)
        grad_centre = torch.empty_like(centre)
        grad_w = torch.zeros_like(weight) if weight is not None else None
        grad_cross = torch.empty_like(cross) if cross is not None and ctx.needs_input_grad[3] else None
        flat_grad_nb = grad_nb.view(b, c2 * 3, n)
        for s in range(0, n, ctx.chunk):
            sl = slice(s, min(n, s + ctx.chunk))
            x, d, sub = _chunk_edges(nb, centre, idx, cross, weight, sl)
            go = (grad_out[..., sl] / k).unsqueeze(-1)  # [B, C, 3, M, 1]
            dot = (x * d).sum(2, keepdim=True)
            r = (d * d).sum(2, keepdim=True).add_(EPS).reciprocal_()
            coef = dot.clamp(max=0.0).mul_(r)  # <x,d>/|d|^2 where negative, else 0
            # t = a <g, d> / |d|^2 on the edges where <x, d> < 0
            t = (go * d).sum(2, keepdim=True).mul_(r).mul_(dot < 0).mul_(a)
            gx = go - t * d
            gd = (2.0 * coef) * d
            gd.sub_(x).mul_(t).sub_((a * coef) * go)
            g = torch.cat([gx, gd], dim=1)  # [B, 2C, 3, M, k]
            grad_centre[..., sl] = g.sum(-1)
            m = g.shape[3]
            flat_grad_nb.scatter_add_(2, sub.reshape(b, 1, m * k).expand(b, c2 * 3, m * k), g.reshape(b, c2 * 3, m * k))
            if grad_w is not None:
                grad_w += (g * cross[..., sl, :]).sum((0, 2, 3, 4))
            if grad_cross is not None:
                grad_cross[..., sl, :] = (g * weight.view(1, -1, 1, 1, 1)).sum(1, keepdim=True)
        return grad_nb, grad_centre, None, grad_cross, grad_w, None, None


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
        # the edge function never saves edge tensors, so checkpointing is no longer needed (kept for configs)
        self.checkpointing = checkpointing
        # True: the plain autograd version (``_edge_block``), for tests and comparisons
        self.reference = False

    def forward(self, f: torch.Tensor, idx: torch.Tensor, xyz: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, C_in, 3, N]`` features on graph ``idx`` to ``[B, C_out, 3, N]``."""
        nb = self.nb(f)
        centre = self.centre(f)
        cross = None
        if self.cross is not None:
            # x_j x x_i for the 1-channel coordinates: [B, 1, 3, N, k]
            xj = gather_neighbours(xyz, idx)
            cross = torch.cross(xj, xyz.unsqueeze(-1).expand_as(xj), dim=2)
        if self.reference:
            extra = None if cross is None else self.cross.view(1, -1, 1, 1, 1) * cross
            return _edge_block(nb, centre, idx, extra, self.negative_slope)
        chunk = _auto_chunk(nb, idx.shape[-1], self.chunk_points)
        with torch.autocast(nb.device.type, enabled=False):  # half-precision inputs (mixed precision) run in fp32
            return EdgeVNReLUMean.apply(
                _full(nb), _full(centre), idx, None if cross is None else _full(cross),
                self.cross if cross is not None else None, self.negative_slope, chunk,
            )


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
