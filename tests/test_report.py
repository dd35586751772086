"""The report's comparisons: declared in params/tables, directed by paper_results.csv, tested over the
seeds of constructed run folders (metrics.json), written first in REPORT.md and in comparisons.csv."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdr import stats
from mdr.config import ConfigError
from mdr.grid import PARAMS_DIR, load_grid, load_table
from mdr.report import NO_CLAIM, comparison_table, verdicts_markdown, write_report

REPO = Path(__file__).resolve().parent.parent
TABLES = ["table2b", "closedset", "figure4a"]
BASE = {0: 0.50, 1: 0.60, 2: 0.55}  # a seed effect shared by every method (fractions, as in metrics.json)
SHIFT = {0: 0.050, 1: 0.052, 2: 0.048}  # +5.0 points on average, sd 0.2 points


def _params(root: Path, tables: list[str]) -> Path:
    dst = root / "params"
    shutil.copytree(PARAMS_DIR, dst)
    profile = dst / "profiles" / "smoke.yaml"
    data = yaml.safe_load(profile.read_text())
    data["tables"] = tables  # a small grid: loads in seconds
    data["seeds"] = sorted(SHIFT)  # the seeds whose metrics these tests write, for every table
    data.pop("table_seeds", None)
    profile.write_text(yaml.safe_dump(data))
    return dst


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return load_grid("smoke", _params(tmp_path_factory.mktemp("report"), TABLES), use_tuned=False)


def _cell(grid, table, **labels):
    return next(c for c in grid.tables[table].cells if all(c.labels[k] == v for k, v in labels.items()))


def _write(root: Path, grid, cell, values: dict[int, dict[str, float]]) -> None:
    """metrics.json of the cell's runs: {seed: {metric: value}} at both epochs."""
    for rid in cell.run_ids:
        seed = grid.runs[rid].config.seed
        folder = root / grid.profile.name / rid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"best_epoch": 1, "best": values[seed], "final": values[seed]}))


def _r1(by_seed: dict[int, float]) -> dict[int, dict[str, float]]:
    return {s: {"recall_at_1": v} for s, v in by_seed.items()}


def _table2b(root: Path, grid) -> None:
    """Triplet+MDR 5 points above Triplet, Margin+MDR 5 below Margin, Contrastive+MDR within noise."""
    noise = {0: 0.01, 1: -0.01, 2: 0.001}
    values = {
        "Triplet": BASE, "Triplet+MDR": {s: BASE[s] + SHIFT[s] for s in BASE},
        "Margin": BASE, "Margin+MDR": {s: BASE[s] - SHIFT[s] for s in BASE},
        "Contrastive": BASE, "Contrastive+MDR": {s: BASE[s] + noise[s] for s in BASE},
    }
    for method, by_seed in values.items():
        for dataset in ("cub200", "cars196"):
            _write(root, grid, _cell(grid, "table2b", method=method, dataset=dataset), _r1(by_seed))


def _row(df, **where):
    rows = df
    for key, value in where.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, where
    return rows.iloc[0]


def test_each_published_direction_is_reproduced_contradicted_or_not_resolved(grid, tmp_path):
    _table2b(tmp_path, grid)
    df = comparison_table(grid, "table2b", tmp_path)
    assert len(df) == 6  # 3 pairs x 2 dataset columns, R@1
    for dataset, (mdr, triplet) in {"cub200": (68.8, 57.3), "cars196": (88.5, 76.2)}.items():
        r = _row(df, dataset=dataset, first="Triplet+MDR", second="Triplet")
        assert (r.claim, r.published_first, r.published_second, r.published_sign) == ("published", mdr, triplet, 1)
        assert (r.test, r.n, r.verdict) == (stats.PAIRED, "3", stats.REPRODUCED)
        # differences 5.0, 5.2, 4.8 points: mean 5, sd 0.2; t quantile 4.3027 on 2 df (closed form)
        half = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)) * 0.2 / math.sqrt(3)
        assert r["diff"] == pytest.approx(5.0, abs=1e-9)  # float64 sums of fractions x 100: error ~1e-13
        assert (r.ci_low, r.ci_high) == (pytest.approx(5 - half, abs=1e-9), pytest.approx(5 + half, abs=1e-9))
        assert _row(df, dataset=dataset, first="Margin+MDR").verdict == stats.CONTRADICTED
        assert _row(df, dataset=dataset, first="Contrastive+MDR").verdict == stats.NOT_RESOLVED


