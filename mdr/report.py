"""Tables and the report from run folders: ours (mean ± std over seeds) beside the published numbers.

Aggregation reads only files (each run's metrics.json), so tables can be rebuilt without the
tracking store (DESIGN.md principle 5). A cell without finished runs is shown as "not run".
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mdr import layout, stats
from mdr.comparisons import expand
from mdr.grid import Cell, Grid, Table

NOT_RUN = "not run"


def published_results() -> pd.DataFrame:
    """The paper's numbers (mdr/reference/paper_results.csv, shipped inside the package)."""
    with resources.files("mdr.reference").joinpath("paper_results.csv").open() as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def dataset_ks(dataset: str) -> list[int]:
    from mdr.data.registry import get_dataset

    return list(get_dataset(dataset).ks)


def table_metrics(table: Table, cell: Cell) -> list[str]:
    metrics = table.definition.metrics
    if metrics == "dataset_ks":
        return [f"recall_at_{k}" for k in dataset_ks(cell.facts["dataset"])]
    return list(metrics)


def load_metrics(profile: str, run_id: str, runs_root: Path | None = None) -> dict[str, Any] | None:
    path = (runs_root / profile / run_id / "metrics.json") if runs_root else layout.metrics_file(profile, run_id)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _published_value(pub: pd.DataFrame, key: str | None, cell: Cell, metric: str) -> tuple[float | None, float | None]:
    if key is None:
        return None, None
    name = metric.replace("recall_at_", "recall@")
    rows = pub[(pub["table"] == key) & (pub["metric"] == name)]
    for column, value in cell.paper.items():
        if column in rows.columns:
            rows = rows[rows[column] == str(value)]
    if rows.empty:
        return None, None
    row = rows.iloc[0]
    std = float(row["std"]) if row["std"] != "" else None
    return float(row["value"]), std


def aggregate_table(grid: Grid, name: str, runs_root: Path | None = None) -> pd.DataFrame:
    """One row per (cell, metric): our mean/std/n over seeds at the table's epoch, and the published value."""
    table = grid.tables[name]
    definition = table.definition
    pub = published_results()
    epoch = definition.report_epoch
    records = []
    for cell in table.cells:
        results = [load_metrics(grid.profile.name, rid, runs_root) for rid in cell.run_ids]
        done = [r for r in results if r is not None]
        trained_on = grid.runs[cell.run_ids[0]].config.data.dataset
        for metric in table_metrics(table, cell):
            scale = 1.0 if metric in RAW_METRICS else 100.0
            values = [scale * r[epoch][metric] for r in done if metric in r[epoch]]
            published, published_std = _published_value(pub, definition.published, cell, metric)
            mean = float(np.mean(values)) if values else None
            std = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
            records.append({
                **cell.labels,
                "dataset": cell.facts["dataset"], "trained_on": trained_on, "metric": metric,
                "mean": mean, "std": std, "n": len(values), "seeds": len(cell.run_ids),
                "published": published, "published_std": published_std,
                "diff": (mean - published) if (mean is not None and published is not None) else None,
                "status": "done" if len(values) == len(cell.run_ids) else (f"{len(values)}/{len(cell.run_ids)} seeds" if values else NOT_RUN),
                "runs": " ".join(cell.run_ids),
            })
    df = pd.DataFrame.from_records(records)
    if "cost_ratio" in (definition.metrics if isinstance(definition.metrics, list) else []):
        df = _cost_ratios(df, definition.rows + definition.columns)
    return df


# Metrics reported as they are (not as percentages).
RAW_METRICS = {"seconds_per_iteration", "cost_ratio"}
PLAIN_REGULARIZER = "none"


