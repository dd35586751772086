"""`pipeline train|evaluate --run A --run B`: several runs in one process (pipeline/each_run.py)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from mdr.config import ConfigError
from mdr.grid import RunSpec
from pipeline.each_run import for_each_run
from tests.pipeline.test_workflow import run, tiny_params


def specs(*ids: str) -> list[RunSpec]:
    return [RunSpec(rid, config=None, tags={}) for rid in ids]  # the loop only reads the id


def test_a_failing_run_does_not_stop_the_others_and_the_exit_code_says_so(capsys):
    done = []

    def work(spec):
        if spec.run_id == "b":
            raise ConfigError("b's config is wrong")
        done.append(spec.run_id)

    assert for_each_run(specs("a", "b", "c"), work) == 2
    assert done == ["a", "c"]
    out, err = capsys.readouterr()
    assert out.splitlines() == ["run 1 of 3: a", "run 2 of 3: b", "run 3 of 3: c"]
    assert err.splitlines()[0] == "error: run b: b's config is wrong"
    assert err.splitlines()[-1].startswith("error: 1 of 3 runs failed (b); the others are done")


def test_a_bug_in_one_run_is_shown_with_its_traceback_and_exits_1(capsys):
    def work(spec):
        if spec.run_id != "b":
            raise ZeroDivisionError("a bug")

    assert for_each_run(specs("a", "b", "c"), work) == 1
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2
    assert "error: run a failed: ZeroDivisionError: a bug (traceback above)" in err
    assert err.splitlines()[-1].startswith("error: 2 of 3 runs failed (a, c)")


def test_an_interruption_stops_at_once():
    done = []

    def work(spec):
        done.append(spec.run_id)
        raise KeyboardInterrupt("stopped by signal 15")

    with pytest.raises(KeyboardInterrupt):
        for_each_run(specs("a", "b"), work)
    assert done == ["a"]


def test_one_run_raises_as_before():
    def work(spec):
        raise ConfigError("plain")

    with pytest.raises(ConfigError, match="^plain$"):
        for_each_run(specs("a"), work)


def mini_params(work: Path, glyphs: Path) -> Path:
    """test_workflow's tiny params (the embedded glyphs, a small CNN from scratch: tests/profiles.py), with
    1 epoch of 2 iterations, table1's Triplet row, 2 seeds; the prepared `glyphs` copied in."""
    params = tiny_params(work / "params")
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["overrides"] = []
    d = profile["defaults"]
    d["train"].update(epochs=1, iterations_per_epoch=2, batch_size=32)
    d["optim"]["lr_milestones"] = []
    d["eval"].update(every=1, ks=[1, 2])
    path.write_text(yaml.safe_dump(profile))
    table = params / "tables" / "table1.yaml"
    doc = yaml.safe_load(table.read_text())
    doc["axes"] = {"dataset": ["cub200"], "method": {"choices": {"Triplet": doc["axes"]["method"]["choices"]["Triplet"]}}}
    doc.pop("comparisons", None)
    table.write_text(yaml.safe_dump(doc))
    shutil.copytree(glyphs, work / "data" / "prepared" / "glyphs-36px")  # saves rendering it; prepare still checks it
    return params


@pytest.mark.slow
def test_train_and_evaluate_two_runs_in_one_process(tmp_path, glyphs_36px):
    from mdr.locking import hold_run

    mini_params(tmp_path, glyphs_36px)
    prepared = run([sys.executable, "-m", "pipeline", "prepare", "glyphs", "--image-size", "36"], tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    listed = run([sys.executable, "-m", "pipeline", "runs"], tmp_path)
    first, second = [line.split()[0] for line in listed.stdout.splitlines()]
    folder = tmp_path / "runs" / "smoke"
    train = [sys.executable, "-m", "pipeline", "train", "--run", first, "--run", second, "--no-bars", "--no-tracking"]

    # the first run's folder is busy: it fails naming the run, the second is trained anyway, exit 2
    with hold_run(folder / first):
        busy = run(train, tmp_path)
    assert busy.returncode == 2, busy.stderr[-3000:]
    err = busy.stderr.strip().splitlines()
    assert err[0].startswith(f"error: run {first}: run folder runs/smoke/{first} is in use by pid "), err
    assert err[-1].startswith(f"error: 1 of 2 runs failed ({first}); the others are done"), err
    assert "Traceback" not in busy.stderr
    assert not (folder / first / "trained.json").exists()
    assert json.loads((folder / second / "trained.json").read_text())["run"] == second

    again = run(train, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[{second}] already complete" in again.stdout + again.stderr  # not trained twice
    assert json.loads((folder / first / "trained.json").read_text())["run"] == first

    evaluated = run([sys.executable, "-m", "pipeline", "evaluate", "--run", first, "--run", second, "--no-tracking"],
                    tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for rid in (first, second):
        metrics = json.loads((folder / rid / "metrics.json").read_text())
        history = json.loads((folder / rid / "history.json").read_text())
        assert metrics["run"] == rid and metrics["best_epoch"] == 1
        assert metrics["best"]["recall_at_1"] == pytest.approx(history[0]["recall_at_1"])
        assert f"{rid}: best epoch 1, R@1 {100 * metrics['best']['recall_at_1']:.2f}" in evaluated.stdout


def test_an_unknown_run_among_several_stops_before_any_run(tmp_path):
    tiny_params(tmp_path / "params")
    listed = run([sys.executable, "-m", "pipeline", "runs"], tmp_path)
    known = listed.stdout.split()[0]
    result = run([sys.executable, "-m", "pipeline", "train", "--run", known, "--run", "nope", "--no-tracking"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: no run 'nope' in profile smoke; `python -m pipeline runs --profile smoke` "
                                     "lists them")
    assert not (tmp_path / "runs" / "smoke" / known).exists()
