"""`make setup` as a user runs it: a disk without room for the environment is one clear message."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None,
                                reason="no `make` on PATH; install GNU make to test the Makefile")


def planned_commands(target: str, venv: Path, *settings: str) -> list[str]:
    """The commands `make -n <target>` would run (nothing is run)."""
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", *settings], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@needs_make
def test_setup_refuses_a_disk_without_room_before_creating_anything(tmp_path):
    venv = tmp_path / "not-yet" / "venv"
    # No disk has a million GiB free, so the check must refuse, whatever this machine has.
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "setup", f"VENV={venv}", "SETUP_MIN_FREE_GIB=1000000"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[0]
    assert message.startswith("make setup: ") and f"GiB free in {tmp_path}," in message
    assert f"a new {venv} needs about 1000000 GiB" in message and "set VENV=" in message
    assert not venv.parent.exists()  # nothing half-installed is left behind


@needs_make
def test_reproduce_installs_the_package_alone_and_test_adds_its_extras(tmp_path):
    """Snakemake imports every installed executor plugin at each start, so `make reproduce` leaves out the test
    extras (which bring the cluster plugins); `make test` installs them on top of the same environment."""
    venv = tmp_path / "venv"

    def planned(target: str) -> list[str]:
        return [line for line in planned_commands(target, venv) if "pip install" in line and "--upgrade pip" not in line]

    assert [line.split("install --quiet ")[1] for line in planned("reproduce")] == ["-e ."]
    assert [line.split("install --quiet ")[1] for line in planned("test")] == ["-e .", "-e '.[test]'"]
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # a reproduce machine: `make test` adds the extras alone
    assert [line.split("install --quiet ")[1] for line in planned("test")] == ["-e '.[test]'"]


@needs_make
def test_reproduce_runs_snakemake_with_a_rate_limit_it_accepts(tmp_path):
    """`make reproduce` passes a 10-s job-rate timespan (docs/costs.md, "Snakemake's own share"), in a form
    Snakemake's own parser takes, and JOB_RATE= changes it."""
    from snakemake.settings.types import MaxJobsPerTimespan

    def snakemake_line(*settings: str) -> str:
        [line] = [line for line in planned_commands("reproduce", tmp_path / "venv", *settings) if "bin/snakemake " in line]
        return line

    line = snakemake_line()
    rate = line.split("--max-jobs-per-timespan ")[1].split()[0]
    assert rate == "1000/10s" and "--config profile=smoke" in line
    limit = MaxJobsPerTimespan.parse_choice(rate)
    assert (limit.max_jobs, limit.timespan) == (1000, 10)
    assert "--max-jobs-per-timespan 100/1s " in snakemake_line("JOB_RATE=100/1s")
