"""How long `snakemake` takes when there is nothing to do (the no-op rerun of `make reproduce`).

    python -m benchmarks.bench_noop [--profile smoke] [--repeats 5] [--keep]

A finished workspace is faked, so the figure does not need a full reproduce first: the working tree
(without .git, .venv, data/, runs/) is copied to a temporary folder, every output of a dry run's jobs is
created empty, and `snakemake --touch` puts their modification times in the DAG's order. Then, pair by
pair in fresh processes, `snakemake --cores 2 --quiet` is timed with the grid cache (mdr/grid_cache.py;
the first call fills it and is not counted) and without it (MDR_GRID_CACHE=0: every start resolves the
grid and imports torch), and with the cache but without the cluster executor plugins (what a `make reproduce`
environment has; `make test` installs them). Each must answer "Nothing to be done". Prints each figure's
min / median / max.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "data", "runs", ".snakemake", "mlartifacts", "mlflow.db", "optuna", "__pycache__"}
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Snakemake as `make reproduce` installs it: its registry skips the cluster executor plugins (the test extras),
# which every start imports when they are installed (snakemake_interface_common's collect_plugins).
CLUSTER_PLUGINS = ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_kubernetes")
SNAKEMAKE_WITHOUT_PLUGINS = [sys.executable, "-c", f"""
import pkgutil, sys
listed = pkgutil.iter_modules
pkgutil.iter_modules = lambda *a, **k: (m for m in listed(*a, **k) if not m.name.startswith({CLUSTER_PLUGINS!r}))
from snakemake.cli import main
sys.argv[0] = "snakemake"
main()
"""]


def _copy_tree(target: Path) -> None:
    shutil.copytree(ROOT, target, ignore=lambda folder, names: [n for n in names if n in SKIP and Path(folder) == ROOT
                                                                or n == "__pycache__"])


def _snakemake(workspace: Path, profile: str, *args: str, env: dict[str, str] | None = None,
               command: list[str] = SNAKEMAKE) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*command, "--config", f"profile={profile}", *args], cwd=workspace, text=True,
                          capture_output=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench_noop: snakemake {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed, done.stdout + done.stderr


def fake_finished_workspace(workspace: Path, profile: str) -> int:
    """Every job's outputs, empty, with modification times in the DAG's order; returns how many."""
    _, dry = _snakemake(workspace, profile, "-n", "--cores", "1")
    outputs = [f for line in re.findall(r"^\s+output: (.*)$", dry, re.M) for f in line.split(", ")]
    for name in outputs:
        path = workspace / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    _snakemake(workspace, profile, "--touch", "--cores", "1")
    return len(outputs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--repeats", type=int, default=5, help="pairs timed (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the fake workspace and print its path")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, found {args.repeats}")
    folder = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    try:
        workspace = folder / "workspace"
        _copy_tree(workspace)
        print(f"faked {fake_finished_workspace(workspace, args.profile)} outputs in {workspace}", flush=True)
        _snakemake(workspace, args.profile, "--cores", "2", "--quiet")  # fills the grid cache
        variants = {"grid cache": ({}, SNAKEMAKE), "MDR_GRID_CACHE=0": ({"MDR_GRID_CACHE": "0"}, SNAKEMAKE),
                    "no cluster plugins": ({}, SNAKEMAKE_WITHOUT_PLUGINS)}
        times: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.repeats):
            for label, (env, command) in variants.items():
                seconds, out = _snakemake(workspace, args.profile, "--cores", "2", "--quiet", env=env,
                                          command=command)
                if "Nothing to be done" not in out:
                    sys.exit(f"bench_noop: the faked workspace is not finished ({label}):\n{out[-2000:]}")
                times[label].append(seconds)
        for label, values in times.items():
            print(f"no-op snakemake, {label:18s}: min {min(values):.2f} s, median {statistics.median(values):.2f} s, "
                  f"max {max(values):.2f} s ({len(values)} runs)")
        for other in ("MDR_GRID_CACHE=0", "no cluster plugins"):
            ratios = [a / b for a, b in zip(times["grid cache"], times[other])]
            print(f"ratio grid cache / {other}, run by run: median {statistics.median(ratios):.2f}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
