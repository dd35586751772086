"""Pairwise distances shared by the losses and regularizers."""
from __future__ import annotations

import torch


def euclidean_pdist(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Non-squared Euclidean distances, sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, eps)), diagonal set to 0.

    The clamp keeps the gradient of sqrt finite at zero distance (as the MDR authors' code does).
    """
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    d = d2.clamp_min(eps).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def mean_offdiagonal(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    return d.masked_select(~eye).mean()
