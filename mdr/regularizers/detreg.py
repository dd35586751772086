"""DetReg: determinant regularization with a normalising-flow metric head (docs/related_methods.md).

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
R = batch mean of the per-sample log|det J|, divided by the embedding size D (`per_dimension`); the
synthetic points use random same-class pairs (i, j) of the batch, eps ~ U(0, 1) per pair.

Decisions where the paper is silent (defaults in brackets):
  * R is log|det J| itself (not |det J|, not a squared or hinged version), averaged over the batch and
    [per dimension], i.e. the mean log-scale: then lambda means the same at 64 and at 512 dimensions.
  * Real-NVP affine couplings [4], MLP width [512] with [2] hidden layers, tanh-clamped log-scales
    [2.0], zero-initialised last layer (identity at start).
  * lambda1 = `weight` [0.005], lambda2 = `dual_weight` [0.005]; dual_weight 0 drops branch 2. The
    summaries' lambda ~ 0.05 was measured to saturate every log-scale at the clamp within ~40 smoke
    iterations (Triplet on glyphs: R@1 8.2 against 21.4 for the same head without the regularizer).
    Saturated, branch 1 is a uniform contraction by exp(-scale_clamp * coupling_layers / 2) per
    dimension *plus* the couplings' shifts t, which then dominate the contracted input: the embedding
    becomes mostly a function of the shift MLPs, and retrieval collapses. At 0.005 it does not
    (R@1 22.3). Tune it per dataset (params/tuning.yaml).
  * Branch 2 does not get the base loss: the base loss only ever sees the head's output (branch 1),
    as in the engine's loop for every method; branch 2's only role is the opposing log-det
    gradient on the shared projection and backbone.
  * Synthetic points [interpolation 0.5, 0 disables]: built from the *detached* projected features,
    so they probe the flow's volume change between same-class samples and train branch 1's flow
    only (the backbone's pressure is the balanced lambda1 R1 - lambda2 R2 at the real points).
    Branch 2 is not evaluated there. Rows without another same-class sample in the batch are skipped.
  * Normalisation ["batch_mean_distance", as for MDR]: the flow's output divided by the batch's mean
    pairwise distance in training. The reference warns that after L2 normalisation (and equally after
    this division) a global contraction lowers log|det J| for free; the only free part is the uniform
    one, bounded by the clamp, so what the regularizer can change in the geometry is the volume change
    that differs between inputs (tests/regularizers/test_detreg.py checks that it does). With "none"
    (raw outputs) Triplet's absolute margin is met by inflating the scale instead: measured on glyphs,
    R@1 10.9 even with lambda = 0. The config may still override it (model.normalization).
  * The determinant is that of the square flow only; the projection's scale is not penalised
    (weight decay only).
  * What the regularizer alone does: R only sees the log-scales s, and the shifts t get no gradient
    from it, so on its own it drives every s towards -scale_clamp (branch 1) / +scale_clamp
    (branch 2); the tanh clamp bounds R to +-scale_clamp * coupling_layers / 2 per dimension.
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
    weight: float = Field(0.005, ge=0, description="lambda1: weight of branch 1's mean log|det J| (minimised)")
    dual_weight: float = Field(0.005, ge=0, description="lambda2: weight of branch 2's mean log|det J| (maximised); "
                               "0 removes branch 2")
    interpolation: float = Field(0.5, ge=0, description="weight of branch 1's log|det J| at h_i + eps (h_j - h_i), "
                                 "same-class pairs, eps ~ U(0,1), detached h; 0 disables")
    coupling_layers: int = Field(4, ge=1, description="Real-NVP affine coupling layers per branch (halves alternate)")
    hidden: int = Field(512, ge=1, description="width of each coupling's MLP")
    hidden_layers: int = Field(2, ge=1, description="hidden ReLU layers of each coupling's MLP")
    scale_clamp: float = Field(2.0, gt=0, description="log-scales are scale_clamp * tanh(raw / scale_clamp)")
    per_dimension: bool = Field(True, description="R = log|det J| / D, the mean log-scale per dimension, so that "
                                "lambda means the same at every embedding size (false: the sum, log|det J|)")


class DetRegRegularizer(Regularizer):
    """DetReg: weight * R(branch 1) - dual_weight * R(branch 2) over a dueling Real-NVP head."""

    normalization = "batch_mean_distance"  # see the module docstring (raw outputs inflate the scale)

    def __init__(self, weight: float = 0.005, dual_weight: float = 0.005, interpolation: float = 0.5,
                 coupling_layers: int = 4, hidden: int = 512, hidden_layers: int = 2, scale_clamp: float = 2.0,
                 per_dimension: bool = True):
        super().__init__()
        self.weight, self.dual_weight, self.interpolation = weight, dual_weight, interpolation
        self.per_dimension = per_dimension
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

    def _r(self, log_det: torch.Tensor, dim: int) -> torch.Tensor:
        """R of one branch: the batch mean of log|det J| (divided by D with `per_dimension`)."""
        return log_det.mean() / dim if self.per_dimension else log_det.mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        head = self._head(context)
        dim = head.last_projected.shape[1]
        r1 = self._r(head.last_log_det, dim)
        loss = self.weight * r1
        terms = {"log_det": float(r1.detach())}
        if self.interpolation > 0:
            synthetic = self.interpolate(head.last_projected.detach(), labels)
            if synthetic.shape[0]:
                r_syn = self._r(head.flow.log_det(synthetic), dim)
                loss = loss + self.weight * self.interpolation * r_syn
                terms["log_det_interpolated"] = float(r_syn.detach())
        if self.dual_weight > 0:
            if head.last_dual_log_det is None:
                raise RuntimeError("detreg: the head has no dual branch but dual_weight > 0")
            r2 = self._r(head.last_dual_log_det, dim)
            loss = loss - self.dual_weight * r2
            terms["dual_log_det"] = float(r2.detach())
        head.clear()  # drop the graph references; the next forward sets them again
        self._terms = terms
        return loss
