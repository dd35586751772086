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
# One module per concern: sources (what a file is), verify (hashes), download (mirrors, resume), extract.
from .download import ResumableHTTPDownloader, fetch_sources, manual_download_message, near_misses, walk
from .extract import archive_stem, extraction_dir, safe_extract, verify_and_extract
from .sources import (PUBLISHED_DIGESTS, CorruptArchiveError, FetchError, FileRecord, HashMismatchError,
                      ManualDownloadRequired, NearMissError, Source, UnsafeArchiveError, published)
from .verify import file_digests, verify_file

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
    "verify_and_extract",
    # for the user's own copy (usercopy.py)
    "PUBLISHED_DIGESTS",
    "archive_stem",
    "walk",
]

