"""Triplet loss against a direct loop computation, with the sampled negatives fixed."""
from __future__ import annotations

import math

import pytest
import torch

import mdr.losses.triplet as triplet_module
from mdr.losses import LOSSES


def dist(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def test_matches_loop_with_fixed_negatives(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64) * 0.4
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = y.tolist()
    # the loss's triplets: every ordered positive pair, row-major; negatives chosen here by a rule
    triplets = []
    for a in range(9):
        negs = [n for n in range(9) if labels[n] != labels[a]]
        for p in range(9):
            if p != a and labels[p] == labels[a]:
                triplets.append((a, p, negs[(a + 3 * p) % len(negs)]))

    def fake_sampler(embeddings, labels_, anchors, *args, **kwargs):
        assert anchors.tolist() == [t[0] for t in triplets]
        return torch.tensor([t[2] for t in triplets]), 0.0

    monkeypatch.setattr(triplet_module, "distance_weighted_negatives", fake_sampler)
    rows = x.tolist()
    for margin in (0.2, 0.5):
        loss = LOSSES.create("triplet", {"margin": margin})
        hinges = [dist(rows[a], rows[p]) - dist(rows[a], rows[n]) + margin for a, p, n in triplets]
        assert min(abs(h) for h in hinges) > 1e-9  # no hinge within float64 rounding (~1e-15) of its kink
        want = sum(max(0.0, h) for h in hinges) / len(triplets)
        # float64 on both sides: 4-term distances, a mean of 20 hinges, ~1e-14 relative apart; rel 1e-9 is far
        # above that and far below a wrong formula (squared distances, a missing margin)
        assert loss(x, y).item() == pytest.approx(want, rel=1e-9)
        assert want > 0


def test_no_parameters_and_needs_positives():
    loss = LOSSES.create("triplet")
    assert list(loss.parameters()) == [] and getattr(loss, "param_groups", None) is None
    with pytest.raises(ValueError):
        loss(torch.randn(3, 4), torch.tensor([0, 1, 2]))
