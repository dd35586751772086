"""mdr/stats.py: the differences, intervals and p-values against hand-computed values and scipy, the choice
of test, and the three verdicts."""
from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from mdr import stats

# Every number here is float64 arithmetic of a few dozen operations (relative error ~1e-15) or a scipy
# special function (relative accuracy ~1e-14); 1e-9 bounds both with room, and is far below any
# difference a wrong formula (e.g. a one-sided p, n instead of n-1) would make.
REL = 1e-9


def test_paired_difference_matches_a_hand_computed_case():
    # per-seed differences 2, 3, 4: mean 3, sd 1, standard error 1/sqrt(3), t = 3 sqrt(3) on 2 df.
    d = stats.difference({0: 3.0, 1: 5.0, 2: 7.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert d.test == stats.PAIRED and d.n == "3"
    assert (d.mean_first, d.mean_second, d.diff) == (5.0, 2.0, 3.0)
    # Student's t with 2 df in closed form: P(|T| > t) = 1 - t / sqrt(2 + t^2), and the 97.5% quantile
    # q = (2p - 1) sqrt(2 / (4 p (1 - p))) at p = 0.975.
    t = 3 * math.sqrt(3)
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=REL)  # 0.0351
    q = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # 4.3027
    assert d.low == pytest.approx(3 - q / math.sqrt(3), rel=REL)  # 0.516
    assert d.high == pytest.approx(3 + q / math.sqrt(3), rel=REL)  # 5.484
    assert stats.verdict(d, +1) == stats.REPRODUCED  # p = 0.035 < 0.05


def test_welch_difference_matches_the_welch_satterthwaite_formulas():
    # variances 1 and 4, n = 3 each: se^2 = 1/3 + 4/3, df = se^4 / ((1/3)^2/2 + (4/3)^2/2) = 50/17.
    d = stats.difference({0: 1.0, 1: 2.0, 2: 3.0}, {3: 4.0, 4: 6.0, 5: 8.0})
    assert d.test == stats.WELCH and d.n == "3+3"
    se, df = math.sqrt(5 / 3), 50 / 17
    assert d.diff == -4.0
    assert d.p == pytest.approx(2 * scipy_stats.t.sf(4 / se, df), rel=REL)
    q = scipy_stats.t.ppf(0.975, df)
    assert (d.low, d.high) == (pytest.approx(-4 - q * se, rel=REL), pytest.approx(-4 + q * se, rel=REL))


@pytest.mark.parametrize("first,second", [
    ({0: 61.2, 1: 58.3, 2: 64.0, 3: 59.9, 4: 62.4}, {0: 57.1, 1: 58.9, 2: 60.2, 3: 55.0, 4: 59.3}),
    ({0: 10.0, 1: 12.5, 2: 11.0}, {0: 10.4, 1: 12.0, 2: 11.8}),
])
def test_paired_matches_scipy_ttest_rel(first, second):
    d = stats.difference(first, second)
    ref = scipy_stats.ttest_rel(list(first.values()), list(second.values()))
    ci = ref.confidence_interval(0.95)
    assert d.test == stats.PAIRED
    assert (d.p, d.low, d.high) == (pytest.approx(ref.pvalue, rel=REL), pytest.approx(ci.low, rel=REL),
                                    pytest.approx(ci.high, rel=REL))


def test_seeds_are_paired_by_seed_not_by_order():
    # the same values listed in another order give the same paired result
    first, second = {0: 3.0, 1: 5.0, 2: 7.0}, {0: 1.0, 1: 2.0, 2: 3.0}
    shuffled = {2: 3.0, 0: 1.0, 1: 2.0}
    assert stats.difference(first, shuffled) == stats.difference(first, second)


def test_pairing_uses_the_shared_seeds_and_removes_the_seed_effect():
    # The seed moves both methods together (10, 20, 30); the second is always ~1 lower. Paired: significant.
    # As independent samples (no shared seeds) the seed spread swamps the difference: not significant.
    first = {0: 10.0, 1: 20.0, 2: 30.0}
    second = {0: 9.0, 1: 19.1, 2: 28.9}
    paired = stats.difference(first, second)
    welch = stats.difference(first, {s + 10: v for s, v in second.items()})
    assert (paired.test, welch.test) == (stats.PAIRED, stats.WELCH)
    assert paired.diff == pytest.approx(welch.diff, rel=REL) == pytest.approx(1.0, rel=REL)
    assert paired.p < 0.05 < welch.p
    assert (stats.verdict(paired, +1), stats.verdict(welch, +1)) == (stats.REPRODUCED, stats.NOT_RESOLVED)


def test_a_seed_only_one_method_has_is_left_out_of_the_pairs():
    d = stats.difference({0: 3.0, 1: 5.0, 2: 7.0, 3: 100.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert d.test == stats.PAIRED and d.n == "3"
    assert d == stats.difference({0: 3.0, 1: 5.0, 2: 7.0}, {0: 1.0, 1: 2.0, 2: 3.0})


def test_one_shared_seed_falls_back_to_welch_on_all_seeds():
    d = stats.difference({0: 1.0, 1: 2.0, 2: 3.0}, {2: 4.0, 3: 6.0, 4: 8.0})
    assert d.test == stats.WELCH and d.n == "3+3"


@pytest.mark.parametrize("first,second", [({0: 5.0}, {0: 4.0}), ({0: 5.0, 1: 6.0}, {2: 4.0}), ({}, {0: 1.0, 1: 2.0})])
def test_too_few_seeds_cannot_be_tested(first, second):
    d = stats.difference(first, second)
    assert d.test == stats.UNTESTED and math.isnan(d.p)
    assert stats.verdict(d, +1) == stats.verdict(d, -1) == stats.NOT_RESOLVED


@pytest.mark.parametrize("shift,sign,expected", [
    (+1.0, +1, stats.REPRODUCED),     # the published direction, significant
    (-1.0, +1, stats.CONTRADICTED),   # the opposite direction, significant
    (-1.0, -1, stats.REPRODUCED),     # the paper says first < second, and so do we
    (+1.0, -1, stats.CONTRADICTED),
])
def test_significant_differences_reproduce_or_contradict_by_sign(shift, sign, expected):
    second = {0: 50.0, 1: 55.0, 2: 60.0, 3: 52.0, 4: 58.0}
    noise = [0.1, -0.1, 0.05, 0.0, -0.05]
    first = {s: v + shift + e for (s, v), e in zip(second.items(), noise)}
    d = stats.difference(first, second)
    assert d.p < 0.001 and (d.low > 0 if shift > 0 else d.high < 0)
    assert stats.verdict(d, sign) == expected


def test_a_difference_within_the_noise_is_not_resolved():
    d = stats.difference({0: 50.0, 1: 56.0, 2: 59.0}, {0: 51.0, 1: 55.0, 2: 60.0})
    assert d.p > 0.05 and d.low < 0 < d.high
    assert stats.verdict(d, +1) == stats.verdict(d, -1) == stats.NOT_RESOLVED


def test_identical_runs_are_not_resolved():
    same = {0: 50.0, 1: 56.0, 2: 59.0}
    d = stats.difference(same, dict(same))
    assert d.diff == 0.0 and math.isnan(d.p)
    assert stats.verdict(d, +1) == stats.NOT_RESOLVED


def test_the_threshold_is_strict_at_alpha():
    d = stats.Difference(stats.PAIRED, 3, 3, 2.0, 1.0, 1.0, 0.0, 2.0, 0.05)
    assert stats.verdict(d, +1) == stats.NOT_RESOLVED
    assert stats.verdict(d, +1, alpha=0.051) == stats.REPRODUCED


def test_a_published_sign_must_be_a_direction():
    d = stats.difference({0: 3.0, 1: 5.0, 2: 7.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    with pytest.raises(ValueError, match="published_sign must be"):
        stats.verdict(d, 0)
