"""Running a study: `tune` opens or resumes it, deals with what a killed worker left, queues the untuned
baseline first, runs the trials in this process (`run_trials`) or in spawned local workers
(`_run_workers`, `_worker_main`) until the study has the requested finished trials, and writes the
outputs; `TuneResult` is what it returns, `_trial_line` the line printed per finished trial."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mdr.grid import PARAMS_DIR
from mdr.tuning.context import TuningContext, make_context
from mdr.tuning.objective import Objective, TrainFn
from mdr.tuning.outputs import _fmt, write_outputs
from mdr.tuning.space import baseline_point, loss_keys, loss_params, regularizer_params
from mdr.tuning.spec import TrialFailed, TuningError
from mdr.tuning.storage import _hide_password, open_study
from mdr.tuning.trials import (_state, close_orphaned_mlflow_runs, fail_orphaned_trials, is_interrupted,
                               requeue_interrupted, trial_counts)


# ---- running a study ------------------------------------------------------------------------------

def _trial_line(study: Any, number: int, n_total: int) -> str:
    t = study.get_trials(deepcopy=False)[number]
    counts = trial_counts(study)
    state = "INTERRUPTED" if is_interrupted(t) else _state(t)
    params = {**t.user_attrs.get("regularizer_params", {}), **loss_keys(t.user_attrs.get("loss_params", {}))}
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in params.items())
    line = f"[{study.study_name}] trial {t.number} {state}"
    if state == "COMPLETE":
        line += f"  val R@1 {100 * t.value:.2f} (epoch {t.user_attrs.get('best_epoch')})"
    elif t.intermediate_values:
        step = max(t.intermediate_values)
        line += f"  at epoch {step}: val R@1 {100 * t.intermediate_values[step]:.2f}"
    if t.duration is not None:
        line += f"  {t.duration.total_seconds():.0f}s"
    line += f"  [{shown}]"
    if state == "FAIL":
        line += f"  failure: {t.user_attrs.get('failure', '?')}"
    try:
        best = study.best_trial
        line += f"  | best {100 * best.value:.2f} (trial {best.number})"
    except ValueError:
        pass
    return line + f"  | {counts['finished']}/{n_total} finished"


def run_trials(ctx: TuningContext, n_total: int, share: int | None = None, train_fn: TrainFn | None = None,
               tracking: bool = True, echo: Callable[[str], None] | None = print, echo_epochs: bool = False,
               study: Any = None, worker: int = 0) -> int:
    """One worker: run trials until the study has `n_total` finished trials (or this worker has run
    `share` of them). Returns the number of trials this worker ran."""
    study = study or open_study(ctx, create=False, worker=worker)
    objective = Objective(ctx, train_fn, tracking, echo_epochs)
    ran = 0
    while share is None or ran < share:
        counts = trial_counts(study)
        if counts["finished"] + counts["running"] >= n_total:
            break
        before = _finished_numbers(study)
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
        ran += 1
        if echo is not None:
            trials = study.get_trials(deepcopy=False)
            for number in sorted(_finished_numbers(study) - before):
                if trials[number].user_attrs.get("worker", {}).get("pid") == os.getpid():
                    echo(_trial_line(study, number, n_total))
    return ran


def _finished_numbers(study: Any) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False) if _state(t) not in ("RUNNING", "WAITING")}


def _worker_main(profile: str, dataset: str, params_dir: str, storage: str, study_name: str, n_total: int,
                 share: int, train_fn: TrainFn | None, tracking: bool, echo_epochs: bool, worker: int,
                 method: str) -> None:
    """Entry point of a spawned local worker process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ctx = make_context(profile, dataset, Path(params_dir), storage, study_name, method)
    try:
        run_trials(ctx, n_total, share, train_fn, tracking, lambda s: print(s, flush=True), echo_epochs, worker=worker)
    except KeyboardInterrupt:
        pass  # the running trial is already marked interrupted


@dataclass
class TuneResult:
    study: Any
    counts: dict[str, int]
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    trials_run: int = 0


