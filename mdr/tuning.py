"""Hyperparameter tuning of a regularizer with Optuna (params/tuning.yaml; `python -m pipeline tune`).

Protocol ("A Metric Learning Reality Check"): a trial trains the method's resolved config for one
logical dataset on the training classes less `validation_classes` held-out ones, and reports Recall@1
on those held-out classes after every epoch; the test classes are never seen. TPE samples, the
median pruner stops weak trials early. The study's value is a trial's best validation Recall@1 over
its epochs (the grid also reports the best epoch). The best configuration is written to
params/tuned/<profile>/<dataset>-<regularizer>.yaml, which the grid applies when `use_tuned` is on, and can be
retrained on all training classes and tested once (`retrain_best`).

Storage: a journal file (optuna/<profile>/<dataset>.journal) by default: append-only, survives an
interruption, and several local processes can share it; or any Optuna storage URL (PostgreSQL for
workers on several machines). Rerunning the same command resumes the study up to the requested
number of finished trials (complete, pruned or failed; interrupted trials do not count and their
parameters are tried again).

Faults: a trial whose loss diverges (NaN/inf) or that runs out of memory is marked FAIL with a
`failure` user attribute, its MLflow run is FAILED, and the study goes on. Ctrl-C (or SIGTERM via the
command) marks the running trial FAIL + `interrupted`; a worker killed outright leaves a RUNNING trial
that the next start on this host (or the parent of local workers) marks the same way, and its MLflow run
KILLED. Finished trials are never lost: each is in the
store the moment it ends. Any other error in a trial marks it FAIL and stops the study (a bug or a
setup problem would fail every trial alike).
"""
from __future__ import annotations

import gc
import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mdr.config import ConfigError, RunConfig, _short_errors, validate_run_config
from mdr.grid import (PARAMS_DIR, TableDef, load_methods, load_profile, resolve, run_id, set_path, tuned_file)

TUNING_FILE = "tuning.yaml"
STORE_DIR = Path("optuna")
RUNS = Path("runs")
RESULTS = Path("results")


class TuningError(RuntimeError):
    """A problem the user can fix (a corrupt or locked store, a changed study, nothing tuned yet)."""


class TrialFailed(Exception):
    """A trial fault that must not stop the study (diverged, out of memory); the trial is marked FAIL."""


# ---- params/tuning.yaml ---------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(Strict):
    type: Literal["int", "float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> "Distribution":
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log distribution needs low > 0")
        return self

    def suggest(self, trial: Any, name: str) -> float | int:
        if self.type == "int":
            return trial.suggest_int(name, low=int(self.low), high=int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, low=self.low, high=self.high, step=self.step, log=self.log)


class DatasetTuning(Strict):
    validation_classes: int = Field(gt=0, description="training classes held out for validation (never test classes)")


class ProfileTuning(Strict):
    n_trials: int = Field(gt=0)
    datasets: dict[str, DatasetTuning]
    tune: list[str] = Field(default_factory=list, description="logical datasets the tune_all target tunes")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted settings applied to trials only")
    sampler: dict[str, Any] = Field(default_factory=dict, description="TPESampler keyword arguments")
    pruner: dict[str, Any] = Field(default_factory=dict, description="MedianPruner keyword arguments")

    @model_validator(mode="after")
    def _listed(self) -> "ProfileTuning":
        missing = [d for d in self.tune if d not in self.datasets]
        if missing:
            raise ValueError(f"tune lists {missing}, which have no entry under datasets")
        return self


class TuningSpec(Strict):
    method: str
    search_spaces: dict[str, dict[str, Distribution]]
    profiles: dict[str, ProfileTuning]


def load_tuning(params_dir: Path = PARAMS_DIR) -> TuningSpec:
    path = Path(params_dir) / TUNING_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (the tuning settings)") from None
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error(path, e)) from None
    try:
        return TuningSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_short_errors(e)}") from None


def yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """One line: the file, the line and column of the fault, and what is wrong there."""
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    if context is not None and mark is not None and getattr(e, "context", None):
        # an unclosed bracket or quote is found lines later: point at where it was opened
        what = f"{e.context} opened here: {what} at line {mark.line + 1}, column {mark.column + 1}"
        mark = context
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: not valid YAML ({what}); fix the file there"


