"""In-Shop Clothes Retrieval (DeepFashion): 52,712 images of 7,982 items; query vs gallery retrieval.

Distributed only through a Google Drive folder with no published checksums, so the two files are placed
by hand; the sha256 of what was supplied is recorded in meta.json. list_eval_partition.txt decides the
split (train / query / gallery); labels are the item ids, shared by query and gallery.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from ..fetch import Source, extraction_dir, fetch_sources, verify_and_extract
from ..imagecache import build_published, read_rows, sources_meta
from ..registry import DatasetRecipe, register_dataset

NAME = "inshop"
RECIPE_VERSION = 1
KS = (1, 10, 20, 30, 40)
EXPECTED_COUNTS = {"train": 25882, "query": 14218, "gallery": 12612}
EXPECTED_CLASSES = {"train": 3997, "query+gallery": 3985}
HEADER = ["image_name", "item_id", "evaluation_status"]

_DRIVE = ("the DeepFashion 'In-shop Clothes Retrieval Benchmark' Google Drive folder "
          "https://drive.google.com/drive/folders/0B7EVK8r0v71pVDZFQXRsMDZCX1E (often quota-limited: retry later, "
          "or 'Add shortcut to Drive' and download from your own Drive)")
ARCHIVE = "img.zip"
PARTITION = "list_eval_partition.txt"
SOURCES = [
    Source(ARCHIVE, manual_hint=f"Img/img.zip in {_DRIVE} (not img_highres.zip)"),
    Source(PARTITION, manual_hint=f"Eval/list_eval_partition.txt in {_DRIVE}"),
]


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    """Check the two hand-placed files (hashing them for meta) or explain where to put them."""
    return fetch_sources(SOURCES, raw_dir, progress=progress, download=download)


def read_layout(raw_dir: Path) -> pd.DataFrame:
    raw_dir = Path(raw_dir)
    images = extraction_dir(raw_dir / ARCHIVE, raw_dir)
    prefix = images.relative_to(raw_dir).as_posix()
    rows = []
    for path, item, status in read_rows(raw_dir / PARTITION, NAME, 3, header=HEADER, count_line=True):
        if status not in ("train", "query", "gallery"):
            raise ValueError(f"dataset {NAME}: {raw_dir / PARTITION}: unknown evaluation_status {status!r} for {path}")
        if not item.startswith("id_") or not item[3:].isdigit():
            raise ValueError(f"dataset {NAME}: {raw_dir / PARTITION}: unexpected item id {item!r} for {path}")
        rows.append({"path": f"{prefix}/{path}", "class_id": int(item[3:]), "class_name": item, "split": status})
    df = pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"])
    train = set(df.loc[df.split == "train", "class_id"])
    test = set(df.loc[df.split != "train", "class_id"])
    if train & test:
        raise ValueError(f"dataset {NAME}: items {sorted(train & test)[:5]} are in both train and query/gallery")
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
    )
)