def tune(profile: str, dataset: str, *, n_trials: int | None = None, storage: str | None = None, workers: int = 1,
         params_dir: Path = PARAMS_DIR, study_name: str | None = None, train_fn: TrainFn | None = None,
         tracking: bool = True, echo: Callable[[str], None] | None = print, echo_epochs: bool = False,
         write: bool = True, method: str | None = None) -> TuneResult:
    """Run (or resume) the study of `profile`/`dataset` (and `method`, default params/tuning.yaml's) until
    it has `n_trials` finished trials, with `workers` local processes, then write the tuned params, plots
    and summary."""
    ctx = make_context(profile, dataset, params_dir, storage, study_name, method)
    n_total = n_trials or ctx.settings.n_trials
    say = echo or (lambda s: None)
    study = open_study(ctx, create=True)
    orphaned = fail_orphaned_trials(study)
    if orphaned:
        say(f"[{ctx.study_name}] trials {orphaned} were left running by a killed worker: marked FAIL (interrupted)")
    if tracking:
        close_orphaned_mlflow_runs(ctx, study)
    requeued = requeue_interrupted(study)
    if requeued:
        say(f"[{ctx.study_name}] interrupted trials {requeued}: their parameters are queued again")
    if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
        untuned = ctx.untuned_params()
        point = baseline_point(ctx.regularizer, {k: untuned[k] for k in _param_names(ctx)}, ctx.space)
        if point is not None:  # the untuned config runs first: the study compares with it on validation
            study.enqueue_trial(point, user_attrs={"baseline": True})
    counts = trial_counts(study)
    remaining = max(0, n_total - counts["finished"] - counts["running"])
    say(f"[{ctx.study_name}] store {_hide_password(ctx.storage)}: {counts['finished']} finished trials "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed), "
        f"{counts['running']} running elsewhere; {remaining} to run of {n_total}; validation on "
        f"{ctx.validation_classes} held-out training classes of {ctx.base.data.dataset}")
    if tracking:
        _guarded_init_store(ctx)
    started = time.perf_counter()
    before = _finished_numbers(study)
    worker_errors: list[tuple[int, int]] = []
    if remaining and workers <= 1:
        run_trials(ctx, n_total, None, train_fn, tracking, echo, echo_epochs, study=study)
    elif remaining:
        worker_errors = _run_workers(ctx, n_total, remaining, workers, train_fn, tracking, echo_epochs, say)
    seconds = time.perf_counter() - started
    study = open_study(ctx, create=False)
    if worker_errors:  # a worker killed outright left its trial RUNNING: mark it now, in Optuna and MLflow
        fail_orphaned_trials(study)
    if tracking:
        close_orphaned_mlflow_runs(ctx, study)
    ran = len(_finished_numbers(study) - before)
    result = TuneResult(study, trial_counts(study), seconds=seconds, trials_run=ran)
    if ran:
        say(f"[{ctx.study_name}] {ran} trials in {seconds / 60:.1f} min ({3600 * ran / max(seconds, 1e-9):.1f} trials/hour "
            f"with {max(workers, 1)} worker(s))")
    if write:
        result.outputs = write_outputs(ctx, study)
        for name, path in result.outputs.items():
            say(f"[{ctx.study_name}] wrote {path}")
    if worker_errors:
        raise TuningError(f"worker processes ended with errors (pid, exit code: {worker_errors}); their messages are "
                          f"above. Finished trials are kept in {_hide_password(ctx.storage)}: rerun to resume")
    return result


def _param_names(ctx: TuningContext) -> list[str]:
    """The untuned params that the space searches (mdr's levels stand for its num_levels and spacing)."""
    low = {k: (d.low if d.type == "float" else int(d.low)) for k, d in ctx.space.items()}
    sample = {**regularizer_params(ctx.regularizer, low), **loss_keys(loss_params(low))}
    return [k for k in sample if k in ctx.untuned_params()]


def _guarded_init_store(ctx: TuningContext) -> None:
    """Create the MLflow store and experiment once, before workers write to it (docs/tooling.md)."""
    try:
        from mdr.tracking import init_store

        init_store(ctx.experiment)
    except Exception as e:
        warnings.warn(f"MLflow store could not be initialised ({type(e).__name__}: {e}); trials run untracked "
                      f"where it keeps failing", stacklevel=2)


def _run_workers(ctx: TuningContext, n_total: int, remaining: int, workers: int, train_fn: TrainFn | None,
                 tracking: bool, echo_epochs: bool, say: Callable[[str], None]) -> list[tuple[int, int]]:
    import multiprocessing as mp

    spawn = mp.get_context("spawn")  # never fork a process that may have run faiss or torch threads
    shares = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    procs = []
    for index, share in enumerate(shares):
        if not share:
            continue
        p = spawn.Process(target=_worker_main, args=(ctx.profile, ctx.dataset, str(ctx.params_dir), ctx.storage,
                                                     ctx.study_name, n_total, share, train_fn, tracking, echo_epochs,
                                                     index + 1, ctx.method))
        p.start()
        procs.append(p)
    say(f"[{ctx.study_name}] {len(procs)} worker processes on the study (pids {[p.pid for p in procs]})")
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # they got the SIGINT too; give them time to mark their trials
            p.join(timeout=30)
        raise
    return [(p.pid, p.exitcode) for p in procs if p.exitcode]
