"""The workflow through a real SLURM scheduler: a throwaway single-node cluster (tests/slurm.py), the
executor plugin and pipeline/profiles/slurm, on the shrunken smoke profile of test_workflow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.pipeline.test_workflow import tiny_params

pytest.importorskip("snakemake_executor_plugin_slurm", reason="the SLURM executor plugin is missing: "
                    "`pip install -e .[cluster]` (make test installs it)")

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
# the profile as a user runs it, with a fast first status poll (the plugin waits 40 s by default)
THROUGH_SLURM = ["--workflow-profile", str(ROOT / "pipeline" / "profiles" / "slurm"), "--latency-wait", "5",
                 "--slurm-init-seconds-before-status-checks", "2", "--slurm-no-account"]
TABLE = "results/smoke/table1.csv"  # the DAG up to one table: tracking-init, train, evaluate, aggregate


@pytest.fixture(scope="module")
def cluster():
    from tests.slurm import start_cluster_or_skip

    started = start_cluster_or_skip()
    try:
        yield started
    finally:  # whatever happened in the tests
        started.stop()


def run(cmd, work: Path, cluster=None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MDR_SLURM_"))}
    env.update(MDR_PARAMS=str(work / "params"), PYTHONPATH=str(ROOT), **(cluster.env if cluster else {}))
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600, **kw)


def metrics(work: Path) -> dict[str, dict]:
    """Each run's metrics.json, less its wall-clock timings (seconds_per_iteration)."""
    def untimed(node):
        if isinstance(node, dict):
            return {k: untimed(v) for k, v in node.items() if k != "seconds_per_iteration"}
        return node

    return {p.parent.name: untimed(json.loads(p.read_text()))
            for p in sorted((work / "runs" / "smoke").glob("*/metrics.json"))}


def sacct_jobs(cluster, work: Path) -> list[dict[str, str]]:
    """The jobs the cluster's accounting knows that ran in `work`: id, state and the plugin's comment
    (rule_<rule>_wildcards_<wildcards>)."""
    out = cluster.client("sacct", "-X", "-a", "--parsable2", "--noheader", "--starttime", "now-1days",
                         "--format=JobIdRaw,State,WorkDir,Comment").stdout
    jobs = [dict(zip(("id", "state", "workdir", "comment"), line.split("|", 3))) for line in out.splitlines() if line]
    return [j for j in jobs if Path(j["workdir"]) == work]


