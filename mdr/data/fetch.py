"""Getting raw files onto disk, verified, and unpacking archives safely.

Built on pooch: downloads go through a pooch downloader (`ResumableHTTPDownloader`, a subclass of
`pooch.HTTPDownloader` with the same call signature), progress bars are pooch's tqdm bars, and hash
algorithms are resolved the way pooch resolves them.

Why not `pooch.retrieve`: pooch streams into a fresh temporary file on every attempt and deletes it on
failure, so an interrupted 3 GB download starts again from byte 0, and a file with a wrong hash is
deleted instead of being kept for inspection. Here each file is downloaded to `<name>.part` next to its
final place; every further attempt (a retry, another mirror, or the next run of the same command) asks
the server for the missing bytes with an HTTP `Range: bytes=N-` header and appends them (a server that
ignores ranges answers 200 and the file is restarted from zero). The body is read with urllib3's
`read1`, so every byte that arrived before a connection dropped is kept, and with
`Accept-Encoding: identity`, so ranges refer to the file itself. An attempt that made progress is
resumed at once and does not use up a retry. Only after the complete file matches its known hash is it
renamed to `<name>`. Nothing is ever extracted from an unverified file.

Rules:
  * a file already present is verified (hash, size), never downloaded again; its digests are cached in a
    small `.<name>.hashes.json` stamp keyed by size and mtime so a 3 GB archive is hashed once;
  * a file with a wrong hash is renamed to `<name>.corrupt` (never silently reused or deleted) and the
    error names the file, expected and actual hash, and what to do; every placed file is checked before
    reporting, so one run names all the bad ones;
  * `verified_against_published_hash` is true only for a hash the publisher gives (`published(...)`), not
    for one a caller substituted;
  * a missing file with something very like it nearby (another packing, one folder down, the extracted
    folder) is not downloaded: `NearMissError` names it and what to rename or pass (`--source`, usercopy.py);
  * mirrors are tried in order, each with a few retries that resume the partial file; a failure is
    reported once per mirror, with its cause in a few words and how many attempts met it;
  * when no mirror works, or a source has none (Cars, In-Shop), `ManualDownloadRequired` says which
    files to get, their sizes and hashes where known, where people obtain them, and the exact folder to
    put them in; once they are there the same command verifies them and goes on.

`safe_extract` unpacks tar(.gz/.bz2/.xz) and zip archives into `<dest>.tmp`, refusing absolute paths,
`..` escapes, links that point outside, and device files, then renames the folder to `<dest>` with a
marker; a corrupt or truncated archive leaves nothing behind that a rerun would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import pooch
from pooch.downloaders import DEFAULT_TIMEOUT, REQUESTS_HEADERS

__all__ = [
    "Source",
    "FileRecord",
    "FetchError",
    "ManualDownloadRequired",
    "NearMissError",
    "HashMismatchError",
    "CorruptArchiveError",
    "UnsafeArchiveError",
    "ResumableHTTPDownloader",
    "fetch_sources",
    "near_misses",
    "published",
    "verify_file",
    "file_digests",
    "manual_download_message",
    "safe_extract",
    "extraction_dir",
]

HASH_ALGORITHMS = ("sha256", "md5")
_CHUNK = 1 << 20
_MAX_RESUMES = 10_000  # a server that keeps dropping, but always after some progress
# Defaults of fetch_sources (module-level so a caller, e.g. a test, can change them in one place).
DEFAULT_RETRIES = 3
DEFAULT_WAIT = 2.0


class FetchError(RuntimeError):
    """Base class of everything fetch/extract raises on purpose."""


class ManualDownloadRequired(FetchError):
    """The files cannot be downloaded automatically; the message says how to place them by hand."""

    def __init__(self, message: str, missing: Sequence["Source"] = (), folder: Path | None = None):
        super().__init__(message)
        self.missing = list(missing)
        self.folder = folder


class HashMismatchError(FetchError):
    """A file's content is not the expected release; it was renamed to `<name>.corrupt`."""

    def __init__(self, message: str, path: Path | None = None, expected: str = "", actual: str = ""):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class CorruptArchiveError(FetchError):
    """An archive could not be read to the end (truncated, damaged, not an archive)."""


class UnsafeArchiveError(FetchError):
    """An archive member would land outside the destination (absolute path, `..`, outside link)."""


