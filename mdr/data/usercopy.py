"""Using the copy of a dataset a user already has (`python -m pipeline prepare <name> --source PATH`).

PATH is an extracted folder (e.g. CUB_200_2011/, or the folder above it), an archive packed differently
from the published one (CUB_200_2011.tar.gz), or a folder holding the expected files under other
folders (In-Shop's Drive layout Img/img.zip + Eval/list_eval_partition.txt). Nothing is copied:

  * a file found under PATH with exactly an expected name is symlinked into the raw folder, and then
    verified like a placed file (by its published hash where one exists);
  * the archive's stand-in (the extracted folder, or the differently packed archive) is recorded in
    `<raw>/user-copy.json`; the extracted folder is symlinked where the archive would be extracted, the
    other archive is extracted instead of the published one.

The choice is kept in the raw folder, so later runs (the Snakemake and DVC prepare stages) use it too.
What cannot be checked is said so: the meta of the prepared dataset records for the stand-in the sha256
of the archive or of the folder's file listing, and `verified_against_published_hash` is true only when
the archive really has the published hash. The file list (every image the annotations name exists) and
the published counts are checked as for any source.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .fetch import PUBLISHED_DIGESTS, FetchError, Source, archive_stem, extraction_dir, file_digests, safe_extract, walk

RECORD = "user-copy.json"


class UserCopyError(FetchError):
    """--source points at something that is not (or no longer) a copy of the dataset."""


@dataclass(frozen=True)
class UserCopy:
    path: Path  # the user's folder or archive
    kind: str  # "folder" or "archive"
    stands_for: str  # the Source.filename it replaces


@dataclass(frozen=True)
class CopyRecord:
    """What was used in place of the published archive (meta.json's sources entry)."""

    copy: UserCopy
    facts: dict

    def to_meta(self) -> dict[str, object]:
        return {"user_copy": str(self.copy.path), "kind": self.copy.kind, **self.facts}


def register(raw_dir: Path, sources: Iterable[Source], path: str | os.PathLike) -> list[str]:
    """Point the raw folder at the user's copy; returns one line per thing used (for the user)."""
    raw_dir = Path(raw_dir)
    path = Path(path).expanduser().absolute()
    sources = list(sources)
    if not path.exists():
        raise UserCopyError(f"--source {path}: no such file or folder; pass the extracted dataset folder or its archive")
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / RECORD).unlink(missing_ok=True)
    used: list[str] = []
    stand_in: UserCopy | None = None
    for source in sources:
        found = _named_file(path, source.filename)
        if found is not None:
            _link(raw_dir / source.filename, found)
            used.append(f"{source.filename}: {found} (linked; verified as a placed file)")
            continue
        if not source.extracted_marker or stand_in is not None:
            continue
        stand_in = _stand_in(path, source)
        if stand_in is not None:
            what = "extracted folder" if stand_in.kind == "folder" else "archive packed differently"
            used.append(f"{source.filename}: {stand_in.path} ({what}; its published checksum cannot be checked)")
    if not used:
        names = ", ".join(s.filename for s in sources)
        markers = ", ".join(s.extracted_marker for s in sources if s.extracted_marker)
        raise UserCopyError(
            f"--source {path}: found none of {names}"
            + (f", no folder with {markers} and no archive" if markers else "")
            + " in it (searched 2 folders down); pass the folder that holds them, or the archive itself")
    if stand_in is not None:
        (raw_dir / RECORD).write_text(json.dumps(
            {"path": str(stand_in.path), "kind": stand_in.kind, "stands_for": stand_in.stands_for}, indent=2) + "\n")
    return used


