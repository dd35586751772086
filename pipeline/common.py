"""What every stage command shares: the profile argument, and turning user errors into one message."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    from mdr.config import ConfigError
    from mdr.data.prepared import DatasetNotPreparedError, RawFilesError
    from mdr.engine import CheckpointMismatchError, NonFiniteLossError
    from mdr.io import DamagedFileError
    from mdr.registry import UnknownNameError

    errors: list[type[BaseException]] = [ConfigError, UnknownNameError, DatasetNotPreparedError, RawFilesError,
                                         NonFiniteLossError, CheckpointMismatchError, DamagedFileError]
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


def stage(fn: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
    """Run a stage; a user-caused error prints `error: <message>` and exits 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return fn(sys.argv[1:] if argv is None else argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper
