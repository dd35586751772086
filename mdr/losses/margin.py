"""Margin loss (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling Matters in Deep Embedding Learning").

Settings for MDR's Table 2(b) are not published (docs/method.md §2.3); these follow Wu et al.:

    triplets: every ordered positive pair (a, p), a != p, plus one negative n per pair drawn by
              distance-weighted sampling (`sampling.distance_weighted_negatives`, as for the triplet loss)
    beta_a  = beta[class(a)], a learnable per-class boundary initialised to beta0 = 1.2
    loss    = ( sum_t max(0, margin + d_ap - beta_a) + max(0, margin - d_an + beta_a)
                + nu_beta * sum_t beta_a ) / max(1, number of pair terms with nonzero loss)

i.e. max(0, margin + y_ij (d_ij - beta)) with y = +1 for positive and -1 for negative pairs, normalised by
the number of active pairs, with the beta regulariser summed over the triplets' anchors and normalised
the same way, as in the authors' original implementation (and PML's `MarginLoss`). nu_beta defaults to 0
(no regularisation, the setting of Wu et al.'s CUB/Cars runs). When no pair is active the divisor is 1.
d is the non-squared Euclidean distance on the embeddings as the head outputs them (no L2 normalisation
inside the loss: the head decides it).

Written directly rather than with PML's `MarginLoss` so that it shares the project's distances and
sampling with the triplet loss and exposes beta for its own optimizer group; a test checks it against
PML's `MarginLoss` on the same triplets.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from . import LOSSES
from .distances import euclidean_pdist
from .sampling import distance_weighted_negatives


class MarginParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    margin: float = Field(0.2, ge=0)
    beta0: float = Field(1.2, gt=0)
    beta_lr: float = Field(5e-4, ge=0)
    nu_beta: float = Field(0.0, ge=0)
    sampling_cutoff: float = Field(0.5, ge=0)
    nonzero_loss_cutoff: float = Field(1.4, gt=0)


class MarginLoss(nn.Module):
    """(embeddings, labels) -> scalar. Owns `beta` (num_classes,); labels must lie in [0, num_classes)."""

    def __init__(self, num_classes: int, margin: float = 0.2, beta0: float = 1.2, beta_lr: float = 5e-4,
                 nu_beta: float = 0.0, sampling_cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4):
        super().__init__()
        if num_classes is None or num_classes < 1:
            raise ValueError("the margin loss needs num_classes (the number of training classes) for its "
                             f"per-class beta; got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.margin, self.beta_lr, self.nu_beta = margin, beta_lr, nu_beta
        self.cutoff, self.nonzero_loss_cutoff = sampling_cutoff, nonzero_loss_cutoff
        self.beta = nn.Parameter(torch.full((self.num_classes,), float(beta0)))

    def param_groups(self, base_lr: float) -> list[dict]:
        """Optimizer groups for the loss's own parameters: beta with its own lr and no weight decay.

        `base_lr` (the network's lr) is not used: beta's lr is `beta_lr`, as in Wu et al.
        """
        return [{"params": [self.beta], "lr": self.beta_lr, "weight_decay": 0.0}]

    def terms(self) -> dict[str, float]:
        """Of the last step: the fraction of anchors whose negative was drawn uniformly."""
        return dict(getattr(self, "_terms", {}))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"margin loss labels must lie in [0, {self.num_classes}); got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        anchors, positives = same.nonzero(as_tuple=True)
        if anchors.numel() == 0:
            raise ValueError("margin loss needs at least two images of one class in the batch")
        negatives, fallback = distance_weighted_negatives(
            embeddings, labels, anchors, self.cutoff, self.nonzero_loss_cutoff
        )
        self._terms = {"uniform_fallback": fallback}
        d = euclidean_pdist(embeddings)
        beta = self.beta.to(d.dtype)[labels[anchors]]
        pos = (self.margin + d[anchors, positives] - beta).clamp_min(0)
        neg = (self.margin - d[anchors, negatives] + beta).clamp_min(0)
        active = ((pos > 0).sum() + (neg > 0).sum()).clamp_min(1)
        return (pos.sum() + neg.sum() + self.nu_beta * beta.sum()) / active


@LOSSES.register("margin", params=MarginParams)
def margin(margin: float, beta0: float, beta_lr: float, nu_beta: float, sampling_cutoff: float,
           nonzero_loss_cutoff: float, num_classes: int | None = None) -> nn.Module:
    """Margin loss (Wu 2017): margin 0.2, learnable per-class beta (init 1.2, lr 5e-4), DW sampling."""
    return MarginLoss(num_classes, margin, beta0, beta_lr, nu_beta, sampling_cutoff, nonzero_loss_cutoff)
