"""glyphs-imagenet: the embedded "ImageNet" the miniature's backbones are pretrained on (softmax over its classes).

A class is (character, font family) for every character of the pretraining pool (glyphs.imagenet_chars(),
disjoint from the characters of all four embedded benchmarks) and every family that has it: 471 classes.
Images vary the family's files (regular, bold, italic ...) and everything else as `glyphs`; 30 per class,
images 0-24 train, 25-29 test (held out for the pretraining accuracy). See mdr/data/GLYPH_BENCHMARKS.md.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ..prepared import PreparedDataset
from ..registry import KS_SMALL
from .. import glyphs as G

NAME = "glyphs-imagenet"
RECIPE_VERSION = 1
IMAGES_PER_CLASS = 30
TEST_PER_CLASS = 5
DATASET = G.GlyphRecipe(
    name=NAME, version=RECIPE_VERSION, seed=1, ks=KS_SMALL, expected_counts={"train": 11775, "test": 2355},
    title="Glyphs-ImageNet: 471 (character, font family) classes x 30 images, for pretraining (embedded)",
    split_rule="every class in both: images 0..images_per_class-test_per_class-1 train, the rest test",
)


def classes(num_chars: int | None = None, images_per_class: int = IMAGES_PER_CLASS,
            test_per_class: int = TEST_PER_CLASS) -> list[G.GlyphClass]:
    """The classes of the first `num_chars` pretraining characters (all if None); class_id = code point * 100 +
    the family's index in glyphs.FAMILIES."""
    pool = G.imagenet_chars()
    G.check_range("num_chars", len(pool) if num_chars is None else num_chars, 1, len(pool))
    G.check_range("test_per_class", test_per_class, 1, images_per_class - 1)
    splits = ("train",) * (images_per_class - test_per_class) + ("test",) * test_per_class
    out = []
    for ch in pool[:num_chars]:
        for k, family in enumerate(G.FAMILIES):
            spec = G.GlyphSpec(ch, family=family)
            if spec.fonts():
                out.append(G.GlyphClass(spec, len(out), ord(ch) * 100 + k, f"{unicodedata.name(ch)} / {family}",
                                        f"glyph/U+{ord(ch):04X}/{family.replace(' ', '')}", splits))
    return out


def generate(out_dir, image_size: int = G.DEFAULT_IMAGE_SIZE, num_chars: int | None = None,
             images_per_class: int = IMAGES_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
             progress: bool = True) -> PreparedDataset:
    return DATASET.write(out_dir, image_size, classes(num_chars, images_per_class, test_per_class),
                         {"num_chars": num_chars, "images_per_class": images_per_class, "test_per_class": test_per_class},
                         progress)


def _prepare(raw_dir: Path, out_dir: Path, image_size: int, progress: bool = True) -> PreparedDataset:
    return generate(out_dir, image_size, progress=progress)


RECIPE = DATASET.register(_prepare)
