"""Trial bookkeeping: a trial's state, whether a FAIL was an interruption (`is_interrupted`), the counts
of a study (`trial_counts`), and the orphans a killed worker leaves: RUNNING trials of dead processes on
this host are failed as interrupted (`fail_orphaned_trials`), their MLflow runs ended
(`close_orphaned_mlflow_runs`), and interrupted trials' parameters queued again (`requeue_interrupted`)."""
from __future__ import annotations

import os
import socket
import warnings
from typing import Any

from mdr.tuning.context import TuningContext
from mdr.tuning.tracking import TrialTracker


# ---- trial bookkeeping ----------------------------------------------------------------------------

def _state(t: Any) -> str:
    return t.state.name


def is_interrupted(t: Any) -> bool:
    """A FAIL that says nothing about its parameters: Ctrl-C, a killed worker, a stale heartbeat."""
    return _state(t) == "FAIL" and (bool(t.user_attrs.get("interrupted")) or "failure" not in t.user_attrs)


def trial_counts(study: Any) -> dict[str, int]:
    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        s = _state(t)
        if s == "COMPLETE":
            counts["complete"] += 1
        elif s == "PRUNED":
            counts["pruned"] += 1
        elif s == "FAIL":
            counts["interrupted" if is_interrupted(t) else "failed"] += 1
        elif s == "RUNNING":
            counts["running"] += 1
        elif s == "WAITING":
            counts["waiting"] += 1
    counts["finished"] = counts["complete"] + counts["pruned"] + counts["failed"]
    return counts


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: Any) -> list[int]:
    """RUNNING trials whose worker process on this host is gone (killed, crashed): mark them FAIL +
    interrupted so that they are retried. (On RDB storages heartbeats also catch other hosts.)"""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or _alive(int(worker.get("pid", -1))):
            continue
        trial = optuna.trial.Trial(study, t._trial_id)
        try:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("failure", f"interrupted: worker process {worker.get('pid')} on {host} ended during the trial")
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
        except Exception:  # another process got there first
            pass
    return failed


def close_orphaned_mlflow_runs(ctx: "TuningContext", study: Any) -> list[int]:
    """The MLflow runs of trials that are no longer RUNNING in the study but were left RUNNING in MLflow (their
    worker was killed before it could end them): ended as KILLED (interrupted) or FAILED, like TrialTracker
    would have. Guarded: MLflow trouble never stops the study."""
    try:
        from mlflow.tracking import MlflowClient

        from mdr.tracking import init_store, tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri())
        exp_id = init_store(ctx.experiment)
        left = client.search_runs([exp_id], filter_string=f"tags.study = '{ctx.study_name}' and attributes.status = 'RUNNING'")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        closed = []
        for run in left:
            t = trials.get(int(run.data.tags.get("trial", -1)))
            if t is None or _state(t) in ("RUNNING", "WAITING"):
                continue
            state = "INTERRUPTED" if is_interrupted(t) else _state(t)
            client.set_tag(run.info.run_id, "optuna_state", _state(t))
            if t.user_attrs.get("failure"):
                client.set_tag(run.info.run_id, "failure", str(t.user_attrs["failure"])[:5000])
            client.set_terminated(run.info.run_id, status=TrialTracker.STATUS.get(state, "FAILED"))
            closed.append(t.number)
        return closed
    except Exception as e:
        warnings.warn(f"MLflow runs of killed trials could not be ended: {type(e).__name__}: {e}", stacklevel=2)
        return []


def requeue_interrupted(study: Any) -> list[int]:
    """Enqueue the parameters of interrupted trials not yet retried, so an interruption loses no point of
    the search. Called once per start (by the parent when several local workers run)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for t in trials:
        if is_interrupted(t) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            queued.append(t.number)
    return queued
