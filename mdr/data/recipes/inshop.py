"""In-Shop Clothes Retrieval (DeepFashion): 52,712 images of 7,982 items; query vs gallery retrieval.

Distributed only through a Google Drive folder with no published checksums, so the two files are placed
by hand; the sha256 of what was supplied is recorded in meta.json. list_eval_partition.txt decides the
split (train / query / gallery); labels are the item ids, shared by query and gallery.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import usercopy
from ..fetch import Source, extraction_dir, fetch_sources, published, verify_and_extract
from ..imagecache import LayoutError, build_published, read_rows, sources_meta
from ..registry import DatasetRecipe, register_dataset

NAME = "inshop"
RECIPE_VERSION = 1
KS = (1, 10, 20, 30, 40)
EXPECTED_COUNTS = {"train": 25882, "query": 14218, "gallery": 12612}
EXPECTED_CLASSES = {"train": 3997, "query+gallery": 3985}
HEADER = ["image_name", "item_id", "evaluation_status"]

DRIVE_URL = "https://drive.google.com/drive/folders/0B7EVK8r0v71pVDZFQXRsMDZCX1E"
_DRIVE = ("the DeepFashion 'In-shop Clothes Retrieval Benchmark' Google Drive folder "
          f"{DRIVE_URL} (often quota-limited: retry later, "
          "or 'Add shortcut to Drive' and download from your own Drive)")
ARCHIVE = "img.zip"
PARTITION = "list_eval_partition.txt"
SOURCES = published(  # no checksum is published: the sha256 of what the user supplied is recorded
    Source(ARCHIVE, manual_hint=f"Img/img.zip in {_DRIVE} (not img_highres.zip)", extracted_marker="img/MEN"),
    Source(PARTITION, manual_hint=f"Eval/list_eval_partition.txt in {_DRIVE}"),
)


# What to do about bad files. Nothing here can be downloaded or verified, so the advice is always to put the
# original file from the Drive folder in place (re-extracting a damaged img.zip would bring the damage back).
def fix_partition(raw_dir: Path) -> str:
    return (f"put the original Eval/list_eval_partition.txt from the Drive folder {DRIVE_URL} at "
            f"{Path(raw_dir) / PARTITION} (or replace the file it links to) and run the same command again")


def fix_images(raw_dir: Path) -> str:
    return usercopy.fix(raw_dir, (
        f"{Path(raw_dir) / ARCHIVE} is damaged or not the low-resolution Img/img.zip (no checksum is published to "
        f"check it by): put a fresh copy of Img/img.zip from the Drive folder {DRIVE_URL} there and run the "
        f"same command again (it is extracted afresh)"))


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    """Check the two hand-placed files (hashing them for meta) or explain where to put them."""
    return fetch_sources(SOURCES, raw_dir, progress=progress, download=download)


def read_layout(raw_dir: Path) -> pd.DataFrame:
    raw_dir = Path(raw_dir)
    images = extraction_dir(raw_dir / ARCHIVE, raw_dir)
    if images.is_dir() and not (images / "img").is_dir():
        found = sorted(p.name for p in images.iterdir() if not p.name.startswith("."))
        what = ("img_highres/ (this is the high-resolution img_highres.zip)" if "img_highres" in found
                else ", ".join(found[:5]) or "nothing")
        raise LayoutError(f"dataset {NAME}: {raw_dir / ARCHIVE} should hold the folder img/ (img/MEN, img/WOMEN) but "
                          f"holds {what}; {fix_images(raw_dir)}.")
    partition = raw_dir / PARTITION
    fix = fix_partition(raw_dir)
    prefix = images.relative_to(raw_dir).as_posix()
    rows = []
    for path, item, status in read_rows(partition, NAME, 3, header=HEADER, count_line=True, fix=fix):
        if status not in ("train", "query", "gallery"):
            raise LayoutError(f"dataset {NAME}: {partition}: unknown evaluation_status {status!r} for {path}; {fix}.")
        if not item.startswith("id_") or not item[3:].isdigit():
            raise LayoutError(f"dataset {NAME}: {partition}: unexpected item id {item!r} for {path}; {fix}.")
        rows.append({"path": f"{prefix}/{path}", "class_id": int(item[3:]), "class_name": item, "split": status})
    df = pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"])
    train = set(df.loc[df.split == "train", "class_id"])
    test = set(df.loc[df.split != "train", "class_id"])
    if train & test:
        both = ", ".join(f"id_{i:08d}" for i in sorted(train & test)[:5])
        raise LayoutError(f"dataset {NAME}: {partition}: items {both} are in both train and query/gallery (the "
                          f"published split keeps them apart); {fix}.")
    return df


def prepare(raw_dir: Path, out_dir: Path, image_size: int, expected_counts: Mapping[str, int] | None = None,
            expected_classes: Mapping[str, int] | None = None, progress: bool = True, workers: int | None = None):
    """Check the placed files, extract img.zip once, read the partition, cache the images, write the dataset.

    expected_counts / expected_classes: None = the published numbers; {} = no check.
    """
    raw_dir = Path(raw_dir)
    records = verify_and_extract(SOURCES, raw_dir, ARCHIVE, progress=progress)
    rows = read_layout(raw_dir)
    return build_published(
        NAME, rows, out_dir, image_size, raw_root=raw_dir,
        meta={"title": RECIPE.title, "recipe_version": RECIPE_VERSION, "sources": sources_meta(records),
              "split_protocol": "list_eval_partition.txt: train / query / gallery; labels = item ids"},
        published_counts=EXPECTED_COUNTS, published_classes=EXPECTED_CLASSES,
        expected_counts=expected_counts, expected_classes=expected_classes, progress=progress, workers=workers,
        fix=fix_images(raw_dir), counted_from=str(raw_dir / PARTITION), counts_fix=fix_partition(raw_dir),
    )


RECIPE = register_dataset(
    DatasetRecipe(
        name=NAME,
        title="In-Shop Clothes Retrieval",
        ks=KS,
        fetch=fetch,
        prepare=prepare,
        expected_counts=dict(EXPECTED_COUNTS),
        query_gallery=True,
        sources=lambda: SOURCES,
    )
)
