"""What every stage command shares: the profile argument, and turning user errors into one message."""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator


class DiskFullError(RuntimeError):
    """A stage's disk (or quota) filled up while it wrote; the message names the folder."""


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


@contextlib.contextmanager
def disk_full_reported(folder: Path, on_full: Callable[[str], None] = lambda message: None) -> Iterator[None]:
    """Turn a full disk anywhere in an error's chain (torch and numpy wrap the OSError) into one DiskFullError
    naming `folder`; `on_full(message)` first records it (e.g. a run's status.json)."""
    try:
        yield
    except Exception as e:
        full = next((x for x in _chain(e) if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT)), None)
        if full is None:
            raise
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there now"
        except OSError:
            free = "free space unknown"
        message = (f"{os.strerror(full.errno).lower()} while writing {folder} ({free}); nothing half-written was kept: "
                   f"free space on that disk (or quota), then rerun the same command")
        on_full(message)
        raise DiskFullError(message) from None


def user_errors() -> tuple[type[BaseException], ...]:
    from mdr.config import ConfigError
    from mdr.data.prepared import DatasetNotPreparedError, RawFilesError
    from mdr.engine import CheckpointMismatchError, NonFiniteLossError
    from mdr.io import DamagedFileError
    from mdr.locking import LockedError
    from mdr.models.weights import WeightsUnavailableError
    from mdr.tracking import TrackingStoreError
    from mdr.registry import UnknownNameError

    errors: list[type[BaseException]] = [ConfigError, UnknownNameError, DatasetNotPreparedError, RawFilesError,
                                         NonFiniteLossError, CheckpointMismatchError, DamagedFileError, LockedError,
                                         DiskFullError, TrackingStoreError, WeightsUnavailableError]
    try:
        from mdr.data.fetch import FetchError

        errors.append(FetchError)
    except ImportError:
        pass
    return tuple(errors)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", default="smoke", help="parameter profile in params/profiles (default: smoke)")
    return p


def stage(fn: Callable[[list[str]], int] | None = None, *, writes: bool = True) -> Any:
    """Run a stage; a user-caused error prints `error: <message>` and exits 2 instead of a traceback.
    A stage that `writes` runs under the workspace lock (mdr/locking.py): it refuses while Snakemake holds it.
    Use as `@stage`, or `@stage(writes=False)` for a command that only reads."""
    if fn is None:
        return functools.partial(stage, writes=writes)

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        from mdr.locking import workspace_guard

        try:
            with workspace_guard() if writes else contextlib.nullcontext():
                return fn(sys.argv[1:] if argv is None else argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper
