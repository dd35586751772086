"""Where every stage reads and writes: one place, so Snakemake, DVC and the commands agree."""
from __future__ import annotations

from pathlib import Path

RUNS = Path("runs")
RESULTS = Path("results")


def run_dir(profile: str, run_id: str) -> Path:
    return RUNS / profile / run_id


def trained_marker(profile: str, run_id: str) -> Path:
    """Written when training finished; checkpoints are not declared outputs, so a workflow manager
    never deletes them when a job is interrupted (the run resumes from them)."""
    return run_dir(profile, run_id) / "trained.json"


def metrics_file(profile: str, run_id: str) -> Path:
    return run_dir(profile, run_id) / "metrics.json"


def results_dir(profile: str) -> Path:
    return RESULTS / profile


def table_files(profile: str, table: str, kind: str = "table") -> dict[str, Path]:
    """A table: CSV, Markdown and LaTeX; a figure: CSV, Markdown and PNG."""
    base = results_dir(profile) / table
    files = {"csv": base.with_suffix(".csv"), "md": base.with_suffix(".md")}
    files["png" if kind == "figure" else "tex"] = base.with_suffix(".png" if kind == "figure" else ".tex")
    return files


def report_file(profile: str) -> Path:
    return results_dir(profile) / "REPORT.md"


def page_file(profile: str) -> Path:
    """The whole report on one self-contained HTML page (mdr/report_html.py, written by the report stage)."""
    return results_dir(profile) / "index.html"


def comparisons_file(profile: str) -> Path:
    """Every table's published comparisons with our difference, CI, p-value and verdict (the report stage)."""
    return results_dir(profile) / "comparisons.csv"


def tracking_ready(profile: str) -> Path:
    return RUNS / profile / ".tracking-ready"


def tracked_marker(profile: str) -> Path:
    """Written by the `track` stage of profiles that log to MLflow at the end (tracking: at_end)."""
    return RUNS / profile / ".tracked.json"


def grid_cache_dir() -> Path:
    """The resolved grids (mdr/grid_cache.py), one file per profile and digest of params/ and the code."""
    return RUNS / ".grid-cache"
