"""MDR against an independent float64 computation written from docs/method.md §1."""
import numpy as np
import pytest
import torch

from mdr import MDR
from mdr.regularizers import REGULARIZERS
from mdr.regularizers.base import StepContext


def reference_mdr(e: np.ndarray, levels: np.ndarray, stats: tuple[float, float] | None, momentum: float = 0.9):
    """Numpy, loops over pairs: returns (loss, new_stats, dloss/de, dloss/dlevels)."""
    n = len(e)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i, j] = np.sqrt(max(np.sum((e[i] - e[j]) ** 2), 1e-12))
    mu, sd = d.mean(), d.std(ddof=1)  # all N*N entries, zero diagonal included
    m, s = (mu, sd) if stats is None else (momentum * stats[0] + (1 - momentum) * mu,
                                          momentum * stats[1] + (1 - momentum) * sd)
    total, grad_e, grad_l = 0.0, np.zeros_like(e), np.zeros_like(levels)
    pairs = n * (n - 1)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            z = (d[i, j] - m) / s
            k = int(np.argmin(np.abs(z - levels)))
            gaps = np.sort(np.abs(z - levels))
            # neither the nearest level nor the sign is decided by rounding (float64: ~1e-15 here, on any machine)
            assert gaps[0] > 1e-9 and gaps[1] - gaps[0] > 1e-9, (i, j)
            total += abs(z - levels[k])
            sign = np.sign(z - levels[k]) / pairs
            grad_l[k] -= sign
            dd = (e[i] - e[j]) / d[i, j]  # d d_ij / d e_i (stats are detached)
            grad_e[i] += sign / s * dd
            grad_e[j] -= sign / s * dd
    return total / pairs, (m, s), grad_e, grad_l


@pytest.mark.parametrize("n,dim", [(6, 3), (12, 8)])
def test_value_gradients_and_running_statistics_match_reference(n, dim):
    rng = np.random.default_rng(n)
    mdr = MDR(levels=[-3.0, 0.0, 3.0], momentum=0.9).double()
    levels = np.array([-3.0, 0.0, 3.0])
    stats = None
    for step in range(3):  # first call initialises, later calls update before normalising
        e_np = rng.normal(size=(n, dim)) * (1 + step)
        want, stats, want_ge, want_gl = reference_mdr(e_np, levels, stats)
        e = torch.tensor(e_np, requires_grad=True)
        mdr.levels.grad = None
        loss = mdr(e)
        loss.backward()
        # Both float64: sums of <= 132 pair terms of size <= ~10, ~1e-13 of the result at worst; the gradients'
        # sums cancel, hence their atol of 1e-12. Far below what a wrong level, statistic or pair count makes.
        assert loss.item() == pytest.approx(want, rel=1e-10)
        assert mdr.running_mean.item() == pytest.approx(stats[0], rel=1e-10)
        assert mdr.running_std.item() == pytest.approx(stats[1], rel=1e-10)
        np.testing.assert_allclose(e.grad.numpy(), want_ge, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(mdr.levels.grad.numpy(), want_gl, rtol=1e-10, atol=1e-12)
        with torch.no_grad():  # move the levels like an optimizer would, keep the reference in step
            mdr.levels -= 0.1 * mdr.levels.grad
        levels = mdr.levels.detach().numpy().copy()


def test_gradient_reaches_only_the_nearest_level():
    mdr = MDR(levels=[-30.0, 0.0, 30.0]).double()  # every z is nearest to 0
    e = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    mdr(e).backward()
    assert mdr.levels.grad[0] == 0 and mdr.levels.grad[2] == 0 and mdr.levels.grad[1] != 0


def test_gradcheck_with_frozen_statistics():
    mdr = MDR().double()
    e0 = torch.randn(7, 5, dtype=torch.float64)
    mdr(e0)  # initialise the statistics
    mdr.eval()  # eval mode: statistics used, not updated
    e = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, lv: _with_levels(mdr, x, lv), (e, mdr.levels.detach().clone().requires_grad_()))


def _with_levels(mdr, x, levels):
    with torch.no_grad():
        mdr.levels.copy_(levels)
    from mdr.losses.distances import euclidean_pdist

    n = x.shape[0]
    d = euclidean_pdist(x)
    z = (d[~torch.eye(n, dtype=torch.bool)] - mdr.running_mean) / mdr.running_std
    return (z[:, None] - levels[None, :]).abs().min(dim=1).values.mean()


def test_eval_mode_does_not_update_statistics():
    mdr = MDR()
    mdr(torch.randn(8, 3))
    before = (mdr.running_mean.clone(), mdr.running_std.clone())
    mdr.eval()
    mdr(torch.randn(8, 3) * 10)
    assert torch.equal(before[0], mdr.running_mean) and torch.equal(before[1], mdr.running_std)


def test_state_dict_carries_statistics_so_a_restored_copy_continues_exactly():
    torch.manual_seed(0)
    batches = [torch.randn(9, 4) for _ in range(4)]
    a = MDR()
    for b in batches[:2]:
        a(b)
    b_ = MDR()
    b_.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"levels", "running_mean", "running_std", "initialized"}
    assert bool(b_.initialized)
    for b in batches[2:]:
        assert torch.equal(a(b), b_(b))
    assert torch.equal(a.running_mean, b_.running_mean)


def test_levels_are_one_parameter():
    mdr = MDR(levels=[-2, 0, 2, 4])
    params = list(mdr.parameters())
    assert len(params) == 1 and params[0] is mdr.levels and params[0].shape == (4,)


def test_regularizer_applies_lambda_and_nu():
    reg = REGULARIZERS.create("mdr", {"weight": 0.2, "level_penalty": 0.01, "levels": [-1, 0, 2]})
    e = torch.randn(8, 4)
    ctx = StepContext(epoch=0, num_epochs=1, iteration=0)
    raw = MDR(levels=[-1, 0, 2])
    want = 0.2 * raw(e) + 0.01 * (1 + 0 + 4)
    # float32, two positive terms summed in either order: <= 2 u relative, well inside 1e-6
    assert reg(e, torch.zeros(8, dtype=torch.long), ctx).item() == pytest.approx(want.item(), rel=1e-6)
    assert reg.terms()["level_penalty"] == pytest.approx(5.0)


@pytest.mark.parametrize("bad", ["abc", [1, "x"], [True, 0], []])
def test_levels_must_be_a_list_of_numbers(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="levels"):
        REGULARIZERS.validate_params("mdr", {"levels": bad})