class _MirrorFailed(Exception):
    """One attempt on one URL failed for a reason that is worth trying elsewhere."""

    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.retry = retry


@dataclass(frozen=True)
class Source:
    """One raw file: where to download it from (mirrors, in order) and how to recognise it.

    `sha256` / `md5` are full hex digests; `sha256_prefix` is a leading part of the sha256 (what
    torch-hub style file names such as resnet18-f37072fd.pth publish). `size` is in bytes.
    `manual_hint` tells people where to obtain the file when no URL works.
    """

    filename: str
    urls: Sequence[str] = ()
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    manual_hint: str = ""
    sha256_prefix: str | None = None
    # For an archive: a path inside its content (e.g. images.txt) by which an extracted copy is recognised.
    extracted_marker: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(self.urls))
        for attr in ("sha256", "md5", "sha256_prefix"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, value.lower())
        if "/" in self.filename or "\\" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"Source.filename must be a plain file name, got {self.filename!r}")

    @property
    def has_hash(self) -> bool:
        return bool(self.sha256 or self.md5 or self.sha256_prefix)

    def describe(self) -> str:
        """`name (1,150,585,339 bytes; sha256 0c68...)` for messages."""
        parts = []
        if self.size is not None:
            parts.append(f"{self.size:,} bytes")
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        elif self.sha256_prefix:
            parts.append(f"sha256 starting {self.sha256_prefix}")
        if self.md5:
            parts.append(f"md5 {self.md5}")
        if not self.has_hash:
            parts.append("no published checksum")
        return f"{self.filename} ({'; '.join(parts)})"

    def mismatch(self, digests: dict[str, str]) -> tuple[str, str] | None:
        """(expected, actual) of the first hash that does not match, or None."""
        if self.sha256 and digests["sha256"] != self.sha256:
            return f"sha256 {self.sha256}", f"sha256 {digests['sha256']}"
        if self.sha256_prefix and not digests["sha256"].startswith(self.sha256_prefix):
            return f"sha256 starting {self.sha256_prefix}", f"sha256 {digests['sha256']}"
        if self.md5 and digests["md5"] != self.md5:
            return f"md5 {self.md5}", f"md5 {digests['md5']}"
        return None


# The digests the datasets' publishers give (docs/datasets.md), registered by the recipes through
# `published(...)`. A file is "verified against the published hash" only when it matched one of these: a Source
# whose hash was replaced (a test's fake, a private copy) is checked against that hash, but never reported as
# the published release.
PUBLISHED_DIGESTS: set[str] = set()


def published(*sources: "Source") -> list["Source"]:
    """Register the hashes of `sources` as the publisher's own; returns them as a list (a recipe's SOURCES)."""
    for s in sources:
        PUBLISHED_DIGESTS.update(d for d in (s.sha256, s.md5, s.sha256_prefix) if d)
    return list(sources)


@dataclass(frozen=True)
class FileRecord:
    """A verified file: where it is and its digests (recorded in the prepared dataset's meta)."""

    path: Path
    size: int
    sha256: str
    md5: str
    verified: bool  # matched the Source's hash (False when the source has none: the digests are only recorded)
    published: bool = False  # ... and that hash is the publisher's (PUBLISHED_DIGESTS)

    def to_meta(self) -> dict[str, object]:
        return {"size": self.size, "sha256": self.sha256, "md5": self.md5,
                "verified_against_published_hash": self.verified and self.published}


# --------------------------------------------------------------------------------------------- hashes


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
    bar = _bar(progress and st.st_size > 64 * _CHUNK, st.st_size, f"checking {path.name}")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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


def _bar(enabled: bool, total: int | None, desc: str, initial: int = 0):
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


# ------------------------------------------------------------------------------------------- download


