"""Jobs of several runs (mdr/jobs.py, resources.runs_per_job): the grouping, the stage commands that take
several --run, and the Snakemake rules and DVC stages of the groups."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdr.config import ConfigError
from mdr.data.registry import prepared_dir
from mdr.grid import load_grid
from mdr.jobs import jobs, pretrained_weights, seedless_hash
from tests.pipeline.test_workflow import SNAKEMAKE, run, tiny_params

ROOT = Path(__file__).resolve().parents[2]


def params_with(dst: Path, seeds=(0, 1, 2), **resources) -> Path:
    """test_workflow's tiny smoke params (table1) with these seeds and resources (runs_per_job only if given),
    and model.weights the user's own file (no pretrain stage in these DAGs)."""
    params = tiny_params(dst)
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["seeds"] = list(seeds)
    profile.pop("table_seeds", None)
    profile["resources"].pop("runs_per_job", None)
    profile["resources"].update(resources)
    if profile["defaults"]["model"].get("weights"):
        profile["defaults"]["model"]["weights"] = "weights/own.pt"
    path.write_text(yaml.safe_dump(profile))
    return params


def seedless_configs(grid) -> set[str]:
    return {json.dumps(without_seed(spec.config), sort_keys=True) for spec in grid.runs.values()}


def without_seed(config) -> dict:
    data = config.model_dump(mode="json")
    data.pop("seed")
    return data


def test_runs_of_one_config_seeds_apart_are_grouped_and_chunked(tmp_path):
    grid = load_grid("smoke", params_with(tmp_path / "params", seeds=(2, 0, 1), runs_per_job=2))
    found = jobs(grid)
    # every run in exactly one job
    assert sorted(r for job in found.values() for r in job.run_ids) == sorted(grid.runs)
    # every config x seeds {0, 1, 2} in chunks of at most 2, in seed order: [0, 1] and [2]
    groups = len(seedless_configs(grid))
    assert groups >= 3  # table1: three methods at least
    chunks = [[grid.runs[r].config.seed for r in job.run_ids] for job in found.values()]
    assert sorted(chunks) == [[0, 1]] * groups + [[2]] * groups
    for job in found.values():
        configs = [grid.runs[r].config for r in job.run_ids]
        assert all(without_seed(c) == without_seed(configs[0]) for c in configs)  # only the seed differs
    ids = {job.run_ids: job.job_id for job in found.values()}
    one = next(job for job in found.values() if len(job.run_ids) == 2)
    spec = grid.runs[one.run_ids[0]]
    assert one.job_id == (spec.run_id.removesuffix(f"-seed0-{spec.config.fingerprint()}")
                          + f"-seeds0_1-{seedless_hash(spec.config)}")
    assert len(set(ids.values())) == len(ids)


def test_seedless_hash_differs_exactly_when_more_than_the_seed_differs(tmp_path):
    grid = load_grid("smoke", params_with(tmp_path / "params"))
    by_hash: dict[str, set[str]] = {}
    for spec in grid.runs.values():
        by_hash.setdefault(seedless_hash(spec.config), set()).add(json.dumps(without_seed(spec.config), sort_keys=True))
    assert len(by_hash) == len(seedless_configs(grid)) and all(len(configs) == 1 for configs in by_hash.values())


def test_job_ids_stay_when_a_table_is_added(tmp_path):
    params = params_with(tmp_path / "params", runs_per_job=3)
    before = jobs(load_grid("smoke", params))
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["tables"] = ["table2a", "table1"]  # a table with other runs, listed first
    path.write_text(yaml.safe_dump(profile))
    grid = load_grid("smoke", params)
    after = jobs(grid)
    assert len(grid.runs) > sum(len(j.run_ids) for j in before.values())  # the table added runs
    assert {k: after[k] for k in before} == before


