"""Evaluate trained runs (best and final epoch): `python -m pipeline evaluate --profile smoke --run <id> [--run <id> ...]`.

Several runs are evaluated in turn in this one process (a job of mdr/jobs.py; pipeline/each_run.py says
what happens when one fails)."""
from __future__ import annotations

import json

from mdr.locking import hold_run
from pipeline.common import disk_full_reported, parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--run", action="append", required=True, help="run id; repeat for several, evaluated in turn")
    p.add_argument("--no-tracking", action="store_true")
    args = p.parse_args(argv)

    from mdr import layout
    from mdr.evaluation import evaluate_run
    from mdr.grid_cache import load_grid
    from mdr.io import atomic_write_text
    from pipeline.each_run import for_each_run, resolve_runs

    grid = load_grid(args.profile)

    def evaluate_one(spec) -> None:
        run_dir = layout.run_dir(args.profile, spec.run_id)
        target = layout.metrics_file(args.profile, spec.run_id)
        with hold_run(run_dir), disk_full_reported(run_dir):
            metrics = {"run": spec.run_id, "tags": spec.tags, **evaluate_run(spec.config, run_dir)}
            atomic_write_text(target, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        if not args.no_tracking and grid.profile.tracking == "live":
            from mdr.tracking import log_evaluation

            log_evaluation(args.profile, spec.run_id, metrics,
                           [target, run_dir / "config.yaml", run_dir / "history.json", run_dir / "best.pt"])
        best = metrics["best"]
        print(f"{spec.run_id}: best epoch {metrics['best_epoch']}, R@1 {100 * best['recall_at_1']:.2f}, "
              f"MAP@R {100 * best['map_at_r']:.2f}")

    return for_each_run(resolve_runs(grid, args.run), evaluate_one)
