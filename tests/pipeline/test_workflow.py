"""The workflow as a user runs it: snakemake on a shrunken smoke profile, in a scratch directory."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mdr.grid import PARAMS_DIR
from tests.profiles import from_scratch

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def tiny_params(dst: Path, runs_per_job: int = 1) -> Path:
    """params/ with the smoke profile in its from-scratch form (tests/profiles.py), shrunk to seconds: 2 seeds,
    2 epochs of 3 iterations."""
    shutil.copytree(PARAMS_DIR, dst)
    path = from_scratch(dst, runs_per_job=runs_per_job) / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["seeds"] = [0, 1]
    profile["tables"] = ["table1"]
    profile["image_sizes"][256] = dict(profile["image_sizes"][224])  # † rows share the 224 runs here
    profile["defaults"]["train"].update(epochs=2, iterations_per_epoch=3)
    profile["defaults"]["optim"]["lr_milestones"] = [1]
    profile["defaults"]["eval"]["every"] = 1
    path.write_text(yaml.safe_dump(profile))
    return dst


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    # two runs (the seeds of one config) per train and evaluate job, as the smoke profile groups them (it has 5):
    # 6 jobs instead of 12, each a process that imports torch; one run per job: test_dvc.py, test_slurm.py
    tiny_params(work / "params", runs_per_job=2)
    return work


def run(cmd, work: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MDR_PARAMS": str(work / "params"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900, **kw)


@pytest.mark.slow
def test_snakemake_builds_table_and_report_then_a_rerun_does_nothing(workdir):
    first = run(SNAKEMAKE + ["--cores", "2", "-d", str(workdir)], workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = workdir / "results" / "smoke"
    table = (results / "table1.md").read_text()
    assert "Triplet+MDR" in table and "68.8" in table  # published CUB-200 R@1 beside ours
    assert "standing in for" in table  # says that glyphs replace the paper's datasets
    assert (results / "REPORT.md").exists() and (results / "runs.csv").exists()
    runs = sorted((workdir / "runs" / "smoke").glob("*/metrics.json"))
    assert len(runs) == 3 * 2
    metrics = json.loads(runs[0].read_text())
    assert 0 <= metrics["best"]["recall_at_1"] <= 1 and "map_at_r" in metrics["best"]
    # smoke logs every run to MLflow at the end, from its folder (tracking: at_end): every run
    # is there once, finished, with its params, per-epoch history, final metrics and tags
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("mdr-smoke")
    logged = [r for r in client.search_runs([exp.experiment_id]) if "run_id" in r.data.tags]
    assert sorted(r.data.tags["run_id"] for r in logged) == sorted(p.parent.name for p in runs)
    one = next(r for r in logged if r.data.tags["run_id"] == runs[0].parent.name)
    assert one.info.status == "FINISHED" and one.data.params["train.epochs"] == "2"
    assert one.data.metrics["best_recall_at_1"] == pytest.approx(metrics["best"]["recall_at_1"])
    assert [m.step for m in client.get_metric_history(one.info.run_id, "loss")] == [1, 2]
    assert "table1" in one.data.tags["tables"] and one.data.tags["regularizer"]
    tracked = json.loads((workdir / "runs" / "smoke" / ".tracked.json").read_text())
    assert tracked["created"] == len(runs) and tracked["aggregate"] == "created"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    second = run(SNAKEMAKE + ["--cores", "2", "-d", str(workdir)], workdir)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before


def test_a_typo_in_params_stops_before_any_job(tmp_path):
    params = tiny_params(tmp_path / "params")
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["defaults"]["model"]["backbone"] = "resnet19"
    path.write_text(yaml.safe_dump(profile))
    result = run(SNAKEMAKE + ["--cores", "1", "-d", str(tmp_path)], tmp_path)
    assert result.returncode != 0
    assert "unknown backbone 'resnet19'; allowed:" in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_stage_command_reports_an_unknown_run_in_one_line(tmp_path):
    tiny_params(tmp_path / "params")
    result = run([sys.executable, "-m", "pipeline", "train", "--run", "nope"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no run 'nope' in profile smoke")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path, glyphs_36px):
    work = tmp_path / "resume"
    tiny_params(work / "params")
    profile_path = work / "params" / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    # the signal comes as soon as epoch 1's checkpoint exists, so epochs 2-4 are left to resume
    profile["defaults"]["train"].update(epochs=4, iterations_per_epoch=3)
    profile["defaults"]["optim"]["lr_milestones"] = [3]
    profile_path.write_text(yaml.safe_dump(profile))
    shutil.copytree(glyphs_36px, work / "data" / "prepared" / "glyphs-36px")  # as `prepare glyphs` writes it
    listed = run([sys.executable, "-m", "pipeline", "runs"], work)
    run_id = listed.stdout.split()[0]
    cmd = [sys.executable, "-m", "pipeline", "train", "--run", run_id, "--no-bars", "--no-tracking"]
    env = {**os.environ, "MDR_PARAMS": str(work / "params"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = work / "runs" / "smoke" / run_id / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what Snakemake sends its jobs on Ctrl-C
    proc.wait(timeout=120)
    status = json.loads((checkpoint.parent / "status.json").read_text())["status"]
    if status == "finished":
        pytest.skip("the run finished before it could be interrupted (machine too fast for this check)")
    assert status == "interrupted"
    resumed = run(cmd, work)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    history = json.loads((checkpoint.parent / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 5))


def test_paper_profile_dry_run_lists_every_job(tmp_path):
    shutil.copytree(PARAMS_DIR, tmp_path / "params")
    result = run(SNAKEMAKE + ["-n", "--cores", "8", "--config", "profile=paper", "-d", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from mdr.grid import load_grid

    grid = load_grid("paper")
    out = result.stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train"] == counts["evaluate"] == len(grid.runs)
    assert counts["prepare"] == len(grid.datasets())  # cub200, cars196, sop, inshop at 256 and 292 px
    assert counts["aggregate_table"] + counts["aggregate_figure"] == len(grid.tables)


def _job_counts(stdout: str) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_committed_tuned_files_are_not_tuned_again_and_a_deleted_one_is(tmp_path):
    # a fresh clone prepares its data anew; the committed tuned files must not be remade for that (Snakemake
    # reruns a job whose inputs another job updates, ancient or not), and a missing one is made after its data
    shutil.copytree(PARAMS_DIR, tmp_path / "params")
    fresh = run(SNAKEMAKE + ["-n", "--cores", "1", "-d", str(tmp_path), "tune_fair"], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "tune" not in _job_counts(fresh.stdout) and "prepare" not in _job_counts(fresh.stdout), fresh.stdout[-2000:]
    target = "params/tuned/smoke/cub200-mdr.yaml"  # relative, as a user types it (PARAMS_DIR is absolute)
    (tmp_path / target).unlink()
    result = run(SNAKEMAKE + ["-n", "--cores", "1", "-d", str(tmp_path), target], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    # its data first: glyphs-cub, and glyphs-imagenet for the pretrained start
    assert counts["tune"] == 1 and counts["prepare"] == 2 and counts["pretrain"] == 1, result.stdout[-2000:]
    assert "train" not in counts, result.stdout[-2000:]


def test_a_yaml_syntax_error_in_tuning_yaml_stops_snakemake_in_one_line_naming_file_and_line(tmp_path):
    params = tiny_params(tmp_path / "params")
    text = (params / "tuning.yaml").read_text().splitlines()
    text.insert(1, "broken: [unclosed")
    (params / "tuning.yaml").write_text("\n".join(text) + "\n")
    result = run(SNAKEMAKE + ["-n", "--cores", "1", "-d", str(tmp_path)], tmp_path)
    assert result.returncode != 0
    err = result.stderr.strip()
    assert err.startswith(f"error: {params / 'tuning.yaml'}:2:9: not valid YAML (while parsing a flow sequence"), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("where", ["profile", "table"])
def test_a_bad_value_is_blamed_on_the_file_that_set_it(tmp_path, where):
    params = tiny_params(tmp_path / "params")
    if where == "profile":
        path = params / "profiles" / "smoke.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["defaults"]["train"]["batch_size"] = "many"
    else:
        path = params / "tables" / "table1.yaml"
        doc = yaml.safe_load(path.read_text())
        doc.setdefault("fixed", {})["train.batch_size"] = "many"
    path.write_text(yaml.safe_dump(doc))
    result = run([sys.executable, "-m", "pipeline", "runs"], tmp_path)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "train.batch_size: Input should be a valid integer" in err, err
    if where == "profile":
        assert err.startswith(f"error: {path} (in the run of "), err
    else:
        assert err.startswith("error: params/tables/table1.yaml [") and "profiles" not in err.split(":")[1], err