def load(raw_dir: Path) -> UserCopy | None:
    """The registered stand-in, or None. A registered copy that has disappeared is an error, not a fallback."""
    record = Path(raw_dir) / RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        copy = UserCopy(Path(data["path"]), data["kind"], data["stands_for"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserCopyError(f"{record} is damaged ({type(e).__name__}: {e}); delete it and pass --source again") from None
    if not copy.path.exists():
        raise UserCopyError(f"{copy.path}, the copy of {copy.stands_for} registered in {record}, is gone; pass "
                            f"--source again with its new place, or delete {record} to use {copy.stands_for} itself")
    return copy


def covered(raw_dir: Path) -> set[str]:
    """The Source file names the registered copy stands in for (fetch_sources neither checks nor downloads them)."""
    copy = load(raw_dir)
    return {copy.stands_for} if copy is not None else set()


def use(copy: UserCopy, source: Source, raw_dir: Path, progress: bool = False) -> CopyRecord:
    """Make the copy's content appear at extraction_dir(<raw>/<archive>) and say what was (not) checked."""
    raw_dir = Path(raw_dir)
    dest = extraction_dir(raw_dir / source.filename, raw_dir)
    if copy.kind == "archive":
        digests = file_digests(copy.path, progress=progress, stamp_dir=raw_dir)
        matches = source.has_hash and source.mismatch(digests) is None
        published = matches and {d for d in (source.sha256, source.md5) if d} <= PUBLISHED_DIGESTS
        _unlink_link(dest)
        safe_extract(copy.path, dest, progress=progress)
        return CopyRecord(copy, {"size": copy.path.stat().st_size, **digests,
                                 "verified_against_published_hash": bool(published)})
    _unlink_link(dest)
    if dest.exists():  # an earlier extraction of the archive itself: the copy replaces it
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(copy.path, dest, target_is_directory=True)
    return CopyRecord(copy, {**listing(copy.path), "verified_against_published_hash": False})


def listing(folder: Path) -> dict[str, object]:
    """The number of files, sha256 of the sorted `path<TAB>size` listing, and sha256 of the top-level text
    files (the annotation files): what identifies an extracted folder without hashing every image."""
    lines = []
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            full = Path(dirpath) / name
            lines.append(f"{full.relative_to(folder).as_posix()}\t{full.stat().st_size}")
    lines.sort()
    annotations = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".txt"}
    return {"files": len(lines), "listing_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "annotation_sha256": annotations}


def fix(raw_dir: Path, default: str) -> str:
    """What to tell a user whose raw files are damaged: `default`, or about their own copy when one is used."""
    try:
        copy = load(raw_dir)
    except UserCopyError:
        copy = None
    if copy is None:
        return default
    return (f"the copy given with --source ({copy.path}) is not the complete published release; repair it or pass "
            f"--source a complete copy, then run the same command again")


def _stand_in(path: Path, source: Source) -> UserCopy | None:
    """The archive itself packed differently, or the folder it extracts to, at or below `path`."""
    if path.is_file():
        return UserCopy(path, "archive", source.filename) if archive_stem(path.name) is not None else None
    root = _marker_folder(path, source.extracted_marker)
    if root is not None:
        return UserCopy(root, "folder", source.filename)
    archive = _repacked(path, source.filename)
    return UserCopy(archive, "archive", source.filename) if archive is not None else None


def _named_file(path: Path, name: str) -> Path | None:
    if path.is_file():
        return path if path.name == name else None
    if (path / name).is_file():
        return path / name
    return next((p for p in sorted(walk(path, 2)) if p.name == name and p.is_file()), None)


def _marker_folder(path: Path, marker: str) -> Path | None:
    if not path.is_dir():
        return None
    if (path / marker).exists():
        return path
    return next((p for p in sorted(walk(path, 2)) if p.is_dir() and (p / marker).exists()), None)


def _repacked(path: Path, filename: str) -> Path | None:
    stem = (archive_stem(filename) or "").lower()
    return next((p for p in sorted(walk(path, 2)) if p.is_file() and (archive_stem(p.name) or "").lower() == stem),
                None) if path.is_dir() else None


def _link(at: Path, target: Path) -> None:
    if at.is_symlink():
        at.unlink()
    elif at.exists():
        raise UserCopyError(f"{at} already exists; --source would replace it with a link to {target}. Delete or "
                            f"move {at} first (or drop --source to use it)")
    os.symlink(target, at)


def _unlink_link(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
