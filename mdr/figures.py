"""Figure renderers, by name (a table definition's `figure:`): bars (Figure 4a), curves (Figure 4b),
tsne (Figure 3). Each reads the aggregated table and the run folders and writes one PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mdr import layout  # noqa: E402
from mdr.checkpoint import read_history  # noqa: E402
from mdr.describe import runs_in_words  # noqa: E402
from mdr.grid import Grid  # noqa: E402

FIGURES: dict[str, Callable[[Grid, str, pd.DataFrame, Path, Path | None], dict[str, float]]] = {}


def figure(name: str):
    def register(fn):
        FIGURES[name] = fn
        return fn

    return register


def _run_folder(grid: Grid, run_id: str, runs_root: Path | None) -> Path:
    return (runs_root / grid.profile.name / run_id) if runs_root else layout.run_dir(grid.profile.name, run_id)


def _title(grid: Grid, name: str) -> str:
    """The paper's figure title, then what ran here (a profile's stand-ins named, not the paper's)."""
    return f"{grid.tables[name].definition.title}\nours ({grid.profile.name}): {runs_in_words(grid, name)}"


@figure("bars")
def bars(grid: Grid, name: str, df: pd.DataFrame, out: Path, runs_root: Path | None = None) -> dict[str, float]:
    """Grouped bars per dataset: ours (mean, error bar = std over seeds) on the top row, on an axis fitted to our
    numbers; the published values on the row below, on their own axis (one axis for both squashed ours)."""
    definition = grid.tables[name].definition
    method_axis, x_axis = definition.rows
    datasets = list(dict.fromkeys(df["dataset"]))
    has_paper = bool(df["published"].notna().any())
    nrows = 2 if has_paper else 1
    fig, axes = plt.subplots(nrows, len(datasets), figsize=(5.5 * len(datasets), 3.4 * nrows + 0.6), squeeze=False)
    methods = list(dict.fromkeys(df[method_axis]))
    xs = list(dict.fromkeys(df[x_axis]))
    width = 0.8 / len(methods)
    n_seeds = int(df["n"].max()) if len(df) else 0
    for col, dataset in enumerate(datasets):
        part = df[df["dataset"] == dataset]
        ours, paper = axes[0][col], axes[1][col] if has_paper else None
        low, high = np.inf, -np.inf
        for i, method in enumerate(methods):
            rows = part[part[method_axis] == method].set_index(x_axis).reindex(xs)
            pos = np.arange(len(xs)) + (i - (len(methods) - 1) / 2) * width
            mean, std = rows["mean"].astype(float), rows["std"].astype(float).fillna(0.0)
            ours.bar(pos, mean, width, yerr=std, label=method, color=f"C{i}", alpha=0.85, capsize=2)
            if mean.notna().any():
                low, high = min(low, float((mean - std).min())), max(high, float((mean + std).max()))
            if paper is not None and rows["published"].notna().any():
                paper.bar(pos, rows["published"].astype(float), width, label=method, color=f"C{i}", alpha=0.45,
                          edgecolor=f"C{i}")
        if np.isfinite(low):  # fit the axis to our numbers, so differences of a point are visible
            margin = max(1.0, 0.15 * (high - low))
            ours.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
        trained = part["trained_on"].iloc[0]
        ours.set_title(f"ours on {trained}" + ("" if trained == dataset else f" (for {dataset})"), fontsize=10)
        ours.set_ylabel(f"Recall@1 (%), mean ± std\nover {n_seeds} seeds")
        if paper is not None:
            paper.set_title(f"paper, {dataset} (published)", fontsize=10)
            paper.set_ylabel("Recall@1 (%)")
        for ax in axes[:, col]:
            ax.set_xticks(np.arange(len(xs)), xs)
            ax.set_xlabel(x_axis)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=len(methods), loc="lower left")
    fig.suptitle(_title(grid, name), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {}


@figure("curves")
def curves(grid: Grid, name: str, df: pd.DataFrame, out: Path, runs_root: Path | None = None) -> dict[str, float]:
    """Test (solid) and train (dashed) Recall@1 against iteration, one colour per cell: the mean over its seeds,
    with a band from the lowest to the highest seed."""
    table = grid.tables[name]
    published = _published_curve_points(grid, name)
    if published:
        fig, (ax, paper_ax) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [2.3, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7.0, 4.6))
    n_seeds = 0
    stats: dict[str, float] = {}
    gaps: dict[str, float] = {}  # train - test at the last epoch: the paper's claim is about this gap
    for i, cell in enumerate(table.cells):
        histories = [[r for r in read_history(_run_folder(grid, rid, runs_root)) if "recall_at_1" in r]
                     for rid in cell.run_ids]
        histories = [h for h in histories if h]
        if not histories:
            continue
        length = min(len(h) for h in histories)  # an unfinished seed draws as far as all have come
        n_seeds = max(n_seeds, len(histories))
        its = [r["iteration"] for r in histories[0][:length]]
        label = " / ".join(cell.labels[a] for a in table.definition.rows)
        last: dict[str, float] = {}
        for key, style, what in (("recall_at_1", "-", "test"), ("train_recall_at_1", "--", "train")):
            if key not in histories[0][0]:
                continue
            values = 100 * np.array([[r[key] for r in h[:length]] for h in histories])
            mean = values.mean(axis=0)
            ax.plot(its, mean, style, color=f"C{i}", label=f"{label} {what}")
            last[what] = stats[f"{label}: {what} R@1 last (mean)"] = float(mean[-1])
            if what == "test":
                stats[f"{label}: test R@1 peak (mean)"] = float(mean.max())
            if len(values) > 1:
                ax.fill_between(its, values.min(axis=0), values.max(axis=0), color=f"C{i}", alpha=0.15, lw=0)
        if len(last) == 2:
            gaps[f"{label}: train - test at the last epoch"] = last["train"] - last["test"]
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"Recall@1 (%): mean over {n_seeds} seeds,\nband = lowest to highest seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(_title(grid, name), fontsize=8)
    if published:
        _draw_published_points(paper_ax, published, [c.facts["method"] for c in table.cells])
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {**stats, **gaps}


