"""The prepared-dataset format: what training and evaluation read, whatever the source.

A prepared dataset is a folder with
  manifest.csv  one row per image: index, path (relative to the raw root), label (0-based, contiguous
                within the whole dataset), class_id (the source's own id), class_name, split
                (train / test, or train / query / gallery for In-Shop)
  images.npy    uint8 array (N, S, S, 3): every image resized once to S x S (the size the transforms
                start from), row i = manifest index i; read through a memory map, so a 120k-image
                dataset costs no RAM up front and no JPEG decoding during training
  meta.json     name, image_size, counts per split, sha256 of the source files, format version
  READY         written last: a folder without it is half-prepared and is never trusted; it records the
                sizes and hashes it certifies (ready.py), checked on every load
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import ready

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ["index", "path", "label", "class_id", "class_name", "split"]
SPLITS = ("train", "test", "query", "gallery")


class DatasetNotPreparedError(FileNotFoundError):
    pass


class PreparedDatasetDamagedError(DatasetNotPreparedError):
    """A folder with READY whose files are not what READY certifies (truncated, replaced, unreadable)."""

    def __init__(self, root: Path, fault: str):
        super().__init__(f"prepared dataset {root} is damaged although READY is present: {fault}. "
                         f"Run `{prepare_command(root)}` to rebuild it (the raw files are reused)")
        self.root, self.fault = root, fault


def prepare_command(root: Path) -> str:
    """The command that (re)builds the prepared folder `<data_root>/prepared/<name>-<size>px`."""
    name, _, size = root.name.rpartition("-")
    return (f"python -m pipeline prepare {name} --image-size {size.removesuffix('px')} "
            f"--data-root {root.parent.parent}")


@dataclass
class PreparedDataset:
    root: Path
    manifest: pd.DataFrame
    meta: dict[str, Any]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "PreparedDataset":
        root = Path(root)
        if not (root / "READY").exists():
            raise DatasetNotPreparedError(
                f"prepared dataset {root} is missing or incomplete (no READY marker); "
                f"run `{prepare_command(root)}` (or the pipeline's prepare stage) first"
            )
        try:
            manifest = pd.read_csv(root / "manifest.csv", dtype={"path": str, "class_name": str, "split": str})
            meta = json.loads((root / "meta.json").read_text())
            fault = ready.problem(root, rows=len(manifest))
        except (ValueError, OSError) as e:  # pandas ParserError and json JSONDecodeError are ValueErrors
            fault = f"manifest.csv or meta.json cannot be read ({type(e).__name__}: {' '.join(str(e).split())})"
        if fault is not None:
            raise PreparedDatasetDamagedError(root, fault)
        return cls(root, manifest, meta)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def images(self) -> np.ndarray:
        """All images as a read-only memory map (N, S, S, 3) uint8."""
        return np.load(self.root / "images.npy", mmap_mode="r")

    def split(self, name: str) -> pd.DataFrame:
        if name not in set(self.manifest["split"]):
            raise KeyError(f"dataset {self.name} has no split {name!r}; it has {sorted(set(self.manifest['split']))}")
        return self.manifest[self.manifest["split"] == name]

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """('test',) for leave-one-out datasets, ('query', 'gallery') for In-Shop."""
        return ("query", "gallery") if "query" in set(self.manifest["split"]) else ("test",)


def write_prepared(
    out_dir: str | os.PathLike,
    manifest: pd.DataFrame,
    images: np.ndarray,
    meta: dict[str, Any],
    expected_counts: dict[str, int] | None = None,
) -> PreparedDataset:
    """Write a prepared dataset atomically: into a temporary folder, checked, then renamed.

    `images` may be an array or a np.memmap already written inside `<out_dir>.tmp/images.npy`.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = manifest.reset_index(drop=True).copy()
    manifest["index"] = np.arange(len(manifest))
    manifest = manifest[MANIFEST_COLUMNS]
    if images.shape[0] != len(manifest):
        raise ValueError(f"{len(manifest)} manifest rows but {images.shape[0]} images")
    bad = set(manifest["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split names {sorted(bad)}; allowed: {SPLITS}")
    counts = manifest["split"].value_counts().to_dict()
    if expected_counts is not None:
        check_counts(meta.get("name", out_dir.name), counts, expected_counts)
    images_path = tmp / "images.npy"
    if not (isinstance(images, np.memmap) and Path(images.filename).resolve() == images_path.resolve()):
        np.save(images_path, np.ascontiguousarray(images, dtype=np.uint8))
    else:
        images.flush()
    manifest.to_csv(tmp / "manifest.csv", index=False)
    meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "image_size": int(images.shape[1]),
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "classes": {s: int(manifest.loc[manifest["split"] == s, "label"].nunique()) for s in sorted(counts)},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    ready.write_ready(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return PreparedDataset.load(out_dir)


class RawFilesError(ValueError):
    """The raw files are not what a recipe reads (missing, damaged, another release); the message names the
    file, what was expected and found, and what to do. Every stage reports it in one line (exit 2)."""


class CountMismatchError(RawFilesError):
    pass


def check_counts(name: str, counts: dict[str, int], expected: dict[str, int], counted_from: str = "",
                 fix: str = "") -> None:
    """Fail with every split whose image count differs from the published one, and by how much.
    `counted_from`: the annotation file(s) the counts come from; `fix`: what to do (default: re-fetch)."""
    problems = [
        f"{split}: expected {want:,} images, found {counts.get(split, 0):,} ({counts.get(split, 0) - want:+,})"
        for split, want in expected.items()
        if counts.get(split, 0) != want
    ]
    if problems:
        raise CountMismatchError(
            f"dataset {name}: image counts{f' in {counted_from}' if counted_from else ''} differ from the published "
            f"split ({'; '.join(problems)}). The raw files are incomplete or not the expected release; "
            f"{fix or 're-fetch them and prepare again'}."
        )