def test_one_run_per_job_by_default(tmp_path):
    grid = load_grid("smoke", params_with(tmp_path / "params"))
    assert "runs_per_job" not in grid.profile.resources
    assert sorted(r for job in jobs(grid).values() for r in job.run_ids) == sorted(grid.runs)
    assert all(len(job.run_ids) == 1 for job in jobs(grid).values())


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True, None])
def test_a_bad_runs_per_job_stops_in_one_line(tmp_path, value):
    params = params_with(tmp_path / "params", runs_per_job=value)
    with pytest.raises(ConfigError, match=r"smoke\.yaml: resources: runs_per_job must be an integer >= 1"):
        load_grid("smoke", params)
    result = run([sys.executable, "-m", "pipeline", "runs"], tmp_path)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and f"found {value!r}" in err, err


def test_pretrained_weights_are_those_under_the_data_roots_pretrained_folder(tmp_path):
    config = next(iter(load_grid("smoke", params_with(tmp_path / "params")).runs.values())).config
    cases = {None: None, "data/pretrained/glyphnet-m.pt": "data/pretrained/glyphnet-m.pt",
             "./data/pretrained/../pretrained/glyphnet-s.pt": "data/pretrained/glyphnet-s.pt",
             "data/pretrained-old/glyphnet-s.pt": None, "/elsewhere/resnet50.pth": None, "data/glyphnet-m.pt": None}
    for weights, expected in cases.items():
        config.model.weights = weights
        assert pretrained_weights(config) == expected, weights
    config.data.root = "/srv/data"
    config.model.weights = "/srv/data/pretrained/glyphnet-l.pt"
    assert pretrained_weights(config) == "/srv/data/pretrained/glyphnet-l.pt"


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's `Job stats` table: rule -> number of jobs."""
    return {line.split()[0]: int(line.split()[1]) for line in output.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_snakemake_dry_run_lists_one_train_and_one_evaluate_job_per_group(tmp_path):
    params = params_with(tmp_path / "params", runs_per_job=2)
    grid = load_grid("smoke", params)
    expected = jobs(grid)
    result = run(SNAKEMAKE + ["-n", "-p", "--cores", "2", "-d", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert "train" not in counts and "evaluate" not in counts
    assert {r for r in counts if r.startswith(("train_", "evaluate_"))} == {
        f"{stage}_{job_id}" for job_id in expected for stage in ("train", "evaluate")}
    assert all(counts[f"train_{job_id}"] == 1 for job_id in expected)
    commands = [line for line in result.stdout.splitlines() if "-m pipeline train " in line]
    assert len(commands) == len(expected)
    for job in expected.values():
        runs = " ".join(f"--run {r}" for r in job.run_ids)
        assert any(f"train --profile smoke {runs} --no-bars" in line for line in commands), runs
        assert f"evaluate --profile smoke {runs}" in result.stdout
    assert counts["aggregate_table"] == 1 and counts["report"] == 1  # downstream as with one run per job


def test_dvc_yaml_has_one_train_and_one_evaluate_stage_per_group(tmp_path):
    from pipeline.dvc_yaml import build, render

    params = params_with(tmp_path / "params", runs_per_job=2)
    grid = load_grid("smoke", params)
    expected = jobs(grid)
    stages = build("smoke", root=tmp_path, params_dir=params)["stages"]
    assert "train" not in stages and "evaluate" not in stages
    for job_id, job in expected.items():
        train, evaluate = stages[f"train-{job_id}"], stages[f"evaluate-{job_id}"]
        trained = [f"runs/smoke/{r}/trained.json" for r in job.run_ids]
        assert train["cmd"] == ("python -m pipeline train --profile smoke "
                                + " ".join(f"--run {r}" for r in job.run_ids) + " --no-bars")
        config = grid.runs[job.run_ids[0]].config
        ready = (prepared_dir("data", config.data.dataset, config.data.image_size) / "READY").as_posix()
        assert train["deps"] == [ready, "runs/smoke/.tracking-ready"]
        assert [next(iter(o)) for o in train["outs"]] == trained
        assert evaluate["deps"] == trained
        assert [next(iter(o)) for o in evaluate["outs"]] == [f"runs/smoke/{r}/metrics.json" for r in job.run_ids]
    # every run's metrics.json is still what the aggregate stage reads
    assert {d for d in stages["aggregate-table1"]["deps"] if d.endswith("metrics.json")} == {
        f"runs/smoke/{r}/metrics.json" for job in expected.values() for r in job.run_ids}
    # DVC itself reads the file: its stage names are the jobs'
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(render("smoke", root=tmp_path, params_dir=params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=repo,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {f"train-{j}" for j in expected} | {f"evaluate-{j}" for j in expected} <= names


def test_dvc_train_stages_depend_on_weights_the_pretrain_stage_writes(tmp_path):
    from pipeline.dvc_yaml import build

    for per_job in (1, 2):
        params = params_with(tmp_path / f"params{per_job}", runs_per_job=per_job)
        table = params / "tables" / "table1.yaml"
        doc = yaml.safe_load(table.read_text())
        doc["axes"]["method"]["choices"]["Triplet+MDR"]["model.weights"] = "data/pretrained/smallcnn.pt"
        doc["axes"]["method"]["choices"]["Triplet+MDR"]["model.pretrained"] = True
        table.write_text(yaml.safe_dump(doc))
        grid = load_grid("smoke", params)
        stages = build("smoke", root=tmp_path, params_dir=params)["stages"]
        with_weights = {r for r, s in grid.runs.items() if s.config.model.weights}
        with_weights = {r for r in with_weights if grid.runs[r].config.model.weights == "data/pretrained/smallcnn.pt"}
        assert len(with_weights) >= 3 and all(grid.runs[r].config.regularizer.name == "mdr" for r in with_weights)
        if per_job == 1:
            assert set(stages["train-pretrained"]["foreach"]) == with_weights
            assert stages["train-pretrained"]["do"]["deps"] == ["${item.data}", "${item.weights}",
                                                                "runs/smoke/.tracking-ready"]
            assert {v["weights"] for v in stages["train-pretrained"]["foreach"].values()} == {"data/pretrained/smallcnn.pt"}
            assert set(stages["train"]["foreach"]) == set(grid.runs) - with_weights
            assert stages["train"]["do"]["deps"] == ["${item.data}", "runs/smoke/.tracking-ready"]
        else:
            for job_id, job in jobs(grid).items():
                deps = stages[f"train-{job_id}"]["deps"]
                assert ("data/pretrained/smallcnn.pt" in deps) == (job.run_ids[0] in with_weights)


def test_snakemake_train_jobs_wait_for_the_pretrained_weights(tmp_path):
    params = params_with(tmp_path / "params", runs_per_job=2)
    table = params / "tables" / "table1.yaml"
    doc = yaml.safe_load(table.read_text())
    doc["axes"]["method"]["choices"]["Triplet+MDR"]["model.weights"] = "data/pretrained/nosuch-backbone.pt"
    doc["axes"]["method"]["choices"]["Triplet+MDR"]["model.pretrained"] = True
    table.write_text(yaml.safe_dump(doc))
    result = run(SNAKEMAKE + ["-n", "--cores", "2", "-d", str(tmp_path)], tmp_path)
    out = result.stdout + result.stderr
    grid = load_grid("smoke", params)
    mdr_jobs = [j for j in jobs(grid).values()
                if grid.runs[j.run_ids[0]].config.model.weights == "data/pretrained/nosuch-backbone.pt"]
    assert mdr_jobs
    if result.returncode != 0:  # no rule makes that file: the MDR train jobs miss it
        assert "MissingInputException" in out and "data/pretrained/nosuch-backbone.pt" in out, out[-3000:]
        assert any(f"train_{j.job_id}" in out for j in mdr_jobs), out[-3000:]
    else:  # a pretrain rule makes it: each MDR train job waits for it
        for job in mdr_jobs:
            block = out[out.index(f"rule train_{job.job_id}:"):]
            assert "data/pretrained/nosuch-backbone.pt" in block.split("jobid:")[0], block[:2000]
