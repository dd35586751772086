"""Contrastive loss against a direct loop computation (hinge form, active-pair means, no L2 norm)."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from mdr.losses import LOSSES


def loop_contrastive(x: torch.Tensor, y: torch.Tensor, pos_margin: float, neg_margin: float) -> float:
    rows, labels = x.tolist(), y.tolist()
    pos, neg = [], []
    for i in range(len(rows)):
        for j in range(len(rows)):
            if i == j:
                continue
            d = math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])))
            # no hinge within rounding of its kink (float64 distances err by ~1e-15): the active pairs, and so
            # the means' counts, are the same here, in the loss and on every machine
            assert abs(d - (pos_margin if labels[i] == labels[j] else neg_margin)) > 1e-9, (i, j)
            if labels[i] == labels[j]:
                pos.append(max(0.0, d - pos_margin))
            else:
                neg.append(max(0.0, neg_margin - d))
    pos = [v for v in pos if v > 0]
    neg = [v for v in neg if v > 0]
    return (sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0)


def batch(seed: int = 0, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 5, generator=g, dtype=torch.float64) * scale
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    return x, y


@pytest.mark.parametrize("pos_margin,neg_margin", [(0.0, 0.5), (0.1, 1.0), (0.3, 0.6)])
def test_matches_loop(pos_margin, neg_margin):
    x, y = batch()
    loss = LOSSES.create("contrastive", {"pos_margin": pos_margin, "neg_margin": neg_margin})
    got = loss(x, y).item()
    want = loop_contrastive(x, y, pos_margin, neg_margin)
    # float64 throughout (PML's distances on float64 input): 5-term distances and means of <= 90 hinges, so the
    # two computations differ by ~100 u64 = 1e-14 relative; 1e-12 is far above that and far below what a wrong
    # formula makes (a squared hinge, a missing half, a mean over all pairs instead of the active ones)
    assert got == pytest.approx(want, rel=1e-12)
    assert want > 0


def test_embeddings_not_normalised():
    x, y = batch(seed=1, scale=0.2)
    assert not torch.allclose(x.norm(dim=1), torch.ones(10, dtype=x.dtype))
    loss = LOSSES.create("contrastive")
    for s in (1.0, 2.0):  # float64, as above
        assert loss(s * x, y).item() == pytest.approx(loop_contrastive(s * x, y, 0.0, 0.5), rel=1e-12)
    # an L2-normalising loss would be scale invariant
    assert loss(x, y).item() != pytest.approx(loss(2.0 * x, y).item(), rel=1e-3)


def test_defaults_gradient_and_no_parameters():
    loss = LOSSES.create("contrastive")
    assert (loss.pos_margin, loss.neg_margin) == (0.0, 0.5)
    assert list(loss.parameters()) == [] and getattr(loss, "param_groups", None) is None
    x, y = batch()
    x.requires_grad_(True)
    loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_params_validated():
    with pytest.raises(ValidationError):
        LOSSES.validate_params("contrastive", {"margin": 0.5})
    with pytest.raises(ValidationError):
        LOSSES.validate_params("contrastive", {"pos_margin": 0.6, "neg_margin": 0.5})