def method_for(regularizer: str, params_dir: Path = PARAMS_DIR) -> str:
    """The method that tunes `regularizer`: the one in params/methods.yaml with tuning.yaml's method's loss
    and this regularizer (mdr -> Triplet+MDR, lsd -> Triplet+LSD, ...)."""
    spec = load_tuning(params_dir)
    methods = load_methods(Path(params_dir))
    loss = methods[spec.method].loss
    for name, m in methods.items():
        if m.loss == loss and m.regularizer == regularizer:
            return name
    raise ConfigError(f"{Path(params_dir) / 'methods.yaml'}: no method with loss {loss!r} and regularizer "
                      f"{regularizer!r} to tune (tunable regularizers: {', '.join(spec.search_spaces)})")


# ---- search space -> regularizer params -----------------------------------------------------------

def symmetric_levels(num_levels: int, spacing: float) -> list[float]:
    """n levels `spacing` apart, symmetric around 0: (3, 3.0) -> [-3, 0, 3]; (2, 3.0) -> [-1.5, 1.5]."""
    return [round((i - (num_levels - 1) / 2) * spacing, 4) + 0.0 for i in range(num_levels)]


def regularizer_params(regularizer: str, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values -> the regularizer's params (mdr: num_levels + spacing -> levels)."""
    params = dict(sampled)
    if regularizer == "mdr":
        params["levels"] = symmetric_levels(int(params.pop("num_levels")), float(params.pop("spacing")))
    return params


def baseline_point(regularizer: str, params: dict[str, Any], space: dict[str, Distribution]) -> dict[str, Any] | None:
    """The search-space point of the untuned params (mdr: [-3, 0, 3] -> num_levels 3, spacing 3), or None
    if they cannot be expressed in the space (e.g. asymmetric levels, or a value out of range)."""
    point = dict(params)
    if regularizer == "mdr":
        levels = [float(x) for x in point.pop("levels")]
        n = len(levels)
        spacing = (levels[-1] - levels[0]) / (n - 1) if n > 1 else 0.0
        if n < 2 or symmetric_levels(n, spacing) != [round(x, 4) + 0.0 for x in levels]:
            return None
        point.update(num_levels=n, spacing=spacing)
    if set(point) != set(space):
        return None
    for name, dist in space.items():
        if not dist.low <= point[name] <= dist.high:
            return None
    return {k: (int(v) if space[k].type == "int" else float(v)) for k, v in point.items()}


def suggest(trial: Any, space: dict[str, Distribution]) -> dict[str, Any]:
    return {name: dist.suggest(trial, name) for name, dist in space.items()}


# ---- one study's context --------------------------------------------------------------------------

@dataclass
class TuningContext:
    profile: str
    dataset: str
    params_dir: Path
    spec: TuningSpec
    settings: ProfileTuning
    regularizer: str
    base: RunConfig  # the method's config for the dataset, seed 0, untuned
    storage: str  # a journal file path or a storage URL
    study_name: str
    method: str  # the tuned method (params/methods.yaml); its regularizer's search space is searched

    @property
    def space(self) -> dict[str, Distribution]:
        return self.spec.search_spaces[self.regularizer]

    @property
    def validation_classes(self) -> int:
        return self.settings.datasets[self.dataset].validation_classes

    @property
    def trial_root(self) -> Path:
        return RUNS / self.profile / "tuning" / self.stem

    @property
    def stem(self) -> str:
        """<dataset>-<regularizer>: names this study's trial folders, tuned file, summary and plots."""
        return f"{self.dataset}-{self.regularizer}"

    def trial_dir(self, number: int) -> Path:
        return self.trial_root / f"trial-{number}"

    @property
    def results_dir(self) -> Path:
        return RESULTS / self.profile / "tuning"

    @property
    def experiment(self) -> str:
        return f"{self.profile}-tuning"  # MLflow experiment mdr-<profile>-tuning

    def study_attrs(self) -> dict[str, Any]:
        """What makes trials comparable; a study created with other values is refused on resume."""
        return {"profile": self.profile, "dataset": self.dataset, "method": self.method,
                "validation_classes": self.validation_classes,
                "search_space": {k: v.model_dump() for k, v in self.space.items()},
                "trial_settings": self.settings.set, "base_fingerprint": self.base.fingerprint()}


def method_config(profile: str, dataset: str, method: str, seed: int, params_dir: Path = PARAMS_DIR,
                  use_tuned: bool = False) -> tuple[RunConfig, dict[str, Any]]:
    """The grid's resolved config of `method` on `dataset` (what table1's cell trains), tuned or not."""
    prof = load_profile(profile, params_dir).model_copy(update={"use_tuned": use_tuned})
    methods = load_methods(params_dir)
    table = TableDef(name="tuning", title="tuning base", axes={"dataset": [dataset], "method": [method]},
                     rows=["dataset", "method"])
    source = f"params/tuning.yaml [profile {profile}, dataset {dataset}, method {method}, seed {seed}]"
    return resolve(prof, methods, table, {"dataset": dataset, "method": method}, seed, source, params_dir)


def default_storage(profile: str, dataset: str) -> str:
    return str(STORE_DIR / profile / f"{dataset}.journal")


def make_context(profile: str, dataset: str, params_dir: Path = PARAMS_DIR, storage: str | None = None,
                 study_name: str | None = None, method: str | None = None) -> TuningContext:
    """`method`: what to tune (default: params/tuning.yaml's `method`)."""
    params_dir = Path(params_dir)
    spec = load_tuning(params_dir)
    if profile not in spec.profiles:
        raise ConfigError(f"{params_dir / TUNING_FILE}: no tuning settings for profile {profile!r} "
                          f"(profiles: {', '.join(spec.profiles)})")
    settings = spec.profiles[profile]
    if dataset not in settings.datasets:
        raise ConfigError(f"{params_dir / TUNING_FILE}: profile {profile} has no tuning settings for dataset "
                          f"{dataset!r}; add `{dataset}: {{validation_classes: N}}` under profiles.{profile}.datasets "
                          f"(tunable: {', '.join(settings.datasets)})")
    method = method or spec.method
    base, facts = method_config(profile, dataset, method, 0, params_dir)
    regularizer = facts["regularizer"]
    if regularizer not in spec.search_spaces:
        raise ConfigError(f"{params_dir / TUNING_FILE}: method {method} uses regularizer {regularizer!r}, "
                          f"which has no search space (search_spaces: {', '.join(spec.search_spaces)})")
    return TuningContext(profile, dataset, params_dir, spec, settings, regularizer, base,
                         storage or default_storage(profile, dataset),
                         study_name or f"{profile}-{dataset}-{regularizer}", method)


def trial_config(ctx: TuningContext, reg_params: dict[str, Any], seed: int = 0) -> RunConfig:
    """The base config with the trial's regularizer params, the held-out validation classes and the
    profile's trial-only settings."""
    data = ctx.base.model_dump(mode="json")
    for dotted, value in ctx.settings.set.items():
        set_path(data, dotted, value)
    data["regularizer"]["params"].update(reg_params)
    data["data"]["validation_classes"] = ctx.validation_classes
    data["seed"] = seed
    config = validate_run_config(data, f"tuning trial ({ctx.profile}/{ctx.dataset})")
    assert config.data.validation_classes > 0, "tuning must never select on the test classes"
    return config


# ---- storage --------------------------------------------------------------------------------------

def _is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str) -> Any:
    """An Optuna storage for a journal file path or a URL; a corrupt or locked store raises TuningError
    with one message naming it and what to do."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if _is_url(storage):
        shown = _hide_password(storage)
        try:
            kwargs: dict[str, Any] = {}
            if storage.startswith("sqlite"):
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": float(os.environ.get("MDR_SQLITE_TIMEOUT", 30))}}
            # heartbeats: a trial whose worker died (any machine) is failed after `grace_period` s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(storage, heartbeat_interval=60, grace_period=180, **kwargs)
        except Exception as e:  # sqlalchemy errors, bad URLs, missing drivers
            text = f"{type(e).__name__}: {e}".splitlines()[0]
            if "locked" in text:
                hint = ("another process holds a write lock on it; wait for it to finish, or use the journal file "
                        "(default) or PostgreSQL for several workers")
            elif "not a database" in text or "malformed" in text:
                hint = "the file is damaged: move it away to start afresh, or restore a backup"
            else:
                hint = "check the URL, that the server is reachable and that its driver is installed (e.g. psycopg2 for postgresql://)"
            raise TuningError(f"cannot open the Optuna store {shown}: {text}; {hint}") from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise TuningError(
            f"the Optuna journal {path} is corrupt ({type(e).__name__}: {e}); it was left as is. Move it away "
            f"(mv {path} {path}.broken) to start a new study, or restore it from a backup; finished trials' run "
            f"folders and MLflow runs are kept either way") from None
    except optuna.exceptions.OptunaError as e:
        raise TuningError(f"cannot read the Optuna journal {path}: {e}") from None


def _clear_stale_lock(path: Path, stale_after: float = 120.0) -> None:
    """A journal write holds `<file>.lock` for milliseconds; one older than `stale_after` seconds was
    left by a killed process. Optuna would break it after 30 s of waiting; say so and break it now."""
    lock = Path(str(path) + ".lock")
    try:
        age = time.time() - lock.lstat().st_mtime
    except FileNotFoundError:
        return
    if age > stale_after:
        warnings.warn(f"{lock} is a stale lock ({age:.0f} s old, left by a killed worker); removing it", stacklevel=2)
        lock.unlink(missing_ok=True)


def _hide_password(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _sampler(ctx: TuningContext, offset: int = 0) -> Any:
    """TPE with the profile's settings. A fixed seed would make a resumed study or a second worker
    propose the same points again, so the seed is offset by the trials already in the study and by the
    worker's index: a fresh single-worker study is reproducible, and no two starts repeat each other."""
    import optuna

    kwargs = dict(ctx.settings.sampler)
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + offset
    return optuna.samplers.TPESampler(**kwargs)


