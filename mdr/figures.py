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
from mdr.grid import Grid  # noqa: E402

FIGURES: dict[str, Callable[[Grid, str, pd.DataFrame, Path, Path | None], dict[str, float]]] = {}


def figure(name: str):
    def register(fn):
        FIGURES[name] = fn
        return fn

    return register


def _run_folder(grid: Grid, run_id: str, runs_root: Path | None) -> Path:
    return (runs_root / grid.profile.name / run_id) if runs_root else layout.run_dir(grid.profile.name, run_id)


@figure("bars")
def bars(grid: Grid, name: str, df: pd.DataFrame, out: Path, runs_root: Path | None = None) -> dict[str, float]:
    """Grouped bars: ours (mean ± std) per method and x value; the published values as markers."""
    definition = grid.tables[name].definition
    method_axis, x_axis = definition.rows
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    methods = list(dict.fromkeys(df[method_axis]))
    xs = list(dict.fromkeys(df[x_axis]))
    width = 0.8 / len(methods)
    for ax, dataset in zip(axes[0], datasets):
        part = df[df["dataset"] == dataset]
        for i, method in enumerate(methods):
            rows = part[part[method_axis] == method].set_index(x_axis).reindex(xs)
            pos = np.arange(len(xs)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(pos, rows["mean"].astype(float), width, yerr=rows["std"].astype(float), label=f"{method} (ours)",
                   color=f"C{i}", alpha=0.85, capsize=2)
            if rows["published"].notna().any():
                ax.plot(pos, rows["published"].astype(float), "o", mfc="none", color=f"C{i}", ms=7,
                        label=f"{method} (paper)")
        ax.set_xticks(np.arange(len(xs)), xs)
        ax.set_xlabel(x_axis)
        ax.set_ylabel("Recall@1 (%)")
        trained = part["trained_on"].iloc[0]
        ax.set_title(dataset if trained == dataset else f"{dataset} (ours on {trained})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(definition.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {}


@figure("curves")
def curves(grid: Grid, name: str, df: pd.DataFrame, out: Path, runs_root: Path | None = None) -> dict[str, float]:
    """Train (dashed) and test (solid) Recall@1 against iteration, one colour per method."""
    table = grid.tables[name]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, cell in enumerate(table.cells):
        history = [r for r in read_history(_run_folder(grid, cell.run_ids[0], runs_root)) if "recall_at_1" in r]
        if not history:
            continue
        its = [r["iteration"] for r in history]
        label = " / ".join(cell.labels[a] for a in table.definition.rows)
        ax.plot(its, [100 * r["recall_at_1"] for r in history], "-", color=f"C{i}", label=f"{label} test")
        if history and "train_recall_at_1" in history[0]:
            ax.plot(its, [100 * r["train_recall_at_1"] for r in history], "--", color=f"C{i}", label=f"{label} train")
    ax.set_xlabel("iteration")
    ax.set_ylabel("Recall@1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(table.definition.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {}


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
        stats[label] = nearest_centre_cv(centres)
        xy = TSNE(n_components=2, perplexity=min(30, len(centres) - 1), init="pca", random_state=0).fit_transform(centres)
        ax.scatter(xy[:, 0], xy[:, 1], s=10, c=np.arange(len(xy)), cmap="viridis")
        ax.set_title(f"{label}\nnearest-centre CV {stats[label]:.3f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(table.definition.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return stats
