"""Several runs in one stage process (`--run A --run B`, a job of mdr/jobs.py): each in turn, each on its own.

Every run id is checked before the first run starts, so a typo costs nothing. Then a run that fails does
not stop the others: its error is printed naming the run (one line for a user error, the traceback for a
bug), the next run is attempted, and the process exits non-zero at the end (2 when every failure was a
user error, else 1). The runs that succeeded keep their outputs; Snakemake still deletes a failed job's
declared outputs (the small markers), but not the checkpoints behind them, so its rerun of the job
retrains only the failed run (a finished run is recognised as complete). An interruption (Ctrl-C,
Snakemake's SIGTERM) stops at once. With a single run, errors propagate exactly as before.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

from mdr.grid import Grid, RunSpec
from pipeline.common import user_errors


def resolve_runs(grid: Grid, run_ids: list[str]) -> list[RunSpec]:
    """The runs named, in order, each once; a ConfigError naming the closest id for an unknown one."""
    from pipeline.train import raise_unknown_run

    for rid in run_ids:
        if rid not in grid.runs:
            raise_unknown_run(rid, grid)
    return [grid.runs[rid] for rid in dict.fromkeys(run_ids)]


def for_each_run(specs: list[RunSpec], work: Callable[[RunSpec], None]) -> int:
    """`work(spec)` for every run in turn; the exit code (see the module docstring)."""
    if len(specs) == 1:
        work(specs[0])
        return 0
    failed: dict[str, bool] = {}  # run id -> was a user error
    for number, spec in enumerate(specs, 1):
        print(f"run {number} of {len(specs)}: {spec.run_id}", flush=True)
        try:
            work(spec)
        except user_errors() as e:
            print(f"error: run {spec.run_id}: {e}", file=sys.stderr, flush=True)
            failed[spec.run_id] = True
        except Exception as e:
            traceback.print_exc()
            print(f"error: run {spec.run_id} failed: {type(e).__name__}: {e} (traceback above)", file=sys.stderr,
                  flush=True)
            failed[spec.run_id] = False
    if not failed:
        return 0
    print(f"error: {len(failed)} of {len(specs)} runs failed ({', '.join(failed)}); the others are done: fix the "
          f"cause above, then rerun the same command", file=sys.stderr)
    return 2 if all(failed.values()) else 1
