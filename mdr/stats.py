"""Differences between two methods over seeds, with a 95% confidence interval, a p-value and a verdict.

The test (DESIGN.md principle 8): when the two methods share at least two seeds, a paired t test on the
per-seed differences (runs with the same seed share the initialisation and the batch order, so pairing
removes that common variance); seeds only one of them has are left out. Otherwise Welch's t test (no
equal-variance assumption) on all their seeds. Both are two-sided, so p < alpha exactly when the
confidence interval excludes 0. scipy computes both; nothing here re-derives the t distribution.

A verdict compares the sign of our difference with the published one: reproduced (same sign, p < alpha),
contradicted (opposite sign, p < alpha), or not resolved at this n (p >= alpha, or too few seeds to test).
Each comparison is tested on its own at alpha (no multiple-comparison correction): among many true
nulls about one in twenty comes out significant by chance.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
PAIRED = "paired t"
WELCH = "Welch t"
UNTESTED = "too few seeds"

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved"
VERDICTS = (REPRODUCED, CONTRADICTED, NOT_RESOLVED)


@dataclass(frozen=True)
class Difference:
    """first - second: means over the seeds used, the mean difference, its confidence interval and p."""
    test: str
    n_first: int
    n_second: int
    mean_first: float
    mean_second: float
    diff: float
    low: float
    high: float
    p: float

    @property
    def n(self) -> str:
        """The sample size as a reader needs it: pairs for the paired test, both sizes otherwise."""
        return str(self.n_first) if self.test == PAIRED else f"{self.n_first}+{self.n_second}"


def difference(first: Mapping[int, float], second: Mapping[int, float], confidence: float = CONFIDENCE) -> Difference:
    """Compare two methods' values keyed by seed (paired t on shared seeds if >= 2, else Welch's t)."""
    shared = sorted(set(first) & set(second))
    if len(shared) >= 2:
        a = np.array([first[s] for s in shared], dtype=float)
        b = np.array([second[s] for s in shared], dtype=float)
        test, result = PAIRED, stats.ttest_rel(a, b)
    else:
        a = np.array(list(first.values()), dtype=float)
        b = np.array(list(second.values()), dtype=float)
        if len(a) < 2 or len(b) < 2:
            nan = math.nan
            return Difference(UNTESTED, len(a), len(b), _mean(a), _mean(b), _mean(a) - _mean(b), nan, nan, nan)
        test, result = WELCH, stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    return Difference(test, len(a), len(b), float(a.mean()), float(b.mean()), float(a.mean() - b.mean()),
                      float(interval.low), float(interval.high), float(result.pvalue))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def verdict(d: Difference, published_sign: int, alpha: float = ALPHA) -> str:
    """published_sign: +1 if the paper has first > second, -1 if first < second."""
    if published_sign not in (1, -1):
        raise ValueError(f"published_sign must be +1 or -1, got {published_sign!r}")
    if math.isnan(d.p) or d.p >= alpha:  # nan: too few seeds, or no variation at all (e.g. the same runs)
        return NOT_RESOLVED
    return REPRODUCED if np.sign(d.diff) == published_sign else CONTRADICTED
