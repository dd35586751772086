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

Files (each imports only the package files listed above it, and optuna, mlflow, torch and matplotlib only inside
the functions that use them, so `import mdr.tuning` stays cheap):
- spec.py: the params/tuning.yaml models, load_tuning, method_for, tuned_regularizer, and the errors TuningError and TrialFailed.
- space.py: search space -> regularizer params (suggest, regularizer_params, symmetric_levels, baseline_point).
- context.py: one study's context (TuningContext, make_context, method_config, trial_config, default_storage).
- storage.py: the Optuna store (open_storage, stale journal locks, hidden passwords, sampler, pruner, open_study).
- tracking.py: MLflow, one run per trial (TrialTracker).
- trials.py: trial bookkeeping (states, counts) and what a killed worker leaves (orphaned trials and MLflow runs).
- objective.py: the objective (Objective, PruningCallback, engine_train, divergence and out of memory).
- outputs.py: what a study writes (the tuned params document, plots, summary markdown).
- study.py: running a study (tune, TuneResult, run_trials, local worker processes).
- retrain.py: retraining the best configuration on all training classes (retrain_best, best_test_markdown).
"""
from __future__ import annotations

from mdr.tuning.spec import (TUNING_FILE, DatasetTuning, Distribution, ProfileTuning, Strict, TrialFailed, TuningError,
                             TuningSpec, load_tuning, method_for, tuned_regularizer, yaml_error)
from mdr.tuning.space import baseline_point, regularizer_params, suggest, symmetric_levels
from mdr.tuning.context import (RESULTS, RUNS, STORE_DIR, TuningContext, default_storage, make_context, method_config,
                                trial_config)
from mdr.tuning.storage import _hide_password, open_storage, open_study
from mdr.tuning.tracking import TrialTracker
from mdr.tuning.trials import (close_orphaned_mlflow_runs, fail_orphaned_trials, is_interrupted, requeue_interrupted,
                               trial_counts)
from mdr.tuning.objective import Objective, PruningCallback, TrainFn, engine_train
from mdr.tuning.outputs import summary_markdown, tuned_document, write_outputs, write_plots
from mdr.tuning.study import TuneResult, run_trials, tune
from mdr.tuning.retrain import best_test_markdown, retrain_best

__all__ = [
    "TUNING_FILE", "DatasetTuning", "Distribution", "ProfileTuning", "Strict", "TrialFailed", "TuningError",
    "TuningSpec", "load_tuning", "method_for", "tuned_regularizer", "yaml_error",
    "baseline_point", "regularizer_params", "suggest", "symmetric_levels",
    "RESULTS", "RUNS", "STORE_DIR", "TuningContext", "default_storage", "make_context", "method_config", "trial_config",
    "open_storage", "open_study",
    "TrialTracker",
    "close_orphaned_mlflow_runs", "fail_orphaned_trials", "is_interrupted", "requeue_interrupted", "trial_counts",
    "Objective", "PruningCallback", "TrainFn", "engine_train",
    "summary_markdown", "tuned_document", "write_outputs", "write_plots",
    "TuneResult", "run_trials", "tune",
    "best_test_markdown", "retrain_best",
]
