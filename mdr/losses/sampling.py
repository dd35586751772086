"""Distance-weighted negative sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distances import euclidean_pdist


@torch.no_grad()
def distance_weighted_negatives(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One negative index per anchor, drawn with probability ∝ 1/q(d) on the unit sphere.

    As in reference/mdr.md §2.1: computed on an L2-normalised copy, distances clamped below at
    `cutoff`, log w = (2 - d) log(dist) - ((d - 3) / 2) log(1 - dist^2 / 4), w = exp(log w - rowmax),
    zero for same-class pairs and for dist >= `nonzero_loss_cutoff`; uniform over the negatives when a
    row has no weight left.
    """
    x = F.normalize(embeddings.detach().float(), dim=1)
    n, dim = x.shape
    dist = euclidean_pdist(x).clamp_min(cutoff)
    log_w = (2.0 - dim) * dist.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * dist.pow(2)).clamp_min(1e-8).log()
    log_w = log_w - log_w.max(dim=1, keepdim=True).values
    w = log_w.exp()
    negative = labels[:, None] != labels[None, :]
    w = w * negative * (dist < nonzero_loss_cutoff)
    w = w[anchors]
    neg = negative[anchors].to(w.dtype)
    empty = w.sum(dim=1) <= 0
    w[empty] = neg[empty]
    if bool((w.sum(dim=1) <= 0).any()):
        raise ValueError("a batch anchor has no negative: the batch needs at least two classes")
    return torch.multinomial(w, 1, generator=generator).squeeze(1)

