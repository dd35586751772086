"""Margin loss (Wu et al. 2017) against a direct loop computation with the negatives fixed."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import LpDistance

import mdr.losses.margin as margin_module
from mdr.losses import LOSSES

LABELS = [0, 0, 0, 1, 1, 3, 3, 3, 4]  # class 2 absent from the batch


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(9, 4, generator=g, dtype=torch.float64) * 0.5, torch.tensor(LABELS)


def fixed_triplets(labels):
    """Every ordered positive pair, row-major, with a negative chosen by a fixed rule."""
    out = []
    for a in range(len(labels)):
        negs = [n for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p != a and labels[p] == labels[a]:
                out.append((a, p, negs[(2 * a + p) % len(negs)]))
    return out


@pytest.fixture
def fixed_negatives(monkeypatch):
    triplets = fixed_triplets(LABELS)

    def fake_sampler(embeddings, labels, anchors, *args, **kwargs):
        assert anchors.tolist() == [t[0] for t in triplets]
        return torch.tensor([t[2] for t in triplets]), 0.0

    monkeypatch.setattr(margin_module, "distance_weighted_negatives", fake_sampler)
    return triplets


def loop_margin(x, labels, triplets, beta, margin, nu):
    rows = x.tolist()

    def dist(i, j):
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(rows[i], rows[j])))

    total, active, reg = 0.0, 0, 0.0
    for a, p, n in triplets:
        b = beta[labels[a]]
        for y, d in ((1, dist(a, p)), (-1, dist(a, n))):
            assert abs(margin + y * (d - b)) > 1e-9  # no hinge within float64 rounding (~1e-15) of its kink
            term = max(0.0, margin + y * (d - b))
            total += term
            active += term > 0
        reg += nu * b
    return (total + reg) / max(active, 1)


@pytest.mark.parametrize("margin,nu", [(0.2, 0.0), (0.3, 0.01)])
def test_matches_loop(fixed_negatives, margin, nu):
    x, y = make_batch()
    loss = LOSSES.create("margin", {"margin": margin, "nu_beta": nu}, num_classes=5)
    beta = [0.6, 0.8, 1.0, 1.1, 0.9]
    with torch.no_grad():
        loss.beta.copy_(torch.tensor(beta))
    # beta is a float32 parameter: the loop gets its float32 values, so only float64 rounding is left
    want = loop_margin(x, LABELS, fixed_negatives, loss.beta.tolist(), margin, nu)
    assert loss(x, y).item() == pytest.approx(want, rel=1e-12)
    assert 0 < want


def test_agrees_with_pml_margin_loss_on_same_triplets(fixed_negatives):
    x, y = make_batch(seed=2)
    ours = LOSSES.create("margin", {"beta0": 1.0}, num_classes=5)
    pml = pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.0, learn_beta=True, num_classes=5,
                                distance=LpDistance(normalize_embeddings=False))
    indices = tuple(torch.tensor(c) for c in zip(*fixed_negatives))
    assert ours(x, y).item() == pytest.approx(pml(x, y, indices).item(), rel=1e-12)  # both float64


def test_beta_gets_gradients_and_own_param_group(fixed_negatives):
    x, y = make_batch()
    loss = LOSSES.create("margin", {"nu_beta": 0.01}, num_classes=5)
    assert loss.beta.shape == (5,) and torch.all(loss.beta == 1.2)
    beta = [0.5, 0.7, 1.2, 0.9, 1.2]
    with torch.no_grad():
        loss.beta.copy_(torch.tensor(beta))
    x.requires_grad_(True)
    loss(x, y).backward()
    # d loss / d beta_c = (sum over triplets anchored in class c of -[pos active] + [neg active] + nu) / active
    rows = x.detach().tolist()
    beta = loss.beta.tolist()  # the float32 values: which terms are active is then decided exactly

    def dist(i, j):
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(rows[i], rows[j])))

    grad, active = [0.0] * 5, 0
    for a, p, n in fixed_negatives:
        b, c = beta[LABELS[a]], LABELS[a]
        assert min(abs(0.2 + dist(a, p) - b), abs(0.2 - dist(a, n) + b)) > 1e-9  # not decided by rounding
        pos_on, neg_on = 0.2 + dist(a, p) - b > 0, 0.2 - dist(a, n) + b > 0
        grad[c] += -float(pos_on) + float(neg_on) + 0.01
        active += pos_on + neg_on
    want = torch.tensor(grad) / active
    # beta.grad is float32: a sum of a few terms of size <= 1 divided by `active`: rtol 1e-5 >> 8 u.
    torch.testing.assert_close(loss.beta.grad, want, rtol=1e-5, atol=1e-7)
    assert loss.beta.grad[2] == 0 and loss.beta.grad[4] == 0  # class absent; class without a positive
    assert (loss.beta.grad[[0, 1, 3]] != 0).all()
    assert x.grad.abs().sum() > 0
    groups = loss.param_groups(base_lr=1e-4)
    assert groups == [{"params": [loss.beta], "lr": 5e-4, "weight_decay": 0.0}]
    torch.optim.Adam(groups, lr=1e-4)  # usable as is


def test_sampling_runs_unpatched_and_is_finite():
    x, y = make_batch(seed=4)
    loss = LOSSES.create("margin", num_classes=5)
    value = loss(x, y)
    assert torch.isfinite(value) and value.item() >= 0


def test_context_and_params_validated():
    with pytest.raises(ValueError, match="num_classes"):
        LOSSES.create("margin")
    with pytest.raises(ValidationError):
        LOSSES.validate_params("margin", {"beta": 1.0})
    loss = LOSSES.create("margin", num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(4, 3), torch.tensor([0, 0, 3, 3]))