def test_without_published_numbers_the_declared_direction_is_tested(grid, tmp_path):
    none = {s: {"recall_at_1": v, "map_at_r": v / 2} for s, v in BASE.items()}
    guided = {s: {"recall_at_1": v + SHIFT[s], "map_at_r": v / 2 - SHIFT[s]} for s, v in BASE.items()}
    _write(tmp_path, grid, _cell(grid, "closedset", regularizer="none"), none)
    _write(tmp_path, grid, _cell(grid, "closedset", regularizer="guided"), guided)
    df = comparison_table(grid, "closedset", tmp_path)
    assert list(df["metric"]) == ["recall_at_1", "map_at_r"]
    assert set(df["claim"]) == {"declared"} and df["published_first"].isna().all()
    assert list(df["verdict"]) == [stats.REPRODUCED, stats.CONTRADICTED]  # declared: guided > none


def test_a_published_tie_makes_no_claim(grid, tmp_path):
    for cell in grid.tables["figure4a"].cells:
        _write(tmp_path, grid, cell, _r1(BASE))
    df = comparison_table(grid, "figure4a", tmp_path)
    assert len(df) == 4 * 3 * 2  # dimensions x pairs x datasets
    tie = _row(df, dataset="cars196", dimension="256", first="Triplet+L2Norm", second="Triplet")
    assert (tie.published_first, tie.published_second, tie.verdict) == (75.0, 75.0, NO_CLAIM)
    assert tie["where"] == "dimension 256, cars196"
    others = df.drop(tie.name)
    assert set(others["verdict"]) == {stats.NOT_RESOLVED}  # every method equal: nothing significant


def test_two_cells_of_the_same_runs_are_not_resolved_and_say_so(tmp_path):
    # two table1 rows whose presets resolve to one config share their runs (as in a shrunken profile)
    params = _params(tmp_path, ["table1"])
    profile = params / "profiles" / "smoke.yaml"
    data = yaml.safe_load(profile.read_text())
    data["image_sizes"][256] = dict(data["image_sizes"][224])
    profile.write_text(yaml.safe_dump(data))
    grid = load_grid("smoke", params, use_tuned=False)
    mdr, dagger = (_cell(grid, "table1", method=m, dataset="cub200") for m in ("Triplet+MDR", "Triplet+MDR†"))
    assert mdr.run_ids == dagger.run_ids
    _write(tmp_path / "runs", grid, mdr, _r1(BASE))
    df = comparison_table(grid, "table1", tmp_path / "runs")
    r = _row(df, dataset="cub200", protocol="published", first="Triplet+MDR†")
    assert r["diff"] == 0.0 and math.isnan(r.p) and r.verdict == stats.NOT_RESOLVED
    assert "| cub200, protocol published | Triplet+MDR† − Triplet+MDR | R@1 | +2.6 (71.4 vs 68.8) | +0.0 [+0.0, +0.0] | — | paired t (3) " \
           "| not resolved (the same runs) |" in verdicts_markdown(df)


def test_missing_runs_shrink_the_pairs_then_leave_the_comparison_untested(grid, tmp_path):
    _table2b(tmp_path, grid)
    mdr = _cell(grid, "table2b", method="Triplet+MDR", dataset="cub200")
    (tmp_path / "smoke" / mdr.run_ids[2] / "metrics.json").unlink()
    r = _row(comparison_table(grid, "table2b", tmp_path), dataset="cub200", first="Triplet+MDR")
    assert (r.test, r.n) == (stats.PAIRED, "2")
    (tmp_path / "smoke" / mdr.run_ids[1] / "metrics.json").unlink()
    r = _row(comparison_table(grid, "table2b", tmp_path), dataset="cub200", first="Triplet+MDR")
    assert (r.test, r.n, r.verdict) == (stats.UNTESTED, "1+3", stats.NOT_RESOLVED)
    assert math.isnan(r.p)


