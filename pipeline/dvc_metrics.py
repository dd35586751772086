"""Summarise the tables as results/<profile>/metrics.json for `dvc metrics show/diff` and `dvc exp show`:
`python -m pipeline dvc-metrics --profile smoke table1 [table2a ...]`.

Keys are the tables' stable labels (table -> row and column labels -> metric: our mean in %), not run
ids, so experiments that change a parameter (and thus the run ids) stay comparable. One number per
cell, its table's headline metric (the first the table lists, e.g. Recall@1), keeps `dvc exp show`
readable; the full tables are the CSVs beside it. Reads only the CSVs and runs.csv (no torch import).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from pipeline.common import parser, stage


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else round(value, 4)


def table_summary(path: Path) -> dict[str, Any]:
    """table CSV -> {row label: {column label: {metric: mean}}} for each cell's first metric; the label
    columns are those before `trained_on`."""
    out: dict[str, Any] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        labels = fields[: fields.index("trained_on")] if "trained_on" in fields else []
        seen: set[tuple[str, ...]] = set()
        for row in reader:
            cell = tuple(row[c] for c in labels)
            if cell in seen:  # rows of a cell follow each other, its headline metric first
                continue
            seen.add(cell)
            mean = _number(row.get("mean", ""))
            if mean is None:
                continue
            node = out
            for column in labels:
                node = node.setdefault(row[column], {})
            node[row["metric"]] = mean
    return out


def summary(results: Path, tables: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    runs_csv = results / "runs.csv"
    if runs_csv.exists():
        with runs_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
        data["runs"] = {"total": len(rows), "finished": sum(1 for r in rows if r.get("best_epoch"))}
    for name in tables:
        path = results / f"{name}.csv"
        if path.exists():
            data[name] = table_summary(path)
    return data


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="the tables to summarise (results/<profile>/<table>.csv)")
    args = p.parse_args(argv)
    results = Path("results") / args.profile
    target = results / "metrics.json"
    text = json.dumps(summary(results, args.tables), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    tmp = target.with_name(f".{target.name}.tmp")  # atomic, without importing mdr (and torch)
    results.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, target)
    print(f"wrote {target}")
    return 0
