"""The glyph renderer behind every embedded dataset: characters drawn from the fonts matplotlib ships.

One module per concern: fonts (which characters are classes, which fonts draw them, the miniature's two
character pools), render (one image, a pure function of seed, class, index, size and style), dataset (writing
classes in the prepared format, the GlyphRecipe a dataset module declares, a contact sheet). The datasets
themselves are recipes: mdr/data/recipes/glyphs.py (the default) and glyphs_*.py (the miniature's five);
mdr/data/GLYPHS.md and mdr/data/GLYPH_BENCHMARKS.md describe them.
"""
from .dataset import (GENERATOR_VERSION, GlyphClass, GlyphRecipe, char_class, check_image_size, check_range,
                      glyph_contact_sheet, nothing_to_fetch, split_counts, write_glyph_dataset, zero_shot_classes)
from .fonts import (CLASS_GROUPS, CLASSES_SHA256, FAMILIES, FONTS, MIN_FAMILIES, MIN_FONTS, POOL_SPLIT, GlyphFont,
                    benchmark_chars, char_font_pairs, check_coverage, class_group, font_class_name, font_dir,
                    fonts_for, glyph_classes, glyph_code, imagenet_chars)
from .render import (DEFAULT_IMAGE_SIZE, DEFAULT_SEED, DEFAULT_STYLE, LOG_ASPECT, ROTATION_DEG, SHEAR, GlyphSpec,
                     GlyphStyle, render_glyph, render_spec, supersample)

__all__ = [
    "GENERATOR_VERSION", "GlyphClass", "GlyphRecipe", "char_class", "check_image_size", "check_range",
    "glyph_contact_sheet", "nothing_to_fetch", "split_counts", "write_glyph_dataset", "zero_shot_classes",
    "CLASS_GROUPS", "CLASSES_SHA256", "FAMILIES", "FONTS", "MIN_FAMILIES", "MIN_FONTS", "POOL_SPLIT", "GlyphFont",
    "benchmark_chars", "char_font_pairs", "check_coverage", "class_group", "font_class_name", "font_dir",
    "fonts_for", "glyph_classes", "glyph_code", "imagenet_chars",
    "DEFAULT_IMAGE_SIZE", "DEFAULT_SEED", "DEFAULT_STYLE", "LOG_ASPECT", "ROTATION_DEG", "SHEAR", "GlyphSpec",
    "GlyphStyle", "render_glyph", "render_spec", "supersample",
]
