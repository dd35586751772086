"""One writer at a time (mdr/locking.py): a run folder is written by one process, a workspace by one
workflow tool; and the aggregate stage never writes a table missing some of its runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_workflow import ROOT, SNAKEMAKE, run, tiny_params

PY = sys.executable


@pytest.fixture
def work(tmp_path):
    tiny_params(tmp_path / "params")
    return tmp_path


def first_run(work: Path) -> str:
    listed = run([PY, "-m", "pipeline", "runs"], work)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()[0]


def holder(work: Path, code: str) -> subprocess.Popen:
    """A process that takes a lock with `code` (mdr.locking), says so on stdout, then sleeps until killed."""
    env = {**os.environ, "MDR_PARAMS": str(work / "params"), "PYTHONPATH": str(ROOT)}
    script = f"import sys, time\nfrom mdr import locking\n{code}\nprint('held', flush=True)\ntime.sleep(300)\n"
    proc = subprocess.Popen([PY, "-c", script], cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no clean-up: what a killed trainer or workflow leaves behind
    proc.wait(timeout=30)


def test_a_second_writer_of_a_run_folder_stops_naming_the_holder_and_a_dead_holder_is_taken_over(work):
    rid = first_run(work)
    folder = Path("runs") / "smoke" / rid
    owner = holder(work, f"held = locking.hold_run({str(folder)!r}); held.__enter__()")
    try:
        for stage in ("train", "evaluate"):
            second = run([PY, "-m", "pipeline", stage, "--run", rid, "--no-tracking"], work)
            assert second.returncode == 2, second.stderr
            assert second.stderr.startswith(f"error: run folder {folder} is in use by pid {owner.pid} (")
            assert "one process writes a run folder at a time" in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
    finally:
        killed(owner)
    assert json.loads((work / folder / ".lock").read_text())["pid"] == owner.pid  # left behind by the dead holder
    again = run([PY, "-m", "pipeline", "train", "--run", rid, "--no-tracking"], work)
    # the lock is taken over: training gets as far as the (unprepared) data
    assert again.returncode == 2 and "in use by" not in again.stderr and "missing or incomplete (no READY marker)" in again.stderr, again.stderr
    assert json.loads((work / folder / ".lock").read_text())["pid"] != owner.pid


@pytest.mark.slow
def test_snakemake_refuses_to_start_while_a_stage_command_holds_the_workspace(work):
    owner = holder(work, "held = locking.workspace_guard(); held.__enter__()")  # as a `dvc repro` stage does
    try:
        result = run(SNAKEMAKE + ["--cores", "1", "-d", str(work)], work)
    finally:
        killed(owner)
    assert result.returncode != 0
    assert f"error: the workspace {work} is in use by pid {owner.pid} (" in result.stderr, result.stderr[-2000:]
    assert "before starting Snakemake here" in result.stderr
    assert not (work / "data").exists() and not list((work / "runs" / "smoke").glob("*/"))  # no job ran


def test_a_stage_command_refuses_while_snakemake_holds_the_workspace_and_its_own_jobs_do_not(work):
    owner = holder(work, "locking.hold_workspace_for_this_process()")  # what the Snakefile's onstart does
    try:
        outside = run([PY, "-m", "pipeline", "aggregate", "--table", "table1"], work)
        env = {**os.environ, "MDR_PARAMS": str(work / "params"), "PYTHONPATH": str(ROOT),
               "MDR_WORKSPACE_HELD_BY": str(owner.pid)}
        job = subprocess.run([PY, "-m", "pipeline", "aggregate", "--table", "table1"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        killed(owner)
    assert outside.returncode == 2
    assert outside.stderr.startswith(f"error: the workspace {work} is in use by pid {owner.pid} (")
    assert "Snakemake is building it" in outside.stderr and len(outside.stderr.strip().splitlines()) == 1
    # Snakemake's own job passes the workspace lock (and then stops at the missing metrics)
    assert job.returncode == 2 and "needs the metrics of" in job.stderr, job.stderr


def test_aggregate_never_writes_a_table_missing_runs_unless_asked(work):
    result = run([PY, "-m", "pipeline", "aggregate", "--table", "table1"], work)
    assert result.returncode == 2
    assert result.stderr.startswith("error: table table1 needs the metrics of 6 runs, 6 are missing (e.g. runs/smoke/")
    assert "nothing was written" in result.stderr and not (work / "results").exists()
    partial = run([PY, "-m", "pipeline", "aggregate", "--table", "table1", "--partial"], work)
    assert partial.returncode == 0, partial.stderr
    assert "not run" in (work / "results" / "smoke" / "table1.md").read_text()


def exclusively_held(path: Path) -> bool:
    import fcntl

    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def wait_for(condition, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, "the process ended before the condition held"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
