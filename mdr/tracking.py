"""MLflow as a side channel (DESIGN.md principle 5): runs are logged live, but the pipeline's truth is
the run folders, and a failure to log never fails a run.

Store: $MLFLOW_TRACKING_URI if set (e.g. an `mlflow server` with PostgreSQL), else sqlite:///mlflow.db
in the project root, which plain `mlflow ui` opens. One experiment per profile (`mdr-<profile>`):
the profile is what makes numbers comparable; tables are tags, so one run can serve several tables.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from mdr.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def experiment_name(profile: str) -> str:
    return f"mdr-{profile}"


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be opened or written (locked, read-only, unreachable); the message names it."""


# What the database driver says when the store itself is the problem, not the code calling it.
_STORE_FAULTS = ("database is locked", "readonly database", "unable to open database", "disk i/o error",
                 "could not connect", "connection refused", "permission denied")


def _store_errors(fn):
    """Turn a database error of the MLflow store (an 80-290 line SQLAlchemy traceback) into one
    TrackingStoreError naming the store, what its driver said, and what to do."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import logging

        db_log = logging.getLogger("mlflow.store.db.utils")  # logs the traceback of what it then raises
        level = db_log.level
        db_log.setLevel(logging.CRITICAL)
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            chain: list[BaseException] = []
            cause: BaseException | None = e
            while cause is not None and cause not in chain:
                chain.append(cause)
                cause = cause.__cause__ or cause.__context__
            faults = [c for c in chain if any(f in str(c).lower() for f in _STORE_FAULTS)]
            if not faults:
                raise
            from mdr.tuning import _hide_password

            said = " ".join(str(faults[-1]).split())[:300]  # the innermost: the driver's own words
            raise TrackingStoreError(
                f"the MLflow store {_hide_password(tracking_uri())} cannot be used: {said}. Close what holds it "
                f"(another `mlflow` process writing the same sqlite file), make it and its folder writable, or set "
                f"MLFLOW_TRACKING_URI to another store; then rerun (the run folders are the truth: "
                f"`python -m pipeline track-rebuild` fills a new store)") from None
        finally:
            db_log.setLevel(level)

    return wrapper


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


@_store_errors
def init_store(profile: str) -> str:
    """Create the store and the profile's experiment once, before parallel jobs write to it."""
    mlflow = _mlflow()
    name = experiment_name(profile)
    exp = mlflow.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        # Artifacts beside the database, not in ./mlruns of whichever directory a job happened to run in.
        store = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name
        return mlflow.create_experiment(name, artifact_location=store.resolve().as_uri())
    return mlflow.create_experiment(name)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# The step of every curve, not curves themselves.
STEP_KEYS = ("epoch", "iteration")
# Shown as the run's Description in MLflow's UI: its metrics are fractions, the tables show them x100.
NOTE = ("Recall@K (recall_at_K), MAP@R (map_at_r) and NMI are fractions in [0, 1], as in metrics.json; the "
        "tables in results/ show them in percent (x100). Curves are per epoch (step = epoch): loss = "
        "metric_loss + regularizer_loss, reg_* are the regularizer's terms and state (MDR: reg_level_i).")


def curves(record: dict[str, Any]) -> dict[str, float]:
    """The per-epoch values of a history record to plot against its epoch."""
    return {k: v for k, v in numeric(record).items() if k not in STEP_KEYS}


