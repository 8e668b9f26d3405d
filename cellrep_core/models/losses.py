"""Reconstruction losses."""

from __future__ import annotations

import torch


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance (mean squared nearest-neighbour distance both ways), per batch item."""
    d = torch.cdist(a, b).pow(2)
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def sdf_l1(pred: torch.Tensor, target: torch.Tensor, clip: float) -> torch.Tensor:
    """L1 between predicted and target signed distances clipped to ``[-clip, clip]``, per batch item."""
    return (pred.clamp(-clip, clip) - target.clamp(-clip, clip)).abs().mean(dim=1)
