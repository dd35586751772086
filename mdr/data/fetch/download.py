"""Downloading raw files from their mirrors into `<name>.part`, resumed with HTTP ranges, verified before they
take their name; what is missing (or only nearly there) is reported with what to do by hand."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import pooch
from pooch.downloaders import DEFAULT_TIMEOUT, REQUESTS_HEADERS

from .extract import archive_stem
from .sources import FileRecord, HashMismatchError, ManualDownloadRequired, NearMissError, Source
from .verify import progress_bar, shorten, verify_file

_MAX_RESUMES = 10_000  # a server that keeps dropping, but always after some progress
# Defaults of fetch_sources (module-level so a caller, e.g. a test, can change them in one place).
DEFAULT_RETRIES = 3
DEFAULT_WAIT = 2.0


class _MirrorFailed(Exception):
    """One attempt on one URL failed for a reason that is worth trying elsewhere."""

    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.retry = retry


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
            bar = progress_bar(bool(self.progressbar), total, self.desc or _stem(output_file), initial=have)
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

    from .. import usercopy

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
    return f"{type(e).__name__}: {shorten(text)}"


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