def _pruner(ctx: TuningContext) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(**ctx.settings.pruner)


def open_study(ctx: TuningContext, create: bool = True, worker: int = 0) -> Any:
    """Create the study or load it (resume); refuse a study created with other settings."""
    import optuna

    storage = open_storage(ctx.storage)
    try:
        if create:
            optuna.create_study(study_name=ctx.study_name, storage=storage, direction="maximize", load_if_exists=True)
        try:
            existing = optuna.load_study(study_name=ctx.study_name, storage=storage)
        except KeyError:
            raise TuningError(f"no study {ctx.study_name} in {_hide_password(ctx.storage)}") from None
        offset = len(existing.get_trials(deepcopy=False)) + 7919 * worker
        study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=_sampler(ctx, offset),
                                  pruner=_pruner(ctx))
    except TuningError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # a journal line damaged after opening
        raise TuningError(f"the Optuna store {ctx.storage} could not be read: {type(e).__name__}: {e}") from None
    want = ctx.study_attrs()
    have = study.user_attrs
    if not have:
        for key, value in want.items():
            study.set_user_attr(key, value)
    else:
        changed = sorted(k for k in want if json.dumps(have.get(k), sort_keys=True) != json.dumps(want[k], sort_keys=True))
        if changed:
            details = "; ".join(f"{k}: study has {have.get(k)!r}, params now give {want[k]!r}" for k in changed)
            raise TuningError(
                f"study {ctx.study_name} in {_hide_password(ctx.storage)} was created with other settings ({details}). "
                f"Its trials are not comparable with new ones: pass --study-name <new name>, or move the store away "
                f"to start afresh")
    return study


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