class ResumableHTTPDownloader(pooch.HTTPDownloader):
    """pooch's HTTP downloader, but appending to an existing partial `output_file` with a Range request.

    Same call signature as `pooch.HTTPDownloader` (`downloader(url, output_file, pooch)`); the output must
    be a path. A 206 answer is appended, a 200 answer (server ignores ranges) restarts the file, a 416
    answer means the partial file already holds everything. An HTML page where a binary file was
    expected (a Google Drive quota/consent page) counts as a failed mirror, not as content.
    """

    def __init__(self, progressbar: bool = False, chunk_size: int = 1 << 16, expected_size: int | None = None,
                 desc: str = "", **kwargs):
        super().__init__(progressbar=progressbar, chunk_size=chunk_size, **kwargs)
        self.expected_size = expected_size
        self.desc = desc

    def __call__(self, url, output_file, pooch=None, check_only=False):  # noqa: D401 - pooch's protocol
        import requests

        if check_only:
            return super().__call__(url, output_file, pooch, check_only=True)
        output_file = Path(output_file)
        kwargs = dict(self.kwargs)
        timeout = kwargs.pop("timeout", DEFAULT_TIMEOUT)
        headers = dict(REQUESTS_HEADERS)
        headers.update(kwargs.pop("headers", {}))
        have = output_file.stat().st_size if output_file.exists() else 0
        if self.expected_size is not None and have > self.expected_size:
            output_file.unlink()
            have = 0
        # Byte ranges must refer to the file itself, not to a compressed transfer encoding of it.
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        with requests.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True, **kwargs) as r:
            if r.status_code == 416 and have:
                return None  # nothing left to fetch; the caller checks size and hash
            if r.status_code >= 400:
                retry = r.status_code in (408, 425, 429) or r.status_code >= 500
                raise _MirrorFailed(f"HTTP {r.status_code} {r.reason}", retry=retry)
            ctype = r.headers.get("content-type", "")
            if ctype.startswith("text/html") and not _stem(output_file).endswith((".html", ".htm")):
                raise _MirrorFailed("the server answered with an HTML page instead of the file "
                                    "(a login, consent or quota page)", retry=False)
            if r.status_code == 206:
                start = _range_start(r.headers.get("content-range", ""))
                if start != have:
                    raise _MirrorFailed(f"server resumed at byte {start}, expected {have}")
                mode = "ab"
            else:
                have, mode = 0, "wb"
            length = r.headers.get("content-length")
            total = have + int(length) if length is not None else self.expected_size
            bar = _bar(bool(self.progressbar), total, self.desc or _stem(output_file), initial=have)
            try:
                with open(output_file, mode) as f:
                    for chunk in _chunks(r, self.chunk_size):
                        f.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        return None


def _chunks(response, size: int):
    """The body as it arrives. `read1` hands over every byte received before a connection drops (a plain
    `read(size)` discards the partial chunk it was filling), so the .part file keeps all of it."""
    raw = response.raw
    if hasattr(raw, "read1"):
        while chunk := raw.read1(size, decode_content=False):
            yield chunk
    else:  # older urllib3
        yield from (c for c in response.iter_content(chunk_size=size) if c)


def _stem(p: Path) -> str:
    name = p.name
    return name[: -len(".part")] if name.endswith(".part") else name


def _range_start(content_range: str) -> int:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def fetch_sources(
    sources: Iterable[Source],
    raw_dir: str | os.PathLike,
    progress: bool = True,
    retries: int | None = None,
    wait: float | None = None,
    timeout: float | None = None,
    download: bool = True,
) -> dict[str, FileRecord]:
    """Make every source present and verified in `raw_dir`; return {filename: FileRecord}.

    Present files are verified, not downloaded. Missing ones are downloaded from their mirrors in order
    (each URL gets `retries` attempts that make no progress, `wait`, 2*`wait`, ... seconds apart; an
    attempt cut off after receiving bytes is resumed from the `.part` file at once; defaults
    DEFAULT_RETRIES / DEFAULT_WAIT).
    All files that could not be obtained are reported together in one `ManualDownloadRequired`.
    With `download=False` nothing is downloaded: missing files are reported the same way.
    """
    import requests
    import urllib3

    from . import usercopy

    retries = DEFAULT_RETRIES if retries is None else retries
    wait = DEFAULT_WAIT if wait is None else wait
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    covered = usercopy.covered(raw_dir)  # files stood in for by the user's own copy (verify_and_extract uses it)
    records: dict[str, FileRecord] = {}
    missing: list[tuple[Source, list[str]]] = []
    wrong: list[HashMismatchError] = []
    for source in sources:
        if source.filename in covered:
            continue
        target = raw_dir / source.filename
        if target.is_file():
            try:
                records[source.filename] = verify_file(source, target, progress=progress)
            except HashMismatchError as e:  # check the other files too: one run reports every bad file
                wrong.append(e)
            target.with_name(target.name + ".part").unlink(missing_ok=True)  # stale leftover
            continue
        near = near_misses(source, raw_dir)
        if near:
            raise NearMissError(f"{target} is missing, but {'; '.join(near)}")
        attempts: list[str] = []
        if download and source.urls:
            record = _download(source, target, progress, retries, wait, timeout, attempts, requests, urllib3)
            if record is not None:
                records[source.filename] = record
                continue
        missing.append((source, attempts))
    if wrong:
        raise wrong[0] if len(wrong) == 1 else HashMismatchError(
            f"{len(wrong)} files are not the expected ones: " + " | ".join(str(e) for e in wrong),
            path=wrong[0].path, expected=wrong[0].expected, actual=wrong[0].actual)
    if missing:
        intro = "" if download else (
            "These raw files are not in place (downloading was not requested; run with fetching enabled to "
            "download the ones that have a URL, or obtain them by hand):")
        raise ManualDownloadRequired(
            manual_download_message([s for s, _ in missing], raw_dir, {s.filename: a for s, a in missing}, intro),
            missing=[s for s, _ in missing], folder=raw_dir,
        )
    return records