def shrunken(work: Path, seeds=(0,), **train) -> Path:
    """test_workflow's tiny smoke params, shrunk once more to fit a 2-core machine: one seed, table1 with
    Triplet+MDR only; the prepared glyphs copied in (preparing them is not what is tested here)."""
    params = tiny_params(work / "params")
    profile_path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    profile["seeds"] = list(seeds)
    profile["defaults"]["train"].update(train)
    # one job per run: the accounting is checked per run's train job; jobs of several runs: test_jobs.py
    profile["resources"]["runs_per_job"] = 1
    profile_path.write_text(yaml.safe_dump(profile))
    table_path = params / "tables" / "table1.yaml"
    table = yaml.safe_load(table_path.read_text())
    table["axes"]["method"]["choices"] = {"Triplet+MDR": table["axes"]["method"]["choices"]["Triplet+MDR"]}
    table.pop("comparisons", None)
    table_path.write_text(yaml.safe_dump(table))
    return work


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory, glyphs_36px):
    """A data root holding the prepared glyphs (tests/conftest.py)."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    shutil.copytree(glyphs_36px, root / "prepared" / "glyphs-36px")
    return root


@pytest.mark.slow
def test_the_smoke_dag_through_slurm_equals_a_local_run(cluster, prepared_data, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for work in (local, remote):
        shutil.copytree(prepared_data, shrunken(work) / "data")
    started = time.time()
    here = run(SNAKEMAKE + ["--cores", "2", "-d", str(local), TABLE], local)
    local_s = time.time() - started
    assert here.returncode == 0, here.stderr[-3000:]
    started = time.time()
    there = run(SNAKEMAKE + THROUGH_SLURM + ["-d", str(remote), TABLE], remote, cluster)
    slurm_s = time.time() - started
    assert there.returncode == 0, there.stderr[-3000:] + cluster.logs()
    print(f"shrunken smoke DAG: local {local_s:.0f} s, through SLURM {slurm_s:.0f} s")
    # every job went through sbatch: the accounting lists each rule's jobs, all completed
    jobs = sacct_jobs(cluster, remote)
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    rules = Counter(j["comment"].removeprefix("rule_").split("_wildcards_")[0] for j in jobs)
    runs = sorted(metrics(local))
    assert rules == {"tracking_init": 1, "train": len(runs), "evaluate": len(runs), "aggregate_table": 1}
    trained = sorted(j["comment"].split("_wildcards_")[1] for j in jobs if j["comment"].startswith("rule_train_"))
    assert trained == runs
    # one log per job, kept (logs/slurm/rule_<rule>/<wildcards>/<job id>.log)
    assert len(list((remote / "logs" / "slurm").rglob("*.log"))) == len(jobs)
    # same seeds, same code, one thread each: the same numbers as the local run, exactly
    assert metrics(remote) == metrics(local)
    assert (remote / "results" / "smoke" / "table1.csv").read_text() == (local / "results" / "smoke" / "table1.csv").read_text()


@pytest.mark.slow
def test_a_training_cancelled_by_scancel_is_resubmitted_and_resumes(cluster, prepared_data, tmp_path):
    work = shrunken(tmp_path / "resume", epochs=6)  # scancel comes once epoch 1's checkpoint exists: 5 are left
    shutil.copytree(prepared_data, work / "data")
    listed = run([sys.executable, "-m", "pipeline", "runs"], work)
    run_id = listed.stdout.split()[0]
    target = f"runs/smoke/{run_id}/trained.json"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
           "MDR_PARAMS": str(work / "params"), "PYTHONPATH": str(ROOT), **cluster.env}
    proc = subprocess.Popen(SNAKEMAKE + THROUGH_SLURM + ["--retries", "1", "-d", str(work), target], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = work / "runs" / "smoke" / run_id / "checkpoint.pt"
    try:
        deadline = time.time() + 300
        while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert checkpoint.exists(), "training never wrote a checkpoint"
        # the accounting has a job's comment only once it ended: ask the controller
        queue = cluster.client("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").stdout.split()
        running = [line.split("|")[0] for line in queue if line.split("|")[1].startswith("rule_train_")]
        assert len(running) == 1, queue
        cluster.client("scancel", running[0])  # as a node failure or preemption would end it
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    history = json.loads((checkpoint.parent / "history.json").read_text())
    status = json.loads((checkpoint.parent / "status.json").read_text())["status"]
    assert proc.returncode == 0, out[-3000:]
    assert status == "finished" and [r["epoch"] for r in history] == list(range(1, 7))
    trains = [j for j in sacct_jobs(cluster, work) if j["comment"].startswith("rule_train_")]
    if [j["state"] for j in trains] == ["COMPLETED"]:
        pytest.skip("the run finished before scancel reached it (machine too fast for this check)")
    # resubmitted once (--retries); sacct writes "CANCELLED by <uid>"
    assert [j["state"].split()[0] for j in trains] == ["CANCELLED", "COMPLETED"]
    logs = {j["id"]: next((work / "logs" / "slurm").rglob(f"{j['id']}.log")).read_text() for j in trains}
    assert "resuming after epoch" in logs[trains[1]["id"]]
    assert "resuming after epoch" not in logs[trains[0]["id"]]


def test_without_the_slurm_packages_the_test_skips_naming_them(monkeypatch):
    from tests import slurm

    monkeypatch.setitem(slurm.NEEDED, "slurmd-not-here", "slurmd")
    monkeypatch.setattr(slurm, "SBIN", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.skip.Exception, match=r"install .*munge.*slurmd.* \(`apt-get install slurmctld"):
        slurm.start_cluster_or_skip()
