"""What a raw file is (`Source`), what verifying it gives (`FileRecord`), the publishers' hashes, and the
errors fetching and extracting raise on purpose."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

HASH_ALGORITHMS = ("sha256", "md5")


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


class NearMissError(ManualDownloadRequired):
    """An expected file is absent but something very like it is there; the message says what to rename or pass."""


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
