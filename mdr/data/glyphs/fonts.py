"""The glyph renderer's classes and fonts: which characters are classes (CLASS_GROUPS, in a canonical order
that decides every split), which of matplotlib's font files draw each one, and the two disjoint character
pools of the miniature (benchmarks vs pretraining)."""
from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# A class is kept only if at least this many font files, from at least MIN_FAMILIES families, have it.
MIN_FONTS = 10
MIN_FAMILIES = 2

# ---------------------------------------------------------------------------------------------------
# Classes. Grouped by script; inside a group the order here is irrelevant (see glyph_classes()).
# Only characters that look different from every other listed one after the augmentations (size
# normalisation, +-20 degree rotation, aspect jitter) are kept: one of each look-alike group, e.g.
# Latin A / Greek Alpha / Cyrillic A -> A; O / 0 / o / Omicron -> O; I / l / 1 / | -> I and 1;
# lower case letters whose shape equals their capital's (c o s v w x z) are left out.
# ---------------------------------------------------------------------------------------------------
CLASS_GROUPS: dict[str, str] = {
    "latin": "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "abdefghijkmnqrtuy",
    "digit": "123456789",
    "greek": "ΓΔΘΛΞΠΣΦΨΩ" "αβδεζηλμξπσςτω",
    "cyrillic": "БДЖИЙЛЦЧШЩЪЫЬЭЮЯЁЂЋЉЊЏҐЎҚѪ" "ђ",
    "latin-extended": "æœÆŒŁØħđəɔÞ",
    "symbol": (
        "&@#$%?!¿§¶†‡©®™€£¥¢∞∫∂∇∈∉∀∃∄←→↑↓↔↕⇐⇒⇔⇑⇓↩↪±÷≠≈≡≤≥√⊕⊙⊥⊢⊣∠⊆⊇¬"
        "♠♣♥♦♡♢♪♫☺⌘⌂●□■▲⊞~*+=<>()[]{}"
    ),
}

# ---------------------------------------------------------------------------------------------------
# Fonts: (file in matplotlib's mpl-data/fonts/ttf, family, how characters are looked up).
# "unicode": the font's Unicode cmap. "glyphname": the Computer Modern (BaKoMa) fonts map TeX positions
# to arbitrary code points, so a character is found through its PostScript glyph name instead.
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlyphFont:
    file: str
    family: str
    lookup: str  # "unicode" | "glyphname"


FONTS: tuple[GlyphFont, ...] = (
    *(GlyphFont(f, "DejaVu Sans", "unicode") for f in (
        "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf")),
    *(GlyphFont(f, "DejaVu Serif", "unicode") for f in (
        "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf")),
    *(GlyphFont(f, "DejaVu Sans Mono", "unicode") for f in (
        "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
        "DejaVuSansMono-BoldOblique.ttf")),
    *(GlyphFont(f, "STIX", "unicode") for f in (
        "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")),
    *(GlyphFont(f, "Computer Modern", "glyphname") for f in (
        "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf", "cmsy10.ttf")),
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f.family for f in FONTS))

# Glyph names for the "glyphname" fonts beyond the Adobe Glyph List, whose legacy names for these point
# at other code points (Delta -> U+2206 INCREMENT, Omega -> U+2126 OHM SIGN, mu -> U+00B5 MICRO SIGN).
_EXTRA_GLYPHNAMES = {0x0394: ("Delta",), 0x03A9: ("Omega",), 0x03BC: ("mu",)}
# Per-font corrections where TeX's name means another shape: cmmi10 "phi" is the straight phi (U+03D5),
# the curly one is "phi1"; cmsy10 "heart" / "diamond" are TeX's white (outline) suits. () = not in font.
_GLYPHNAME_OVERRIDES: dict[tuple[str, int], tuple[str, ...]] = {
    ("cmmi10.ttf", 0x03C6): ("phi1",),
    ("cmsy10.ttf", 0x2665): (),
    ("cmsy10.ttf", 0x2666): (),
    ("cmsy10.ttf", 0x2661): ("heart",),
    ("cmsy10.ttf", 0x2662): ("diamond",),
}


def _glyphname_excluded(font: GlyphFont, ch: str) -> bool:
    # cmsy10's letters are calligraphic capitals, too far from the plain letters to share a class.
    return font.file == "cmsy10.ttf" and ch.isalpha()


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_path_file(file: str) -> Path:
    path = font_dir() / file
    if not path.is_file():
        raise FileNotFoundError(
            f"font {file} not found in {font_dir()}; the glyphs dataset is rendered from the fonts "
            "matplotlib ships (install the matplotlib version pinned in pyproject.toml)"
        )
    return path


