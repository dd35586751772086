"""glyphs-closed: the embedded stand-in for CIFAR-10's closed-set setting (Guided DML's own benchmark).

The first 10 glyph classes (as CIFAR-10 has 10), 360 images each; images 0-299 of every class are
train and 300-359 test, so the test classes are the training classes (5:1 as CIFAR-10's 50,000 /
10,000). Same renderer, fonts and determinism as `glyphs` (mdr/data/GLYPHS.md).
"""
from __future__ import annotations

from pathlib import Path

from ..prepared import PreparedDataset
from ..registry import KS_SMALL, DatasetRecipe, register_dataset
from .glyphs import RECIPE as GLYPHS, expected_counts, generate_glyphs

NUM_CLASSES = 10
IMAGES_PER_CLASS = 360
TRAIN_PER_CLASS = 300


def _prepare(raw_dir: Path, out_dir: Path, image_size: int) -> PreparedDataset:
    return generate_glyphs(out_dir, image_size=image_size, images_per_class=IMAGES_PER_CLASS,
                           num_classes=NUM_CLASSES, closed_set_train=TRAIN_PER_CLASS, name="glyphs-closed")


RECIPE = register_dataset(
    DatasetRecipe(
        name="glyphs-closed",
        title="Glyphs, closed set: 10 characters, 300 train / 60 test images each (embedded, no download)",
        ks=KS_SMALL,
        fetch=GLYPHS.fetch,  # nothing to fetch: rendered from the fonts matplotlib ships
        prepare=_prepare,
        expected_counts=expected_counts(NUM_CLASSES, IMAGES_PER_CLASS, TRAIN_PER_CLASS),
        embedded=True,
    )
)
