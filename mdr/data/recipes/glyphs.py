"""The embedded default dataset "glyphs": 200 characters rendered from the fonts matplotlib ships.

A class is one character (a Unicode code point); its images are that character drawn in the font
families that contain it (DejaVu Sans / Serif / Sans Mono, STIX, Computer Modern), each image with its
own font, size, rotation, shear, aspect, position, stroke weight, colours, blur and noise. The classes
are split like CUB-200: the first half (in the canonical order of `glyph_classes()`) is `train`, the
second half `test`, so evaluation retrieves characters never seen in training. See mdr/data/GLYPHS.md.

The renderer itself, shared with the miniature's five datasets (glyphs-imagenet, -cub, -cars, -sop,
-inshop), is mdr/data/glyphs/.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..glyphs import (DEFAULT_IMAGE_SIZE, DEFAULT_SEED, GlyphSpec, char_class, check_coverage, check_image_size,
                      glyph_classes, nothing_to_fetch, supersample, write_glyph_dataset)
from ..prepared import PreparedDataset
from ..registry import KS_SMALL, DatasetRecipe, register_dataset

DEFAULT_IMAGES_PER_CLASS = 40
DEFAULT_NUM_CLASSES = 200


def expected_counts(num_classes: int = DEFAULT_NUM_CLASSES, images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
                    closed_set_train: int | None = None) -> dict[str, int]:
    if closed_set_train is not None:
        return {"train": num_classes * closed_set_train, "test": num_classes * (images_per_class - closed_set_train)}
    n_train = num_classes // 2
    return {"train": n_train * images_per_class, "test": (num_classes - n_train) * images_per_class}


def generate_glyphs(
    out_dir: str | os.PathLike,
    image_size: int = DEFAULT_IMAGE_SIZE,
    images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
    num_classes: int = DEFAULT_NUM_CLASSES,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    closed_set_train: int | None = None,
    name: str = "glyphs",
) -> PreparedDataset:
    """Render the glyphs dataset into `out_dir` in the prepared format (see mdr/data/prepared.py).

    The classes are the first `num_classes` of glyph_classes(); the first num_classes // 2 of them are
    the train split, the rest the test split (zero-shot, as CUB-200). With `closed_set_train` = n, every
    class is in both splits instead: its images 0..n-1 are train, the rest test (closed-set, as CIFAR-10).
    Image i of class ch is render_glyph(ch, i, image_size, seed).
    """
    all_classes = glyph_classes()
    if not 2 <= num_classes <= len(all_classes):
        raise ValueError(f"num_classes must be between 2 and {len(all_classes)}, got {num_classes}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    check_image_size(image_size)
    if closed_set_train is not None and not 1 <= closed_set_train < images_per_class:
        raise ValueError(f"closed_set_train must be between 1 and images_per_class - 1, got {closed_set_train}")
    classes = all_classes[:num_classes]
    check_coverage(classes)
    n_train = num_classes // 2
    plans = []
    for label, ch in enumerate(classes):
        if closed_set_train is None:
            splits = ("train" if label < n_train else "test",) * images_per_class
        else:
            splits = ("train",) * closed_set_train + ("test",) * (images_per_class - closed_set_train)
        plans.append(char_class(label, GlyphSpec(ch), splits))
    meta = {
        "title": RECIPE_TITLE,
        "params": {
            "image_size": image_size,
            "images_per_class": images_per_class,
            "num_classes": num_classes,
            "seed": seed,
            "supersample": supersample(image_size),
            "closed_set_train": closed_set_train,
        },
        "split_rule": ("first num_classes // 2 classes of glyph_classes() are train, the rest test"
                       if closed_set_train is None else
                       "closed set: images 0..closed_set_train-1 of every class are train, the rest test"),
    }
    return write_glyph_dataset(out_dir, name, plans, image_size, seed, meta,
                               expected_counts(num_classes, images_per_class, closed_set_train), progress=progress)


RECIPE_TITLE = "Glyphs: 200 characters rendered from matplotlib's fonts (embedded, no download)"


def _prepare(raw_dir: Path, out_dir: Path, image_size: int) -> PreparedDataset:
    return generate_glyphs(out_dir, image_size=image_size)


RECIPE = register_dataset(
    DatasetRecipe(
        name="glyphs",
        title=RECIPE_TITLE,
        ks=KS_SMALL,
        fetch=nothing_to_fetch,
        prepare=_prepare,
        expected_counts=expected_counts(),
        embedded=True,
    )
)
