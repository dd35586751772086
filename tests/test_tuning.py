"""Tuning (the mdr/tuning/ package, python -m pipeline tune): search space, validation classes, resume,
faults, several local workers, and the tuned params feeding the grid."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from mdr.config import ConfigError
from mdr.data.registry import prepared_dir
from mdr.engine import NonFiniteLossError
from mdr.grid import PARAMS_DIR, load_grid, tuned_file
from mdr.tuning import (TuningError, load_tuning, make_context, open_study, open_storage, regularizer_params,
                        retrain_best, suggest, symmetric_levels, trial_config, tune)
from tests.conftest import make_blob_dataset

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ---- a tiny profile: 16 blob classes (8 train, 8 test), SmallCNN, 3 epochs of 3 iterations ---------

@pytest.fixture
def params(tmp_path, monkeypatch):
    """A params dir with profile `tiny` (cub200 -> the tiny blobs) and its tuning settings; cwd = tmp."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    make_blob_dataset(prepared_dir(root, "tiny", 16), 16, classes=16, per_class=6)
    dst = tmp_path / "params"
    (dst / "profiles").mkdir(parents=True)
    (dst / "tables").mkdir()
    shutil.copy(PARAMS_DIR / "methods.yaml", dst / "methods.yaml")
    profile = {
        "name": "tiny", "seeds": [0, 1], "datasets": {"cub200": "tiny"},
        "image_sizes": {224: {"data.image_size": 16, "data.crop": 16}},
        "defaults": {
            "data": {"root": str(root), "hflip": False},
            "model": {"backbone": "smallcnn", "pretrained": False, "freeze_bn": False, "embedding_dim": 8},
            "optim": {"lr": 1e-3, "lr_milestones": [2]},
            "train": {"epochs": 3, "iterations_per_epoch": 3, "batch_size": 8, "images_per_class": 2,
                      "device": "cpu", "threads": 1},
            "eval": {"ks": [1, 2], "batch_size": 64, "every": 3},
        },
        "overrides": [{"when": {"regularizer": "mdr"}, "set": {"regularizer.params": {"weight": 0.6}}}],
    }
    (dst / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(profile))
    table = {"name": "table1", "title": "t", "axes": {"dataset": ["cub200"], "method": ["Triplet", "Triplet+MDR"]},
             "rows": ["method"], "columns": ["dataset"]}
    (dst / "tables" / "table1.yaml").write_text(yaml.safe_dump(table))
    real = yaml.safe_load((PARAMS_DIR / "tuning.yaml").read_text())
    tuning = {"method": "Triplet+MDR", "search_spaces": real["search_spaces"],
              "profiles": {"tiny": {"n_trials": 2, "datasets": {"cub200": {"validation_classes": 3}}, "tune": ["cub200"],
                                    "set": {"eval.every": 1}, "sampler": {"seed": 0, "n_startup_trials": 2},
                                    "pruner": {"n_startup_trials": 50}}}}
    (dst / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    return dst


class FakeTrain:
    """A cheap stand-in for the engine: 3 'epochs' whose Recall@1 depends on the trial's lambda.
    Module level, so spawned worker processes can unpickle it."""

    def __init__(self, nan_trials=(), interrupt_trials=(), marker=None):
        self.nan_trials, self.interrupt_trials, self.marker = set(nan_trials), set(interrupt_trials), marker

    def __call__(self, config, run_dir, callbacks, echo=False):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        number = int(run_dir.name.split("-")[1])
        if number in self.interrupt_trials and not (self.marker and Path(self.marker).exists()):
            if self.marker:
                Path(self.marker).write_text("interrupted once")
            raise KeyboardInterrupt
        if number in self.nan_trials:
            raise NonFiniteLossError("loss became nan at epoch 1, iteration 2")
        history = []
        for epoch in (1, 2, 3):
            record = {"epoch": epoch, "loss": 1.0 / epoch,
                      "recall_at_1": epoch / 3 / (1 + abs(config.regularizer.params.get("weight", 0.3) - 0.3))
                      / (1 + abs(config.loss.params["margin"] - 0.35))}  # best at margin 0.35 (not the untuned 0.2)
            history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(record)
        return history


def _mlflow_runs(experiment):
    import mlflow

    from mdr.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


# ---- search space and validation classes ---------------------------------------------------------

def test_search_space_builds_symmetric_levels():
    assert symmetric_levels(3, 3.0) == [-3.0, 0.0, 3.0]
    assert symmetric_levels(2, 3.0) == [-1.5, 1.5]
    assert symmetric_levels(4, 1.0) == [-1.5, -0.5, 0.5, 1.5]
    assert symmetric_levels(5, 2.0) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    spec = load_tuning(PARAMS_DIR)  # the real params/tuning.yaml
    space = spec.search_spaces["mdr"]
    assert set(space) == {"num_levels", "spacing", "weight", "level_penalty", "momentum"}
    assert space["weight"].log and space["level_penalty"].log
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = regularizer_params("mdr", suggest(trial, space))
        levels = params["levels"]
        assert 2 <= len(levels) <= 5 and levels == [-x for x in reversed(levels)]
        assert 0.05 <= params["weight"] <= 1.0 and 1e-3 <= params["level_penalty"] <= 0.1
        assert 0.5 <= params["momentum"] <= 0.99
        study.tell(trial, 0.0)
    paper = spec.profiles["paper"].datasets
    assert {d: paper[d].validation_classes for d in paper} == {"cub200": 20, "cars196": 20, "sop": 1000, "inshop": 400}
    # smoke: the fair runs' share of the embedded benchmarks' training classes (10 of 50, 50 of 600 and 500)
    smoke = spec.profiles["smoke"].datasets
    assert {d: smoke[d].validation_classes for d in smoke} == {"cub200": 10, "cars196": 10, "sop": 50, "inshop": 50}


def test_validation_never_touches_test_classes(params):
    from mdr.run_data import evaluation_sets, load_prepared, training_rows

    ctx = make_context("tiny", "cub200", params)
    assert ctx.base.data.validation_classes == 0 and ctx.base.regularizer.name == "mdr"
    grid = load_grid("tiny", params)
    from mdr.grid import run_id

    assert run_id(ctx.base) in grid.runs  # the trial starts from the grid's own Triplet+MDR run
    config = trial_config(ctx, regularizer_params("mdr", {"num_levels": 2, "spacing": 2.0, "weight": 0.2,
                                                          "level_penalty": 0.01, "momentum": 0.9}))
    assert config.data.validation_classes == 3 and config.eval.every == 1
    assert config.regularizer.params["levels"] == [-1.0, 1.0]
    prepared = load_prepared(config)
    test_labels = set(prepared.split("test")["label"])
    train_labels = set(prepared.split("train")["label"])
    sets = evaluation_sets(prepared, config)
    assert list(sets) == ["test"]  # one retrieval set: the held-out classes
    val_labels = set(sets["test"].labels)
    assert val_labels == {5, 6, 7} and val_labels <= train_labels and not val_labels & test_labels
    assert not set(training_rows(prepared, config)["label"]) & (val_labels | test_labels)


# ---- end to end: two real tiny trials, outputs, MLflow, use_tuned, retraining ---------------------

def test_two_real_trials_end_to_end_then_the_grid_uses_the_tuned_params(params, tmp_path):
    result = tune("tiny", "cub200", n_trials=2, params_dir=params, echo=None)
    assert result.counts["complete"] == 2 and result.counts["finished"] == 2
    baseline = result.study.trials[0]  # the untuned defaults run first, for comparison on validation
    assert baseline.user_attrs["baseline"] and baseline.params["num_levels"] == 3 and baseline.params["spacing"] == 3.0
    assert baseline.user_attrs["regularizer_params"] == {"levels": [-3.0, 0.0, 3.0], "weight": 0.6,
                                                         "level_penalty": 0.01, "momentum": 0.9}
    for t in result.study.trials:
        assert 0 <= t.value <= 1 and sorted(t.intermediate_values) == [1, 2, 3]
        saved = yaml.safe_load((tmp_path / "runs" / "tiny" / "tuning" / "cub200-mdr" / f"trial-{t.number}" / "config.yaml").read_text())
        assert saved["data"]["validation_classes"] == 3
    path = tuned_file(params, "tiny", "cub200", "mdr")
    tuned = yaml.safe_load(path.read_text())
    best = result.study.best_trial
    assert tuned["regularizer"]["params"]["levels"] == symmetric_levels(best.params["num_levels"], best.params["spacing"])
    assert tuned["study"]["best_trial"] == best.number and tuned["study"]["finished_trials"] == 2
    assert "date" not in path.read_text().lower()
    results = tmp_path / "results" / "tiny" / "tuning"
    for name in ("cub200-mdr-history.png", "cub200-mdr-importances.png", "cub200-mdr.md"):
        assert (results / name).stat().st_size > 0
    # the summary shows the plots written beside it
    assert "(cub200-mdr-history.png)" in (results / "cub200-mdr.md").read_text()
    assert "(cub200-mdr-importances.png)" in (results / "cub200-mdr.md").read_text()
    assert "held" in (results / "cub200-mdr.md").read_text() or "validation" in (results / "cub200-mdr.md").read_text()
    runs = _mlflow_runs("mdr-tiny-tuning")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all("recall_at_1" in r.data.metrics and "search.num_levels" in r.data.params for r in runs)

    # the grid: use_tuned switches the MDR runs to the tuned params; Triplet runs are unchanged
    def mdr_params(grid):
        return [s.config.regularizer.params for s in grid.runs.values() if s.config.regularizer.name == "mdr"]

    default, tuned_grid = load_grid("tiny", params), load_grid("tiny", params, use_tuned=True)
    assert all(p["levels"] == [-3.0, 0.0, 3.0] and p["weight"] == 0.6 for p in mdr_params(default))
    assert all(p == {**p, **tuned["regularizer"]["params"]} for p in mdr_params(tuned_grid))
    none_runs = lambda g: sorted(r for r, s in g.runs.items() if s.config.regularizer.name == "none")  # noqa: E731
    assert none_runs(default) == none_runs(tuned_grid)
    # a rerun resumes: the study already has 2 finished trials, nothing more runs
    again = tune("tiny", "cub200", n_trials=2, params_dir=params, echo=None, tracking=False)
    assert again.trials_run == 0 and len(again.study.trials) == 2

    report = retrain_best("tiny", "cub200", params_dir=params, seeds=[0], tracking=False, echo=None)
    text = report.read_text()
    assert "| tuned | 0 |" in text
    if best.user_attrs.get("baseline"):  # the untuned defaults won: the tuned run is the default run
        assert "same runs" in text
    else:
        assert "not evaluated" in text  # the default run was never evaluated


# ---- faults ---------------------------------------------------------------------------------------

def test_another_regularizer_is_tuned_into_its_own_file_and_only_its_runs_use_it(params):
    table = yaml.safe_load((params / "tables" / "table1.yaml").read_text())
    table["axes"]["method"] = ["Triplet+MDR", "Triplet+DetReg"]
    (params / "tables" / "table1.yaml").write_text(yaml.safe_dump(table))
    result = tune("tiny", "cub200", n_trials=3, params_dir=params, echo=None, train_fn=FakeTrain(),
                  method="Triplet+DetReg", tracking=False)
    first = result.study.trials[0]
    assert first.user_attrs["baseline"] and first.params == {"weight": 0.005, "dual_weight": 0.005, "interpolation": 0.5}
    doc = yaml.safe_load(tuned_file(params, "tiny", "cub200", "detreg").read_text())
    assert doc["regularizer"]["name"] == "detreg"
    assert set(doc["regularizer"]["params"]) == {"weight", "dual_weight", "interpolation"}
    assert not tuned_file(params, "tiny", "cub200", "mdr").exists()
    assert (Path("results") / "tiny" / "tuning" / "cub200-detreg.md").exists()
    tuned, untuned = load_grid("tiny", params, use_tuned=True), load_grid("tiny", params, use_tuned=False)
    by_reg = lambda grid: {s.config.regularizer.name: s.config for s in grid.runs.values() if s.config.seed == 0}  # noqa: E731
    assert by_reg(tuned)["detreg"].regularizer.params["weight"] == doc["regularizer"]["params"]["weight"]
    assert by_reg(tuned)["mdr"] == by_reg(untuned)["mdr"]  # MDR's runs are untouched


def test_a_method_without_a_search_space_is_refused_by_name(params):
    tuning = yaml.safe_load((params / "tuning.yaml").read_text())
    del tuning["search_spaces"]["none"]
    (params / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    with pytest.raises(Exception, match="Triplet.*regularizer 'none'.*no search space"):
        make_context("tiny", "cub200", params, method="Triplet")


def test_the_baseline_is_tuned_on_its_loss_knob_with_the_same_budget_and_the_grid_applies_it(params):
    """Regularizer none has no knob: its study searches the triplet margin alone (the fair protocol's baselines),
    starts from the untuned margin, and the tuned file's loss.params reach the runs of that loss."""
    tuning = yaml.safe_load((params / "tuning.yaml").read_text())
    tuning["loss_search_spaces"] = {"triplet": {"margin": {"type": "float", "low": 0.05, "high": 0.5}}}
    (params / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    ctx = make_context("tiny", "cub200", params, method="Triplet")
    assert list(ctx.space) == ["loss.margin"] and ctx.untuned_params() == {"loss.margin": 0.2}
    assert list(make_context("tiny", "cub200", params, method="Triplet+MDR").space)[-1] == "loss.margin"
    result = tune("tiny", "cub200", n_trials=3, params_dir=params, echo=None, train_fn=FakeTrain(), method="Triplet")
    trials = result.study.trials
    assert len(trials) == 3 and trials[0].params == {"loss.margin": 0.2} and trials[0].user_attrs["baseline"]
    assert all(t.user_attrs["loss_params"] == {"margin": t.params["loss.margin"]} for t in trials)
    doc = yaml.safe_load(tuned_file(params, "tiny", "cub200", "none").read_text())
    best = result.study.best_trial
    assert doc["regularizer"] == {"name": "none", "params": {}}
    assert doc["loss"] == {"name": "triplet", "params": {"margin": best.params["loss.margin"]}}
    tuned = load_grid("tiny", params, use_tuned=True)
    margins = {s.config.regularizer.name: s.config.loss.params["margin"] for s in tuned.runs.values()}
    assert best.params["loss.margin"] != 0.2  # the fake's optimum is 0.35: a trial beat the untuned margin
    assert margins["none"] == best.params["loss.margin"] and margins["mdr"] == 0.2  # MDR's study is not this one


def test_a_study_refuses_validation_classes_other_than_the_fair_runs_hold_out(params):
    """The tuned values are chosen for the fair runs: a study on another split of the training classes would choose
    them on classes those runs train on. One line naming both files, both numbers and the fix."""
    path = params / "profiles" / "tiny.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["overrides"].append({"when": {"protocol": "fair"}, "set": {"data.validation_classes": 4}})
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ConfigError) as raised:
        make_context("tiny", "cub200", params)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{params / 'tuning.yaml'}: ")
    assert "profiles.tiny.datasets.cub200.validation_classes is 3" in message and "hold out 4" in message
    assert str(path) in message and "set both to the same number" in message
    profile["overrides"][-1]["set"]["data.validation_classes"] = 3  # the fix: the same number
    path.write_text(yaml.safe_dump(profile))
    assert make_context("tiny", "cub200", params).validation_classes == 3


def test_a_diverging_trial_is_marked_failed_and_the_study_goes_on(params):
    result = tune("tiny", "cub200", n_trials=4, params_dir=params, echo=None, train_fn=FakeTrain(nan_trials={1}))
    counts = result.counts
    assert counts["failed"] == 1 and counts["complete"] == 3 and counts["finished"] == 4
    failed = result.study.trials[1]
    assert failed.state.name == "FAIL" and failed.user_attrs["failure"].startswith("diverged: loss became nan")
    runs = {r.data.tags["trial"]: r for r in _mlflow_runs("mdr-tiny-tuning")}
    assert runs["1"].info.status == "FAILED" and "nan" in runs["1"].data.tags["failure"]
    assert runs["2"].info.status == "FINISHED" and runs["3"].info.status == "FINISHED"
    assert "diverged" in (Path("results") / "tiny" / "tuning" / "cub200-mdr.md").read_text()


def test_an_interrupted_study_resumes_keeping_finished_trials(params, tmp_path):
    fake = FakeTrain(interrupt_trials={2}, marker=str(tmp_path / "interrupted-once"))
    with pytest.raises(KeyboardInterrupt):
        tune("tiny", "cub200", n_trials=4, params_dir=params, echo=None, tracking=False, train_fn=fake)
    study = open_study(make_context("tiny", "cub200", params), create=False)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"] and study.trials[2].user_attrs["interrupted"]
    first_values = [t.value for t in study.trials[:2]]

    result = tune("tiny", "cub200", n_trials=4, params_dir=params, echo=None, tracking=False, train_fn=fake)
    trials = result.study.trials
    assert [t.value for t in trials[:2]] == first_values  # finished trials kept
    assert result.counts["complete"] == 4 and result.counts["interrupted"] == 1
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params  # same point again


def _orphaned_trial(study):
    """A RUNNING trial whose worker (a process on this host) has ended, as a killed worker leaves it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.suggest_int("num_levels", low=2, high=5)
    orphan.set_user_attr("worker", {"host": __import__("socket").gethostname(), "pid": dead.pid})
    return orphan


def test_a_trial_left_running_by_a_killed_worker_is_marked_and_retried(params):
    ctx = make_context("tiny", "cub200", params)
    study = open_study(ctx)
    _orphaned_trial(study)
    result = tune("tiny", "cub200", n_trials=2, params_dir=params, echo=None, tracking=False, train_fn=FakeTrain())
    first = result.study.trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"]
    assert "ended during the trial" in first.user_attrs["failure"]
    assert result.counts["complete"] == 2 and result.study.trials[1].user_attrs["retry_of"] == 0


@pytest.mark.parametrize("content", ["{not json\n{\"op_code\": 0}\n", "{\"no_op_code\": 1}\n"])
def test_a_corrupt_journal_gives_one_clear_message(params, content):
    ctx = make_context("tiny", "cub200", params)
    journal = Path(ctx.storage)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(content)
    with pytest.raises(TuningError, match=rf"journal {journal} is corrupt .*Move it away"):
        tune("tiny", "cub200", params_dir=params, echo=None, tracking=False, train_fn=FakeTrain())
    assert journal.read_text() == content  # left as is


def test_the_command_reports_a_corrupt_store_and_exits_2(tmp_path, monkeypatch, capsys):
    from pipeline.tune import main

    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "optuna" / "smoke" / "cub200.journal"
    journal.parent.mkdir(parents=True)
    journal.write_text("garbage\nmore garbage\n")
    assert main(["--profile", "smoke", "--dataset", "cub200", "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Optuna journal optuna/smoke/cub200.journal is corrupt") and "mv " in err


def test_a_locked_sqlite_store_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MDR_SQLITE_TIMEOUT", "0.2")
    db = tmp_path / "study.db"
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TuningError, match=r"cannot open the Optuna store sqlite:///.*locked"):
            open_storage(f"sqlite:///{db}")
    finally:
        holder.rollback()
        holder.close()


# ---- several local worker processes on one journal ----------------------------------------------

def test_worker_processes_share_one_journal_study(params):
    result = tune("tiny", "cub200", n_trials=6, workers=2, params_dir=params, echo=None, tracking=False,
                  train_fn=FakeTrain())
    trials = result.study.trials
    assert len(trials) == 6 and result.counts["complete"] == 6
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) >= 2  # the trials really came from several processes
    assert yaml.safe_load(tuned_file(params, "tiny", "cub200", "mdr").read_text())["study"]["finished_trials"] == 6


def test_worker_processes_share_one_postgresql_study(params, postgres):
    """The several-machines setup on one machine: a real PostgreSQL server, two worker processes, then
    another command joining the same study by its URL (as a second machine would)."""
    import optuna

    url = postgres.database("optuna")
    first = tune("tiny", "cub200", n_trials=4, workers=2, storage=url, params_dir=params, echo=None, tracking=False,
                 train_fn=FakeTrain())
    assert first.counts["complete"] == 4
    assert len({t.user_attrs["worker"]["pid"] for t in first.study.trials}) >= 2
    second = tune("tiny", "cub200", n_trials=6, storage=url, params_dir=params, echo=None, tracking=False,
                  train_fn=FakeTrain())
    assert second.counts["complete"] == 6  # resumed: 4 kept, 2 added
    stored = optuna.load_study(study_name=second.study.study_name, storage=url)
    assert sorted(t.number for t in stored.trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials)
    tuned = tuned_file(params, "tiny", "cub200", "mdr").read_text()
    assert yaml.safe_load(tuned)["study"]["finished_trials"] == 6 and "s3cret-pw" not in tuned


def test_an_unreachable_postgresql_store_gives_one_clear_message():
    with pytest.raises(TuningError, match=r"cannot open the Optuna store postgresql://mdr:\*\*\*@127.0.0.1:9/x: "
                                          r".*check the URL, that the server is reachable") as info:
        open_storage("postgresql://mdr:s3cret-pw@127.0.0.1:9/x")
    assert "s3cret-pw" not in str(info.value)


def test_use_tuned_on_the_real_smoke_grid(tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, params, ignore=shutil.ignore_patterns("tuned"))
    doc = {"profile": "smoke", "dataset": "cub200",
           "regularizer": {"name": "mdr", "params": {"levels": [-2.0, 2.0], "weight": 0.3, "level_penalty": 0.005,
                                                      "momentum": 0.8}}}
    path = tuned_file(params, "smoke", "cub200", "mdr")
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(doc))
    default, tuned = load_grid("smoke", params), load_grid("smoke", params, use_tuned=True)

    def table1_mdr(grid, dataset):
        cell = next(c for c in grid.tables["table1"].cells if c.labels == {"method": "Triplet+MDR", "dataset": dataset, "protocol": "published"})
        return grid.runs[cell.run_ids[0]].config.regularizer.params

    assert table1_mdr(default, "cub200")["levels"] == [-3.0, 0.0, 3.0]
    assert table1_mdr(tuned, "cub200") == doc["regularizer"]["params"]
    assert table1_mdr(tuned, "cars196")["levels"] == [-3.0, 0.0, 3.0]  # nothing tuned for cars196
    profile = yaml.safe_load((params / "profiles" / "smoke.yaml").read_text())
    profile["use_tuned"] = True
    (params / "profiles" / "smoke.yaml").write_text(yaml.safe_dump(profile))
    assert table1_mdr(load_grid("smoke", params), "cub200") == doc["regularizer"]["params"]
    assert table1_mdr(load_grid("smoke", params, use_tuned=False), "cub200")["levels"] == [-3.0, 0.0, 3.0]
    monkeypatch.setenv("MDR_USE_TUNED", "false")  # what the Snakefile exports for --config use_tuned=false
    assert table1_mdr(load_grid("smoke", params), "cub200")["levels"] == [-3.0, 0.0, 3.0]
    monkeypatch.setenv("MDR_USE_TUNED", "true")
    assert table1_mdr(load_grid("smoke", params), "cub200") == doc["regularizer"]["params"]
    assert table1_mdr(load_grid("smoke", params, use_tuned=False), "cub200")["levels"] == [-3.0, 0.0, 3.0]


def test_a_stale_journal_lock_left_by_a_killed_worker_is_reported_and_broken(params):
    import os

    ctx = make_context("tiny", "cub200", params)
    journal = Path(ctx.storage)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.touch()
    lock = Path(str(journal) + ".lock")
    os.symlink(journal.resolve(), lock)  # what JournalFileSymlinkLock leaves when killed mid-write
    os.utime(lock, (1, 1), follow_symlinks=False)
    with pytest.warns(UserWarning, match=r"cub200\.journal\.lock is a stale lock"):
        result = tune("tiny", "cub200", n_trials=1, params_dir=params, echo=None, tracking=False, train_fn=FakeTrain())
    assert result.counts["complete"] == 1 and not lock.exists()


def test_the_mlflow_run_of_a_trial_left_running_by_a_killed_worker_is_ended_as_killed(params):
    from mdr.tuning import TrialTracker

    ctx = make_context("tiny", "cub200", params)
    study = open_study(ctx)
    orphan = _orphaned_trial(study)
    tracker = TrialTracker(ctx, orphan.number)  # what the killed worker had logged before it died
    tracker.start(trial_config(ctx, {}), {"num_levels": 2})
    assert [r.info.status for r in _mlflow_runs(f"mdr-{ctx.experiment}")] == ["RUNNING"]
    tune("tiny", "cub200", n_trials=2, params_dir=params, echo=None, tracking=True, train_fn=FakeTrain())
    runs = {r.data.tags["trial"]: r for r in _mlflow_runs(f"mdr-{ctx.experiment}")}
    assert runs["0"].info.status == "KILLED" and runs["0"].data.tags["optuna_state"] == "FAIL"
    assert "ended during the trial" in runs["0"].data.tags["failure"]
    assert all(r.info.status == "FINISHED" for n, r in runs.items() if n != "0")


def test_a_yaml_syntax_error_in_tuning_yaml_names_the_file_and_line(params):
    (params / "tuning.yaml").write_text("method: Triplet+MDR\nsearch_spaces:\n  mdr: [unclosed\nprofiles: {}\n")
    from mdr.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        load_tuning(params)
    message = str(raised.value)
    assert message.startswith(f"{params / 'tuning.yaml'}:3:8: not valid YAML (while parsing a flow sequence opened "
                              "here: expected ',' or ']', but got ':' at line 4, column 9)")
    assert "\n" not in message
