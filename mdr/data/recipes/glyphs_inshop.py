"""glyphs-inshop: the embedded stand-in for In-Shop Clothes Retrieval (mdr/data/GLYPH_BENCHMARKS.md).

An item is (character, font file, colour scheme): 250 (character, font file) pairs of the benchmark pool, each
in 4 of the 8 COLOUR_SCHEMES (as a garment comes in several colours), so 1,000 items of 3-8 images each.
The first 125 pairs' items (500) are train, the other 500 test; a test item's images are split into query
(the first ceil(n/2)) and gallery (the rest), both >= 1, and query images retrieve from the gallery at
Recall@1/10/20/30/40/50. Splits are named train / query / gallery, as the inshop recipe's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..prepared import PreparedDataset
from .. import glyphs as G

NAME = "glyphs-inshop"
RECIPE_VERSION = 1
NUM_PAIRS = 250
SCHEMES_PER_ITEM = 4
MIN_IMAGES, MAX_IMAGES = 3, 8  # per item, uniform (In-Shop: 52,712 images / 7,982 items = 6.6)
# (name, foreground RGB, background RGB): far apart in colour, each with luminance contrast >= 0.45, so an
# item's colour survives the per-image jitter (glyphs.COLOUR_JITTER) and the background gradient.
COLOUR_SCHEMES = (
    ("black on white", (20, 20, 20), (240, 240, 232)),
    ("white on navy", (245, 245, 245), (25, 35, 100)),
    ("yellow on green", (245, 215, 40), (20, 80, 40)),
    ("red on cream", (185, 25, 30), (245, 232, 200)),
    ("navy on sky", (20, 30, 90), (160, 200, 245)),
    ("white on red", (245, 240, 235), (165, 20, 30)),
    ("black on orange", (25, 25, 25), (245, 150, 40)),
    ("pink on purple", (250, 175, 205), (75, 20, 95)),
)
COUNT_STREAM = 2**32  # tags the per-pair draws: no image's seed has a code point this large
DATASET = G.GlyphRecipe(
    name=NAME, version=RECIPE_VERSION, seed=5, ks=(1, 10, 20, 30, 40, 50), query_gallery=True,
    expected_counts={"train": 2710, "query": 1504, "gallery": 1253},
    title="Glyphs-In-Shop: 1,000 (character, font file, colour) items x 3-8 images, query vs gallery "
          "(embedded In-Shop stand-in)",
    split_rule="the items of the first num_pairs // 2 (character, font file) pairs of char_font_pairs("
               "benchmark_chars(), 'mdr-glyphs-inshop') are train; a test item's first ceil(n/2) images are query, "
               "the rest gallery",
)


def classes(num_pairs: int = NUM_PAIRS, schemes_per_item: int = SCHEMES_PER_ITEM) -> list[G.GlyphClass]:
    """The items of the first num_pairs (character, font file) pairs, train pairs first; class_id =
    (code point * 100 + the file's index in glyphs.FONTS) * 100 + the scheme's index."""
    pairs = G.char_font_pairs(G.benchmark_chars(), "mdr-glyphs-inshop")
    G.check_range("num_pairs", num_pairs, 2, len(pairs))
    G.check_range("schemes_per_item", schemes_per_item, 1, len(COLOUR_SCHEMES))
    n_train = num_pairs // 2
    out = []
    for p, (ch, font) in enumerate(pairs[:num_pairs]):
        rng = np.random.default_rng([DATASET.seed, COUNT_STREAM, *G.GlyphSpec(ch, file=font.file).key()])
        for s in sorted(int(i) for i in rng.choice(len(COLOUR_SCHEMES), schemes_per_item, replace=False)):
            scheme, fg, bg = COLOUR_SCHEMES[s]
            n = int(rng.integers(MIN_IMAGES, MAX_IMAGES + 1))
            n_query = (n + 1) // 2
            splits = ("train",) * n if p < n_train else ("query",) * n_query + ("gallery",) * (n - n_query)
            out.append(G.GlyphClass(G.GlyphSpec(ch, file=font.file, colours=(fg, bg)), len(out),
                                    (ord(ch) * 100 + G.FONTS.index(font)) * 100 + s,
                                    f"{G.font_class_name(ch, font)} / {scheme}",
                                    f"glyph/U+{ord(ch):04X}/{font.file.removesuffix('.ttf')}/{scheme.replace(' ', '-')}",
                                    splits))
    return out


def generate(out_dir, image_size: int = G.DEFAULT_IMAGE_SIZE, num_pairs: int = NUM_PAIRS,
             schemes_per_item: int = SCHEMES_PER_ITEM, progress: bool = True) -> PreparedDataset:
    return DATASET.write(out_dir, image_size, classes(num_pairs, schemes_per_item),
                         {"num_pairs": num_pairs, "schemes_per_item": schemes_per_item,
                          "images_per_item": [MIN_IMAGES, MAX_IMAGES]}, progress)


def _prepare(raw_dir: Path, out_dir: Path, image_size: int, progress: bool = True) -> PreparedDataset:
    return generate(out_dir, image_size, progress=progress)


RECIPE = DATASET.register(_prepare)
