"""Unpacking tar and zip archives safely: into `<dest>.tmp`, refusing members that would land outside it, then
renamed into place with a marker, so a rerun never trusts a half-extracted folder."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .sources import CorruptArchiveError, Source, UnsafeArchiveError
from .verify import CHUNK, progress_bar, shorten

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
MARKER = ".extracted.json"


def archive_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


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
    from .. import usercopy
    from .download import fetch_sources

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
    bar = progress_bar(progress, archive.stat().st_size, f"extracting {archive.name}")
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
            f"{archive} is damaged or truncated and cannot be extracted ({type(e).__name__}: {shorten(e)}). "
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
            bar = progress_bar(progress, sum(i.file_size for i in infos), f"extracting {archive.name}")
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
                        shutil.copyfileobj(src, dst, CHUNK)
                    if bar is not None:
                        bar.update(info.file_size)
            finally:
                if bar is not None:
                    bar.close()
    except (UnsafeArchiveError, CorruptArchiveError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError, NotImplementedError) as e:
        raise CorruptArchiveError(
            f"{archive} is damaged or truncated and cannot be extracted ({type(e).__name__}: {shorten(e)}). "
            f"Delete it and run the same command again to download it afresh (or place a good copy there)."
        ) from None