# ---- MLflow: one run per trial --------------------------------------------------------------------

class TrialTracker:
    """Logs a trial as an MLflow run of experiment mdr-<profile>-tuning: params, per-epoch metrics, the
    trial's state and failure. Every call is guarded: MLflow trouble never stops a trial or the study."""

    STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}

    def __init__(self, ctx: TuningContext, trial_number: int, enabled: bool = True):
        self.ctx, self.number, self.enabled = ctx, trial_number, enabled
        self.client: Any = None
        self.run_id: str | None = None

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        if not self.enabled or (self.run_id is None and what != "start"):
            return
        try:
            fn()
        except Exception as e:
            warnings.warn(f"MLflow {what} failed for trial {self.number}: {type(e).__name__}: {e}", stacklevel=3)

    def start(self, config: RunConfig, sampled: dict[str, Any]) -> None:
        def go() -> None:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            from mdr.tracking import flatten, init_store, tracking_uri

            self.client = MlflowClient(tracking_uri=tracking_uri())
            exp_id = init_store(self.ctx.experiment)
            tags = {"study": self.ctx.study_name, "trial": str(self.number), "profile": self.ctx.profile,
                    "dataset": self.ctx.dataset, "method": self.ctx.method, "kind": "tuning-trial",
                    "fingerprint": config.fingerprint(), "optuna_state": "RUNNING"}
            run = self.client.create_run(exp_id, run_name=f"{self.ctx.study_name}-trial-{self.number}", tags=tags)
            self.run_id = run.info.run_id
            params = {**{f"search.{k}": v for k, v in sampled.items()}, **flatten(config.model_dump(mode="json"))}
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

        self._guard("start", go)

    # engine callback protocol
    def on_train_start(self, config: RunConfig, run_dir: Path, start_epoch: int) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        def go() -> None:
            from mlflow.entities import Metric

            from mdr.tracking import numeric

            now = int(time.time() * 1000)
            step = int(record["epoch"])
            metrics = [Metric(k, v, now, step) for k, v in numeric(record).items() if math.isfinite(v)]
            self.client.log_batch(self.run_id, metrics=metrics)

        self._guard("log_metrics", go)

    def on_train_end(self, status: str, summary: dict[str, Any] | None, error: str | None) -> None:
        pass  # the objective calls finish() with the trial's state

    def finish(self, state: str, value: float | None = None, failure: str | None = None) -> None:
        def go() -> None:
            self.client.set_tag(self.run_id, "optuna_state", state)
            if failure:
                self.client.set_tag(self.run_id, "failure", failure[:5000])
            if value is not None:
                self.client.log_metric(self.run_id, "validation_recall_at_1", value)
            self.client.set_terminated(self.run_id, status=self.STATUS[state])

        self._guard("end", go)


