"""MLflow as a side channel (DESIGN.md principle 5): runs are logged live, but the pipeline's truth is
the run folders, and a failure to log never fails a run.

Store: $MLFLOW_TRACKING_URI if set (e.g. an `mlflow server` with PostgreSQL), else sqlite:///mlflow.db
in the project root, which plain `mlflow ui` opens. One experiment per profile (`mdr-<profile>`):
the profile is what makes numbers comparable; tables are tags, so one run can serve several tables.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from mdr.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def experiment_name(profile: str) -> str:
    return f"mdr-{profile}"


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def init_store(profile: str) -> str:
    """Create the store and the profile's experiment once, before parallel jobs write to it."""
    mlflow = _mlflow()
    name = experiment_name(profile)
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else mlflow.create_experiment(name)


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


class MLflowLogger:
    """Engine callback: params and tags at start, per-epoch metrics, status at the end."""

    def __init__(self, profile: str, run_id: str, tags: dict[str, str]):
        self.profile, self.run_id, self.tags = profile, run_id, tags
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
            self._run = mlflow.start_run(experiment_id=exp_id, run_name=self.run_id, log_system_metrics=False)
            mlflow.log_params(flatten(config.model_dump(mode="json")))
        mlflow.set_tags({"run_id": self.run_id, "profile": self.profile, "fingerprint": config.fingerprint(),
                         "seed": str(config.seed), "embedding_dim": str(config.model.embedding_dim), **self.tags})

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self._run is not None:
            self._guard("log_metrics", lambda: _mlflow().log_metrics(numeric(record), step=int(record["epoch"])))

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