class NearMissError(ManualDownloadRequired):
    """An expected file is absent but something very like it is there; the message says what to rename or pass."""


def archive_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def near_misses(source: Source, raw_dir: Path, depth: int = 2) -> list[str]:
    """What in raw_dir (up to `depth` folders down) looks like `source` but is not at its place, each with the
    one thing to do: the file one folder too deep, the archive packed differently (.tar.gz for .tgz), another
    capitalisation, or the extracted folder instead of the archive."""
    target = raw_dir / source.filename
    stem = archive_stem(source.filename)
    found: list[str] = []
    for path in sorted(walk(raw_dir, depth)):
        if path == target or path.name.endswith((".part", ".corrupt", ".hashes.json")) or path.name.startswith("."):
            continue
        if path.is_file():
            same_name = path.name.lower() == source.filename.lower()
            repacked = stem is not None and (archive_stem(path.name) or "").lower() == stem.lower()
            if same_name or repacked:
                what = "the same file one folder down" if path.name == source.filename else (
                    "the same archive packed or named differently" if not same_name else "the same name, other case")
                found.append(f"{path} looks like it ({what}): move or rename it to {target} "
                             f"(its checksum is then verified), or pass `--source {path}` to use it as it is")
        elif source.extracted_marker and (path / source.extracted_marker).exists():
            found.append(f"{path} looks like {source.filename} already extracted (it has {source.extracted_marker}): "
                         f"pass `--source {path}` to use this folder (the archive's checksum then cannot be checked)")
    return found


def walk(root: Path, depth: int):
    """Files and folders below root, at most `depth` levels down, skipping the project's own extracted/ folder."""
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                children = list(folder.iterdir())
            except OSError:
                continue
            for child in children:
                if child.name == "extracted" and folder == root:
                    continue
                yield child
                if child.is_dir() and not child.is_symlink():
                    nxt.append(child)
        frontier = nxt


def _download(source, target, progress, retries, wait, timeout, attempts, requests, urllib3) -> FileRecord | None:
    """Try each URL in turn. An attempt that fails after adding bytes to the .part file is resumed at
    once and does not count against `retries`; one that adds nothing counts and is followed by a wait."""
    part = target.with_name(target.name + ".part")
    mismatches: list[HashMismatchError] = []
    for url in source.urls:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        downloader = ResumableHTTPDownloader(progressbar=progress, expected_size=source.size,
                                             desc=source.filename, **kwargs)
        failures = resumes = 0
        while failures < max(1, retries) and resumes < _MAX_RESUMES:
            before = part.stat().st_size if part.exists() else 0
            try:
                downloader(url, part, None)
                size = part.stat().st_size
                if source.size is not None and size < source.size:
                    raise _MirrorFailed(f"connection ended after {size:,} of {source.size:,} bytes")
            except _MirrorFailed as e:
                attempts.append(f"{url}: {e}")
                if not e.retry:
                    break
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                attempts.append(f"{url}: {_reason(e)}")
            else:
                os.replace(part, target)
                try:
                    return verify_file(source, target, progress=progress, where="download")
                except HashMismatchError as e:
                    attempts.append(f"{url}: served a file with the wrong checksum ({e.actual})")
                    mismatches.append(e)
                    break  # next mirror, from scratch
            if part.exists() and part.stat().st_size > before:
                resumes += 1  # progress was made: resume right away
                continue
            failures += 1
            if failures < max(1, retries) and wait > 0:
                time.sleep(wait * failures)
    if mismatches:
        raise mismatches[-1] if len(mismatches) == 1 else HashMismatchError(
            "; ".join(str(m) for m in mismatches), path=mismatches[-1].path,
            expected=mismatches[-1].expected, actual=mismatches[-1].actual)
    return None