def test_the_report_opens_with_the_verdicts_and_writes_them_to_csv(grid, tmp_path, monkeypatch):
    _table2b(tmp_path / "runs", grid)
    monkeypatch.chdir(tmp_path)  # results/<profile>/ is relative to the working directory
    report = write_report(grid, tmp_path / "runs").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Verdicts"
    # table2b: 2 reproduced, 2 contradicted, 2 not resolved. Its Triplet and Triplet+MDR runs are also
    # figure4a's 512-d cells (the grid shares runs), so MDR - Triplet at 512 is reproduced there too, in both
    # columns; the other figure4a and closedset comparisons have no runs: not resolved, one published tie.
    total = 6 + 2 + 24
    assert f"{total} comparisons: 4 reproduced, 2 contradicted, {total - 7} not resolved (1 without a published direction)" in report
    assert "### table2b: 2 reproduced, 2 contradicted, 2 not resolved" in report
    assert "| cub200 | Triplet+MDR − Triplet | R@1 | +11.5 (68.8 vs 57.3) | +5.0 [+4.5, +5.5] | < 0.001 | paired t (3) | **reproduced** |" in report
    assert report.index("## Verdicts") < report.index("### Reading of table2b")
    # the paper's tables (published numbers) before the benchmark's own, each group in the profile's order
    assert report.index("### table2b:") < report.index("### figure4a:") < report.index("### closedset:")
    with open(tmp_path / "results" / "smoke" / "comparisons.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == total
    reproduced = [r for r in rows if r["verdict"] == stats.REPRODUCED]
    assert sorted((r["table"], r["first"], r["second"]) for r in reproduced) == \
        [("figure4a", "Triplet+MDR", "Triplet")] * 2 + [("table2b", "Triplet+MDR", "Triplet")] * 2
    assert all(len(r["runs_first"].split()) == 3 for r in reproduced)


@pytest.mark.parametrize("comparison,message", [
    ({"axis": "methods", "pairs": [["Triplet+MDR", "Triplet"]]},
     r"comparisons\[0\]\.axis: 'methods' is not an axis of the table; allowed: dataset, method"),
    ({"axis": "method", "pairs": [["Triplet+MDR", "Triplet"], ["Triplet+MRD", "Triplet"]]},
     r"comparisons\[0\]\.pairs\[1\]: 'Triplet\+MRD' is not a value of axis method; allowed: Contrastive, "),
    ({"axis": "method", "pairs": [["Triplet", "Triplet"]]}, r"compares 'Triplet' with itself"),
    ({"axis": "method", "pairs": [["Triplet+MDR", "Triplet"]], "metrics": ["map_at_r"]},
     r"comparisons\[0\]\.metrics: 'map_at_r' is not a metric of the table; allowed: recall_at_1"),
    ({"axis": "method", "pairs": [["Triplet+MDR"]]}, r"comparisons\.0\.pairs\.0"),
    ({"axis": "method", "pairs": [["Triplet+MDR", "Triplet"]], "direction": "up"}, r"direction: unknown key"),
])
def test_a_wrong_declaration_names_the_file_the_key_and_the_allowed_values(tmp_path, comparison, message):
    params = _params(tmp_path, ["table2b"])
    path = params / "tables" / "table2b.yaml"
    data = yaml.safe_load(path.read_text())
    data["comparisons"] = [comparison]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"table2b\.yaml: .*" + message):
        load_table("table2b", params)


