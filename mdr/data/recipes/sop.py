"""Stanford Online Products: 120,053 product images, 22,634 classes; split by the shipped lists.

Ebay_train.txt (classes 1-11,318) and Ebay_test.txt (classes 11,319-22,634) already split by class;
labels are their class_id. Many classes have only two images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import usercopy
from ..fetch import Source, extraction_dir, fetch_sources, published, verify_and_extract
from ..imagecache import REEXTRACT, LayoutError, build_published, find_folder, read_rows, sources_meta
from ..registry import DatasetRecipe, register_dataset

NAME = "sop"
RECIPE_VERSION = 1
KS = (1, 10, 100, 1000)
EXPECTED_COUNTS = {"train": 59551, "test": 60502}
EXPECTED_CLASSES = {"train": 11318, "test": 11316}
HEADER = ["image_id", "class_id", "super_class_id", "path"]

ARCHIVE = "Stanford_Online_Products.zip"
SOURCES = published(
    Source(
        ARCHIVE,
        urls=["https://drive.usercontent.google.com/download?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8&export=download&confirm=t"],
        sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
        md5="7f73d41a2f44250d4779881525aea32e",
        size=3_083_860_082,
        manual_hint="Google Drive file id 1TclrpQOF_ullUP99wk_gjGN8pKvtErG8 "
                    "(https://drive.google.com/file/d/1TclrpQOF_ullUP99wk_gjGN8pKvtErG8; often quota-limited, "
                    "retry later or download in a browser); the original "
                    "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip is offline",
        extracted_marker="Ebay_train.txt",
    )
)


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    return fetch_sources(SOURCES, raw_dir, progress=progress, download=download)


def read_layout(raw_dir: Path) -> pd.DataFrame:
    raw_dir = Path(raw_dir)
    fix = usercopy.fix(raw_dir, REEXTRACT)
    base = find_folder(extraction_dir(raw_dir / ARCHIVE, raw_dir), "Ebay_train.txt", NAME, fix=fix)
    prefix = base.relative_to(raw_dir).as_posix()
    rows = []
    for split, fname in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        for _image_id, class_id, _super, path in read_rows(base / fname, NAME, 4, header=HEADER, fix=fix):
            folder, _, file = path.rpartition("/")
            product = file.rsplit("_", 1)[0] if "_" in file else file
            rows.append({"path": f"{prefix}/{path}", "class_id": int(class_id),
                         "class_name": f"{folder}/{product}" if folder else product, "split": split})
    df = pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"])
    shared = set(df.loc[df.split == "train", "class_id"]) & set(df.loc[df.split == "test", "class_id"])
    if shared:
        raise LayoutError(f"dataset {NAME}: classes {sorted(shared)[:5]} appear in both {base / 'Ebay_train.txt'} "
                          f"and Ebay_test.txt; the lists are not the published ones; {fix}.")
    return df


def prepare(raw_dir: Path, out_dir: Path, image_size: int, expected_counts: Mapping[str, int] | None = None,
            expected_classes: Mapping[str, int] | None = None, progress: bool = True, workers: int | None = None):
    """Verify the archive, extract it once, read Ebay_*.txt, cache the images, write the prepared dataset.

    expected_counts / expected_classes: None = the published numbers; {} = no check.
    """
    raw_dir = Path(raw_dir)
    records = verify_and_extract(SOURCES, raw_dir, ARCHIVE, progress=progress)
    rows = read_layout(raw_dir)
    return build_published(
        NAME, rows, out_dir, image_size, raw_root=raw_dir,
        meta={"title": RECIPE.title, "recipe_version": RECIPE_VERSION, "sources": sources_meta(records),
              "split_protocol": "Ebay_train.txt = train (classes 1-11,318), Ebay_test.txt = test (11,319-22,634)"},
        published_counts=EXPECTED_COUNTS, published_classes=EXPECTED_CLASSES,
        expected_counts=expected_counts, expected_classes=expected_classes, progress=progress, workers=workers,
        fix=usercopy.fix(raw_dir, REEXTRACT), counted_from="Ebay_train.txt / Ebay_test.txt",
        counts_fix=usercopy.fix(raw_dir, ""),
    )


RECIPE = register_dataset(
    DatasetRecipe(
        name=NAME,
        title="Stanford Online Products",
        ks=KS,
        fetch=fetch,
        prepare=prepare,
        expected_counts=dict(EXPECTED_COUNTS),
        sources=lambda: SOURCES,
    )
)
