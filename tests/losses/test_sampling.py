"""Distance-weighted negative sampling (Wu et al. 2017) against the formula of docs/method.md §2.1."""
from __future__ import annotations

import math

import pytest
import torch

from mdr.losses.sampling import distance_weighted_negatives, draw


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
    idx, _ = distance_weighted_negatives(x, torch.tensor(labels), anchors, generator=g)
    return torch.bincount(idx, minlength=len(labels)).double() / draws


def test_never_returns_same_class():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(24, 16, generator=g)
        y = torch.randint(0, 4, (24,), generator=g)
        anchors = torch.arange(24).repeat(20)
        neg, _ = distance_weighted_negatives(x, y, anchors, generator=g)
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
    # sampling error: each frequency's standard error is <= sqrt(0.25 / 40000) = 0.0025, and 0.015 is 6 of them;
    # the float32 probabilities (~1e-6 off) and the seeded uniforms (the same on every CPU) add nothing visible
    assert (got - want).abs().max() < 0.015


def test_uniform_when_all_weights_vanish():
    # all negatives at distance >= 1.4 from the anchor: weights 0 -> uniform over negatives
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.3, 0.0], [-0.3, -1.0, -1.0]])
    labels = [0, 0, 1, 2, 3]
    got = frequencies(x, labels, anchor=0, draws=30000)
    assert got[0] == 0 and got[1] == 0
    assert (got[2:] - 1 / 3).abs().max() < 0.015  # standard error sqrt((2/9) / 30000) = 0.0027: over 5 of them


def test_draw_follows_each_rows_probabilities():
    """Inverse-CDF draws against the probabilities they come from: 200,000 per row, so each frequency's standard
    error is at most sqrt(0.25 / 200000) = 0.0011, and 0.006 is over 5 of them."""
    p = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0],
                      [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    rows = p.repeat_interleave(200_000, dim=0)
    got = draw(rows, torch.Generator().manual_seed(3)).view(3, -1)
    freq = torch.stack([torch.bincount(r, minlength=6).double() / r.numel() for r in got])
    assert (freq[p == 0] == 0).all()
    assert (freq - p.double()).abs().max() < 0.006


@pytest.mark.parametrize("u,want", [(0.0, [1, 0]), (1.0, [3, 1])])
def test_draw_never_returns_a_zero_probability_index_at_either_end_of_the_cdf(monkeypatch, u, want):
    """u = 0 picks the first positive index; u * total rounding up to the total (u = 1 here) the last."""
    p = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, u, dtype=kw.get("dtype")))
    assert draw(p).tolist() == want


def test_single_class_batch_raises():
    with pytest.raises(ValueError):
        distance_weighted_negatives(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4))


# --- The authors' convention at realistic widths (issue: fidelity of the sampler) ----------------------
# Every embedding has 16 entries of +-1/4 (unit norm exactly) and zeros elsewhere, so every dot product
# is a multiple of 1/16 and the float32 distances are exact up to the sqrt's rounding: the only float32
# error left is in the log-weights themselves (|log w| <= ~400, a few ulps there is <= 2.5e-4), hence the
# tolerance below, relative 1e-3 on each probability: a bound, not a reading.

