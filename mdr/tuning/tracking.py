"""MLflow: one run per trial. `TrialTracker` logs a trial as a run of experiment mdr-<profile>-tuning
(its sampled values and config as params, per-epoch metrics, the trial's state and failure) and is the
engine callback of a trial; every call is guarded, so MLflow trouble never stops a trial or the study."""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from mdr.config import RunConfig
from mdr.tuning.context import TuningContext


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