def _reason(e: BaseException) -> str:
    """The cause of a failed request in a few words: requests wraps urllib3 errors whose text is a repr chain
    ("HTTPConnectionPool(host=...): Max retries exceeded ... (Caused by NewConnectionError('<urllib3... at
    0x7f...>: Failed to establish a new connection: [Errno 111] Connection refused'))"); keep its last part."""
    text = " ".join(str(e).split())
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0).strip()
    if "Caused by" in text:
        text = text.rsplit(": ", 1)[-1].rstrip("')\"")
    return f"{type(e).__name__}: {_short(text)}"


def _short(e: BaseException | str, limit: int = 200) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def manual_download_message(
    sources: Sequence[Source], folder: Path, attempts: dict[str, list[str]] | None = None, intro: str = "",
) -> str:
    """The instructions for placing files by hand: names, sizes, hashes, where to get them, where to put them."""
    folder = Path(folder).absolute()
    attempts = attempts or {}
    lines = [intro or "These files could not be downloaded automatically; please obtain them by hand:"]
    for s in sources:
        lines.append(f"  - {s.describe()}")
        if s.manual_hint:
            lines.append(f"      where to get it: {s.manual_hint}")
        tried = attempts.get(s.filename, [])
        for a in dict.fromkeys(tried):  # each failure once, in order, with how often it happened
            times = tried.count(a)
            lines.append(f"      tried {a}" + (f" ({times} attempts)" if times > 1 else ""))
        if not s.urls:
            lines.append("      (no automatic download exists for this file)")
    lines.append(f"Put them, with exactly these names, in: {folder}")
    if any(s.extracted_marker for s in sources):
        lines.append("Or, if you already have a copy (an extracted folder, or an archive packed differently), pass "
                     "`--source PATH` (or set it in params/sources.yaml) to use it where it is.")
    lines.append("Then run the same command again: the files are verified by checksum and preparation continues.")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- extract

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
MARKER = ".extracted.json"


