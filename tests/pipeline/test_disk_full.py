"""A disk that fills up while a run trains: one line naming the run folder, status.json says failed, and
nothing half-written is left. The run folder sits on a real, tiny tmpfs (needs the right to mount one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.pipeline.test_workflow import ROOT
from tests.test_tuning import params  # noqa: F401  (fixture: profile `tiny` on prepared blobs, cwd = tmp)

# `tiny` is registered by tests/conftest.py, so the stage runs in a process that imports it first
STAGE = "import sys, tests.conftest\nfrom pipeline.__main__ import main\nsys.exit(main(sys.argv[1:]))"


def stage(work, params_dir, *args):
    env = {**os.environ, "MDR_PARAMS": str(params_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", STAGE, *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def small_disk(tmp_path):
    """runs/ on a 160 KiB tmpfs: the config and status fit, a checkpoint does not."""
    runs = tmp_path / "runs"
    runs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(runs)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    yield runs
    subprocess.run(["umount", str(runs)], check=True)


def test_a_full_disk_during_training_ends_in_one_line_and_marks_the_run_failed(params, small_disk, tmp_path):
    listed = stage(tmp_path, params, "runs", "--profile", "tiny")
    rid = listed.stdout.split()[0]
    result = stage(tmp_path, params, "train", "--profile", "tiny", "--run", rid, "--no-tracking", "--quiet")
    folder = small_disk / "tiny" / rid
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip()
    assert err.startswith(f"error: no space left on device while writing runs/tiny/{rid} ("), err[-3000:]
    assert "free space on that disk" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "no space left on device" in status["error"]
    assert not list(folder.glob(".*.tmp")) and not (folder / "trained.json").exists()
