"""The figures (mdr/figures.py) from run folders written here: what each one draws, checked on its data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mdr.grid import PARAMS_DIR, load_grid
from mdr.report import write_table


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    shutil.copytree(PARAMS_DIR, root / "params")
    profile = root / "params" / "profiles" / "smoke.yaml"
    data = yaml.safe_load(profile.read_text())
    data["tables"] = ["figure4a", "figure4b", "figure3"]
    profile.write_text(yaml.safe_dump(data))
    return load_grid("smoke", root / "params", use_tuned=False)


def _write_run(runs: Path, grid, rid: str, test: list[float], train: list[float] | None = None) -> None:
    folder = runs / grid.profile.name / rid
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": e + 1, "iteration": 200 * (e + 1), "recall_at_1": t,
                **({"train_recall_at_1": train[e]} if train else {})} for e, t in enumerate(test)]
    (folder / "history.json").write_text(json.dumps(history))
    best = int(np.argmax(test))
    (folder / "metrics.json").write_text(json.dumps({"best_epoch": best + 1, "best": {"recall_at_1": test[best]},
                                                      "final": {"recall_at_1": test[-1]}}))


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figure4b_draws_each_methods_mean_over_its_seeds_and_reports_the_gap(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    curves = {}
    for i, cell in enumerate(grid.tables["figure4b"].cells):
        method = cell.labels["method"]
        for k, rid in enumerate(cell.run_ids):  # seed k shifts every point by k / 100
            test = [0.70 + 0.05 * i + 0.01 * k, 0.75 + 0.05 * i + 0.01 * k, 0.72 + 0.05 * i + 0.01 * k]
            train = [0.80 + 0.01 * k, 0.90 + 0.01 * k, 0.95 + 0.01 * k]
            _write_run(runs, grid, rid, test, train)
        curves[method] = i
    files = write_table(grid, "figure4b", runs)
    assert _png(files["png"])[0] > 600
    md = files["md"].read_text()
    assert "ours (smoke)" not in md  # the figure's title line is in the PNG; the Markdown says it in words
    assert "What ran: glyphs-cub · glyphnet-m (for bninception) · 128-d · 32 px crops · 3 seeds." in md
    for method, i in curves.items():  # mean over seeds 0, 1, 2 = the seed-1 value, in %
        assert f"- {method}: test R@1 last (mean): {100 * (0.72 + 0.05 * i + 0.01):.4f}" in md
        assert f"- {method}: test R@1 peak (mean): {100 * (0.75 + 0.05 * i + 0.01):.4f}" in md
        assert f"- {method}: train - test at the last epoch: {100 * (0.95 - 0.72 - 0.05 * i):.4f}" in md


def test_figure4a_puts_ours_and_the_papers_bars_on_their_own_axes(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for cell in grid.tables["figure4a"].cells:
        for k, rid in enumerate(cell.run_ids):
            _write_run(runs, grid, rid, [0.80 + 0.002 * k])
    files = write_table(grid, "figure4a", runs)
    width, height = _png(files["png"])
    assert width > 1000 and height > 700  # two rows (ours, paper) of two datasets
    from mdr.figures import bars
    from mdr.report import aggregate_table

    df = aggregate_table(grid, "figure4a", runs)
    captured = {}
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda self, out, **kw: captured.setdefault("fig", self))
    bars(grid, "figure4a", df, tmp_path / "x.png")
    fig = captured["fig"]
    ours, paper = fig.axes[0], fig.axes[2]
    low, high = ours.get_ylim()
    assert 78.0 <= low < 80.0 and 80.4 < high <= 82.0  # fitted to ours (80.0-80.4 plus error bars), not 0-100
    assert paper.get_title().startswith("paper, cub200") and paper.get_ylim()[1] > 60  # published R@1 53-69
    assert "mean ± std" in ours.get_ylabel() and "3 seeds" in ours.get_ylabel()


def test_figure3_colours_classes_with_a_legend_and_reports_the_centres_cv(grid, tmp_path, monkeypatch):
    """A regular simplex's centres are all equally far from their nearest neighbour: CV 0; one centre pulled in
    halfway towards another gives the CV computed by hand."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    cells = grid.tables["figure3"].cells
    simplex = np.eye(12)
    moved = simplex.copy()
    moved[0] = (simplex[0] + simplex[1]) / 2  # 0 and 1 now sqrt(0.5) apart; the others still sqrt(2) (or 1.22)
    for cell, centres in zip(cells, [simplex, moved, simplex]):
        _write_run(runs, grid, cell.run_ids[0], [0.5])
        np.save(runs / grid.profile.name / cell.run_ids[0] / "class_centers.npy", centres)
    files = write_table(grid, "figure3", runs)
    md = files["md"].read_text()
    d = np.sqrt(((moved[:, None] - moved[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    labels = [" / ".join(c.labels[a] for a in grid.tables["figure3"].definition.rows) for c in cells]
    assert f"- {labels[0]}: nearest-centre CV: 0.0000" in md
    assert f"- {labels[1]}: nearest-centre CV: {nearest.std() / nearest.mean():.4f}" in md
    assert _png(files["png"])[0] > 800


def test_figure4b_draws_the_papers_read_off_points_beside_ours(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for cell in grid.tables["figure4b"].cells:
        for rid in cell.run_ids:
            _write_run(runs, grid, rid, [0.70, 0.75, 0.72], [0.80, 0.90, 0.95])
    from mdr.figures import curves
    from mdr.report import aggregate_table

    df = aggregate_table(grid, "figure4b", runs)
    captured = {}
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda self, out, **kw: captured.setdefault("fig", self))
    curves(grid, "figure4b", df, tmp_path / "x.png")
    ours, paper = captured["fig"].axes
    assert paper.get_title().startswith("paper (read off its figure")
    drawn = {line.get_label(): list(line.get_ydata()) for line in paper.get_lines() if not line.get_label().startswith("_")}
    # test peak -> test final, as docs/method.md and the table's note read them off the paper's figure
    assert drawn == {"Triplet": [56.5, 53.0], "Triplet+L2Norm": [65.0, 59.0], "Triplet+MDR": [68.0, 68.0]}
    train = sorted(float(line.get_ydata()[0]) for line in paper.get_lines() if line.get_label().startswith("_"))
    assert train == [92.0, 95.0, 99.0]
    assert df["published"].isna().all()  # the read-off points are drawn, not compared as table values
