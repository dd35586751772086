"""READY, the marker of a complete prepared folder, and what it certifies.

READY is written last (see prepared.py) and records what the folder held at that moment: the size and
sha256 of manifest.csv and meta.json (small), and of images.npy its size, array shape and a sampled
sha256 (SAMPLE_BLOCKS blocks of BLOCK bytes spread evenly over the file, header and last block
included): hashing all of a 20 GB cache on every training start would cost minutes, the sample costs
1 MiB of reads and still catches truncation, a file replaced by another run's, or a zeroed region that
covers a sampled block. Independently of READY, images.npy must be exactly as long as its own .npy
header says, with one row per manifest row: this also covers folders whose READY predates these records
(they hold only "ok" and are checked structurally, not rebuilt).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

CERTIFICATE_VERSION = 1
SAMPLE_BLOCKS = 16
BLOCK = 1 << 16
HASHED_FILES = ("manifest.csv", "meta.json")


def sampled_sha256(path: Path) -> str:
    """sha256 over SAMPLE_BLOCKS evenly spaced blocks (the whole file when it is smaller than that)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * BLOCK:
            h.update(f.read())
        else:
            for offset in np.linspace(0, size - BLOCK, SAMPLE_BLOCKS).astype(np.int64):
                f.seek(int(offset))
                h.update(f.read(BLOCK))
    return h.hexdigest()


def npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, expected file size) from a .npy file's own header; ValueError if it has none."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format version {version} is not one numpy writes for uint8 arrays")
        shape, _fortran, dtype = readers[version](f)
        return tuple(int(s) for s in shape), f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def certify(folder: Path) -> dict[str, Any]:
    """The record READY holds for `folder` as it is now."""
    folder = Path(folder)
    images = folder / "images.npy"
    shape, _ = npy_layout(images)
    files: dict[str, Any] = {
        name: {"size": (folder / name).stat().st_size, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        for name in HASHED_FILES
    }
    files["images.npy"] = {"size": images.stat().st_size, "shape": list(shape), "sampled_sha256": sampled_sha256(images)}
    return {"certificate_version": CERTIFICATE_VERSION, "files": files}


def write_ready(folder: Path) -> None:
    (Path(folder) / "READY").write_text(json.dumps(certify(folder), indent=2, sort_keys=True) + "\n")


def problem(folder: Path, rows: int | None = None) -> str | None:
    """What is wrong with a folder that has READY, in a few words, or None when it is what READY certifies.

    `rows`: the manifest's row count, when the caller has read it (images.npy must have as many rows).
    """
    folder = Path(folder)
    images = folder / "images.npy"
    for name in (*HASHED_FILES, "images.npy"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        shape, want = npy_layout(images)
    except (ValueError, OSError, EOFError) as e:
        return f"images.npy has no valid .npy header ({e})"
    have = images.stat().st_size
    if have != want:
        return f"images.npy has {have:,} bytes but its header {tuple(shape)} needs {want:,} (truncated or overwritten)"
    if rows is not None and shape[0] != rows:
        return f"images.npy has {shape[0]:,} images but manifest.csv has {rows:,} rows"
    try:
        record = json.loads((folder / "READY").read_text())
    except (ValueError, OSError):
        return None  # a READY from before these records ("ok"): the structural checks above are all there is
    if not isinstance(record, dict) or record.get("certificate_version") != CERTIFICATE_VERSION:
        return None
    now = certify(folder)["files"]
    for name, certified in record.get("files", {}).items():
        for key, value in certified.items():
            if now.get(name, {}).get(key) != value:
                return (f"{name} differs from what READY certifies ({key} {_short(now.get(name, {}).get(key))}, "
                        f"certified {_short(value)})")
    return None


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] + "..." if len(text) > 19 else text
