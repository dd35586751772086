"""Tune a regularizer's hyperparameters on validation classes: `python -m pipeline tune --profile smoke --dataset cub200`.

Runs (or resumes) the Optuna study of params/tuning.yaml for one logical dataset until it has --trials
finished trials, then writes params/tuned/<profile>/<dataset>-<regularizer>.yaml and results/<profile>/tuning/.
Not part of the default target; the grid uses the result with `use_tuned`.
"""
from __future__ import annotations

import signal
import sys

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="logical dataset (cub200, cars196, sop, inshop)")
    p.add_argument("--method", default=None,
                   help="method to tune, from params/methods.yaml (default: params/tuning.yaml's `method`); its "
                        "regularizer's search space is searched, e.g. Triplet+DetReg, Triplet+LSD, Triplet+Guided")
    p.add_argument("--trials", type=int, default=None, help="finished trials the study should reach (default: params/tuning.yaml)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path (default optuna/<profile>/<dataset>.journal) or a URL "
                        "(postgresql://user:pass@host/db for workers on several machines, sqlite:///file.db)")
    p.add_argument("--study-name", default=None, help="default <profile>-<dataset>-<regularizer>")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study (default 1)")
    p.add_argument("--retrain", action="store_true",
                   help="then retrain the best config on all training classes for the profile's seeds and test it")
    p.add_argument("--retrain-only", action="store_true", help="only retrain (params/tuned/... must exist)")
    p.add_argument("--no-tracking", action="store_true", help="do not log trials to MLflow")
    p.add_argument("--no-bars", action="store_true", help="accepted for symmetry with train; trials print one line each")
    p.add_argument("--verbose", action="store_true", help="also print each trial's epoch lines")
    args = p.parse_args(argv)
    if args.workers < 1 or (args.trials is not None and args.trials < 1):
        p.error("--workers and --trials must be at least 1")

    import optuna

    from mdr import tuning
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from mdr.tuning
    # SIGTERM (Snakemake, SLURM, kill) ends the running trial like Ctrl-C: marked interrupted, retried on resume
    signal.signal(signal.SIGTERM, _raise_interrupt)
    echo = lambda line: tqdm.write(line)  # noqa: E731
    try:
        if not args.retrain_only:
            tuning.tune(args.profile, args.dataset, n_trials=args.trials, storage=args.storage, workers=args.workers,
                        study_name=args.study_name, tracking=not args.no_tracking, echo=echo, echo_epochs=args.verbose,
                        method=args.method)
        if args.retrain or args.retrain_only:
            tuning.retrain_best(args.profile, args.dataset, tracking=not args.no_tracking, echo=echo, method=args.method)
    except tuning.TuningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        store = args.storage or tuning.default_storage(args.profile, args.dataset)
        print(f"interrupted: finished trials are kept in {store}; the running trial is marked interrupted and is "
              f"tried again when you rerun the same command", file=sys.stderr)
        return 130
    return 0


def _raise_interrupt(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt(f"signal {signum}")
