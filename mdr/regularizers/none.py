"""The baselines: no regularizer, with the batch-mean-distance head ("Triplet") or an L2-normalised
head ("Triplet+L2Norm"). Both add nothing to the loss; they differ only in the head's normalisation."""
from __future__ import annotations

import torch

from .base import Regularizer, StepContext


class NoRegularizer(Regularizer):
    normalization = "batch_mean_distance"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        return embeddings.new_zeros(())


class L2NormBaseline(NoRegularizer):
    """"+L2Norm": embeddings L2-normalised in training and evaluation (docs/method.md §2.2)."""

    normalization = "l2"
