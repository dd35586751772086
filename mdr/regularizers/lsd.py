"""LSD: listwise self-distillation (Zeng et al., arXiv 2206.08880), as in docs/related_methods.md.

    L = (e / E) * alpha * tau^2 * L_KD,   L_KD = (1/B) sum_i KL(softmax(T_i / tau) || softmax(S_i / tau))
with S = Z Z^T on the L2-normalised student embeddings of the batch, T = Zt Zt^T on the L2-normalised
embeddings the teacher gives for the same (augmented) images, whole rows (self-similarity included),
e the 0-based epoch and E the number of epochs.

Teacher: the student's weights at the end of the previous epoch, a frozen copy refreshed in
`on_epoch_end` (not an EMA), run under no_grad in eval mode on `context.images`. During the first
epoch there is none, and the ramp e/E is 0 there anyway, so the term is 0 (and nothing is computed).

Decisions where the paper is silent or the benchmark differs (defaults in brackets):
  * alpha [200] (the paper's default; the authors' triplet/CUB example uses 50, follow-up work
    75-1000); tau [1].
  * The student's head keeps the benchmark's normalisation ["batch_mean_distance", as for the plain
    triplet rows, unless the config overrides it]; the KD term L2-normalises both embeddings itself,
    so the term does not depend on that choice.
  * The teacher runs in eval mode: it is a fixed snapshot (no BatchNorm statistics updates, no
    dropout). With frozen BN (the benchmark's default) BN acts the same in student and teacher.
  * State: the teacher's weights are the regularizer's "extra state" in its state_dict (not
    submodule parameters, so they are never optimised and a fresh instance can load them). After a
    resume the teacher is rebuilt from `context.model` (a deep copy, same architecture) on the first
    call and given the saved weights, so the resumed run continues exactly.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .base import Regularizer, StepContext


def listwise_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """(1/B) sum_i KL(softmax(T_i/tau) || softmax(S_i/tau)) on L2-normalised (B, D) embeddings."""
    zs = F.normalize(student, dim=1)
    zt = F.normalize(teacher, dim=1)
    log_q = F.log_softmax(zs @ zs.t() / tau, dim=1)
    log_p = F.log_softmax(zt @ zt.t() / tau, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


class LSDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(200.0, ge=0, description="KD weight alpha: 200 paper default; 50 in the authors' "
                         "triplet/CUB example; 75-1000 in follow-up work")
    tau: float = Field(1.0, gt=0, description="softmax temperature; the term is also scaled by tau^2")


class LSDRegularizer(Regularizer):
    """(e/E) * alpha * tau^2 * listwise KL to the previous epoch's frozen copy of the model."""

    normalization = "batch_mean_distance"

    def __init__(self, alpha: float = 200.0, tau: float = 1.0):
        super().__init__()
        self.alpha, self.tau = float(alpha), float(tau)
        # Kept out of nn.Module's registries on purpose: never in parameters()/param_groups, never moved
        # by .to() (it is a copy of the model, already on the model's device); saved as extra state.
        self.__dict__["_teacher"] = None
        self._teacher_epoch = -1  # the 0-based epoch whose end weights the teacher holds; -1: none
        self._pending: dict[str, torch.Tensor] | None = None  # loaded teacher weights awaiting a model

    @property
    def teacher(self) -> nn.Module | None:
        return self.__dict__["_teacher"]

    @property
    def teacher_epoch(self) -> int:
        return self._teacher_epoch

    def weight_at(self, epoch: int, num_epochs: int) -> float:
        return epoch / num_epochs * self.alpha * self.tau**2

    def _snapshot(self, model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> None:
        if self.teacher is None:
            teacher = copy.deepcopy(model)
            teacher.requires_grad_(False)
            for p in teacher.parameters():
                p.grad = None  # deepcopy copied the student's gradients too
            self.__dict__["_teacher"] = teacher
        self.teacher.load_state_dict(model.state_dict() if state is None else state)
        self.teacher.eval()

    def on_train_start(self, model: nn.Module, train_set: Any, device: torch.device) -> None:
        # A fresh run: no teacher during the first epoch (its weight e/E is 0 there).
        self.__dict__["_teacher"], self._teacher_epoch, self._pending = None, -1, None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self._snapshot(model)
        self._teacher_epoch, self._pending = epoch, None

    def get_extra_state(self) -> dict[str, Any]:
        if self.teacher is not None:
            weights = self.teacher.state_dict()
        else:
            weights = self._pending
        return {"teacher": weights, "teacher_epoch": self._teacher_epoch}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._teacher_epoch = int(state["teacher_epoch"])
        weights = state["teacher"]
        if weights is None:
            self.__dict__["_teacher"], self._pending = None, None
        elif self.teacher is not None:
            self.teacher.load_state_dict(weights)
            self._pending = None
        else:  # a fresh instance: the teacher is rebuilt from context.model on the first call
            self._pending = dict(weights)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        weight = self.weight_at(context.epoch, context.num_epochs)
        if weight == 0:
            self._terms = {"kd": 0.0, "kd_weight": 0.0}
            return embeddings.new_zeros(())
        if self._pending is not None:
            if context.model is None:
                raise RuntimeError("lsd: a resumed teacher needs context.model to be rebuilt")
            self._snapshot(context.model, self._pending)
            self._pending = None
        if self.teacher is None:
            raise RuntimeError(f"lsd: no teacher at epoch {context.epoch} (e > 0); on_epoch_end must run after "
                               "each epoch, or the state dict of a run that did must be loaded")
        if context.images is None:
            raise RuntimeError("lsd needs the batch's images in the step context (context.images)")
        with torch.no_grad():
            teacher_embeddings = self.teacher(context.images)
        kd = listwise_kd(embeddings, teacher_embeddings, self.tau)
        self._terms = {"kd": float(kd.detach()), "kd_weight": weight}
        return weight * kd

    def describe(self) -> dict[str, float | list[float]]:
        return {"teacher_epoch": float(self._teacher_epoch)}