@lru_cache(maxsize=None)
def font_sha256(file: str) -> str:
    return hashlib.sha256(font_path_file(file).read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def _agl_names() -> dict[int, tuple[str, ...]]:
    from fontTools import agl

    names: dict[int, list[str]] = {}
    for name, uvs in agl.LEGACY_AGL2UV.items():
        for uv in uvs:
            names.setdefault(uv, []).append(name)
    return {uv: tuple(sorted(v)) for uv, v in names.items()}


@lru_cache(maxsize=None)
def _ttfont(file: str):
    """The font parsed lazily (tables and glyphs on first use) from an in-memory copy of its file."""
    import io

    from fontTools.ttLib import TTFont

    log = logging.getLogger("fontTools")
    level = log.level
    log.setLevel(logging.ERROR)  # the BaKoMa fonts' zero 'head' timestamps only cause noise
    try:
        tt = TTFont(io.BytesIO(font_path_file(file).read_bytes()), lazy=True)
        for table in ("head", "cmap", "glyf"):  # load now, with the logger quiet
            tt[table]
    finally:
        log.setLevel(level)
    return tt


@lru_cache(maxsize=None)
def _cmap(file: str) -> dict[int, str]:
    return dict(_ttfont(file).getBestCmap() or {})


@lru_cache(maxsize=None)
def _has_outline(file: str, glyph_name: str) -> bool:
    glyf = _ttfont(file)["glyf"]
    return glyph_name in glyf and glyf[glyph_name].numberOfContours != 0


@lru_cache(maxsize=None)
def glyph_code(font: GlyphFont, ch: str) -> int | None:
    """The code point to draw in `font` to get character `ch`, or None if the font lacks it."""
    cmap = _cmap(font.file)
    cp = ord(ch)
    if font.lookup == "unicode":
        return cp if cp in cmap and _has_outline(font.file, cmap[cp]) else None
    if _glyphname_excluded(font, ch):
        return None
    wanted = _GLYPHNAME_OVERRIDES.get(
        (font.file, cp), _agl_names().get(cp, ()) + _EXTRA_GLYPHNAMES.get(cp, ()) + (f"uni{cp:04X}",)
    )
    for code, name in sorted(cmap.items()):
        if name in wanted and _has_outline(font.file, name):
            return code
    return None


@lru_cache(maxsize=None)
def fonts_for(ch: str) -> tuple[GlyphFont, ...]:
    """The fonts (in FONTS order) that contain character `ch`."""
    return tuple(f for f in FONTS if glyph_code(f, ch) is not None)


def _order_key(ch: str) -> str:
    return hashlib.sha256(f"mdr-glyphs/{ch}".encode()).hexdigest()


@lru_cache(maxsize=None)
def glyph_classes() -> tuple[str, ...]:
    """All classes in canonical order: the first half of a dataset's classes is train, the rest test.

    Inside each group of CLASS_GROUPS characters are ordered by sha256("mdr-glyphs/" + char); groups are
    then interleaved in proportion to their sizes (the k-th of n characters of a group sits at
    (k + 0.5) / n), so any prefix, and in particular each half, has every script in its share.
    """
    keyed = []
    for g, (group, chars) in enumerate(CLASS_GROUPS.items()):
        ordered = sorted(dict.fromkeys(chars), key=_order_key)
        keyed += [((k + 0.5) / len(ordered), g, ch) for k, ch in enumerate(ordered)]
    return tuple(ch for _, _, ch in sorted(keyed))


# sha256 of "".join(glyph_classes()): pinned by the tests, since the order decides the train/test split.
CLASSES_SHA256 = "d7bf7351600663ed4e51b907c259fa0ab1e2c1d017bf1db6e3c638ac82c69ad4"


def class_group(ch: str) -> str:
    return next(g for g, chars in CLASS_GROUPS.items() if ch in chars)


# The embedded miniature's two disjoint character pools (mdr/data/GLYPH_BENCHMARKS.md): the four benchmarks
# (glyphs-cub, -cars, -sop, -inshop) use only the first half of the canonical order, the pretraining set
# glyphs-imagenet only the second. Contiguous halves, so each pool has its share of every script.
POOL_SPLIT = 100


def benchmark_chars() -> tuple[str, ...]:
    return glyph_classes()[:POOL_SPLIT]


def imagenet_chars() -> tuple[str, ...]:
    return glyph_classes()[POOL_SPLIT:]


def char_font_pairs(chars: tuple[str, ...], tag: str) -> list[tuple[str, GlyphFont]]:
    """Every (character, font file that has it), ordered by sha256(tag/char/file): a dataset's canonical class
    order, so any prefix (and each half of it) mixes characters and fonts evenly."""
    pairs = [(ch, f) for ch in chars for f in fonts_for(ch)]
    return sorted(pairs, key=lambda p: hashlib.sha256(f"{tag}/{p[0]}/{p[1].file}".encode()).hexdigest())


def font_class_name(ch: str, font: GlyphFont) -> str:
    return f"{unicodedata.name(ch)} / {font.file.removesuffix('.ttf')}"


def check_coverage(classes: tuple[str, ...] | list[str]) -> None:
    """Fail if a class has too few fonts (e.g. under a matplotlib release that ships other fonts)."""
    bad = []
    for ch in classes:
        fonts = fonts_for(ch)
        if len(fonts) < MIN_FONTS or len({f.family for f in fonts}) < MIN_FAMILIES:
            bad.append(f"{ch!r} (U+{ord(ch):04X}): {len(fonts)} fonts")
    if bad:
        raise ValueError(
            f"glyph classes with fewer than {MIN_FONTS} fonts or {MIN_FAMILIES} families: {', '.join(bad)}"
        )
