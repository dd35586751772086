"""REPORT.md's "Does the gain survive the fair protocol?": from the comparisons of the regularizers table's
Triplet rows (params/tables/regularizers.yaml; docs/protocols.md), each regularizer's gain over Triplet under the
published protocol (best test epoch) and under the fair one (epoch chosen on validation classes, the test
split evaluated once), and the share of the published gain that the fair protocol keeps.

Kept apart from mdr/report.py (which calls it), as a small function over a comparisons frame
(mdr.report.comparison_table), so that it can be tested on a frame made by hand.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mdr import stats

TABLE = "regularizers"
LOSS = "triplet"  # the base loss the table runs under both protocols
PUBLISHED, FAIR = "published", "fair"
NO_GAIN = "no published gain to keep"
HEADING = "## Does the gain survive the fair protocol?"


def survival(comparisons: pd.DataFrame) -> pd.DataFrame:
    """One row per (regularizer, dataset, metric): the gain over the baseline (first − second, points) with
    its CI under each protocol, and `share` = fair gain / published gain, where the published gain's CI
    lies above 0 (else NaN: no published gain to keep)."""
    columns = ["regularizer", "baseline", "dataset", "metric", "published", "published_low", "published_high",
               "fair", "fair_low", "fair_high", "n_published", "n_fair", "share"]
    if comparisons.empty:
        return pd.DataFrame(columns=columns)
    if "loss" in comparisons:
        comparisons = comparisons[comparisons["loss"] == LOSS]
    records = []
    by_protocol = {p: comparisons[comparisons["protocol"] == p] for p in (PUBLISHED, FAIR)}
    for r in by_protocol[PUBLISHED].itertuples():
        fair = by_protocol[FAIR]
        fair = fair[(fair["first"] == r.first) & (fair["second"] == r.second) & (fair["dataset"] == r.dataset)
                    & (fair["metric"] == r.metric)]
        f: Any = fair.iloc[0] if len(fair) else None
        kept = r.ci_low > 0 and f is not None and not math.isnan(f["diff"])  # NaN CI: the comparison is False
        records.append({
            "regularizer": r.first, "baseline": r.second, "dataset": r.dataset, "metric": r.metric,
            "published": r.diff, "published_low": r.ci_low, "published_high": r.ci_high,
            "fair": math.nan if f is None else f["diff"], "fair_low": math.nan if f is None else f["ci_low"],
            "fair_high": math.nan if f is None else f["ci_high"], "n_published": r.n, "n_fair": "" if f is None else f["n"],
            "share": f["diff"] / r.diff if kept else math.nan,
        })
    order = list(dict.fromkeys(r["regularizer"] for r in records))
    records.sort(key=lambda r: order.index(r["regularizer"]))  # per regularizer, then as compared (by dataset)
    return pd.DataFrame.from_records(records, columns=columns)


def _gain(diff: float, low: float, high: float) -> str:
    if math.isnan(diff):
        return "not run"
    ci = "" if math.isnan(low) else f" [{low:+.1f}, {high:+.1f}]"
    return f"{diff:+.1f}{ci}"


def survival_markdown(comparisons: pd.DataFrame) -> list[str]:
    """The section's lines; [] when the grid has no regularizers table (no comparisons given)."""
    if comparisons.empty:
        return []
    from mdr.report import _metric_label

    df = survival(comparisons)
    lines = [HEADING, "",
             "Each regularizer's gain over Triplet alone (the regularizers table's Triplet rows), in points, mean over seeds "
             f"with its {stats.CONFIDENCE:.0%} CI (the verdicts' test), under the **published** protocol (the best test "
             "epoch, as the authors report it) and under the **fair** one (the epoch chosen by Recall@1 on validation "
             "classes held out of the training classes; the test split evaluated once per run). *Kept*: fair gain / "
             "published gain, given where the published gain's CI lies above 0. The published runs use the authors' "
             "knobs; the fair runs use knobs tuned by Optuna on the same validation classes, every method with the "
             "same trial budget, the baseline's triplet margin included (params/tuned/; docs/protocols.md).", "",
             "| regularizer | dataset | metric | gain, published [CI] | gain, fair [CI] | kept |",
             "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        if not math.isnan(r.share):
            kept = f"{r.share:.0%}"
        elif math.isnan(r.published) or math.isnan(r.fair):
            kept = "—"
        else:
            kept = NO_GAIN
        lines.append(f"| {r.regularizer} | {r.dataset} | {_metric_label(r.metric)} "
                     f"| {_gain(r.published, r.published_low, r.published_high)} "
                     f"| {_gain(r.fair, r.fair_low, r.fair_high)} | {kept} |")
    return lines + [""]