def sparse_batch(dim: int, classes: int, per_class: int = 4, shared: int = 3, own: int = 5):
    """Distances by construction: same class 1.0, neighbouring classes (on a ring) 1.17, others 1.27.

    Each row: `shared` positions common to all (+1/4), its class's window of `own` positions on a ring
    (step 3, so neighbours share 2), and 8 positions of a Hadamard row (+-1/4, orthogonal within a
    block of 8 rows). Rows 0 and 1 are identical: a near-duplicate pair, whose distance is clamped
    to 0.5; at 512-d their rows' negative weights all underflow in float32 and the draw falls back."""
    hadamard = torch.ones(1, 1)
    while len(hadamard) < 8:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    n = classes * per_class
    ring = 3 * classes
    assert shared + ring + 8 * ((n + 7) // 8) <= dim
    x = torch.zeros(n, dim)
    labels = torch.arange(classes).repeat_interleave(per_class)
    for i in range(n):
        k = int(labels[i])
        x[i, :shared] = 0.25
        x[i, [shared + (3 * k + j) % ring for j in range(own)]] = 0.25
        block = shared + ring + 8 * (i // 8)
        x[i, block:block + 8] = 0.25 * hadamard[i % 8]
    x[1] = x[0]
    return x, labels


def authors_probabilities(x: torch.Tensor, labels: torch.Tensor, diagonal: float, cutoff=0.5, nonzero=1.4):
    """The authors' formula in float64, then exp's result as float32 holds it (what underflows, as in their
    float32 code); `diagonal` 1.0 is their sqrt(pdist^2 + I), 0.0 the former convention of this project."""
    e = x.double() / x.double().norm(dim=1, keepdim=True)
    n, dim = e.shape
    sq = (e.pow(2).sum(1)[:, None] + e.pow(2).sum(1)[None, :] - 2 * e @ e.T).clamp_min(1e-12)
    sq.fill_diagonal_(diagonal)
    dist = sq.sqrt().clamp_min(cutoff)
    log_w = (2.0 - dim) * dist.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * dist * dist).log()
    gap = log_w - log_w.max(dim=1, keepdim=True).values
    w = gap.exp().float().double()
    negative = (labels[:, None] != labels[None, :])
    w = w * negative * (dist < nonzero)
    fell_back = w.sum(dim=1) == 0
    w[fell_back] = negative[fell_back].double()
    return w / w.sum(dim=1, keepdim=True), fell_back, gap[negative & (dist < nonzero)]


@pytest.mark.parametrize("dim", [512, 64])
def test_probabilities_are_the_authors_float32_included(dim):
    from mdr.losses.sampling import negative_weights

    x, labels = sparse_batch(dim, classes=32 if dim == 512 else 8)
    want, want_fallback, gaps = authors_probabilities(x, labels, diagonal=1.0)
    # No negative's log-weight gap sits near float32's underflow (-87.3 normal, -103.3 subnormal), so which
    # weights vanish is decided by the formula, not by rounding.
    assert not bool(((gaps < -80) & (gaps > -110)).any())
    anchors = torch.arange(len(labels))
    got = negative_weights(x, labels, anchors)
    assert got.probabilities.dtype == torch.float32
    assert torch.equal(got.fell_back, want_fallback)
    err = (got.probabilities.double() - want).abs()
    assert bool((err <= 1e-3 * want + 1e-7).all()), float(err.max())
    # Summed here in float64, so that only the code's own rounding is left: its float32 row sum of n terms errs by
    # <= (n - 1) u in any order and each division by u: a row sums to 1 within n u plus second-order terms, inside
    # (n + 1) u (129 x 6e-8 = 7.7e-6 at 512-d).
    n = len(labels)
    assert bool((got.probabilities.double().sum(dim=1) - 1).abs().max() <= (n + 1) * 2.0**-24)
    if dim == 512:
        # At 512-d the near-duplicates' rows fall back, and no other row does ...
        assert want_fallback.tolist() == [True, True] + [False] * (len(labels) - 2)
        # ... while the former convention (diagonal 0, lifted to the 0.5 cutoff) falls back in every row.
        old, old_fallback, _ = authors_probabilities(x, labels, diagonal=0.0)
        assert bool(old_fallback.all())
        tv = 0.5 * (old - want).abs().sum(dim=1)
        assert float(tv[2:].min()) > 0.5  # the authors' draw is far from uniform: near-hard negatives
    else:
        assert not bool(want_fallback.any())  # at 64-d nothing underflows, near-duplicates included


def test_draw_reports_the_fallback_fraction():
    x, labels = sparse_batch(512, classes=32)
    _, fraction = distance_weighted_negatives(x, labels, torch.arange(len(labels)))
    assert fraction == pytest.approx(2 / len(labels), abs=0)


def test_training_records_the_fallback_fraction_per_epoch(tiny_data, tmp_path):
    from mdr.engine import train
    from tests.conftest import tiny_config

    config = tiny_config(tiny_data, **{"loss": {"name": "triplet"}, "train.epochs": 2, "optim.lr_milestones": [1]})
    history = train(config, tmp_path / "run", progress=False, echo=False).history
    fractions = [r["loss_uniform_fallback"] for r in history]
    assert len(fractions) == 2 and all(0.0 <= f <= 1.0 for f in fractions)
    # 8-d embeddings: nothing underflows, and the blobs' negatives are nearer than 1.4: no row falls back
    assert fractions == [0.0, 0.0]


@pytest.mark.parametrize("loss", ["triplet", "margin"])
def test_diverging_embeddings_end_in_the_non_finite_error(tiny_data, tmp_path, loss, monkeypatch):
    """NaN embeddings must stop the run with NonFiniteLossError (which tuning marks as a failed trial),
    not with torch.multinomial's 'probability tensor contains inf, nan' from inside the sampler."""
    from mdr.engine import NonFiniteLossError, train
    from mdr.models.embedding import EmbeddingModel
    from tests.conftest import tiny_config

    forward = EmbeddingModel.forward
    calls = {"n": 0}

    def diverging(self, x):  # a model whose output blows up on its third step, as a diverging lr makes it
        calls["n"] += 1
        out = forward(self, x)
        return out * float("nan") if self.training and calls["n"] >= 3 else out

    monkeypatch.setattr(EmbeddingModel, "forward", diverging)
    config = tiny_config(tiny_data, **{"loss": {"name": loss}, "regularizer": {"name": "none"}})
    with pytest.raises(NonFiniteLossError, match="embeddings became non-finite at epoch 1, iteration 3"):
        train(config, tmp_path / "run", progress=False, echo=False)
    assert '"failed"' in (tmp_path / "run" / "status.json").read_text()
