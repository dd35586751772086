"""Triplet loss with distance-weighted negatives, as in the MDR authors' code (docs/method.md §2.1)."""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from . import LOSSES
from .distances import euclidean_pdist
from .sampling import distance_weighted_negatives


class TripletParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    margin: float = Field(0.2, gt=0)
    sampling_cutoff: float = Field(0.5, ge=0)
    nonzero_loss_cutoff: float = Field(1.4, gt=0)


class TripletLoss(nn.Module):
    """max(0, |a-p| - |a-n| + margin) on non-squared Euclidean distances, mean over all triplets.

    Every ordered positive pair (a, p), a != p, is an anchor-positive; one negative per pair is drawn
    by distance-weighted sampling on an L2-normalised copy of the embeddings. Distances in the loss
    itself are on the embeddings as given (scaled or L2-normalised by the head).
    """

    def __init__(self, margin: float = 0.2, sampling_cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4):
        super().__init__()
        self.margin, self.cutoff, self.nonzero_loss_cutoff = margin, sampling_cutoff, nonzero_loss_cutoff

    def terms(self) -> dict[str, float]:
        """Of the last step: the fraction of anchors whose negative was drawn uniformly."""
        return dict(getattr(self, "_terms", {}))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        anchors, positives = same.nonzero(as_tuple=True)
        if anchors.numel() == 0:
            raise ValueError("triplet loss needs at least two images of one class in the batch")
        negatives, fallback = distance_weighted_negatives(
            embeddings, labels, anchors, self.cutoff, self.nonzero_loss_cutoff
        )
        self._terms = {"uniform_fallback": fallback}
        d = euclidean_pdist(embeddings)
        return (d[anchors, positives] - d[anchors, negatives] + self.margin).clamp_min(0).mean()


@LOSSES.register("triplet", params=TripletParams)
def triplet(margin: float, sampling_cutoff: float, nonzero_loss_cutoff: float) -> nn.Module:
    """Triplet, margin 0.2, distance-weighted negatives (the paper's base loss)."""
    return TripletLoss(margin, sampling_cutoff, nonzero_loss_cutoff)
