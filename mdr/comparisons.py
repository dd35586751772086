"""The published comparisons a table implies, declared as data in params/tables/<table>.yaml:

    comparisons:
      - {axis: method, pairs: [[Triplet+MDR, Triplet+L2Norm], [Triplet+L2Norm, Triplet]]}

Each pair compares two values of one axis with every other axis held equal, so a pair expands to one
comparison per value of the other axes (e.g. per dataset column) and per metric. Its direction is the
sign of the published difference where paper_results.csv has both numbers, else the declared one (first
better than second). mdr/stats.py tests each over seeds; mdr/report.py writes the verdicts.

Imported by mdr/params_schema.py (the table schema), so it imports neither the grid nor scipy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from mdr.grid import Cell, Table
    from mdr.params_schema import TableDef

RECALL = re.compile(r"recall_at_\d+$")


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    axis: str = Field(description="the axis whose values are compared; every other axis is held equal")
    pairs: list[tuple[str, str]] = Field(min_length=1, description="[first, second] labels of the axis; "
                                         "the claim is first > second unless the published numbers say otherwise")
    metrics: list[str] | None = Field(None, description="metrics to compare; default: the table's first")


def default_metrics(table: "TableDef") -> list[str]:
    return ["recall_at_1"] if table.metrics == "dataset_ks" else [table.metrics[0]]


def check(table: "TableDef") -> None:
    """Raise ValueError naming the comparison and the allowed values (the grid turns it into a ConfigError)."""
    for i, comparison in enumerate(table.comparisons):
        where = f"comparisons[{i}]"
        if comparison.axis not in table.axes:
            raise ValueError(f"{where}.axis: {comparison.axis!r} is not an axis of the table; allowed: {', '.join(table.axes)}")
        labels = [label for label, _, _ in table.axis(comparison.axis).bundles()]
        for j, pair in enumerate(comparison.pairs):
            for label in pair:
                if label not in labels:
                    raise ValueError(f"{where}.pairs[{j}]: {label!r} is not a value of axis {comparison.axis}; "
                                     f"allowed: {', '.join(labels)}")
            if pair[0] == pair[1]:
                raise ValueError(f"{where}.pairs[{j}]: compares {pair[0]!r} with itself; name two different values")
        for metric in comparison.metrics or []:
            if metric == "cost_ratio":
                raise ValueError(f"{where}.metrics: cost_ratio is a ratio of cell means, not a value per seed; "
                                 "compare seconds_per_iteration instead")
            known = RECALL.match(metric) if table.metrics == "dataset_ks" else metric in table.metrics
            if not known:
                allowed = "recall_at_<K> of the dataset's K values" if table.metrics == "dataset_ks" else ", ".join(table.metrics)
                raise ValueError(f"{where}.metrics: {metric!r} is not a metric of the table; allowed: {allowed}")


@dataclass
class Pair:
    """One comparison: two cells that differ only in `axis`, on one metric."""
    axis: str
    first: "Cell"
    second: "Cell"
    metric: str
    held: dict[str, str]  # the other axes' labels, e.g. {"dataset": "cub200"}

    @property
    def where(self) -> str:
        """The held axes, e.g. "cub200" or "dimension 64, cub200" (a dataset needs no axis name)."""
        return ", ".join(value if axis == "dataset" else f"{axis} {value}" for axis, value in self.held.items())


def expand(table: "Table") -> list[Pair]:
    """Every declared comparison of the table: per declaration, per value of the other axes, per pair and metric."""
    definition = table.definition
    axes = definition.rows + definition.columns
    pairs: list[Pair] = []
    for comparison in definition.comparisons:
        held_axes = [a for a in axes if a != comparison.axis]
        groups: dict[tuple[Any, ...], dict[str, "Cell"]] = {}
        for cell in table.cells:
            key = tuple(cell.labels[a] for a in held_axes)
            groups.setdefault(key, {})[cell.labels[comparison.axis]] = cell
        for key, by_label in groups.items():
            for first, second in comparison.pairs:
                if first not in by_label or second not in by_label:  # a cell left out (exclude) or awaiting tuning
                    continue
                for metric in comparison.metrics or default_metrics(definition):
                    pairs.append(Pair(comparison.axis, by_label[first], by_label[second], metric,
                                      dict(zip(held_axes, key))))
    return pairs
