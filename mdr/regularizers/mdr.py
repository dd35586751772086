"""Multi-level Distance Regularization (Kim & Park, AAAI 2021), exactly as docs/method.md §1.

`MDR` is the loss itself: calling it on an (N, D) batch returns L_MDR. `MDRRegularizer` applies the
paper's weights: lambda * L_MDR + nu * sum(levels^2).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mdr.losses.distances import euclidean_pdist

from .base import Regularizer, StepContext


class MDR(nn.Module):
    """L_MDR: mean distance of each normalised pairwise distance to its nearest learnable level.

    1. D = Euclidean distances (not squared), diagonal exactly 0.
    2. Batch mean and unbiased std over all N*N entries (zero diagonal included), detached.
    3. Running statistics with `momentum` (0.9): set to the batch values on the first call, then
       m <- momentum*m + (1-momentum)*batch_mean, updated *before* normalising this batch. Only
       updated in training mode; in eval mode the running values are used as they are.
    4. z = (D - m) / s over the N(N-1) off-diagonal pairs (both orders).
    5-7. L = mean over pairs of min_k |z - level_k|; the gradient reaches the nearest level only.
    Unlike the authors' code, the running statistics and the "initialised" flag are buffers, so they
    are in the state dict and a resumed run continues exactly.
    """

    def __init__(self, levels: Sequence[float] = (-3.0, 0.0, 3.0), momentum: float = 0.9):
        super().__init__()
        if len(levels) < 1:
            raise ValueError("MDR needs at least one level")
        self.levels = nn.Parameter(torch.tensor([float(v) for v in levels]))
        self.momentum = float(momentum)
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_std", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        n = embeddings.shape[0]
        if n < 2:
            raise ValueError("MDR needs at least two embeddings in a batch")
        d = euclidean_pdist(embeddings)
        if self.training:
            with torch.no_grad():
                flat = d.detach().flatten()
                batch_mean, batch_std = flat.mean(), flat.std()
                if bool(self.initialized):
                    self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
                    self.running_std.mul_(self.momentum).add_((1 - self.momentum) * batch_std)
                else:
                    self.running_mean.copy_(batch_mean)
                    self.running_std.copy_(batch_std)
                    self.initialized.fill_(True)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=d.device)
        z = (d[off_diagonal] - self.running_mean) / self.running_std
        return (z[:, None] - self.levels[None, :]).abs().min(dim=1).values.mean()

    def extra_repr(self) -> str:
        return f"levels={self.levels.detach().tolist()}, momentum={self.momentum}"


class MDRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    levels: list[float] = Field(default_factory=lambda: [-3.0, 0.0, 3.0], min_length=1)
    weight: float = Field(0.6, ge=0, description="lambda: 0.6 CUB, 0.2 Cars, 0.1 SOP and In-Shop")
    level_penalty: float = Field(0.01, ge=0, description="nu: weight of sum(levels^2)")
    momentum: float = Field(0.9, ge=0, lt=1)

    @field_validator("levels", mode="before")
    @classmethod
    def _numbers(cls, v: object) -> object:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(f"levels must be a list of numbers, e.g. [-3, 0, 3]; got {v!r}")
        return v


class MDRRegularizer(Regularizer):
    """lambda * L_MDR + nu * sum(levels^2), with the head's batch-mean-distance scaling."""

    normalization = "batch_mean_distance"

    def __init__(self, levels: Sequence[float], weight: float, level_penalty: float, momentum: float):
        super().__init__()
        self.mdr = MDR(levels, momentum)
        self.weight, self.level_penalty = weight, level_penalty

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        l_mdr = self.mdr(embeddings)
        penalty = self.mdr.levels.pow(2).sum()
        self._terms = {"mdr": float(l_mdr.detach()), "level_penalty": float(penalty.detach())}
        return self.weight * l_mdr + self.level_penalty * penalty

    def describe(self) -> dict[str, float | list[float]]:
        levels = self.mdr.levels.detach().tolist()
        out: dict[str, float | list[float]] = {f"level_{i}": v for i, v in enumerate(levels)}
        out["running_mean"] = float(self.mdr.running_mean)
        out["running_std"] = float(self.mdr.running_std)
        return out
