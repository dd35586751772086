"""CIFAR-10 (python version): 60,000 32x32 images, 10 classes. CLOSED-SET, unlike the four benchmarks.

All 10 classes appear in both train (data_batch_1..5, 50,000 images) and test (test_batch, 10,000): the
test set measures retrieval of seen classes, not generalisation to unseen ones. Useful as a quick sanity
dataset; its numbers are not comparable to the metric-learning benchmarks.

The batches are Python pickles; they are read with an unpickler that only admits the numpy array
reconstruction functions (after the archive's md5 has been verified), never arbitrary classes.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..fetch import Source, extraction_dir, fetch_sources, published, verify_and_extract
from ..imagecache import build_published, find_folder, require_file, sources_meta, to_rgb_array
from ..registry import KS_SMALL, DatasetRecipe, register_dataset

NAME = "cifar10"
RECIPE_VERSION = 1
EXPECTED_COUNTS = {"train": 50000, "test": 10000}
EXPECTED_CLASSES = {"train": 10, "test": 10}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

ARCHIVE = "cifar-10-python.tar.gz"
SOURCES = published(
    Source(
        ARCHIVE,
        urls=["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
        md5="c58f30108f718f92721af3b95e74349a",
        size=170_498_071,
        manual_hint="https://www.cs.toronto.edu/~kriz/cifar.html ('CIFAR-10 python version')",
    )
)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def load_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One batch file -> (N, 32, 32, 3) uint8 images, labels."""
    require_file(path, NAME, "batch file")
    with open(path, "rb") as f:
        try:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"dataset {NAME}: cannot read {path} ({e}); the file is damaged or not a CIFAR-10 batch") from None
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = [int(x) for x in d["labels"]]
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise ValueError(f"dataset {NAME}: {path}: data has shape {data.shape} for {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def class_names(base: Path) -> list[str]:
    path = require_file(base / "batches.meta", NAME)
    with open(path, "rb") as f:
        d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d["label_names"]]


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    return fetch_sources(SOURCES, raw_dir, progress=progress, download=download)


def read_layout(raw_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows, images in row order)."""
    raw_dir = Path(raw_dir)
    base = find_folder(extraction_dir(raw_dir / ARCHIVE, raw_dir), "batches.meta", NAME)
    names = class_names(base)
    prefix = base.relative_to(raw_dir).as_posix()
    rows, arrays = [], []
    for split, batches in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        for batch in batches:
            data, labels = load_batch(base / batch)
            arrays.append(data)
            rows += [{"path": f"{prefix}/{batch}#{i}", "class_id": c, "class_name": names[c], "split": split}
                     for i, c in enumerate(labels)]
    return pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"]), np.concatenate(arrays)


def prepare(raw_dir: Path, out_dir: Path, image_size: int, expected_counts: Mapping[str, int] | None = None,
            expected_classes: Mapping[str, int] | None = None, progress: bool = True, workers: int | None = None):
    """Verify the archive, extract it once, read the batches, cache (and resize) the images.

    Row paths are `<batch file>#<row>`. expected_counts / expected_classes: None = the published
    numbers; {} = no check.
    """
    raw_dir = Path(raw_dir)
    records = verify_and_extract(SOURCES, raw_dir, ARCHIVE, progress=progress)
    rows, images = read_layout(raw_dir)
    size = int(image_size)
    loader = (lambda i: images[i]) if size == 32 else (lambda i: to_rgb_array(images[i], size))
    return build_published(
        NAME, rows, out_dir, image_size, loader=loader,
        meta={"title": RECIPE.title, "recipe_version": RECIPE_VERSION, "sources": sources_meta(records),
              "closed_set": True,
              "split_protocol": "CLOSED-SET: data_batch_1-5 = train, test_batch = test, all 10 classes in both"},
        published_counts=EXPECTED_COUNTS, published_classes=EXPECTED_CLASSES,
        expected_counts=expected_counts, expected_classes=expected_classes, progress=progress, workers=workers,
    )


RECIPE = register_dataset(
    DatasetRecipe(
        name=NAME,
        title="CIFAR-10 (closed-set)",
        ks=KS_SMALL,
        fetch=fetch,
        prepare=prepare,
        expected_counts=dict(EXPECTED_COUNTS),
        sources=lambda: SOURCES,
    )
)