def extraction_dir(archive: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Where `archive` is unpacked: `<root or archive folder>/extracted/<archive name without suffix>`."""
    archive = Path(archive)
    name = archive.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(root if root is not None else archive.parent) / "extracted" / name


def _archive_key(archive: Path) -> dict[str, object]:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_extracted(archive: str | os.PathLike, dest: str | os.PathLike) -> bool:
    try:
        return json.loads((Path(dest) / MARKER).read_text()).get("key") == _archive_key(Path(archive))
    except (OSError, ValueError):
        return False


def verify_and_extract(sources: Iterable[Source], raw_dir: str | os.PathLike, archive: str,
                       progress: bool = True) -> dict[str, Any]:
    """The prepare step of a one-archive recipe: verify the fetched files (no download) and extract
    `archive` once into its extraction_dir. Returns the verification records (for sources_meta)."""
    from . import usercopy

    raw_dir = Path(raw_dir)
    sources = list(sources)
    records: dict[str, Any] = fetch_sources(sources, raw_dir, progress=progress, download=False)
    copy = usercopy.load(raw_dir)
    if copy is not None and copy.stands_for == archive:  # the user's own copy (prepare --source)
        source = next(s for s in sources if s.filename == archive)
        records[archive] = usercopy.use(copy, source, raw_dir, progress=progress)
    else:
        safe_extract(raw_dir / archive, extraction_dir(raw_dir / archive, raw_dir), progress=progress)
    return records


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Unpack `archive` into `dest` once (default: `extraction_dir(archive)`), refusing unsafe members.

    Unpacks into `<dest>.tmp`, writes a marker recording the archive's name, size and mtime, then renames
    the folder to `dest`. A `dest` whose marker matches is returned untouched; one without (or with a stale
    one) is removed and unpacked again. On any error the temporary folder is removed and `dest` is left
    absent, so a rerun never trusts a half-extracted folder.
    """
    archive = Path(archive)
    dest = Path(dest) if dest is not None else extraction_dir(archive)
    if is_extracted(archive, dest):
        return dest
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    tmp = dest.with_name(dest.name + ".tmp")
    for stale in (tmp, dest):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    try:
        lower = archive.name.lower()
        if lower.endswith(".zip") or (zipfile.is_zipfile(archive) and not tarfile.is_tarfile(archive)):
            _extract_zip(archive, tmp, progress)
        else:
            _extract_tar(archive, tmp, progress)
        (tmp / MARKER).write_text(json.dumps({"key": _archive_key(archive)}) + "\n")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse absolute names and names that climb out of the destination; return the normalised path."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive")
    parts: list[str] = []
    for part in posix.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the destination (..); "
                                         "refusing to extract this archive")
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_link(member_name: PurePosixPath, target: str, hard: bool, archive: Path, name: str) -> None:
    if not target:
        raise UnsafeArchiveError(f"{archive}: link {name!r} has an empty target; refusing to extract this archive")
    base = "" if hard else str(member_name.parent)
    t = target.replace("\\", "/")
    if t.startswith("/") or (len(t) > 1 and t[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: link {name!r} -> {target!r} points to an absolute path; "
                                 "refusing to extract this archive")
    try:
        _check_name(f"{base}/{t}" if base and base != "." else t, archive)
    except UnsafeArchiveError:
        raise UnsafeArchiveError(f"{archive}: link {name!r} -> {target!r} points outside the destination; "
                                 "refusing to extract this archive") from None


def _extract_tar(archive: Path, tmp: Path, progress: bool) -> None:
    bar = _bar(progress, archive.stat().st_size, f"extracting {archive.name}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            fileobj = tar.fileobj
            for member in tar:
                name = _check_name(member.name, archive)
                if member.issym() or member.islnk():
                    _check_link(name, member.linkname, member.islnk(), archive, member.name)
                elif not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, fifo or other special "
                                             "file; refusing to extract this archive")
                # Second line of defence: the standard library's own 'data' filter.
                tar.extract(member, tmp, set_attrs=False, filter="data")
                if bar is not None and hasattr(fileobj, "tell"):
                    try:
                        raw = getattr(fileobj, "fileobj", None)
                        bar.n = (raw.tell() if raw is not None else fileobj.tell())
                        bar.refresh()
                    except (OSError, ValueError, AttributeError):
                        pass
    except UnsafeArchiveError:
        raise
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"{archive}: unsafe member refused ({e}); refusing to extract this archive") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CorruptArchiveError(
            f"{archive} is damaged or truncated and cannot be extracted ({type(e).__name__}: {_short(e)}). "
            f"Delete it and run the same command again to download it afresh (or place a good copy there)."
        ) from None
    finally:
        if bar is not None:
            bar.close()


def _extract_zip(archive: Path, tmp: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything before writing anything
                name = _check_name(info.filename, archive)
                if info.flag_bits & 0x1:
                    raise CorruptArchiveError(f"{archive}: member {info.filename!r} is encrypted (password-protected); "
                                              "this is not the expected archive")
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    _check_link(name, zf.read(info).decode("utf-8", "replace"), False, archive, info.filename)
            bar = _bar(progress, sum(i.file_size for i in infos), f"extracting {archive.name}")
            try:
                for info in infos:
                    name = _check_name(info.filename, archive)
                    if str(name) == ".":
                        continue
                    out = tmp.joinpath(*name.parts)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:  # CRC is checked at the end of read
                        shutil.copyfileobj(src, dst, _CHUNK)
                    if bar is not None:
                        bar.update(info.file_size)
            finally:
                if bar is not None:
                    bar.close()
    except (UnsafeArchiveError, CorruptArchiveError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError, NotImplementedError) as e:
        raise CorruptArchiveError(
            f"{archive} is damaged or truncated and cannot be extracted ({type(e).__name__}: {_short(e)}). "
            f"Delete it and run the same command again to download it afresh (or place a good copy there)."
        ) from None
