"""Reconstruction losses."""

from __future__ import annotations

import torch


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance (mean squared nearest-neighbour distance both ways), per batch item."""
    d = torch.cdist(a, b).pow(2)
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def sdf_l1(pred: torch.Tensor, target: torch.Tensor, clip: float) -> torch.Tensor:
    """L1 between predictions and target signed distances clipped to ``[-clip, clip]``, per batch item.

    Only the target is clipped: clipping the prediction too (as DeepSDF does) gives zero gradient wherever
    the untrained decoder starts outside the band, and training never leaves the constant solution.
    """
    return (pred - target.clamp(-clip, clip)).abs().mean(dim=1)
