"""LSD: the listwise KL against scipy, the epoch ramp, the previous-epoch teacher, its state and resume."""
import io

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from mdr.engine import train
from mdr.models import build_model
from mdr.regularizers import REGULARIZERS
from mdr.regularizers.base import StepContext
from mdr.regularizers.lsd import LSDRegularizer, listwise_kd
from tests.conftest import StopAfter, tiny_config


def reference_kd(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    zs = student / np.linalg.norm(student, axis=1, keepdims=True)
    zt = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    p = softmax(zt @ zt.T / tau, axis=1)
    q = softmax(zs @ zs.T / tau, axis=1)
    return float(np.mean([entropy(p[i], q[i]) for i in range(len(p))]))  # KL(p_i || q_i), whole rows


def kd_float32_bound(b: int, d: int, tau: float) -> float:
    """A bound on |float32 listwise_kd - exact| for B rows of D-d embeddings (u = 2^-24).

    Normalising and the D-term dot products of unit vectors err by <= (D + 4) u; divided by tau, each
    logit by (D + 4) u / tau. log_softmax over B logits of magnitude <= 1/tau adds <= (B + 4) u (1/tau +
    log B). So each log-probability errs by at most e = (D + 4) u / tau + (B + 4) u (1/tau + log B), a
    row's KL sum_j p_j (log p_j - log q_j) by <= 2 e (the p_j sum to 1) plus its own B-term rounding,
    and their mean likewise: 3 e covers all of it."""
    u = 2.0**-24
    e = (d + 4) * u / tau + (b + 4) * u * (1 / tau + np.log(b))
    return 3 * e


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_listwise_kd_matches_scipy(tau):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5))
    got = listwise_kd(torch.tensor(s), torch.tensor(t), tau).item()
    # float64 on both sides: a row's KL sums 7 terms p (log p - log q) of size <= ~10, so it errs by < 1e-14,
    # under 1e-12 of these KLs (>= 0.025); rel 1e-10 is far above that and far below a wrong formula
    assert got == pytest.approx(reference_kd(s, t, tau), rel=1e-10)
    # student = teacher: both log-probabilities come from the same bits by the same ops (one code path, one
    # process), so every term p (log p - log q) is p x 0 and the KL is exactly 0
    assert listwise_kd(torch.tensor(t), torch.tensor(t), tau).item() == 0.0


def _model():
    torch.manual_seed(0)
    return build_model("smallcnn", 6, "batch_mean_distance", False).train()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 16, 16, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_ramp_weight_and_zero_in_the_first_epoch():
    reg = LSDRegularizer(alpha=50.0, tau=2.0)
    assert [reg.weight_at(e, 4) for e in range(4)] == [0.0, 50.0, 100.0, 150.0]
    model = _model()
    images, labels = _batch()
    reg.on_train_start(model, None, torch.device("cpu"))
    assert reg.teacher is None
    out = reg(model(images), labels, StepContext(0, 4, 0, images=images, model=model))
    assert out.item() == 0.0 and reg.teacher is None
    with pytest.raises(RuntimeError, match="no teacher"):
        reg(model(images), labels, StepContext(1, 4, 5, images=images, model=model))


def test_value_is_ramp_times_kd_to_the_previous_epoch_snapshot():
    reg = LSDRegularizer(alpha=200.0, tau=0.5)
    model = _model()
    images, labels = _batch()
    reg.on_epoch_end(model, 0)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):  # the student moves within epoch 1; the teacher must not
        emb = model(images)
        loss = reg(emb, labels, StepContext(1, 5, step, images=images, model=model)) + emb.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, v in reg.teacher.state_dict().items():
            assert torch.equal(v, snapshot[k]), k
    assert not all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in reg.teacher.parameters())
    assert list(reg.parameters()) == [] and reg.param_groups(1e-3, 0.0) == []

    emb = model(images)
    got = reg(emb, labels, StepContext(1, 5, 3, images=images, model=model))
    frozen = build_model("smallcnn", 6, "batch_mean_distance", False)
    frozen.load_state_dict(snapshot)
    with torch.no_grad():
        teacher_emb = frozen.eval()(images)
    weight = 1 / 5 * 200.0 * 0.5**2
    # The composition, exactly: the ramp times the listwise KD (checked against scipy in float64 above)
    # between the student's embeddings and those of an independent copy of the epoch-0 snapshot.
    assert got.item() == (weight * listwise_kd(emb.detach(), teacher_emb, 0.5)).item()
    # And against scipy in float64, within the float32 error of the KD itself (kd_float32_bound).
    want = weight * reference_kd(emb.detach().double().numpy(), teacher_emb.double().numpy(), 0.5)
    assert abs(got.item() - want) <= weight * kd_float32_bound(emb.shape[0], emb.shape[1], 0.5)
    assert got.item() > 0 and reg.terms()["kd_weight"] == pytest.approx(10.0)
    got.backward()  # the gradient reaches the student

    reg.on_epoch_end(model, 1)  # refreshed, not averaged
    assert reg.teacher_epoch == 1
    for k, v in reg.teacher.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_state_dict_round_trip_on_a_fresh_instance():
    reg = REGULARIZERS.create("lsd", {}, num_classes=4, embedding_dim=6)
    model = _model()
    images, labels = _batch()
    reg.on_epoch_end(model, 2)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    with torch.no_grad():  # the student changes after the checkpoint
        for p in model.parameters():
            p.add_(0.05)
    ctx = StepContext(3, 6, 30, images=images, model=model)
    want = reg(model(images), labels, ctx)

    fresh = LSDRegularizer()
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    assert fresh.teacher is None and fresh.teacher_epoch == 2  # rebuilt lazily, from context.model
    resaved = fresh.state_dict()["_extra_state"]["teacher"]
    for k, v in reg.teacher.state_dict().items():
        assert torch.equal(resaved[k], v), k
    got = fresh(model(images), labels, ctx)
    assert got.item() == want.item() != 0.0
    assert fresh.teacher is not model
    for k, v in reg.teacher.state_dict().items():
        assert torch.equal(fresh.teacher.state_dict()[k], v), k

    empty = LSDRegularizer()
    empty.load_state_dict(LSDRegularizer().state_dict())
    assert empty.teacher is None and empty.teacher_epoch == -1


def test_trains_and_resumes_exactly_with_the_teacher(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"regularizer": {"name": "lsd", "params": {}}, "train.epochs": 3,
                                       "optim.lr_milestones": [2]})
    assert config.normalization == "batch_mean_distance"
    straight = train(config, tmp_path / "a", progress=False, echo=False)
    kd = [r["reg_kd"] for r in straight.history]
    assert kd[0] == 0.0 and kd[1] > 0 and kd[2] > 0
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False, echo=False, callbacks=[StopAfter(1)])
    middle = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    teacher = middle["regularizer"]["_extra_state"]
    assert teacher["teacher_epoch"] == 0
    for k, v in middle["model"].items():  # the teacher is the model at the end of epoch 1
        assert torch.equal(teacher["teacher"][k], v), k
    resumed = train(config, tmp_path / "b", progress=False, echo=False)
    strip = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    ta, tb = a["regularizer"]["_extra_state"], b["regularizer"]["_extra_state"]
    assert ta["teacher_epoch"] == tb["teacher_epoch"] == 2
    for name, tensor in ta["teacher"].items():
        assert torch.equal(tensor, tb["teacher"][name]), name
