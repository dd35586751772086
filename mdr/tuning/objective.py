"""The objective: `Objective` trains one trial (its sampled params on the held-out validation classes)
and returns its best validation Recall@1; `PruningCallback` reports each epoch to Optuna and prunes weak
trials; a diverged or out-of-memory trial is marked FAIL with its `failure` (`TrialFailed`), Ctrl-C marks
it interrupted. `engine_train` is the default trainer, `TrainFn` the shape of a stand-in for tests."""
from __future__ import annotations

import gc
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mdr.config import RunConfig
from mdr.tuning.context import TuningContext, trial_config
from mdr.tuning.space import loss_params, regularizer_params, suggest
from mdr.tuning.spec import TrialFailed
from mdr.tuning.tracking import TrialTracker


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
        params, loss = regularizer_params(self.ctx.regularizer, sampled), loss_params(sampled)
        trial.set_user_attr("regularizer_params", params)
        trial.set_user_attr("loss_params", loss)
        try:
            config = trial_config(self.ctx, params, loss_params=loss)
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
