"""Hashing a file once (digests cached in a stamp next to it) and verifying it against its `Source`; a wrong
file is moved aside to `<name>.corrupt`, never reused or deleted."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .sources import HASH_ALGORITHMS, PUBLISHED_DIGESTS, FileRecord, HashMismatchError, Source

CHUNK = 1 << 20


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.hashes.json")


def file_digests(path: str | os.PathLike, progress: bool = False, stamp_dir: Path | None = None) -> dict[str, str]:
    """sha256 and md5 of a file in one pass, cached in `.<name>.hashes.json` (keyed by size + mtime) next to
    it, or in `stamp_dir` (for a file that is not the project's, e.g. the user's own copy)."""
    path = Path(path)
    st = path.stat()
    stamp = _stamp_path(path) if stamp_dir is None else Path(stamp_dir) / f".{path.name}.hashes.json"
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        cached = json.loads(stamp.read_text())
        if cached.get("key") == key and all(a in cached for a in HASH_ALGORITHMS):
            return {a: cached[a] for a in HASH_ALGORITHMS}
    except (OSError, ValueError):
        pass
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in HASH_ALGORITHMS}
    bar = progress_bar(progress and st.st_size > 64 * CHUNK, st.st_size, f"checking {path.name}")
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    digests = {a: h.hexdigest() for a, h in hashers.items()}
    try:
        stamp.write_text(json.dumps({"key": key, **digests}) + "\n")
    except OSError:
        pass  # read-only folder: just hash again next time
    return digests


def progress_bar(enabled: bool, total: int | None, desc: str, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=True, file=sys.stderr, dynamic_ncols=True)


def verify_file(source: Source, path: str | os.PathLike, progress: bool = False, where: str = "") -> FileRecord:
    """Check size and hash of `path` against `source`; on mismatch rename it to `.corrupt` and raise."""
    path = Path(path)
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        bad = _quarantine(path)
        raise HashMismatchError(
            f"{path} has {size:,} bytes but {source.filename} should have {source.size:,} bytes "
            f"({size - source.size:+,}; expected {source.describe()}); it is not the expected file "
            f"(truncated or another release). "
            f"It was moved to {bad} so it is not used again. {_what_to_do(source, path, where)}",
            path=bad, expected=f"{source.size} bytes", actual=f"{size} bytes",
        )
    digests = file_digests(path, progress=progress)
    wrong = source.mismatch(digests)
    if wrong is not None:
        expected, actual = wrong
        bad = _quarantine(path)
        raise HashMismatchError(
            f"{path}: checksum mismatch for {source.filename}: expected {expected}, got {actual}. "
            f"The file is damaged or a different release; it was moved to {bad} so it is not used again. "
            f"{_what_to_do(source, path, where)}",
            path=bad, expected=expected, actual=actual,
        )
    checked = {d for d in (source.sha256, source.md5, source.sha256_prefix) if d}
    return FileRecord(path, size, digests["sha256"], digests["md5"], verified=source.has_hash,
                      published=bool(checked) and checked <= PUBLISHED_DIGESTS)


def _what_to_do(source: Source, path: Path, where: str) -> str:
    if where == "download":
        return (f"The mirror served a wrong file; run the same command again to download it afresh, or obtain "
                f"{source.filename} by hand and put it at {path}.")
    if source.urls:
        return (f"Run the same command again to download it afresh, or put the correct {source.filename} at {path} "
                f"(delete the .corrupt file once you no longer need it).")
    return f"Put the correct {source.filename} at {path} and run the same command again."


def _quarantine(path: Path) -> Path:
    bad = path.with_name(path.name + ".corrupt")
    if bad.exists():
        bad.unlink()
    os.replace(path, bad)
    _stamp_path(path).unlink(missing_ok=True)
    return bad


def shorten(e: BaseException | str, limit: int = 200) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
