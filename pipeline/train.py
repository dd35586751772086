"""Train runs of the grid: `python -m pipeline train --profile smoke --run <run_id> [--run <run_id> ...]`.

Several runs are trained in turn in this one process (a job of mdr/jobs.py; pipeline/each_run.py says
what happens when one fails)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mdr.locking import hold_run
from pipeline.common import disk_full_reported, parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--run", action="append", required=True,
                   help="run id (see `python -m pipeline runs`); repeat for several, trained in turn")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint (it is kept)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-bars", action="store_true", help="no progress bars (epoch lines are still printed)")
    p.add_argument("--quiet", action="store_true", help="print nothing per epoch")
    p.add_argument("--allow-cpu", action="store_true",
                   help="train a GPU profile's `device: auto` run on the CPU when there is no GPU (else it stops)")
    args = p.parse_args(argv)

    import signal

    def interrupted(signum, frame):  # Snakemake stops jobs with SIGTERM: record the run as interrupted
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)

    from mdr import layout
    from mdr.engine import train
    from mdr.grid_cache import load_grid
    from mdr.io import atomic_write_text

    from mdr.needs import require_gpu
    from pipeline.each_run import for_each_run, resolve_runs

    grid = load_grid(args.profile)
    specs = resolve_runs(grid, args.run)
    for spec in specs:  # before the first run trains
        require_gpu(grid, spec.config, args.allow_cpu)
    live = not args.no_tracking and grid.profile.tracking == "live"
    if live:
        from mdr.describe import describe_grid
        from mdr.tracking import MLflowLogger

        described = describe_grid(grid)

    def train_one(spec) -> None:
        callbacks = []
        if live:
            name, tags = described[spec.run_id]
            callbacks.append(MLflowLogger(args.profile, spec.run_id, tags, name))
        out = layout.run_dir(args.profile, spec.run_id)
        with hold_run(out), disk_full_reported(out, lambda message: mark_failed(out, message)):
            result = train(spec.config, out, resume=not args.no_resume, progress=not (args.no_bars or args.quiet),
                           echo=not args.quiet, callbacks=callbacks)
            atomic_write_text(layout.trained_marker(args.profile, spec.run_id),
                              json.dumps({"run": spec.run_id, "fingerprint": spec.config.fingerprint(),
                                          **result.summary}, indent=1) + "\n")

    return for_each_run(specs, train_one)


def mark_failed(run_dir: Path, message: str) -> None:
    """status.json says `failed`, even on a full disk: the engine's own atomic update may have failed there,
    so fall back to rewriting the small file in place (its blocks are reused)."""
    from mdr.io import atomic_write_text

    text = json.dumps({"status": "failed", "error": f"DiskFullError: {message}"}, indent=1) + "\n"
    with contextlib.suppress(OSError):
        atomic_write_text(run_dir / "status.json", text)
        return
    with contextlib.suppress(OSError):
        (run_dir / "status.json").write_text(text)


def raise_unknown_run(run: str, grid) -> None:
    from mdr.config import ConfigError

    import difflib

    close = difflib.get_close_matches(run, list(grid.runs), n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"no run {run!r} in profile {grid.profile.name}; {hint}`python -m pipeline runs --profile "
                      f"{grid.profile.name}` lists them")
