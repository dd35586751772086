"""Atomic file writes: a stage writes to a temporary name and renames at the end, so an interrupted
stage never leaves a half-written output that a rerun would trust (DESIGN.md principle 2). And reading
back what a stage wrote, with one message naming a damaged file instead of a parser's traceback."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable


class DamagedFileError(RuntimeError):
    """A file that an earlier stage wrote cannot be read back; the message names it and the way out."""


def _create_temp(path: Path) -> Path:
    """A new empty file beside `path`. Created with mode 0666 so the kernel applies the umask, as for any
    other file the user writes (tempfile.mkstemp would make it 0600 and the renamed output unreadable to
    the user's group)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` writes a temporary file beside `path` (same filesystem), which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # through Python's io: a full disk raises OSError(ENOSPC), not a bare C++ error
            torch.save(obj, f)

    atomic_write(path, write)


def read_json(path: str | os.PathLike, remedy: str) -> Any:
    """The JSON document in `path`; a damaged one raises DamagedFileError naming it, ending with `remedy`
    (what rewrites the file)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} is damaged (not valid JSON: {e}); {remedy}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
