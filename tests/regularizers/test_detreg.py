"""DetReg: the flow's analytic log-determinant, identity start, invertibility, the loss, the geometry."""
import copy

import pytest
import torch

from mdr.engine import train
from mdr.models import build_model
from mdr.regularizers import REGULARIZERS
from mdr.regularizers.base import StepContext
from mdr.regularizers.detreg import DetRegRegularizer, DuelingFlowHead, RealNVP
from tests.conftest import StopAfter, tiny_config


def _randomised(flow: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return flow


@pytest.mark.parametrize("dim", [6, 5])
def test_analytic_log_det_equals_autograd_jacobian(dim):
    flow = _randomised(RealNVP(dim, coupling_layers=4, hidden=16, hidden_layers=2, scale_clamp=2.0).double())
    x = torch.randn(4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, log_det = flow(x)
    assert log_det.abs().max() > 0.1  # a flow far from the identity
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign.item() > 0  # exp(s) > 0: the flow preserves orientation
        # float64: log|det J| moves by |tr(J^-1 dJ)| <= n cond(J) |dJ| / |J| under a perturbation dJ; LU's backward
        # error (~n u, little growth at n <= 6) and the autograd Jacobian's own rounding (tens of operations per
        # entry) keep |dJ| / |J| under 100 u64, hence 100 n cond u64 (3e-11 to 1e-8 here: cond is 3e2 to 1e5),
        # while a wrong log-det (a layer's or a dimension's s missing) is off by its size, > 0.1
        tol = 100 * dim * float(torch.linalg.cond(jac)) * 2.0**-52
        assert log_det[i].item() == pytest.approx(logabs.item(), abs=tol)


def test_flows_are_the_identity_at_initialisation():
    torch.manual_seed(0)
    head = DuelingFlowHead(12, 6, coupling_layers=4, hidden=32).train()
    f = torch.randn(10, 12)
    out = head(f)
    assert torch.equal(out, head.proj(f))
    assert torch.equal(head.last_log_det, torch.zeros(10))
    assert torch.equal(head.last_dual_log_det, torch.zeros(10))


def test_inverse_undoes_forward():
    flow = _randomised(RealNVP(7, coupling_layers=5, hidden=16, hidden_layers=1, scale_clamp=2.0).double(), seed=3)
    x = torch.randn(20, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    # float64: s and t are recomputed from the same bits of the untouched half, so each layer's round trip only
    # rounds a few times at the scale of |z| (<= ~250 here): 5 layers x 4 x 250 x 1.1e-16 = 6e-13, grown by the
    # earlier couplings' networks when fed an error (seeds 0-19 give 1e-13 to 2e-12); 1e-10 leaves room for that
    # growth, while a wrong inverse (a sign of s or t, the halves swapped) is off by O(1)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-10)


def test_log_scales_are_clamped():
    flow = _randomised(RealNVP(4, coupling_layers=2, hidden=8, hidden_layers=1, scale_clamp=0.5), scale=50.0)
    _, log_det = flow(torch.randn(100, 4) * 10)
    # clamp x 2 transformed dims x 2 layers; float32: each |s| <= 0.5 (|tanh| <= 1) and their sum of 4 rounds by
    # <= 3 u x 2 = 4e-7, inside 1e-5 (an unclamped s here is ~1e4)
    assert log_det.abs().max() <= 0.5 * 2 * 2 + 1e-5


def test_interpolated_points_lie_between_same_class_pairs():
    h = torch.randn(8, 5, dtype=torch.float64)  # float64: eps is recovered to ~u64 |h| / |h_j - h_i|
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])  # classes 3 and 4 have no partner: skipped
    pts = DetRegRegularizer.interpolate(h, labels, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (6, 5)
    for k, i in enumerate(range(6)):
        j = i ^ 1
        eps = (pts[k] - h[i]) / (h[j] - h[i])
        assert torch.allclose(eps, eps[0].expand_as(eps), rtol=0, atol=1e-9) and 0 <= eps[0] <= 1


@pytest.mark.parametrize("per_dimension", [True, False])
def test_loss_is_weighted_log_dets_of_both_branches_and_synthetic_points(per_dimension):
    torch.manual_seed(0)
    reg = DetRegRegularizer(weight=0.3, dual_weight=0.2, interpolation=0.5, coupling_layers=3, hidden=16,
                            per_dimension=per_dimension)
    model = build_model("smallcnn", 6, reg.normalization, False, head_factory=reg.build_head).train()
    _randomised(model.head.flow, 0.1, seed=1)
    _randomised(model.head.dual_flow, 0.1, seed=2)
    model.double()  # float64, so that the composition is checked to rounding, whatever the CPU's kernels
    images, labels = torch.rand(8, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    emb = model(images)
    head = model.head
    h, ld1, ld2 = head.last_projected.detach(), head.last_log_det.detach(), head.last_dual_log_det.detach()
    torch.manual_seed(5)
    loss = reg(emb, labels, StepContext(0, 2, 0, images=images, model=model))
    torch.manual_seed(5)
    synthetic = DetRegRegularizer.interpolate(h, labels)
    terms = [0.3 * ld1.mean(), 0.3 * 0.5 * head.flow(synthetic)[1].mean(), -0.2 * ld2.mean()]
    want = sum(terms)
    if per_dimension:
        want = want / 6  # the embedding size
    # the same float64 terms summed in another order: a few u64 of their magnitudes (cancellation included)
    assert abs(loss.item() - want.item()) <= 1e-13 * sum(abs(t.item()) for t in terms)
    assert set(reg.terms()) == {"log_det", "log_det_interpolated", "dual_log_det"}
    assert head.last_log_det is None  # the graph references are dropped after use
    loss.backward()
    assert model.head.flow.couplings[0].net[-1].weight.grad.abs().sum() > 0
    assert model.backbone.features[0].weight.grad.abs().sum() > 0


def test_defaults_and_eval_keeps_nothing():
    reg = REGULARIZERS.create("detreg", {}, num_classes=4, embedding_dim=8)
    assert reg.normalization == "batch_mean_distance" and reg.per_dimension and reg.weight == 0.005
    model = build_model("smallcnn", 8, reg.normalization, False, head_factory=reg.build_head)
    assert isinstance(model.head, DuelingFlowHead) and model.head.dual_flow is not None
    assert reg.param_groups(1e-3, 0.0) == []  # the flow is part of the model, optimised with it
    model.train()(torch.rand(4, 3, 16, 16))
    copy.deepcopy(model)  # a model holding the last step's graph can still be copied
    model.eval()
    model.head.clear()
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16))
    assert model.head.last_log_det is None
    no_dual = REGULARIZERS.create("detreg", {"dual_weight": 0.0}, num_classes=4, embedding_dim=8)
    assert no_dual.build_head(16, 8).dual_flow is None


def test_regularizer_alone_changes_the_geometry_not_only_the_scale():
    """A few SGD steps on the regularizer only, projection frozen (so any change is the flows'):
    branch 1's log-det goes down, branch 2's up, the volume change differs between samples, and
    the scale-free distance structure of the embeddings changes (not just a global shrink)."""
    torch.manual_seed(0)
    reg = DetRegRegularizer(weight=1.0, dual_weight=1.0, interpolation=0.5, coupling_layers=4, hidden=32,
                            per_dimension=False)
    head = reg.build_head(16, 8).train()
    head.proj.requires_grad_(False)
    model = torch.nn.Module()
    model.head = head
    features, labels = torch.randn(64, 16), torch.arange(16).repeat_interleave(4)

    def distances():
        with torch.no_grad():
            z = head(features)
            head.clear()
        d = torch.cdist(z, z)
        return d / d.mean()

    before = distances()
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=3e-2)
    for step in range(10):
        head(features)
        loss = reg(None, labels, StepContext(0, 1, step, model=model))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head(features)
    ld1, ld2 = head.last_log_det, head.last_dual_log_det
    saturated = 2.0 * 4 * 4  # scale_clamp x transformed dims per layer x layers
    assert -saturated + 1 < ld1.mean().item() < -1.0 and ld2.mean().item() > 1.0
    assert ld1.std().item() > 0.05  # not one contraction factor for every sample
    after = distances()
    off = ~torch.eye(64, dtype=torch.bool)
    ratio = after[off] / before[off]
    assert ratio.std() / ratio.mean() > 0.02  # distances did not all change by one factor


def test_trains_and_resumes_exactly(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"regularizer": {"name": "detreg", "params": {"hidden": 32}},
                                       "train.epochs": 2, "optim.lr_milestones": [1]})
    assert config.normalization == "batch_mean_distance"
    straight = train(config, tmp_path / "a", progress=False, echo=False)
    assert "reg_log_det" in straight.history[0] and "reg_dual_log_det" in straight.history[0]
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False, echo=False, callbacks=[StopAfter(1)])
    resumed = train(config, tmp_path / "b", progress=False, echo=False)
    strip = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("head.dual_flow.") for k in a["model"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
