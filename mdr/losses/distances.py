"""Pairwise distances shared by the losses and regularizers."""
from __future__ import annotations

import torch


def euclidean_pdist(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Non-squared Euclidean distances, sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, eps)), diagonal set to 0.

    The clamp keeps the gradient of sqrt finite at zero distance (as the MDR authors' code does).
    In float32 (float64 stays float64), also on bfloat16 input or under autocast (train.precision bf16).
    """
    x = at_least_float32(x)
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram(x)
    d = d2.clamp_min(eps).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def gram(x: torch.Tensor) -> torch.Tensor:
    """x @ x.T in at least float32, also under autocast: squared distances are differences of these products, and in
    bfloat16 (8 significant bits) |a|^2 + |b|^2 - 2 a.b of nearby points would be mostly rounding."""
    with torch.autocast(x.device.type, enabled=False):
        x = at_least_float32(x)
        return x @ x.t()


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


def mean_offdiagonal(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    return d.masked_select(~eye).mean()
