"""DetReg: determinant regularization with a normalising-flow metric head (reference: related_methods.md).

The paper (ICLR 2023 submission, no public code) is known only from summaries. The points it leaves
open that are numbers or switches are parameters of `DetRegParams` (each with its default); every
choice, including the structural ones, is listed below.

Head (`DuelingFlowHead`, replaces the linear embedding head, so it is used at inference too):
    h  = W f + b                       linear projection feature_dim -> embedding_dim (flows are square)
    z1 = F1(h)                         branch 1, the embedding (Real-NVP, `coupling_layers` couplings)
    z2 = F2(h)                         branch 2 ("dueling"), training only, never an embedding
Each coupling splits the vector into two halves (alternating which half is transformed) and maps
    y_b = x_b * exp(s(x_a)) + t(x_a),  y_a = x_a,   s = scale_clamp * tanh(raw_s / scale_clamp)
with (raw_s, t) from an MLP of `hidden_layers` ReLU layers of width `hidden` whose last layer is zero
initialised, so every flow is the identity at initialisation. log|det dF/dh| = sum of all s (exact).

Loss (already weighted; the engine adds it to the metric loss):
    weight * [R1(h) + interpolation * R1(h_i + eps (h_j - h_i))] - dual_weight * R2(h)
R = batch mean of the per-sample log|det J|; the synthetic points use random same-class pairs (i, j)
of the batch, eps ~ U(0, 1) per pair.

Decisions where the paper is silent (defaults in brackets):
  * R is log|det J| itself (not |det J|, not a squared or hinged version), averaged over the batch.
  * Real-NVP affine couplings [4], MLP width [512] with [2] hidden layers, tanh-clamped log-scales
    [2.0], zero-initialised last layer (identity at start).
  * lambda1 = `weight` [0.05], lambda2 = `dual_weight` [0.05]; dual_weight 0 drops branch 2 entirely.
  * Branch 2 does not get the base loss: the base loss only ever sees the head's output (branch 1),
    as in the engine's loop for every method; branch 2's only role is the opposing log-det
    gradient on the shared projection and backbone.
  * Synthetic points [interpolation 0.5, 0 disables]: built from the *detached* projected features,
    so they probe the flow's volume change between same-class samples and train branch 1's flow
    only (the backbone's pressure is the balanced lambda1 R1 - lambda2 R2 at the real points).
    Branch 2 is not evaluated there. Rows without another same-class sample in the batch are skipped.
  * Normalisation ["none"]: the embedding is branch 1's raw output. With "l2" after the flow, and
    equally with "batch_mean_distance" (which divides by the batch's mean distance), a global
    contraction lowers log|det J| by D*log(c) while the metric loss does not change at all: the
    regularizer would be satisfied for free by a radial shrink. With "none" a loss with an absolute
    margin (triplet, contrastive, margin) sees the scale, so lowering the determinant has to trade
    off against the loss. The config may still override it (model.normalization).
  * The determinant is that of the square flow only; the projection's scale is not penalised
    (weight decay only).
  * What the regularizer alone does: R only sees the log-scales s, and the shifts t get no gradient
    from it, so on its own it drives every s towards -scale_clamp (branch 1) / +scale_clamp
    (branch 2); on the way the volume change differs between inputs (the geometry changes,
    tests/regularizers/test_detreg.py), but at saturation branch 1 is a uniform contraction by
    exp(-scale_clamp * coupling_layers / 2) per dimension. Only the base loss, which sees the scale
    under "none", keeps it from getting there; the tanh clamp bounds R to
    +-scale_clamp * coupling_layers * D / 2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from .base import Regularizer, StepContext


class AffineCoupling(nn.Module):
    """One Real-NVP affine coupling: transforms one half of the vector conditioned on the other half."""

    def __init__(self, dim: int, hidden: int, hidden_layers: int, scale_clamp: float, flip: bool):
        super().__init__()
        if dim < 2:
            raise ValueError("a coupling layer needs at least 2 dimensions")
        first = dim // 2
        # flip=False: condition on the first `first` dims, transform the rest; flip=True: the reverse.
        self.cond_idx = slice(first, dim) if flip else slice(0, first)
        self.trans_idx = slice(0, first) if flip else slice(first, dim)
        n_cond = dim - first if flip else first
        n_trans = dim - n_cond
        layers: list[nn.Module] = []
        width_in = n_cond
        for _ in range(hidden_layers):
            layers += [nn.Linear(width_in, hidden), nn.ReLU()]
            width_in = hidden
        last = nn.Linear(width_in, 2 * n_trans)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.scale_clamp = float(scale_clamp)
        self.n_trans = n_trans

    def _scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(cond).split(self.n_trans, dim=1)
        return self.scale_clamp * torch.tanh(raw_s / self.scale_clamp), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, trans = x[:, self.cond_idx], x[:, self.trans_idx]
        s, t = self._scale_shift(cond)
        y = torch.empty_like(x)
        y[:, self.cond_idx] = cond
        y[:, self.trans_idx] = trans * torch.exp(s) + t
        return y, s.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        cond, trans = y[:, self.cond_idx], y[:, self.trans_idx]
        s, t = self._scale_shift(cond)
        x = torch.empty_like(y)
        x[:, self.cond_idx] = cond
        x[:, self.trans_idx] = (trans - t) * torch.exp(-s)
        return x


class RealNVP(nn.Module):
    """A stack of affine couplings with alternating halves; forward returns (z, log|det dz/dx|)."""

    def __init__(self, dim: int, coupling_layers: int, hidden: int, hidden_layers: int, scale_clamp: float):
        super().__init__()
        self.couplings = nn.ModuleList(
            AffineCoupling(dim, hidden, hidden_layers, scale_clamp, flip=bool(k % 2)) for k in range(coupling_layers)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for c in self.couplings:
            x, ld = c(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for c in reversed(self.couplings):
            z = c.inverse(z)
        return z

    def log_det(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[1]


class DuelingFlowHead(nn.Module):
    """Linear projection then two Real-NVP branches; returns branch 1 (the embedding).

    In training mode a forward keeps, for the regularizer to read:
      last_projected   (B, D) the projected features h (with their graph)
      last_log_det     (B,)   log|det dF1/dh| per sample
      last_dual_log_det (B,)  log|det dF2/dh| per sample (None without branch 2)
    In eval mode nothing is kept and branch 2 is not computed.
    """

    def __init__(self, feature_dim: int, embedding_dim: int, coupling_layers: int = 4, hidden: int = 512,
                 hidden_layers: int = 2, scale_clamp: float = 2.0, dual: bool = True):
        super().__init__()
        self.proj = nn.Linear(feature_dim, embedding_dim)
        args = (embedding_dim, coupling_layers, hidden, hidden_layers, scale_clamp)
        self.flow = RealNVP(*args)
        self.dual_flow = RealNVP(*args) if dual else None
        self.clear()

    def clear(self) -> None:
        self.last_projected: torch.Tensor | None = None
        self.last_log_det: torch.Tensor | None = None
        self.last_dual_log_det: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.proj(features)
        z, log_det = self.flow(h)
        if self.training:
            self.last_projected, self.last_log_det = h, log_det
            self.last_dual_log_det = self.dual_flow(h)[1] if self.dual_flow is not None else None
        return z

    def __getstate__(self) -> dict:
        # The kept tensors carry the last step's graph, which deepcopy (e.g. LSD's teacher copy) and
        # pickling refuse; a copy starts without them.
        state = super().__getstate__()
        state.update(last_projected=None, last_log_det=None, last_dual_log_det=None)
        return state


class DetRegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.05, ge=0, description="lambda1: weight of branch 1's mean log|det J| (minimised)")
    dual_weight: float = Field(0.05, ge=0, description="lambda2: weight of branch 2's mean log|det J| (maximised); "
                               "0 removes branch 2")
    interpolation: float = Field(0.5, ge=0, description="weight of branch 1's log|det J| at h_i + eps (h_j - h_i), "
                                 "same-class pairs, eps ~ U(0,1), detached h; 0 disables")
    coupling_layers: int = Field(4, ge=1, description="Real-NVP affine coupling layers per branch (halves alternate)")
    hidden: int = Field(512, ge=1, description="width of each coupling's MLP")
    hidden_layers: int = Field(2, ge=1, description="hidden ReLU layers of each coupling's MLP")
    scale_clamp: float = Field(2.0, gt=0, description="log-scales are scale_clamp * tanh(raw / scale_clamp)")


class DetRegRegularizer(Regularizer):
    """DetReg: weight * R(branch 1) - dual_weight * R(branch 2) over a dueling Real-NVP head."""

    normalization = "none"  # see the module docstring: L2 (or batch scaling) makes a radial shrink free

    def __init__(self, weight: float = 0.05, dual_weight: float = 0.05, interpolation: float = 0.5,
                 coupling_layers: int = 4, hidden: int = 512, hidden_layers: int = 2, scale_clamp: float = 2.0):
        super().__init__()
        self.weight, self.dual_weight, self.interpolation = weight, dual_weight, interpolation
        self.head_args = dict(coupling_layers=coupling_layers, hidden=hidden, hidden_layers=hidden_layers,
                              scale_clamp=scale_clamp, dual=dual_weight > 0)
        self._last: dict[str, float] = {}

    def build_head(self, feature_dim: int, embedding_dim: int) -> nn.Module:
        return DuelingFlowHead(feature_dim, embedding_dim, **self.head_args)

    @staticmethod
    def _head(context: StepContext) -> DuelingFlowHead:
        head = getattr(context.model, "head", None)
        if not isinstance(head, DuelingFlowHead):
            raise RuntimeError("detreg needs the model built with its head (build_model(head_factory="
                               "regularizer.build_head)) and context.model set")
        if head.last_log_det is None:
            raise RuntimeError("detreg: the head kept no log-determinant; call the model in training mode first")
        return head

    @staticmethod
    def interpolate(h: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """h_i + eps (h_j - h_i) for each row i with another same-class row j (j random), eps ~ U(0, 1)."""
        n = h.shape[0]
        same = labels[:, None] == labels[None, :]
        same &= ~torch.eye(n, dtype=torch.bool, device=h.device)
        rows = same.any(dim=1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return h[:0]
        scores = torch.rand(n, n, device=h.device, generator=generator).masked_fill(~same, -1.0)
        partners = scores[rows].argmax(dim=1)
        eps = torch.rand(rows.numel(), 1, device=h.device, dtype=h.dtype, generator=generator)
        return h[rows] + eps * (h[partners] - h[rows])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        head = self._head(context)
        r1 = head.last_log_det.mean()
        loss = self.weight * r1
        terms = {"log_det": float(r1.detach())}
        if self.interpolation > 0:
            synthetic = self.interpolate(head.last_projected.detach(), labels)
            if synthetic.shape[0]:
                r_syn = head.flow.log_det(synthetic).mean()
                loss = loss + self.weight * self.interpolation * r_syn
                terms["log_det_interpolated"] = float(r_syn.detach())
        if self.dual_weight > 0:
            if head.last_dual_log_det is None:
                raise RuntimeError("detreg: the head has no dual branch but dual_weight > 0")
            r2 = head.last_dual_log_det.mean()
            loss = loss - self.dual_weight * r2
            terms["dual_log_det"] = float(r2.detach())
        head.clear()  # drop the graph references; the next forward sets them again
        self._terms = terms
        return loss
