"""CUB-200-2011: 11,788 bird images, 200 classes; metric-learning split by class (1-100 train, 101-200 test).

The archive's train_test_split.txt is the classification split (all classes on both sides) and is
deliberately not used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import usercopy
from ..fetch import Source, extraction_dir, fetch_sources, published, verify_and_extract
from ..imagecache import REEXTRACT, LayoutError, build_published, find_folder, read_rows, sources_meta
from ..registry import KS_SMALL, DatasetRecipe, register_dataset

NAME = "cub200"
RECIPE_VERSION = 1
EXPECTED_COUNTS = {"train": 5864, "test": 5924}
EXPECTED_CLASSES = {"train": 100, "test": 100}
TRAIN_CLASSES = range(1, 101)

ARCHIVE = "CUB_200_2011.tgz"
# The fast S3 copy first: the official Caltech address is reported at ~60 KB/s (hours for 1.1 GB).
# Both serve the same file; the sha256 decides.
SOURCES = published(
    Source(
        ARCHIVE,
        urls=[
            "https://s3.amazonaws.com/fast-ai-imageclas/CUB_200_2011.tgz",
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        ],
        sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
        md5="97eceeb196236b17998738112f37df78",
        size=1_150_585_339,
        manual_hint="https://data.caltech.edu/records/65de6-vp158 (Caltech DATA record of CUB-200-2011)",
        extracted_marker="images.txt",
    )
)


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    return fetch_sources(SOURCES, raw_dir, progress=progress, download=download)


def read_layout(raw_dir: Path) -> pd.DataFrame:
    """The extracted archive -> rows (path relative to raw_dir, class_id, class_name, split)."""
    raw_dir = Path(raw_dir)
    fix = repair(raw_dir)
    base = find_folder(extraction_dir(raw_dir / ARCHIVE, raw_dir), "images.txt", NAME, fix=fix)
    images = {int(i): p for i, p in read_rows(base / "images.txt", NAME, 2, fix=fix)}
    labels = {int(i): int(c) for i, c in read_rows(base / "image_class_labels.txt", NAME, 2, fix=fix)}
    classes = {int(c): n for c, n in read_rows(base / "classes.txt", NAME, 2, fix=fix)}
    if set(images) != set(labels):
        only = sorted(set(images) ^ set(labels))[:5]
        raise LayoutError(f"dataset {NAME}: {base / 'images.txt'} and image_class_labels.txt list different image "
                          f"ids (e.g. {only}); {fix}.")
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise LayoutError(f"dataset {NAME}: classes {unknown[:5]} are used in {base / 'image_class_labels.txt'} but "
                          f"missing from classes.txt; {fix}.")
    prefix = base.relative_to(raw_dir).as_posix() + "/images/"
    rows = [
        {
            "path": prefix + images[i],
            "class_id": labels[i],
            "class_name": classes[labels[i]],
            "split": "train" if labels[i] in TRAIN_CLASSES else "test",
        }
        for i in sorted(images)
    ]
    return pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"])


def repair(raw_dir: Path) -> str:
    """What to do about damaged raw files: re-extract the verified archive, or fix the user's own copy."""
    return usercopy.fix(raw_dir, REEXTRACT)


def prepare(raw_dir: Path, out_dir: Path, image_size: int, expected_counts: Mapping[str, int] | None = None,
            expected_classes: Mapping[str, int] | None = None, progress: bool = True, workers: int | None = None):
    """Verify the archive, extract it once, read the layout, cache the images, write the prepared dataset.

    expected_counts / expected_classes: None = the published numbers; {} = no check (tests on small fakes
    pass their own).
    """
    raw_dir = Path(raw_dir)
    records = verify_and_extract(SOURCES, raw_dir, ARCHIVE, progress=progress)
    rows = read_layout(raw_dir)
    return build_published(
        NAME, rows, out_dir, image_size, raw_root=raw_dir,
        meta={"title": RECIPE.title, "recipe_version": RECIPE_VERSION, "sources": sources_meta(records),
              "split_protocol": "by class id: 1-100 train, 101-200 test (train_test_split.txt not used)"},
        published_counts=EXPECTED_COUNTS, published_classes=EXPECTED_CLASSES,
        expected_counts=expected_counts, expected_classes=expected_classes, progress=progress, workers=workers,
        fix=repair(raw_dir), counted_from="image_class_labels.txt (classes 1-100 train, 101-200 test)",
        counts_fix=usercopy.fix(raw_dir, ""),
    )


RECIPE = register_dataset(
    DatasetRecipe(
        name=NAME,
        title="CUB-200-2011",
        ks=KS_SMALL,
        fetch=fetch,
        prepare=prepare,
        expected_counts=dict(EXPECTED_COUNTS),
        sources=lambda: SOURCES,
    )
)