# The points the paper's learning curves give (mdr/reference/paper_results.csv, read off its figure): the
# curves themselves are not published, so they are drawn as these points, beside ours and not on our axis.
CURVE_POINTS = (("recall@1 peak", "test peak"), ("recall@1 final", "test final"), ("train recall@1 final", "train final"))


def _published_curve_points(grid: Grid, name: str) -> dict[str, dict[str, float]]:
    """{method: {point: value}} from the table's `published` rows of paper_results.csv; {} when it has none."""
    from mdr.report import published_results

    key = grid.tables[name].definition.published
    if key is None:
        return {}
    pub = published_results()
    rows = pub[(pub["table"] == key) & pub["metric"].isin([m for m, _ in CURVE_POINTS])]
    points: dict[str, dict[str, float]] = {}
    for row in rows.itertuples():
        points.setdefault(row.method, {})[row.metric] = float(row.value)
    return points


def _draw_published_points(ax, published: dict[str, dict[str, float]], methods: list[str]) -> None:
    xs = np.arange(len(CURVE_POINTS))
    for i, method in enumerate(methods):
        values = published.get(method, {})
        ys = [values.get(metric, np.nan) for metric, _ in CURVE_POINTS]
        ax.plot(xs[:2], ys[:2], "-o", color=f"C{i}", label=method)  # test: peak -> final
        ax.plot(xs[2:], ys[2:], "s", color=f"C{i}", mfc="none")  # train: final
    ax.set_xticks(xs, [label for _, label in CURVE_POINTS])
    ax.set_xlim(-0.5, len(CURVE_POINTS) - 0.5)
    ax.set_ylabel("Recall@1 (%)")
    ax.set_title("paper (read off its figure, about ±1):\ntest peak -> test final, and train final", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def nearest_centre_cv(centres: np.ndarray) -> float:
    """Coefficient of variation of each centre's distance to its nearest other centre (lower = more even)."""
    d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    return float(nearest.std() / nearest.mean())


@figure("tsne")
def tsne(grid: Grid, name: str, df: pd.DataFrame, out: Path, runs_root: Path | None = None) -> dict[str, float]:
    from sklearn.manifold import TSNE

    table = grid.tables[name]
    cells = table.cells
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4.2), squeeze=False)
    stats = {}
    for ax, cell in zip(axes[0], cells):
        label = " / ".join(cell.labels[a] for a in table.definition.rows)
        path = _run_folder(grid, cell.run_ids[0], runs_root) / "class_centers.npy"
        if not path.exists():
            ax.set_title(f"{label}: not run")
            continue
        centres = np.load(path)
        cv = stats[f"{label}: nearest-centre CV"] = nearest_centre_cv(centres)
        xy = TSNE(n_components=2, perplexity=min(30, len(centres) - 1), init="pca", random_state=0).fit_transform(centres)
        points = ax.scatter(xy[:, 0], xy[:, 1], s=10, c=np.arange(len(xy)), cmap="viridis")
        ax.set_title(f"{label}\nnearest-centre CV {cv:.3f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(points, ax=ax, fraction=0.046, pad=0.02).set_label("test class (index)", fontsize=8)
    fig.suptitle(_title(grid, name), fontsize=9)
    fig.text(0.5, 0.01, "one point per test class: the mean embedding of its images. Nearest-centre CV = std / mean "
             "of each centre's distance to its nearest other centre (lower: classes more evenly spread)",
             ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return stats
