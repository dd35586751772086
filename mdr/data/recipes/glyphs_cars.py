"""glyphs-cars: the embedded stand-in for Cars-196 (mdr/data/GLYPH_BENCHMARKS.md).

The 100 characters of the benchmark pool, one class each, 80 images per class (as Cars' ~82 photos per
model), classes split half/half, Recall@1/2/4/8. It differs from glyphs-cub in three documented ways: the
halves are swapped (its train characters are glyphs-cub's test characters), its own seed, and a wider
viewpoint distribution (CARS_STYLE: more rotation, shear and aspect change, the glyph filling more of the
frame, as a car photographed from varying angles fills its picture).
"""
from __future__ import annotations

from pathlib import Path

from ..prepared import PreparedDataset
from ..registry import KS_SMALL
from .. import glyphs as G

NAME = "glyphs-cars"
RECIPE_VERSION = 1
NUM_CLASSES = 100
IMAGES_PER_CLASS = 80
CARS_STYLE = G.GlyphStyle(rotation_deg=30.0, shear=0.3, log_aspect=0.4, fill=(0.65, 0.95))
DATASET = G.GlyphRecipe(
    name=NAME, version=RECIPE_VERSION, seed=3, ks=KS_SMALL, expected_counts={"train": 4000, "test": 4000},
    title="Glyphs-Cars: 100 characters x 80 images, wider viewpoints, classes split half/half "
          "(embedded Cars-196 stand-in)",
    split_rule="benchmark_chars() with its halves swapped; the first num_classes // 2 are train, the rest test",
    style=CARS_STYLE,
)


def class_chars() -> tuple[str, ...]:
    """The benchmark pool with its halves swapped: the train characters are glyphs-cub's test characters."""
    pool = G.benchmark_chars()
    return pool[len(pool) // 2:] + pool[:len(pool) // 2]


def classes(num_classes: int = NUM_CLASSES, images_per_class: int = IMAGES_PER_CLASS) -> list[G.GlyphClass]:
    return G.zero_shot_classes(class_chars(), num_classes, images_per_class)


def generate(out_dir, image_size: int = G.DEFAULT_IMAGE_SIZE, num_classes: int = NUM_CLASSES,
             images_per_class: int = IMAGES_PER_CLASS, progress: bool = True) -> PreparedDataset:
    return DATASET.write_zero_shot(out_dir, image_size, class_chars(), num_classes, images_per_class, progress)


def _prepare(raw_dir: Path, out_dir: Path, image_size: int, progress: bool = True) -> PreparedDataset:
    return generate(out_dir, image_size, progress=progress)


RECIPE = DATASET.register(_prepare)