# ---- the objective --------------------------------------------------------------------------------

TrainFn = Callable[[RunConfig, Path, list, bool], list]


def engine_train(config: RunConfig, run_dir: Path, callbacks: list, echo: bool = False) -> list[dict[str, Any]]:
    """The default trial trainer: mdr.engine.train from scratch; returns the epoch history."""
    from mdr.engine import train

    return train(config, run_dir, resume=False, progress=False, echo=echo, callbacks=callbacks).history


class PruningCallback:
    """Engine callback: report each evaluated epoch's validation Recall@1; stop the trial if pruned."""

    def __init__(self, trial: Any, prune: bool = True):
        self.trial, self.prune = trial, prune

    def on_train_start(self, *args: Any) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        value = record.get("recall_at_1")
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=int(record["epoch"]))
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (validation R@1 {100 * value:.2f})")

    def on_train_end(self, *args: Any) -> None:
        pass


def _is_out_of_memory(e: BaseException) -> bool:
    import torch

    if isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


@dataclass
class Objective:
    ctx: TuningContext
    train_fn: TrainFn | None = None
    tracking: bool = True
    echo_epochs: bool = False

    def __call__(self, trial: Any) -> float:
        import optuna

        from mdr.engine import NonFiniteLossError

        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        sampled = suggest(trial, self.ctx.space)
        params = regularizer_params(self.ctx.regularizer, sampled)
        trial.set_user_attr("regularizer_params", params)
        try:
            config = trial_config(self.ctx, params)
        except Exception as e:  # a FAIL without `failure` would count as interrupted and be retried forever
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            raise
        run_dir = self.ctx.trial_dir(trial.number)
        tracker = TrialTracker(self.ctx, trial.number, self.tracking)
        tracker.start(config, sampled)
        train_fn = self.train_fn or engine_train
        try:
            # the baseline (untuned defaults) always runs to the end: it is the reference, not a candidate
            pruning = PruningCallback(trial, prune=not trial.user_attrs.get("baseline"))
            history = train_fn(config, run_dir, [tracker, pruning], self.echo_epochs)
        except optuna.TrialPruned:
            tracker.finish("PRUNED")
            raise
        except KeyboardInterrupt:
            message = "interrupted (Ctrl-C or SIGTERM); its parameters are tried again when the study resumes"
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("failure", message)
            tracker.finish("INTERRUPTED", failure=message)
            raise
        except NonFiniteLossError as e:
            self._fail(trial, tracker, f"diverged: {e}")
        except Exception as e:
            if _is_out_of_memory(e):
                _free_memory()
                self._fail(trial, tracker, f"out of memory: {type(e).__name__}: {e}. Lower train.batch_size "
                                           f"(or the image size) for the trials in params/tuning.yaml `set:`")
            message = f"{type(e).__name__}: {e}"
            trial.set_user_attr("failure", message)
            tracker.finish("FAIL", failure=message)
            raise
        scored = [r for r in history if r.get("recall_at_1") is not None]
        if not scored or not all(math.isfinite(r["recall_at_1"]) for r in scored):
            self._fail(trial, tracker, "diverged: validation Recall@1 is missing or not finite")
        best = max(scored, key=lambda r: (r["recall_at_1"], -r["epoch"]))
        trial.set_user_attr("best_epoch", int(best["epoch"]))
        value = float(best["recall_at_1"])
        tracker.finish("COMPLETE", value)
        return value

    def _fail(self, trial: Any, tracker: TrialTracker, message: str) -> None:
        trial.set_user_attr("failure", message)
        tracker.finish("FAIL", failure=message)
        raise TrialFailed(message)


