"""torch-geometric's EdgeConv set up as the same layer as ``dgcnn.EdgeConv`` (the library reference).

cellrep's classical DGCNN keeps its own dense layer (``benchmarks/bench_pyg.py`` measures both on the same graph
and weights); this module maps one onto the other so a test can hold them equal and the benchmark can time them.
PyG's ``EdgeConv`` takes ``[x_i, x_j - x_i]`` through ``nn``: with ``nn = Linear(2C, C', bias=False)`` then
``BatchNorm1d`` over the edges and ``LeakyReLU``, ``W [x_i ; x_j - x_i] = W_2 x_j + (W_1 - W_2) x_i``, which is
cellrep's ``nb(f_j) + centre(f_i)`` with ``W_2 = nb`` and ``W_1 = centre + nb``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import EdgeConv as PygEdgeConv

from cellrep_core.models.dgcnn import EdgeConv


def pyg_edgeconv_like(ours: EdgeConv) -> PygEdgeConv:
    """A PyG EdgeConv (max aggregation) computing the same function as ``ours`` (weights copied)."""
    w_nb = ours.nb.weight.detach()[..., 0]
    w_centre = ours.centre.weight.detach()[..., 0]
    c_out, c_in = w_nb.shape
    lin = nn.Linear(2 * c_in, c_out, bias=False)
    bn = nn.BatchNorm1d(c_out)
    conv = PygEdgeConv(nn.Sequential(lin, bn, nn.LeakyReLU(ours.act.negative_slope)), aggr="max")
    # PyG's constructor re-initialises ``nn``: copy the weights afterwards
    with torch.no_grad():
        lin.weight.copy_(torch.cat([w_centre + w_nb, w_nb], dim=1))
    bn.load_state_dict(ours.bn.state_dict())
    return conv


def dense_to_edge_index(idx: torch.Tensor) -> torch.Tensor:
    """``[B, N, k]`` neighbour indices to a PyG ``edge_index`` ``[2, B·N·k]`` (source j → target i) over the
    batch's ``B·N`` nodes."""
    b, n, k = idx.shape
    offset = (torch.arange(b, device=idx.device) * n).view(b, 1, 1)
    src = (idx + offset).reshape(-1)
    dst = (torch.arange(n, device=idx.device).view(1, n, 1).expand(b, n, k) + offset).reshape(-1)
    return torch.stack([src, dst])


def pyg_forward(conv: PygEdgeConv, f: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Run the PyG layer on ``[B, C, N]`` features; returns ``[B, C', N]`` like cellrep's layer."""
    b, c, n = f.shape
    out = conv(f.transpose(1, 2).reshape(b * n, c), edge_index)
    return out.view(b, n, -1).transpose(1, 2)
