"""glyphs-sop: the embedded stand-in for Stanford Online Products (mdr/data/GLYPH_BENCHMARKS.md).

A class (a "product") is one (character, font file) pair of the benchmark pool, drawn only in that file, so
near-identical files of one family (DejaVu Sans vs Sans Mono) are different products and the character
plays SOP's super-class (shared by train and test, as bicycle or chair are). 1,200 pairs, the first 1,200
in glyphs.char_font_pairs order; 2-12 images each, skewed as SOP's (most have two or three, mean ~5.3); the first
600 classes train, the other 600 test; Recall@1/10/100/1000.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..prepared import PreparedDataset
from .. import glyphs as G

NAME = "glyphs-sop"
RECIPE_VERSION = 1
NUM_CLASSES = 1200
MIN_IMAGES, MAX_IMAGES = 2, 12
# Images per class: MIN_IMAGES + k extra, P(k) proportional to DECAY^k for k = 0..10: most classes have two or
# three images, a few twelve, mean 5.26 (SOP: 120,053 / 22,634 = 5.3 images per class, from 2 to 12).
DECAY = 0.83
COUNT_STREAM = 2**32  # tags the per-class count draw: no image's seed has a code point this large
DATASET = G.GlyphRecipe(
    name=NAME, version=RECIPE_VERSION, seed=4, ks=(1, 10, 100, 1000), expected_counts={"train": 3131, "test": 3227},
    title="Glyphs-SOP: 1,200 (character, font file) products x 2-12 images, split half/half (embedded SOP stand-in)",
    split_rule="the first num_classes // 2 (character, font file) pairs of char_font_pairs(benchmark_chars(), "
               "'mdr-glyphs-sop') are train, the rest test",
)


def image_count(spec: G.GlyphSpec) -> int:
    weights = DECAY ** np.arange(MAX_IMAGES - MIN_IMAGES + 1)
    rng = np.random.default_rng([DATASET.seed, COUNT_STREAM, *spec.key()])
    return MIN_IMAGES + int(rng.choice(len(weights), p=weights / weights.sum()))


def classes(num_classes: int = NUM_CLASSES) -> list[G.GlyphClass]:
    """The first num_classes (character, font file) pairs; class_id = code point * 100 + the file's index in
    glyphs.FONTS."""
    pairs = G.char_font_pairs(G.benchmark_chars(), "mdr-glyphs-sop")
    G.check_range("num_classes", num_classes, 2, len(pairs))
    n_train = num_classes // 2
    out = []
    for label, (ch, font) in enumerate(pairs[:num_classes]):
        spec = G.GlyphSpec(ch, file=font.file)
        splits = ("train" if label < n_train else "test",) * image_count(spec)
        out.append(G.GlyphClass(spec, label, ord(ch) * 100 + G.FONTS.index(font), G.font_class_name(ch, font),
                                f"glyph/U+{ord(ch):04X}/{font.file.removesuffix('.ttf')}", splits))
    return out


def generate(out_dir, image_size: int = G.DEFAULT_IMAGE_SIZE, num_classes: int = NUM_CLASSES,
             progress: bool = True) -> PreparedDataset:
    return DATASET.write(out_dir, image_size, classes(num_classes),
                         {"num_classes": num_classes, "images_per_class": [MIN_IMAGES, MAX_IMAGES], "decay": DECAY},
                         progress)


def _prepare(raw_dir: Path, out_dir: Path, image_size: int, progress: bool = True) -> PreparedDataset:
    return generate(out_dir, image_size, progress=progress)


RECIPE = DATASET.register(_prepare)
