"""One writer at a time: advisory locks (flock) on a lock file that names its holder.

The kernel releases a flock when its holder ends, however it ends (kill -9 included), so a lock left
by a dead process is never in force: the next process takes it over and records itself. Two locks:
- a run folder's `.lock`: held by the one process (train, evaluate, forget) writing that folder;
- the workspace's `runs/.workspace.lock`: held exclusively by a running Snakemake (from its onstart
  until it exits) and shared by every stage command not started by that Snakemake (DVC's stages, a
  command typed by hand). So Snakemake refuses to start while a DVC stage runs, and a DVC stage (or a
  hand-typed command) refuses while Snakemake runs: the two tools never write one workspace at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO, Iterator

WORKSPACE_LOCK = Path("runs") / ".workspace.lock"
RUN_LOCK = ".lock"
# Set by the Snakefile for its jobs: "<pid>" of the Snakemake process that holds the workspace lock, or
# REMOTE_JOB in a job that Snakemake runs elsewhere (a cluster node: that pid is not visible there).
HOLDER_ENV = "MDR_WORKSPACE_HELD_BY"
REMOTE_JOB = "snakemake-remote-job"


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def _describe(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(" ".join(w.decode(errors="replace") for w in words).split())  # one line
    except OSError:
        return f"pid {pid}"
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def holders(path: Path) -> list[int]:
    """The pids holding a flock on `path`, from /proc/locks (Linux); [] where it cannot be read."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields and "->" not in fields:  # '->' marks a waiter, not a holder
            pids.append(int(fields[fields.index(inode) - 1]))
    return sorted(set(pids))


def _holder_text(path: Path, handle: IO[str]) -> str:
    pids = [p for p in holders(path) if p != os.getpid()]
    if pids:
        return ", ".join(_describe(p) for p in pids)
    try:  # no /proc/locks: what the exclusive holder recorded
        handle.seek(0)
        recorded = json.loads(handle.read() or "{}")
        return f"pid {recorded['pid']} on {recorded.get('host', '?')} ({recorded.get('command', '?')})"
    except (ValueError, KeyError, OSError):
        return "another process"


@contextlib.contextmanager
def hold(path: str | os.PathLike, what: str, *, shared: bool = False, advice: str = "") -> Iterator[IO[str]]:
    """Hold the lock `path` (exclusive, or shared with other shared holders) for the `with` block, or
    raise LockedError naming `what`, the holder and `advice` at once (never waits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is in use by {_holder_text(path, handle)} (lock {path}); "
                              f"{advice or 'wait for it to end, or stop it, then rerun'}") from None
        if not shared:  # a shared lock has several holders: /proc/locks names them
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "command": " ".join(sys.argv)[:200]}) + "\n")
            handle.flush()
        yield handle
    finally:
        handle.close()  # releases the flock


def hold_run(run_dir: str | os.PathLike) -> contextlib.AbstractContextManager[IO[str]]:
    """The run folder's writer lock (train, evaluate, forget)."""
    run_dir = Path(run_dir)
    return hold(run_dir / RUN_LOCK, f"run folder {run_dir}",
                advice="one process writes a run folder at a time: wait for that one to end (or stop it), then rerun")


def _held_by_parent_workflow() -> bool:
    """True in the jobs of the Snakemake that holds the workspace lock (it set HOLDER_ENV to its pid)."""
    pid = os.environ.get(HOLDER_ENV, "")
    if pid == REMOTE_JOB:
        return True
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_KEPT = contextlib.ExitStack()  # locks held until this process exits


def hold_workspace_for_this_process() -> None:
    """Snakemake's onstart: hold the workspace lock exclusively until Snakemake exits (the kernel drops it
    then, however it ends); its jobs inherit HOLDER_ENV and so do not ask for it again."""
    _KEPT.enter_context(hold(WORKSPACE_LOCK, f"the workspace {Path.cwd()}",
                             advice="a DVC stage or a stage command is writing it; wait for it to end (or stop "
                                    "it) before starting Snakemake here"))
    os.environ[HOLDER_ENV] = str(os.getpid())


@contextlib.contextmanager
def workspace_guard() -> Iterator[None]:
    """What every stage command does: share the workspace lock unless its own Snakemake holds it."""
    if _held_by_parent_workflow():
        yield
        return
    with hold(WORKSPACE_LOCK, f"the workspace {Path.cwd()}", shared=True,
              advice="Snakemake is building it; wait for it to end (or stop it) before running DVC or a stage "
                     "command here"):
        yield
