"""The sbatch arguments of pipeline/profiles/slurm, without a cluster.

Snakemake runs the real Snakefile (paper profile) with the real workflow profile and executor plugin; only
the SLURM commands are stand-ins on $PATH: `sbatch` records its arguments and answers a job id, `squeue`
(and `sacct`) report every job FAILED (so the run ends at once), the rest answer nothing. What is checked is what a
cluster would have been asked for: a GPU train job and a CPU prepare job (as the plugin's own tests check
the `--gpus` strings on mocked jobs), with and without the user's partition, account and GPU model.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdr import layout
from mdr.data.registry import prepared_dir
from mdr.grid import PARAMS_DIR

pytest.importorskip("snakemake_executor_plugin_slurm", reason="the SLURM executor plugin is missing: "
                    "`pip install -e .[cluster]` (make test installs it)")

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "pipeline" / "profiles" / "slurm"

SBATCH = """#!{python}
import json, os, sys
from pathlib import Path
log = Path(os.environ["FAKE_SLURM_LOG"])
calls = log.read_text().splitlines() if log.exists() else []
job_id = 4000 + len(calls)
with log.open("a") as f:
    f.write(json.dumps({{"id": job_id, "argv": sys.argv[1:]}}) + "\\n")
print(job_id)
"""
STATUS = """#!{python}
import json, os, sys
from pathlib import Path
if "--name" in sys.argv:  # the plugin's status query (squeue, or sacct): every submitted job has failed
    log = Path(os.environ["FAKE_SLURM_LOG"])
    for line in (log.read_text().splitlines() if log.exists() else []):
        print(f"{{json.loads(line)['id']}}|FAILED")
"""
SILENT = ("sinfo", "scancel", "sacctmgr", "sshare", "scontrol")


@pytest.fixture(scope="module")
def fake_slurm(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("fake-slurm-bin")
    for name, text in {"sbatch": SBATCH, "sacct": STATUS, "squeue": STATUS, **{n: "#!/bin/sh\nexit 0\n" for n in SILENT}}.items():
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def paper_work(tmp_path_factory):
    """A work folder for the paper profile in which one train job and one prepare job are ready to run."""
    work = tmp_path_factory.mktemp("slurm-args")
    shutil.copytree(PARAMS_DIR, work / "params")
    env = {**os.environ, "MDR_PARAMS": str(work / "params")}
    listed = subprocess.run([sys.executable, "-m", "pipeline", "runs", "--profile", "paper"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    run_id = next(line.split()[0] for line in listed.stdout.splitlines() if line.startswith("cub200-bninception-triplet-mdr-d512-224px-"))
    ready = work / prepared_dir("data", "cub200", 256) / "READY"  # the 224 px protocol caches at 256
    ready.parent.mkdir(parents=True)
    ready.touch()
    (work / layout.tracking_ready("paper")).parent.mkdir(parents=True, exist_ok=True)
    (work / layout.tracking_ready("paper")).touch()
    targets = [str(layout.run_dir("paper", run_id) / "trained.json"),
               str(prepared_dir("data", "cars196", 256) / "READY")]
    return work, targets


def submit(work: Path, targets: list[str], fake_bin: Path, log: Path, **user_env: str) -> dict[str, list[str]]:
    """Run snakemake through the profile against the stand-ins; the sbatch arguments per rule."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDR_SLURM_", "SLURM_"))}
    env.update(user_env, PATH=f"{fake_bin}:{env['PATH']}", FAKE_SLURM_LOG=str(log), MDR_PARAMS=str(work / "params"),
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--workflow-profile", str(PROFILE), "--config", "profile=paper", "--retries", "0", "--latency-wait", "0",
           "--slurm-init-seconds-before-status-checks", "1", "--keep-going", *targets]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stderr[-3000:]
    by_rule = {}
    for argv in calls:
        comment = argv[argv.index("--comment") + 1]
        by_rule[comment.split("_wildcards")[0].removeprefix("rule_")] = argv
    assert sorted(by_rule) == ["prepare", "train"], calls
    return by_rule


def option(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in an sbatch command line (`--flag value`, `--flag=value`)."""
    for i, token in enumerate(argv):
        if token == flag:
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


@pytest.mark.slow  # a real snakemake run on the paper grid (~30 s on 2 cores)
def test_user_settings_give_partition_account_and_gpu_model(paper_work, fake_slurm, tmp_path):
    work, targets = paper_work
    jobs = submit(work, targets, fake_slurm, tmp_path / "sbatch.log", MDR_SLURM_PARTITION="cpu",
                  MDR_SLURM_GPU_PARTITION="gpu", MDR_SLURM_ACCOUNT="mylab", MDR_SLURM_GPU_MODEL="a100")
    train, prepare = jobs["train"], jobs["prepare"]
    # paper profile resources: one GPU of the given model, 8 CPUs for the data loader, 32 GB
    assert option(train, "--gpus") == "a100:1"
    assert option(train, "--cpus-per-task") == "8" and option(train, "--mem") == "32000"
    # 100 epochs x 100 iterations at 12 minutes per 1000 (params/profiles/paper.yaml), plus 10 of start-up
    assert option(train, "-t") == "130"
    assert option(train, "-p") == "gpu" and option(train, "-A") == "mylab"
    # preparing a dataset is a CPU job: no GPU, the CPU partition, the Snakefile's 4 GB, the default hour
    assert option(prepare, "--gpus") is None and option(prepare, "--gres") is None
    assert option(prepare, "--cpus-per-task") == "1" and option(prepare, "--ntasks") == "1"
    assert option(prepare, "--mem") == "4000" and option(prepare, "-t") == "60"
    assert option(prepare, "-p") == "cpu" and option(prepare, "-A") == "mylab"
    # one log file per job, in the profile's log folder
    for argv in (train, prepare):
        assert option(argv, "--output").startswith(str(work / "logs" / "slurm"))


@pytest.mark.slow
def test_without_user_settings_the_cluster_defaults_apply(paper_work, fake_slurm, tmp_path):
    work, targets = paper_work
    jobs = submit(work, targets, fake_slurm, tmp_path / "sbatch.log")
    train, prepare = jobs["train"], jobs["prepare"]
    assert option(train, "--gpus") == "1"  # any GPU model
    assert option(prepare, "--gpus") is None
    for argv in (train, prepare):
        assert option(argv, "-p") is None and option(argv, "-A") is None  # the user's default partition