def test_a_table_of_the_datasets_ks_compares_recall_at_k_only(tmp_path):
    params = _params(tmp_path, ["table1"])
    path = params / "tables" / "table1.yaml"
    data = yaml.safe_load(path.read_text())
    data["comparisons"][0]["metrics"] = ["recall_at_2", "map_at_r"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"table1\.yaml: .*comparisons\[0\]\.metrics: 'map_at_r' is not a metric "
                                          r"of the table; allowed: recall_at_<K> of the dataset's K values"):
        load_table("table1", params)


def test_cost_ratio_cannot_be_compared_per_seed(tmp_path):
    params = _params(tmp_path, ["regularizers"])
    path = params / "tables" / "regularizers.yaml"
    data = yaml.safe_load(path.read_text())
    data["comparisons"][0]["metrics"] = ["cost_ratio"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"regularizers\.yaml: .*cost_ratio is a ratio of cell means.*seconds_per_iteration"):
        load_table("regularizers", params)


def test_a_wrong_declaration_stops_the_pipeline_in_one_line(tmp_path):
    params = _params(tmp_path, ["table2b"])
    path = params / "tables" / "table2b.yaml"
    path.write_text(path.read_text().replace("[Margin+MDR, Margin]", "[Margin+MDR, Margn]"))
    env = {**os.environ, "MDR_PARAMS": str(params)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "runs", "--profile", "smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert "comparisons[0].pairs[1]: 'Margn' is not a value of axis method; allowed: Contrastive" in lines[0]


def test_runs_csv_says_what_each_run_ran_not_what_its_table_fixed(grid, tmp_path, monkeypatch):
    """closedset fixes `method: Triplet` and varies the regularizer: each row names the method its config runs,
    the dataset it trained on and, apart, the paper dataset it stands in for."""
    monkeypatch.chdir(tmp_path)
    write_report(grid, tmp_path / "runs")
    with open(tmp_path / "results" / "smoke" / "runs.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(grid.runs)
    closed = {rows[r]["method"] for c in grid.tables["closedset"].cells for r in c.run_ids}
    assert closed == {"Triplet", "Triplet+L2Norm", "Triplet+MDR", "Triplet+Guided"}
    for rid, row in rows.items():
        config = grid.runs[rid].config
        assert (row["dataset"], row["loss"], row["regularizer"], row["backbone"]) == \
            (config.data.dataset, config.loss.name, config.regularizer.name, config.model.backbone)
        assert row["stands_in_for"] in {"cub200", "cars196", "sop", "inshop", "cifar10"}, row["stands_in_for"]
    assert {rows[r]["dataset"] for c in grid.tables["closedset"].cells for r in c.run_ids} == {"glyphs-closed"}


def test_table_markdown_says_what_ran_and_prints_published_rows_as_a_table(tmp_path):
    """Table 1: the runs' real datasets, backbone and size lead; the cited methods' rows are a Markdown table of
    numbers with '—' where the paper gives none (no pandas tuples, no nan); a metric the paper gives no
    number for gets no paper and Δ columns."""
    from mdr.report import aggregate_table, table_markdown

    grid = load_grid("smoke", _params(tmp_path, ["table1", "regularizers"]), use_tuned=False)
    md = table_markdown(grid, "table1", aggregate_table(grid, "table1", tmp_path / "runs"))
    assert "What ran: glyphs-cub, glyphs-cars, glyphs-sop, glyphs-inshop · glyphnet-m (for bninception) · 128-d" in md
    cited = md[md.index("Published comparison rows"):].splitlines()[2:]
    assert cited[0].startswith("| method | cub200 R@1 | cub200 R@2 |")
    htl = next(line for line in cited if line.startswith("| HTL |"))
    assert "| 57.1 |" in htl and htl.rstrip().endswith("| — |")
    assert "('" not in md and "nan" not in md
    regs = table_markdown(grid, "regularizers", aggregate_table(grid, "regularizers", tmp_path / "runs"))
    header = next(line for line in regs.splitlines() if line.startswith("| loss |"))
    assert header == "| loss | regularizer | R@1 ours | MAP@R ours | s/iter ours | cost × ours |"
