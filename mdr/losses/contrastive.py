"""Contrastive loss (Hadsell, Chopra & LeCun 2006) in the hinge form of pytorch-metric-learning.

Settings are not published for MDR's Table 2(b) (docs/method.md §2.3); this is the common choice:

    L = mean over positive pairs with nonzero loss of  max(0, d_ap - pos_margin)
      + mean over negative pairs with nonzero loss of  max(0, neg_margin - d_an)

with d the non-squared Euclidean distance between the embeddings as the head outputs them, over all
ordered pairs (i, j), i != j, of the batch. Unlike Hadsell's original the hinges are not squared, and
each half is averaged over its active pairs only (PML's AvgNonZeroReducer), as in PML's
`ContrastiveLoss` (used here) and the "Metric Learning Reality Check" benchmark. Embeddings are NOT
L2-normalised inside the loss (`LpDistance(normalize_embeddings=False)`): the embedding head decides the
normalisation, so that MDR's "learning without L2 normalization" applies to this loss too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import LOSSES


class ContrastiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pos_margin: float = Field(0.0, ge=0)
    neg_margin: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "ContrastiveParams":
        if self.pos_margin >= self.neg_margin:
            raise ValueError(f"pos_margin ({self.pos_margin}) must be below neg_margin ({self.neg_margin})")
        return self


class ContrastiveLoss(nn.Module):
    """(embeddings, labels) -> scalar; see the module docstring for the formula. No parameters."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5):
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        # imported here: pytorch-metric-learning takes a second to import, and most stages never need it
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning.distances import LpDistance

        self.loss = pml_losses.ContrastiveLoss(
            pos_margin=pos_margin,
            neg_margin=neg_margin,
            distance=LpDistance(normalize_embeddings=False, p=2, power=1),
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels)


@LOSSES.register("contrastive", params=ContrastiveParams)
def contrastive(pos_margin: float, neg_margin: float) -> nn.Module:
    """Contrastive (Hadsell 2006), hinge form, pos margin 0, neg margin 0.5, all pairs, no L2 norm."""
    return ContrastiveLoss(pos_margin, neg_margin)
