"""The interface every regularizer implements, so all of them plug into one training loop.

A regularizer is an nn.Module called as `reg(embeddings, labels, context) -> scalar` (already weighted:
the engine adds it to the metric loss as is). Beyond that it may
  - own parameters (MDR's levels): the engine gives them to the optimizer (`param_groups`);
  - keep state (running statistics, a teacher network): it lives in `state_dict()`, so resuming continues exactly;
  - choose how the embedding head normalises its output (`normalization`), unless the config overrides it;
  - replace the linear embedding head (`build_head`, e.g. DetReg's normalising flow): the head is part of
    the model, so it is used at inference too;
  - react to the loop (`on_train_start`, `on_epoch_end`) and report its components for logging (`terms`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


@dataclass
class StepContext:
    """What a regularizer may look at besides the embeddings and labels."""

    epoch: int  # 0-based
    num_epochs: int
    iteration: int  # 0-based, global
    images: torch.Tensor | None = None
    model: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Regularizer(nn.Module):
    # How the embedding head should normalise in training: "batch_mean_distance" (MDR's "learning
    # without L2 normalization", docs/method.md §2.2), "l2", or "none".
    normalization: str = "batch_mean_distance"

    def __init__(self) -> None:
        super().__init__()
        self._terms: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups for this regularizer's own parameters (default: same lr and weight decay)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": base_lr, "weight_decay": weight_decay}] if params else []

    def terms(self) -> dict[str, float]:
        """Components of the last call, for logging (e.g. {"mdr": 0.41, "levels_penalty": 0.18})."""
        return dict(self._terms)

    def build_head(self, feature_dim: int, embedding_dim: int) -> nn.Module | None:
        """A head to use instead of nn.Linear(feature_dim, embedding_dim); None keeps the linear head."""
        return None

    def on_train_start(self, model: nn.Module, train_set: Any, device: torch.device) -> None:
        """Called once before the first epoch (not when resuming): e.g. G-DML trains its master here.
        `train_set` is a torch Dataset of (image, label) with the training transform."""
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        pass

    def describe(self) -> dict[str, float | list[float]]:
        """Values worth logging once per epoch (e.g. MDR's levels)."""
        return {}