# ---- running a study ------------------------------------------------------------------------------

def _trial_line(study: Any, number: int, n_total: int) -> str:
    t = study.get_trials(deepcopy=False)[number]
    counts = trial_counts(study)
    state = "INTERRUPTED" if is_interrupted(t) else _state(t)
    params = t.user_attrs.get("regularizer_params", {})
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


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
        point = baseline_point(ctx.regularizer, {k: ctx.base.regularizer.params[k] for k in _param_names(ctx)}, ctx.space)
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
    sample = regularizer_params(ctx.regularizer, {k: (d.low if d.type == "float" else int(d.low)) for k, d in ctx.space.items()})
    return [k for k in sample if k in ctx.base.regularizer.params]


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


# ---- outputs --------------------------------------------------------------------------------------

def tuned_document(ctx: TuningContext, study: Any) -> dict[str, Any] | None:
    """params/tuned/<profile>/<dataset>-<regularizer>.yaml's content: the best trial's params; None without one."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    counts = trial_counts(study)
    params = best.user_attrs.get("regularizer_params") or regularizer_params(ctx.regularizer, best.params)
    baseline = next((t for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get("baseline") and _state(t) == "COMPLETE"), None)
    return {
        "profile": ctx.profile,
        "dataset": ctx.dataset,
        "trained_on": ctx.base.data.dataset,
        "method": ctx.method,
        "regularizer": {"name": ctx.regularizer, "params": params},
        "search": dict(best.params),
        "study": {
            "name": ctx.study_name,
            "best_trial": best.number,
            "best_validation_recall_at_1": round(float(best.value), 6),
            "best_epoch": best.user_attrs.get("best_epoch"),
            "baseline_validation_recall_at_1": round(float(baseline.value), 6) if baseline is not None else None,
            "validation_classes": ctx.validation_classes,
            "finished_trials": counts["finished"],
            "complete": counts["complete"], "pruned": counts["pruned"], "failed": counts["failed"],
        },
    }


def write_outputs(ctx: TuningContext, study: Any) -> dict[str, Path]:
    from mdr.io import atomic_write_text

    out: dict[str, Path] = {}
    doc = tuned_document(ctx, study)
    if doc is not None:
        path = tuned_file(ctx.params_dir, ctx.profile, ctx.dataset, ctx.regularizer)
        header = (f"# Tuned {ctx.regularizer} settings for {ctx.dataset} in profile {ctx.profile}, written by\n"
                  f"# `python -m pipeline tune --profile {ctx.profile} --dataset {ctx.dataset} --method {ctx.method}` (study {ctx.study_name}).\n"
                  f"# Selected on {ctx.validation_classes} held-out training classes, never on test classes.\n"
                  f"# The grid applies regularizer.params when use_tuned is on.\n")
        atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
        out["tuned"] = path
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    out.update(write_plots(ctx, study))
    summary = ctx.results_dir / f"{ctx.stem}.md"
    atomic_write_text(summary, summary_markdown(ctx, study, doc))
    out["summary"] = summary
    return out


def write_plots(ctx: TuningContext, study: Any) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = {}
    complete = [t for t in study.get_trials(deepcopy=False) if _state(t) == "COMPLETE"]
    for name, plot, need in (("history", ovm.plot_optimization_history, 1), ("importances", ovm.plot_param_importances, 2)):
        path = ctx.results_dir / f"{ctx.stem}-{name}.png"
        fig = None
        try:
            if len(complete) < need:
                raise ValueError(f"needs at least {need} completed trial{'s' if need > 1 else ''}; "
                                 f"the study has {len(complete)}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal" with few trials
                ax = plot(study)
            fig = (ax if not hasattr(ax, "figure") else ax.figure)
            if name == "history" and hasattr(ax, "set_ylabel"):
                ax.set_ylabel("validation Recall@1")
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
        except Exception as e:  # too few trials, no variation in a parameter, ...
            if fig is not None:
                plt.close(fig)
            fig, ax = plt.subplots(figsize=(7, 4.5))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{ctx.study_name}: no {name} plot yet\n{type(e).__name__}: {e}", ha="center",
                    va="center", wrap=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        out[name] = path
    return out


def summary_markdown(ctx: TuningContext, study: Any, doc: dict[str, Any] | None) -> str:
    counts = trial_counts(study)
    lines = [f"# Tuning {ctx.regularizer} on {ctx.dataset} ({ctx.profile} profile)", "",
             f"Study `{ctx.study_name}`: {ctx.method}, trained on `{ctx.base.data.dataset}` less its last "
             f"{ctx.validation_classes} training classes, which are the validation set (the test classes are never "
             f"used). TPE sampler, median pruning on per-epoch validation Recall@1; a trial's value is its best "
             f"validation Recall@1.", "",
             f"Trials: {counts['finished']} finished ({counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['failed']} failed), {counts['interrupted']} interrupted (retried).", ""]
    if doc is not None:
        s = doc["study"]
        base = s.get("baseline_validation_recall_at_1")
        lines += [f"**Best**: trial {s['best_trial']}, validation R@1 {100 * s['best_validation_recall_at_1']:.2f} "
                  f"(epoch {s['best_epoch']}): " + ", ".join(f"{k} = {_fmt(v)}" for k, v in doc["regularizer"]["params"].items())
                  + (f". The untuned defaults (the baseline trial): {100 * base:.2f}." if base is not None else "."),
                  f"Written to `{tuned_file(Path('params'), ctx.profile, ctx.dataset, ctx.regularizer)}`; the default is "
                  + ", ".join(f"{k} = {_fmt(ctx.base.regularizer.params.get(k))}" for k in doc["regularizer"]["params"]) + ".", ""]
    lines += [f"![optimization history]({ctx.stem}-history.png) ![parameter importances]({ctx.stem}-importances.png)", "",
              "val R@1: a complete trial's best validation Recall@1 (at `epoch`); in brackets, the last value a pruned "
              "or failed trial reported. Levels: `num_levels` levels `spacing` apart, symmetric around 0.", "",
              "| trial | state | val R@1 | epoch | " + " | ".join(ctx.space) + " | note |",
              "|---:|---|---:|---:|" + "---:|" * len(ctx.space) + "---|"]
    for t in study.get_trials(deepcopy=False):
        state = "INTERRUPTED" if is_interrupted(t) else _state(t)
        if state in ("RUNNING", "WAITING"):
            continue
        if state == "COMPLETE":
            value = f"{100 * t.value:.2f}"
            epoch = str(t.user_attrs.get("best_epoch", ""))
        elif t.intermediate_values:
            step = max(t.intermediate_values)
            value, epoch = f"({100 * t.intermediate_values[step]:.2f})", str(step)
        else:
            value, epoch = "", ""
        note = t.user_attrs.get("failure", "") if state in ("FAIL", "INTERRUPTED") else ""
        if t.user_attrs.get("baseline"):
            note = ("baseline: the untuned defaults " + note).strip()
        if t.user_attrs.get("retry_of") is not None:
            note = (note + f" retry of trial {t.user_attrs['retry_of']}").strip()
        cells = [_fmt(t.params.get(k, "")) for k in ctx.space]
        lines.append(f"| {t.number} | {state} | {value} | {epoch} | " + " | ".join(cells) + f" | {note.replace('|', '/')[:200]} |")
    return "\n".join(lines) + "\n"


# ---- retraining the best configuration on all training classes ------------------------------------

def retrain_best(profile: str, dataset: str, *, params_dir: Path = PARAMS_DIR, seeds: list[int] | None = None,
                 tracking: bool = True, echo: Callable[[str], None] | None = print, progress: bool = False,
                 method: str | None = None) -> Path:
    """Train the tuned config (the grid's run under use_tuned: all training classes, the test split for
    evaluation) for the profile's seeds, evaluate it, and compare with the default config's runs where
    they have been evaluated. Writes results/<profile>/tuning/<dataset>-<regularizer>-best-test.md."""
    from mdr import layout
    from mdr.engine import train
    from mdr.evaluation import evaluate_run
    from mdr.io import atomic_write_text

    params_dir = Path(params_dir)
    spec = load_tuning(params_dir)
    method = method or spec.method
    prof = load_profile(profile, params_dir)
    regularizer = method_config(profile, dataset, method, 0, params_dir)[1]["regularizer"]
    path = tuned_file(params_dir, profile, dataset, regularizer)
    if not path.exists():
        raise TuningError(f"{path} does not exist: run `python -m pipeline tune --profile {profile} --dataset {dataset} "
                          f"--method {method}` first")
    tuned_doc = yaml.safe_load(path.read_text())
    say = echo or (lambda s: None)
    rows = []
    for seed in seeds or prof.seeds:
        config, facts = method_config(profile, dataset, method, seed, params_dir, use_tuned=True)
        default, _ = method_config(profile, dataset, method, seed, params_dir, use_tuned=False)
        assert config.data.validation_classes == 0
        rid = run_id(config)
        run_dir = layout.run_dir(profile, rid)
        metrics_path = layout.metrics_file(profile, rid)
        if not metrics_path.exists():
            callbacks = []
            if tracking:
                from mdr.describe import describe_config
                from mdr.tracking import MLflowLogger

                name, tags = describe_config(config.model_dump(mode="json"), load_methods(Path(params_dir)),
                                             config.fingerprint())
                callbacks.append(MLflowLogger(profile, rid, {**tags, "stands_in_for": str(facts["dataset"]), "tuned": "true",
                                                             "study": tuned_doc["study"]["name"]}, f"tuned {name}"))
            say(f"[retrain] {rid}: training the tuned config on all training classes (seed {seed})")
            summary = train(config, run_dir, resume=True, progress=progress, echo=echo is not None, callbacks=callbacks).summary
            atomic_write_text(layout.trained_marker(profile, rid),
                              json.dumps({"run": rid, "fingerprint": config.fingerprint(), **summary}, indent=1) + "\n")
            metrics = {"run": rid, "tags": {k: str(v) for k, v in facts.items() if k != "table"}, **evaluate_run(config, run_dir)}
            atomic_write_text(metrics_path, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            if tracking:
                from mdr.tracking import log_evaluation

                log_evaluation(profile, rid, metrics, [metrics_path, run_dir / "config.yaml", run_dir / "history.json"])
        tuned_metrics = json.loads(metrics_path.read_text())
        default_id = run_id(default)
        default_path = layout.metrics_file(profile, default_id)
        default_metrics = json.loads(default_path.read_text()) if default_path.exists() else None
        rows.append((seed, rid, tuned_metrics, default_id, default_metrics))
    out = RESULTS / profile / "tuning" / f"{dataset}-{regularizer}-best-test.md"
    atomic_write_text(out, best_test_markdown(profile, dataset, tuned_doc, rows, config))
    say(f"[retrain] wrote {out}")
    return out


def best_test_markdown(profile: str, dataset: str, tuned_doc: dict[str, Any], rows: list[tuple], config: RunConfig) -> str:
    import numpy as np

    ks = list(config.eval.ks)
    keys = [f"recall_at_{k}" for k in ks]
    keys = [k for k in keys if all(k in r[2]["best"] for r in rows)]
    header = "| config | seed | run | " + " | ".join(k.replace("recall_at_", "R@") for k in keys) + " |"
    lines = [f"# Tuned vs default {tuned_doc['regularizer']['name']} on {dataset} ({profile} profile): test Recall@K", "",
             f"Tuned on validation classes (study `{tuned_doc['study']['name']}`, best validation R@1 "
             f"{100 * tuned_doc['study']['best_validation_recall_at_1']:.2f}), then retrained on all training classes "
             f"and tested once on the test classes. Best epoch on the test split, as in the grid's tables.", "",
             "Tuned: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in tuned_doc["regularizer"]["params"].items()), "",
             header, "|---|---:|---|" + "---:|" * len(keys)]
    tuned_vals, default_vals = [], []
    for seed, rid, tuned, did, default in rows:
        tuned_vals.append([tuned["best"][k] for k in keys])
        lines.append(f"| tuned | {seed} | `{rid}` | " + " | ".join(f"{100 * tuned['best'][k]:.2f}" for k in keys) + " |")
        if default is not None:
            default_vals.append([default["best"].get(k, float("nan")) for k in keys])
            lines.append(f"| default | {seed} | `{did}` | " + " | ".join(f"{100 * default['best'].get(k, float('nan')):.2f}" for k in keys) + " |")
        else:
            lines.append(f"| default | {seed} | `{did}` | " + " | ".join("not evaluated" for _ in keys) + " |")
    for name, vals in (("tuned", tuned_vals), ("default", default_vals)):
        if vals:
            a = 100 * np.asarray(vals)
            lines.append(f"| **{name} mean ± std** | {len(vals)} seeds | | " + " | ".join(
                f"{m:.2f} ± {s:.2f}" for m, s in zip(a.mean(axis=0), a.std(axis=0))) + " |")
    if all(r[1] == r[3] for r in rows):
        lines += ["", "The best trial is the untuned default configuration: both rows are the same runs."]
    elif not default_vals:
        lines += ["", "The default runs have not been evaluated yet (`snakemake` or `python -m pipeline train/evaluate`)."]
    return "\n".join(lines) + "\n"
