"""Distance-weighted negative sampling (Wu et al. 2017) against the formula of reference/mdr.md §2.1."""
from __future__ import annotations

import math

import pytest
import torch

from mdr.losses.sampling import distance_weighted_negatives


def expected_probabilities(x: torch.Tensor, labels: list[int], anchor: int, cutoff=0.5, nonzero=1.4):
    """Normalised weights of every index for `anchor`, by the formula, in plain Python."""
    rows = [[v / math.sqrt(sum(c * c for c in r)) for v in r] for r in x.tolist()]
    dim = len(rows[0])
    w = []
    for j, r in enumerate(rows):
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[anchor], r)))
        if labels[j] == labels[anchor] or d >= nonzero:
            w.append(0.0)
            continue
        d = max(d, cutoff)
        w.append(d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2))
    total = sum(w)
    return [v / total for v in w]


def frequencies(x, labels, anchor, draws, seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.full((draws,), anchor, dtype=torch.long)
    idx = distance_weighted_negatives(x, torch.tensor(labels), anchors, generator=g)
    return torch.bincount(idx, minlength=len(labels)).double() / draws


def test_never_returns_same_class():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(24, 16, generator=g)
        y = torch.randint(0, 4, (24,), generator=g)
        anchors = torch.arange(24).repeat(20)
        neg = distance_weighted_negatives(x, y, anchors, generator=g)
        assert (y[neg] != y[anchors]).all()


def test_frequencies_follow_weights():
    # dimension 4 and points on a circle, so that distances spread over [0.5, 1.4) and weights differ
    angles = torch.tensor([0.0, 0.15, 0.4, 0.7, 0.9, 1.2, 1.5, 2.0])
    x = torch.zeros(8, 4, dtype=torch.float64)
    x[:, 0], x[:, 1] = angles.cos(), angles.sin()
    x[:, 2] = 0.05 * torch.arange(8)
    labels = [0, 0, 1, 2, 2, 3, 4, 5]
    want = torch.tensor(expected_probabilities(x, labels, anchor=0), dtype=torch.float64)
    assert (want > 0.05).sum() >= 3  # a non-trivial distribution
    assert want[1] == 0 and want[7] == 0  # same class; beyond the 1.4 cutoff
    got = frequencies(x, labels, anchor=0, draws=40000)
    assert (got - want).abs().max() < 0.015


def test_uniform_when_all_weights_vanish():
    # all negatives at distance >= 1.4 from the anchor: weights 0 -> uniform over negatives
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.3, 0.0], [-0.3, -1.0, -1.0]])
    labels = [0, 0, 1, 2, 3]
    got = frequencies(x, labels, anchor=0, draws=30000)
    assert got[0] == 0 and got[1] == 0
    assert (got[2:] - 1 / 3).abs().max() < 0.015


def test_single_class_batch_raises():
    with pytest.raises(ValueError):
        distance_weighted_negatives(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4))