class MLflowLogger:
    """Engine callback: params and tags at start, per-epoch metrics, status at the end."""

    def __init__(self, profile: str, run_id: str, tags: dict[str, str], name: str | None = None):
        """tags and name: what mdr.describe says the run is (name defaults to the run id)."""
        self.profile, self.run_id, self.tags, self.name = profile, run_id, tags, name or run_id
        self._run = None

    def _guard(self, what: str, fn, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # tracking must never fail the run
            warnings.warn(f"MLflow {what} failed for run {self.run_id}: {type(e).__name__}: {e}", stacklevel=2)
            return None

    def on_train_start(self, config: RunConfig, run_dir: Path, start_epoch: int) -> None:
        self._guard("start", self._start, config, start_epoch)

    def _start(self, config: RunConfig, start_epoch: int) -> None:
        mlflow = _mlflow()
        exp_id = init_store(self.profile)
        found = mlflow.search_runs([exp_id], filter_string=f"tags.run_id = '{self.run_id}'", output_format="list")
        if found:  # a resumed run continues its MLflow run
            self._run = mlflow.start_run(run_id=found[0].info.run_id, log_system_metrics=False)
        else:
            self._run = mlflow.start_run(experiment_id=exp_id, run_name=self.name, log_system_metrics=False)
            mlflow.log_params(flatten(config.model_dump(mode="json")))
        mlflow.set_tags({"run_id": self.run_id, "profile": self.profile, "fingerprint": config.fingerprint(),
                         "seed": str(config.seed), "embedding_dim": str(config.model.embedding_dim),
                         "mlflow.note.content": NOTE, **self.tags})

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self._run is not None:
            self._guard("log_metrics", lambda: _mlflow().log_metrics(curves(record), step=int(record["epoch"])))

    def on_train_end(self, status: str, summary: dict[str, Any] | None, error: str | None) -> None:
        if self._run is None:
            return

        def end() -> None:
            mlflow = _mlflow()
            if error:
                mlflow.set_tag("error", error[:5000])
            mlflow.end_run(status="FINISHED" if status == "finished" else "FAILED")

        self._guard("end_run", end)


def log_evaluation(profile: str, run_id: str, metrics: dict[str, Any], files: list[Path]) -> None:
    """Attach the evaluation's metrics and files to the run's MLflow run (found by its run_id tag)."""
    try:
        mlflow = _mlflow()
        exp_id = init_store(profile)
        found = mlflow.search_runs([exp_id], filter_string=f"tags.run_id = '{run_id}'", output_format="list")
        if not found:
            return
        with mlflow.start_run(run_id=found[0].info.run_id):
            for which in ("best", "final"):
                mlflow.log_metrics({f"{which}_{k}": v for k, v in numeric(metrics[which]).items()})
            mlflow.log_metric("best_epoch", metrics["best_epoch"])
            for f in files:
                if f.exists():
                    mlflow.log_artifact(str(f))
    except Exception as e:
        warnings.warn(f"MLflow logging of the evaluation of {run_id} failed: {type(e).__name__}: {e}", stacklevel=2)


def log_tables(profile: str, files: list[Path]) -> None:
    """One `aggregate` run per profile holding every table and figure as artifacts."""
    try:
        mlflow = _mlflow()
        exp_id = init_store(profile)
        found = mlflow.search_runs([exp_id], filter_string="tags.kind = 'aggregate'", output_format="list")
        kwargs = {"run_id": found[0].info.run_id} if found else {"experiment_id": exp_id, "run_name": f"{profile}-tables"}
        with mlflow.start_run(**kwargs):
            mlflow.set_tag("kind", "aggregate")
            for f in files:
                if f.exists():
                    mlflow.log_artifact(str(f), artifact_path="tables")
    except Exception as e:
        warnings.warn(f"MLflow logging of the tables failed: {type(e).__name__}: {e}", stacklevel=2)


# --- Rebuilding the store from the run folders ------------------------------------------------------
# The run folders are the truth; the store is a view of them. `rebuild_store` (command:
# `python -m pipeline track-rebuild --profile smoke`) recreates every run's MLflow run from its folder and
# the profile's aggregate run from results/<profile>/. It is idempotent: a run is found by its `run_id`
# tag and updated in place (never duplicated); what it already holds (params, epochs of a metric, final
# metrics, artifacts of the same size) is not logged again, and a run whose folder has not changed since
# the last rebuild (tag `mdr.source_digest`) is skipped without reading anything more.

DIGEST_TAG = "mdr.source_digest"
RUN_FILES = ("config.yaml", "history.json", "metrics.json", "status.json", "best.pt")
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def _digest(files: list[Path]) -> str:
    """What a rebuild would log from these files: small files by content, checkpoints by size and mtime."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        if not f.exists():
            continue
        h.update(f.name.encode())
        if f.suffix == ".pt":
            st = f.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _ms(path: Path) -> int | None:
    return int(path.stat().st_mtime * 1000) if path.exists() else None


def _batched(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    """log_batch within MLflow's limits (1000 metrics, 100 params, 100 tags per call)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])


def _runs_by_tag(client, exp_id: str, tag: str) -> dict[str, Any]:
    """Every run of the experiment that has `tag`, by the tag's value (the first found wins)."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.`{tag}` != ''", max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        for run in page:
            found.setdefault(run.data.tags[tag], run)
        token = page.token
        if not token:
            return found


def _log_artifacts(client, run, files: list[Path], artifact_path: str | None, force: bool) -> None:
    try:
        have = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, artifact_path)}
    except Exception:
        have = {}
    for f in files:
        if not f.exists():
            continue
        where = f"{artifact_path}/{f.name}" if artifact_path else f.name
        if not force and have.get(where) == f.stat().st_size:
            continue
        client.log_artifact(run.info.run_id, str(f), artifact_path)


def _rebuild_run(client, exp_id: str, profile: str, folder: Path, existing, known: tuple[str, dict[str, str]] | None,
                 methods: dict[str, Any]) -> str:
    import yaml
    from mlflow.entities import Metric, Param, RunTag

    files = [folder / name for name in RUN_FILES]
    digest = _digest(files)
    if existing is not None and existing.data.tags.get(DIGEST_TAG) == digest:
        return "unchanged"
    rid = folder.name
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    from mdr.checkpoint import read_history

    history = read_history(folder)
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else None
    status = json.loads((folder / "status.json").read_text()).get("status") if (folder / "status.json").exists() else None

    # What the run is comes from its config (and the grid, where it still knows the run), never from the tags
    # of an older metrics.json, which named the table's method and the paper dataset.
    if known is None:
        from mdr.describe import describe_config

        known = describe_config(config, methods, rid.rsplit("-", 1)[-1])
    name, described = known
    tags = {"run_id": rid, "profile": profile, "fingerprint": rid.rsplit("-", 1)[-1], "mlflow.note.content": NOTE,
            **described}
    if existing is None:
        run = client.create_run(exp_id, run_name=name, start_time=_ms(folder / "config.yaml"), tags=tags)
        outcome = "created"
    else:
        run = client.get_run(existing.info.run_id)
        outcome = "updated"
        if run.info.run_name != name:
            client.update_run(run.info.run_id, name=name)
    run_uuid = run.info.run_id

    params = flatten(config)
    new_params = [Param(k, str(v)) for k, v in params.items() if k not in run.data.params]
    now = int(time.time() * 1000)
    new_metrics = []
    by_key: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in curves(record).items():
            by_key.setdefault(key, []).append((int(record["epoch"]), value))
    for key, points in by_key.items():
        logged = {m.step for m in client.get_metric_history(run_uuid, key)} if key in run.data.metrics else set()
        new_metrics += [Metric(key, value, now, step) for step, value in points if step not in logged]
    if metrics is not None:
        final = {f"{which}_{k}": v for which in ("best", "final") for k, v in numeric(metrics.get(which, {})).items()}
        if "best_epoch" in metrics:
            final["best_epoch"] = float(metrics["best_epoch"])
        new_metrics += [Metric(k, v, now, 0) for k, v in final.items() if run.data.metrics.get(k) != v]
    _batched(client, run_uuid, metrics=new_metrics, params=new_params,
             tags=[RunTag(k, str(v)) for k, v in tags.items() if run.data.tags.get(k) != str(v)])
    _log_artifacts(client, run, [folder / n for n in ("metrics.json", "config.yaml", "history.json", "best.pt")],
                   None, force=existing is not None)
    if status in MLFLOW_STATUS:
        client.set_terminated(run_uuid, MLFLOW_STATUS[status], end_time=_ms(folder / "status.json"))
    client.set_tag(run_uuid, DIGEST_TAG, digest)  # last: a rebuild interrupted before this redoes the run
    return outcome


def _rebuild_aggregate(client, exp_id: str, profile: str, results: Path) -> str:
    files = sorted(f for f in results.iterdir() if f.is_file() and not f.name.startswith(".")) if results.is_dir() else []
    if not files:
        return "absent"
    digest = _digest(files)
    found = client.search_runs([exp_id], filter_string="tags.kind = 'aggregate'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found and found[0].data.tags.get(DIGEST_TAG) == digest:
        return "unchanged"
    if found:
        run, outcome = found[0], "updated"
    else:
        run = client.create_run(exp_id, run_name=f"{profile}-tables", tags={"kind": "aggregate", "profile": profile})
        outcome = "created"
    _log_artifacts(client, run, files, "tables", force=bool(found))
    client.set_terminated(run.info.run_id, "FINISHED")
    client.set_tag(run.info.run_id, DIGEST_TAG, digest)
    return outcome


@_store_errors
def rebuild_store(profile: str, runs_root: str | Path = "runs", results_root: str | Path = "results") -> dict[str, Any]:
    """Recreate the profile's MLflow runs from runs/<profile>/*/ and its aggregate run from results/<profile>/.

    Idempotent (see above). Returns counts {"created", "updated", "unchanged", "skipped"} and the
    aggregate run's outcome; `skipped` are folders without config.yaml (a run that never started).
    """
    from mlflow import MlflowClient

    exp_id = init_store(profile)
    client = MlflowClient(tracking_uri())
    existing = _runs_by_tag(client, exp_id, "run_id")
    from mdr.describe import describe_grid
    from mdr.grid import load_methods
    from mdr.grid_cache import load_grid

    methods = load_methods()
    try:  # the grid, where it still knows a run, adds the paper datasets and tables it serves
        known = describe_grid(load_grid(profile))
    except Exception:
        known = {}
    counts = {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0}
    root = Path(runs_root) / profile
    folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    for folder in folders:
        if not (folder / "config.yaml").exists():
            counts["skipped"] += 1
            continue
        outcome = _rebuild_run(client, exp_id, profile, folder, existing.get(folder.name), known.get(folder.name),
                               methods)
        counts[outcome] += 1
    counts["aggregate"] = _rebuild_aggregate(client, exp_id, profile, Path(results_root) / profile)
    return counts