def _cost_ratios(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """cost_ratio = seconds per iteration / that of the same cell with regularizer `none` (the plain loss)."""
    if "regularizer" not in axes:
        raise ValueError("metric cost_ratio needs a `regularizer` axis with the value `none`")
    others = [a for a in axes if a != "regularizer"]
    time = df[df["metric"] == "seconds_per_iteration"]
    plain = time[time["regularizer"] == PLAIN_REGULARIZER].set_index(others)["mean"]
    rows = df["metric"] == "cost_ratio"
    for i in df.index[rows]:
        key = tuple(df.loc[i, others]) if len(others) > 1 else df.loc[i, others[0]]
        mine = time[(time[others] == df.loc[i, others]).all(axis=1) & (time["regularizer"] == df.loc[i, "regularizer"])]["mean"]
        base = plain.get(key)
        if not mine.empty and base is not None and pd.notna(base) and pd.notna(mine.iloc[0]):
            df.loc[i, ["mean", "std", "n", "status"]] = [mine.iloc[0] / base, np.nan, 1, "done"]
    return df


def comparison_rows(grid: Grid, name: str) -> pd.DataFrame:
    """Published rows of methods the paper only cites (HTL, MS, ...), shown as published."""
    key = grid.tables[name].definition.published
    pub = published_results()
    if key is None:
        return pub.iloc[0:0]
    return pub[(pub["table"] == key) & (pub["note"] == "published comparison row")]


def _fmt(mean: Any, std: Any, n: int, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return NOT_RUN
    s = f"{mean:.{digits}f}"
    if n > 1 and std is not None and not np.isnan(std):
        s += f" ± {std:.{digits}f}"
    return s


def _metric_label(metric: str) -> str:
    return {"seconds_per_iteration": "s/iter", "cost_ratio": "cost ×"}.get(
        metric, metric.replace("recall_at_", "R@").replace("map_at_r", "MAP@R").replace("nmi", "NMI"))


def table_markdown(grid: Grid, name: str, df: pd.DataFrame) -> str:
    definition = grid.tables[name].definition
    rows, columns = definition.rows, definition.columns
    profile = grid.profile.name
    from mdr.describe import runs_in_words

    lines = [f"## {definition.title}", "", f"What ran: {runs_in_words(grid, name)}.", ""]
    trained = sorted(set(df["trained_on"])) if not df.empty else []
    logical = sorted(set(df["dataset"])) if not df.empty else []
    if trained != logical:
        lines += [f"> Profile `{profile}`: ours are trained and tested on **{', '.join(trained)}**, standing in for "
                  f"{', '.join(logical)}; the published numbers are on the real datasets. Compare the ordering "
                  "of methods, not the values.", ""]
    lines += [f"Ours: mean ± std over seeds (n = {int(df['seeds'].max()) if not df.empty else 0}), "
              f"{definition.report_epoch} epoch, in %. Paper: published mean (± std where given).", ""]
    groups = df.groupby(columns, sort=False) if columns else [((), df)]
    for key, part in groups:
        if columns:
            key = key if isinstance(key, tuple) else (key,)
            lines.append("### " + ", ".join(f"{c} = {k}" for c, k in zip(columns, key)))
            lines.append("")
        metrics = list(dict.fromkeys(part["metric"]))
        # a metric the paper gives no number for in this block gets no paper and Δ columns
        published = {m: bool(part.loc[part["metric"] == m, "published"].notna().any()) for m in metrics}
        header = rows + [h for m in metrics
                         for h in ((f"{_metric_label(m)} ours", f"{_metric_label(m)} paper", "Δ") if published[m]
                                   else (f"{_metric_label(m)} ours",))]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row_key, row_part in part.groupby(rows, sort=False):
            row_key = row_key if isinstance(row_key, tuple) else (row_key,)
            cells = [str(k) for k in row_key]
            for m in metrics:
                r = row_part[row_part["metric"] == m].iloc[0]
                pub = "—" if pd.isna(r["published"]) else (f"{r['published']:.1f}" + (f" ± {r['published_std']:.1f}" if not pd.isna(r["published_std"]) else ""))
                diff = "—" if pd.isna(r["diff"]) else f"{r['diff']:+.1f}"
                cells += [_fmt(r["mean"], r["std"], int(r["n"]), 3 if m in RAW_METRICS else 1)]
                cells += [pub, diff] if published[m] else []
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    comparison = comparison_rows(grid, name)
    if not comparison.empty:
        lines += ["Published comparison rows (cited by the paper, not trained here):", ""]
        lines += [_published_rows_markdown(comparison), ""]
    if definition.note:
        lines += [f"Note: {definition.note.strip()}", ""]
    return "\n".join(lines)


def _published_rows_markdown(comparison: pd.DataFrame) -> str:
    """The cited methods' published numbers: one row per method, one column per (dataset, metric), "—" where
    the paper gives none."""
    wide = comparison.assign(metric=comparison["metric"].str.replace("recall@", "R@"))
    wide = wide.pivot_table(index="method", columns=["dataset", "metric"], values="value", aggfunc="first", sort=False)
    header = ["method"] + [f"{dataset} {metric}" for dataset, metric in wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, values in wide.iterrows():
        lines.append("| " + " | ".join([str(method)] + [_cited_value(v) for v in values]) + " |")
    return "\n".join(lines)


def _cited_value(value: Any) -> str:
    if value is None or pd.isna(value) or str(value).strip() == "":
        return "—"
    try:
        return f"{float(value):.1f}"
    except ValueError:  # a published cell that is not a number ("-" in the paper) is shown as printed
        return str(value)


def table_latex(grid: Grid, name: str, df: pd.DataFrame) -> str:
    """Booktabs LaTeX: rows x (column groups, metrics), cells "ours (paper)"."""
    definition = grid.tables[name].definition
    cell = df.apply(lambda r: _fmt(r["mean"], r["std"], int(r["n"])).replace("±", "$\\pm$")
                    + ("" if pd.isna(r["published"]) else f" ({r['published']:.1f})"), axis=1)
    wide = df.assign(cell=cell, metric=df["metric"].map(_metric_label)).pivot_table(
        index=definition.rows, columns=definition.columns + ["metric"], values="cell", aggfunc="first", sort=False)
    caption = f"{definition.title}. Ours: mean $\\pm$ std over seeds; published value in parentheses."
    return wide.to_latex(caption=caption, label=f"tab:{name}", escape=False, multicolumn_format="c")


def write_table(grid: Grid, name: str, runs_root: Path | None = None) -> dict[str, Path]:
    from mdr.io import atomic_write_text

    definition = grid.tables[name].definition
    df = aggregate_table(grid, name, runs_root)
    files = layout.table_files(grid.profile.name, name, definition.kind)
    markdown = table_markdown(grid, name, df)
    if definition.kind == "figure":
        from mdr.figures import FIGURES

        files["png"].parent.mkdir(parents=True, exist_ok=True)
        tmp = files["png"].with_name(f".{files['png'].name}.tmp.png")
        stats = FIGURES[definition.figure or "bars"](grid, name, df, tmp, runs_root)
        tmp.replace(files["png"])
        markdown += f"\n![{definition.title}]({files['png'].name})\n"
        if stats:
            markdown += "\n" + "\n".join(f"- {k}: {v:.4f}" for k, v in stats.items()) + "\n"
    else:
        atomic_write_text(files["tex"], table_latex(grid, name, df))
    atomic_write_text(files["csv"], df.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(files["md"], markdown + "\n")
    return files


def runs_summary(grid: Grid, runs_root: Path | None = None) -> pd.DataFrame:
    """Every run of the profile with its tags and best/final metrics: the tables' raw material. The method,
    dataset and backbone columns say what ran (mdr/describe.py, from the run's config), `stands_in_for` the
    paper datasets whose cells it fills; a table's `fixed: {method: ...}` never names a run's method here."""
    from mdr.describe import describe_grid

    described = describe_grid(grid)
    records = []
    for rid, spec in grid.runs.items():
        m = load_metrics(grid.profile.name, rid, runs_root)
        tags = described[rid][1]
        rec: dict[str, Any] = {"run": rid, "tables": ",".join(spec.tables), **spec.tags,
                               **{k: tags[k] for k in ("dataset", "stands_in_for", "method", "loss", "regularizer",
                                                       "normalization", "backbone", "embedding_dim")},
                               "seed": spec.config.seed}
        if m:
            rec["best_epoch"] = m["best_epoch"]
            rec.update({f"best_{k}": v for k, v in m["best"].items()})
            rec.update({f"final_{k}": v for k, v in m["final"].items()})
        records.append(rec)
    return pd.DataFrame.from_records(records)


# A pair whose published numbers are equal (read off a chart) makes no directional claim to test.
NO_CLAIM = "no claim (published tie)"


def comparison_table(grid: Grid, name: str, runs_root: Path | None = None) -> pd.DataFrame:
    """One row per declared comparison (mdr/comparisons.py) of the table: our difference over seeds with its
    95% CI, p-value and test (mdr/stats.py), the published difference, and the verdict."""
    table = grid.tables[name]
    definition = table.definition
    pub = published_results()
    metrics: dict[str, dict[str, Any] | None] = {}  # run id -> metrics.json, read once per run

    def per_seed(cell: Cell, metric: str) -> dict[int, float]:
        values = {}
        for rid in cell.run_ids:
            if rid not in metrics:
                metrics[rid] = load_metrics(grid.profile.name, rid, runs_root)
            result = metrics[rid]
            if result is not None and metric in result[definition.report_epoch]:
                scale = 1.0 if metric in RAW_METRICS else 100.0
                values[grid.runs[rid].config.seed] = scale * result[definition.report_epoch][metric]
        return values

    records = []
    for pair in expand(table):
        first_pub, _ = _published_value(pub, definition.published, pair.first, pair.metric)
        second_pub, _ = _published_value(pub, definition.published, pair.second, pair.metric)
        published = first_pub is not None and second_pub is not None
        sign = int(np.sign(first_pub - second_pub)) if published else 1  # unpublished: first > second, as declared
        d = stats.difference(per_seed(pair.first, pair.metric), per_seed(pair.second, pair.metric))
        records.append({
            "table": name, **pair.held, "where": pair.where, "axis": pair.axis,
            "first": pair.first.labels[pair.axis], "second": pair.second.labels[pair.axis], "metric": pair.metric,
            "claim": "published" if published else "declared",
            "published_first": first_pub, "published_second": second_pub, "published_sign": sign,
            "mean_first": d.mean_first, "mean_second": d.mean_second, "diff": d.diff,
            "ci_low": d.low, "ci_high": d.high, "p": d.p, "test": d.test, "n": d.n,
            "verdict": stats.verdict(d, sign) if sign else NO_CLAIM,
            "runs_first": " ".join(pair.first.run_ids), "runs_second": " ".join(pair.second.run_ids),
        })
    return pd.DataFrame.from_records(records)


def _signed(x: float) -> str:
    return "—" if pd.isna(x) else f"{x:+.1f}"


def _claim(r: Any) -> str:
    if r.claim == "declared":
        return "> (declared)"
    if not r.published_sign:
        return f"tie ({r.published_first:.1f} = {r.published_second:.1f})"
    return f"{r.published_first - r.published_second:+.1f} ({r.published_first:.1f} vs {r.published_second:.1f})"


def _p(p: float) -> str:
    return "—" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3g}")  # 3 digits: 0.0498 is not 0.05


def verdict_counts(df: pd.DataFrame) -> str:
    counts = df["verdict"].value_counts()
    text = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in stats.VERDICTS)
    return text + (f" ({int(counts[NO_CLAIM])} without a published direction)" if NO_CLAIM in counts else "")


def verdicts_markdown(df: pd.DataFrame) -> list[str]:
    """The table's comparisons as Markdown rows: published difference, ours with its CI, p, test, verdict."""
    header = f"| where | first − second | metric | paper | ours [{stats.CONFIDENCE:.0%} CI] | p | test (n) | verdict |"
    lines = [header, "|" + "---|" * 8]
    for r in df.itertuples():
        ours = f"{_signed(r.diff)} [{_signed(r.ci_low)}, {_signed(r.ci_high)}]"
        verdict = f"**{r.verdict}**" if r.verdict in (stats.REPRODUCED, stats.CONTRADICTED) else r.verdict
        if r.runs_first == r.runs_second:  # e.g. two presets that resolve to one config: nothing to compare
            verdict += " (the same runs)"
        lines.append(f"| {r.where} | {r.first} − {r.second} | {_metric_label(r.metric)} | {_claim(r)} | {ours} "
                     f"| {_p(r.p)} | {r.test} ({r.n}) | {verdict} |")
    return lines


VERDICTS_INTRO = (
    "Every published comparison a table implies (declared under `comparisons:` in params/tables/), as a "
    f"difference first − second in points of the metric, mean over seeds, with its {stats.CONFIDENCE:.0%} confidence interval "
    f"and two-sided p-value: a {stats.PAIRED} test on the per-seed differences when the two share seeds "
    f"(runs of one seed share initialisation and batch order), {stats.WELCH} test (unequal variances) otherwise; "
    f"n = pairs, or the two sizes. **reproduced**: the published sign, p < {stats.ALPHA}; **contradicted**: the opposite "
    f"sign, p < {stats.ALPHA}; not resolved: not significant at this n. The direction is the published difference, or "
    "first > second where the paper gives no number (marked declared). Each comparison is tested on its own "
    "(no multiple-comparison correction), so about one in twenty true nulls comes out significant by chance.")


def reading(grid: Grid, name: str, df: pd.DataFrame) -> list[str]:
    """Per column group, the ranking of rows by the first metric, ours beside the paper's (descriptive)."""
    definition = grid.tables[name].definition
    if df.empty:
        return []
    out = []
    first = df["metric"].iloc[0]
    part = df[df["metric"] == first]
    groups = part.groupby(definition.columns, sort=False) if definition.columns else [((), part)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(str(k) for k in key) or "all"
        label = g[definition.rows].astype(str).agg(" / ".join, axis=1)
        ours = g.assign(label=label).dropna(subset=["mean"]).sort_values("mean", ascending=False)
        if ours.empty:
            out.append(f"- {where}: no finished runs yet.")
            continue
        text = f"- {where}, {_metric_label(first)}: ours " + " > ".join(
            f"{r.label} ({r.mean:.1f})" for r in ours.itertuples())
        paper = g.assign(label=label).dropna(subset=["published"]).sort_values("published", ascending=False)
        if not paper.empty:  # the orderings side by side; whether a difference holds is the verdicts' job
            text += "; paper " + " > ".join(f"{r.label} ({r.published:.1f})" for r in paper.itertuples())
        out.append(text)
    return out


REPRODUCIBILITY = (
    "What to expect when you rerun it: on one machine a run is bit-for-bit the same (same thread count), "
    "resumed or not. On another machine float32 kernels differ (BLAS, oneDNN and faiss pick other "
    "instructions), training paths diverge after a few steps, and the numbers agree within the seeds' "
    "spread, not digit for digit: measured on two machines (the same commit, before the sampler fix), "
    "Table 1's Triplet R@1 was 16.1 ± 4.3 on one and 15.6 ± 3.9 on the other, and a closed-set reading "
    "0.4 points apart swapped two methods. Compare runs by the verdicts below, not by the last digit."
)


def write_report(grid: Grid, runs_root: Path | None = None) -> Path:
    from mdr.io import atomic_write_text

    profile = grid.profile
    summary = runs_summary(grid, runs_root)
    atomic_write_text(layout.results_dir(profile.name) / "runs.csv", summary.to_csv(index=False, float_format="%.5f"))
    finished = int(summary["best_epoch"].notna().sum()) if "best_epoch" in summary else 0
    lines = [
        f"# Reproduction report — profile `{profile.name}`", "",
        profile.description.strip(), "",
        f"Runs: {finished} of {len(grid.runs)} finished. Seeds per configuration: {len(profile.seeds)}. "
        "Every number below is regenerated by `snakemake --cores 8"
        + ("" if profile.name == "smoke" else f" --config profile={profile.name}") + "` from the run folders.", "",
        REPRODUCIBILITY, "",
    ]
    # the paper's own tables first (those with published numbers), then the benchmark's
    names = sorted(grid.tables, key=lambda n: grid.tables[n].definition.published is None)
    compared = [comparison_table(grid, name, runs_root) for name in names]
    verdicts = pd.concat([c for c in compared if not c.empty] or [pd.DataFrame(columns=["table", "verdict"])])
    atomic_write_text(layout.comparisons_file(profile.name), verdicts.to_csv(index=False, float_format="%.5f"))
    lines += ["## Verdicts", "", f"{len(verdicts)} comparisons: {verdict_counts(verdicts)}. "
              f"All of them, with the runs behind each: [{layout.comparisons_file(profile.name).name}]"
              f"({layout.comparisons_file(profile.name).name}).", "", VERDICTS_INTRO, ""]
    for name, df in zip(names, compared):
        if not df.empty:
            lines += [f"### {name}: {verdict_counts(df)}", ""] + verdicts_markdown(df) + [""]
    undeclared = [name for name, df in zip(names, compared) if df.empty]
    if undeclared:
        lines += [f"No comparisons declared by: {', '.join(undeclared)}.", ""]
    from mdr import report_protocols

    if report_protocols.TABLE in names:  # the fair protocol's section (docs/protocols.md)
        lines += report_protocols.survival_markdown(compared[names.index(report_protocols.TABLE)])
    lines += ["## Tables", ""]
    for name in grid.tables:
        df = aggregate_table(grid, name, runs_root)
        lines += [f"### Reading of {name}", ""] + reading(grid, name, df) + [""]
        files = layout.table_files(profile.name, name, grid.tables[name].definition.kind)
        lines += [f"Full table: [{files['md'].name}]({files['md'].name})."]
        if "png" in files:
            lines += ["", f"![{name}]({files['png'].name})"]
        lines += [""]
    from mdr.data.provenance import provenance_markdown
    from mdr.data.registry import prepared_dir

    lines += provenance_markdown(prepared_dir(r.config.data.root, r.config.data.dataset, r.config.data.image_size)
                                 for r in grid.runs.values())
    path = layout.report_file(profile.name)
    atomic_write_text(path, "\n".join(lines) + "\n")
    from mdr.report_html import write_page

    write_page(grid)  # index.html: this report, every table and figure and each run's config on one page
    return path
