"""The embedded default dataset "glyphs": characters rendered from the fonts matplotlib ships.

A class is one character (a Unicode code point); its images are that character drawn in the font
families that contain it (DejaVu Sans / Serif / Sans Mono, STIX, Computer Modern), each image with its
own font, size, rotation, shear, aspect, position, stroke weight, colours, blur and noise. The classes
are split like CUB-200: the first half (in the canonical order of `glyph_classes()`) is `train`, the
second half `test`, so evaluation retrieves characters never seen in training.

Everything is a pure function of (seed, code point, image index) and the font files, so the output is
bit-identical across runs and independent of generation order. See mdr/data/GLYPHS.md.

The same renderer makes the miniature's five datasets (glyphs-imagenet, -cub, -cars, -sop, -inshop): a class
is then a GlyphSpec (a character, optionally a fixed family, font file or colour scheme), drawn with a
GlyphStyle, and each recipe module declares a GlyphRecipe. See mdr/data/GLYPH_BENCHMARKS.md.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..prepared import PreparedDataset, write_prepared
from ..registry import KS_SMALL, DatasetRecipe, register_dataset

GENERATOR_VERSION = "1"
DEFAULT_IMAGE_SIZE = 36
DEFAULT_IMAGES_PER_CLASS = 40
DEFAULT_NUM_CLASSES = 200
DEFAULT_SEED = 0
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
def _font_sha256(file: str) -> str:
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


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
ROTATION_DEG = 20.0  # uniform in +-ROTATION_DEG
SHEAR = 0.2  # horizontal shear factor, uniform in +-SHEAR
LOG_ASPECT = 0.25  # log(width / height) stretch, uniform in +-LOG_ASPECT
FILL = (0.55, 0.85)  # the glyph's larger side spans this fraction of the image (uniform)
MIN_CONTRAST = 0.4  # |luminance(fg) - luminance(bg)| on a 0..1 scale
COLOUR_JITTER = 10.0  # per-channel sigma (grey levels) around a class's fixed colour scheme


@dataclass(frozen=True)
class GlyphStyle:
    """The geometric distribution an image's affine map is drawn from (glyphs: DEFAULT_STYLE)."""

    rotation_deg: float = ROTATION_DEG
    shear: float = SHEAR
    log_aspect: float = LOG_ASPECT
    fill: tuple[float, float] = FILL


DEFAULT_STYLE = GlyphStyle()


@dataclass(frozen=True)
class GlyphSpec:
    """One class: a character, optionally tied to one font family or one font file, and to one colour
    scheme (foreground, background RGB). Unset fields vary per image, as in `glyphs`."""

    char: str
    family: str | None = None
    file: str | None = None
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None

    def fonts(self) -> tuple[GlyphFont, ...]:
        """The fonts an image of this class is drawn in (FONTS order)."""
        return tuple(f for f in fonts_for(self.char)
                     if self.family in (None, f.family) and self.file in (None, f.file))

    def key(self) -> list[int]:
        """This class's part of an image's seed: the code point, plus a hash of the fixed fields (if any),
        so two classes of one character never share an image's draws (a plain spec keeps glyphs' seeds)."""
        if self.family is None and self.file is None and self.colours is None:
            return [ord(self.char)]
        fixed = f"{self.family}|{self.file}|{self.colours}".encode()
        return [ord(self.char), int(hashlib.sha256(fixed).hexdigest()[:8], 16)]


def supersample(image_size: int) -> int:
    """Glyphs are drawn at image_size * supersample(image_size), then downsampled with Lanczos."""
    return 4 if image_size <= 64 else 2


@lru_cache(maxsize=None)
def _pil_font(file: str, em: int):
    from PIL import ImageFont

    # BASIC layout: no dependence on whether Pillow was built with libraqm.
    return ImageFont.truetype(str(font_path_file(file)), em, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=512)
def _glyph_mask(font: GlyphFont, ch: str, em: int) -> np.ndarray:
    """The glyph's anti-aliased coverage (uint8, cropped to its ink), drawn at `em` pixels per em."""
    from PIL import Image, ImageDraw

    code = glyph_code(font, ch)
    if code is None:
        raise KeyError(f"font {font.file} has no glyph for {ch!r}")
    pil_font = _pil_font(font.file, em)
    text = chr(code)
    left, top, right, bottom = pil_font.getbbox(text)
    pad = max(4, em // 8)
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=pil_font, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {font.file} draws nothing for {ch!r} (U+{ord(ch):04X})")
    mask = np.asarray(canvas.crop(box))
    mask.setflags(write=False)
    return mask


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0


def _random_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background): a random background and a foreground whose luminance contrasts with it."""
    bg = rng.uniform(0, 255, size=3)
    for _ in range(64):
        fg = rng.uniform(0, 255, size=3)
        if abs(_luminance(fg) - _luminance(bg)) >= MIN_CONTRAST:
            return fg, bg
    return np.full(3, 0.0 if _luminance(bg) > 0.5 else 255.0), bg  # pragma: no cover - vanishingly rare


def render_glyph(ch: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Image `index` of class `ch`: (S, S, 3) uint8, a pure function of (seed, code point, index, S)."""
    return render_spec(GlyphSpec(ch), index, image_size, seed)


def render_spec(spec: GlyphSpec, index: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = DEFAULT_SEED,
                style: GlyphStyle = DEFAULT_STYLE) -> np.ndarray:
    """Image `index` of class `spec`: (S, S, 3) uint8, a pure function of (seed, spec, index, S, style)."""
    from PIL import Image, ImageFilter

    key = spec.key()
    rng = np.random.default_rng([seed, key[0], index, *key[1:]])
    ch = spec.char
    size = image_size
    hi = size * supersample(size)
    em = int(round(1.2 * hi))

    # Font: a family uniformly among those that have the character, then a style within it.
    fonts = spec.fonts()
    if not fonts:
        raise KeyError(f"no font has {ch!r} (U+{ord(ch):04X}) in family {spec.family} / file {spec.file}")
    families = [fam for fam in FAMILIES if any(f.family == fam for f in fonts)]
    family = families[int(rng.integers(len(families)))]
    styles = [f for f in fonts if f.family == family]
    font = styles[int(rng.integers(len(styles)))]

    # Every random draw, in a fixed order, from this image's own generator.
    theta = math.radians(rng.uniform(-style.rotation_deg, style.rotation_deg))
    shear = rng.uniform(-style.shear, style.shear)
    log_aspect = rng.uniform(-style.log_aspect, style.log_aspect)
    fill = rng.uniform(*style.fill)
    shift = rng.uniform(-1.0, 1.0, size=2)
    weight = int(rng.choice([0, 0, 0, 1, 1, 2]))  # extra stroke weight: dilation radius per 144 hi-res px
    # Colours: background (with a gentle linear gradient) and a foreground that contrasts with it; with a
    # fixed scheme, both jittered around the scheme's colours.
    if spec.colours is not None:
        fg, bg = (np.clip(np.asarray(c, dtype=np.float64) + rng.normal(0, COLOUR_JITTER, size=3), 0, 255)
                  for c in spec.colours)
    else:
        fg, bg = _random_colours(rng)
    bg2 = np.clip(bg + rng.normal(0, 30, size=3), 0, 255)
    grad_angle = rng.uniform(0, 2 * math.pi)
    blur = rng.uniform(0.3, 0.8) if rng.uniform() < 0.3 else 0.0
    noise_sigma = rng.uniform(0, 8)
    noise = rng.normal(0, 1, size=(size, size, 3))

    ink = _glyph_mask(font, ch, em)
    if weight:  # thicker strokes: dilate (padded first, so strokes can grow past the ink box)
        r = max(1, round(weight * hi / 144))
        ink = np.pad(ink, r)
        ink = np.asarray(Image.fromarray(ink).filter(ImageFilter.MaxFilter(2 * r + 1)))
    mask = Image.fromarray(ink)
    w, h = mask.size

    # Forward linear map (input -> output) before scaling: rotate . shear . stretch. Plain Python floats
    # (no BLAS/LAPACK), so the transform coefficients are the same on every machine.
    c, s = math.cos(theta), math.sin(theta)
    ax, ay = math.exp(log_aspect / 2), math.exp(-log_aspect / 2)
    m00, m01 = c * ax, (c * shear - s) * ay
    m10, m11 = s * ax, (s * shear + c) * ay
    xs_ = [m00 * dx + m01 * dy for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)]
    ys_ = [m10 * dx + m11 * dy for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)]
    ext_x, ext_y = max(xs_) - min(xs_), max(ys_) - min(ys_)
    scale = fill * hi / max(ext_x, ext_y)
    m00, m01, m10, m11 = m00 * scale, m01 * scale, m10 * scale, m11 * scale
    cx = hi / 2 + float(shift[0]) * max(hi - ext_x * scale, 0.0) / 2 * 0.9
    cy = hi / 2 + float(shift[1]) * max(hi - ext_y * scale, 0.0) / 2 * 0.9
    # PIL wants the inverse map: output pixel -> input pixel.
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    coeffs = (i00, i01, w / 2 - i00 * cx - i01 * cy, i10, i11, h / 2 - i10 * cx - i11 * cy)
    big = mask.transform((hi, hi), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    alpha = np.asarray(big.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64) / 255.0

    # Composite: gradient background, solid foreground, optional blur, then noise.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = (xs - 0.5) * math.cos(grad_angle) + (ys - 0.5) * math.sin(grad_angle) + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    back = bg * (1 - t) + bg2 * t
    img = back * (1 - alpha[..., None]) + fg * alpha[..., None]
    if blur > 0:
        pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(blur * size / 36)), dtype=np.float64)
    img = img + noise * noise_sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# The prepared dataset
# ---------------------------------------------------------------------------------------------------
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


def check_image_size(image_size: int) -> None:
    """A glyph must stay legible: a user's `--image-size` below 8 is a ConfigError (one line, exit 2)."""
    if image_size < 8:
        from mdr.config import ConfigError

        raise ConfigError(f"image size {image_size} is too small for the glyph datasets: they are rendered at 8 px "
                          f"per side or more; pass e.g. --image-size 36 (the smoke profile's)")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import fontTools
    import matplotlib
    import PIL
    from PIL import features

    return {
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "freetype": str(features.version("freetype2")),
        "numpy": np.__version__,
        "fonttools": fontTools.version,
    }


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


@dataclass(frozen=True)
class GlyphClass:
    """One class of a glyph dataset as written: what is drawn, its manifest fields, one split per image."""

    spec: GlyphSpec
    label: int
    class_id: int
    class_name: str
    folder: str  # manifest path of image i: f"{folder}/{i:04d}.png" (no PNG is written)
    splits: tuple[str, ...]


def char_class(label: int, spec: GlyphSpec, splits: tuple[str, ...]) -> GlyphClass:
    """A class that is one character in varying fonts: class_id = code point, class_name its Unicode name."""
    return GlyphClass(spec, label, ord(spec.char), unicodedata.name(spec.char), f"glyph/U+{ord(spec.char):04X}",
                      splits)


def zero_shot_classes(pool: tuple[str, ...], num_classes: int, images_per_class: int) -> list[GlyphClass]:
    """One class per character of pool[:num_classes] (fonts vary per image); the first half train, the rest test."""
    check_range("num_classes", num_classes, 2, len(pool))
    check_range("images_per_class", images_per_class, 1, 10_000)
    chars = pool[:num_classes]
    n_train = len(chars) // 2
    return [char_class(label, GlyphSpec(ch), ("train" if label < n_train else "test",) * images_per_class)
            for label, ch in enumerate(chars)]


def check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")


def split_counts(classes: list[GlyphClass]) -> dict[str, int]:
    """Images per split: what a recipe's pinned expected counts must equal."""
    return dict(Counter(split for c in classes for split in c.splits))


def write_glyph_dataset(out_dir: str | os.PathLike, name: str, classes: list[GlyphClass], image_size: int,
                        seed: int, meta: dict, expected: dict[str, int] | None, style: GlyphStyle = DEFAULT_STYLE,
                        progress: bool = True) -> PreparedDataset:
    """Render `classes` (image i of a class = render_spec(spec, i, image_size, seed, style)) into `out_dir` in
    the prepared format, with `meta` (title, params, split rule, ...) plus what every glyph dataset records."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")  # where write_prepared assembles the folder
    tmp.mkdir(parents=True, exist_ok=True)
    n = sum(len(c.splits) for c in classes)
    images = np.lib.format.open_memmap(
        tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)
    )
    rows = []
    for c in tqdm(classes, desc=f"{name} {image_size}px", unit="class", disable=not progress):
        for i, split in enumerate(c.splits):
            images[len(rows)] = render_spec(c.spec, i, image_size, seed, style)
            rows.append((f"{c.folder}/{i:04d}.png", c.label, c.class_id, c.class_name, split))
    images.flush()
    manifest = pd.DataFrame(rows, columns=["path", "label", "class_id", "class_name", "split"])

    used = {f for c in classes for f in c.spec.fonts()}
    meta = {
        "name": name,
        "source": "embedded: rendered from the fonts in matplotlib's mpl-data/fonts/ttf",
        "generator": "mdr.data.recipes.glyphs",
        "generator_version": GENERATOR_VERSION,
        **meta,
        "class_chars": "".join(dict.fromkeys(c.spec.char for c in classes)),
        "fonts": [{"file": f.file, "family": f.family, "sha256": _font_sha256(f.file)} for f in FONTS if f in used],
        "versions": _versions(),
        "images_sha256": _sha256_file(tmp / "images.npy"),
    }
    prepared = write_prepared(out_dir, manifest, images, meta, expected_counts=expected)
    del images
    return prepared


@dataclass(frozen=True)
class GlyphRecipe:
    """What one embedded glyph dataset module declares (mdr/data/GLYPH_BENCHMARKS.md): it writes the module's
    classes with the module's seed and style, and registers the module's prepare function."""

    name: str
    title: str
    version: int  # the module's RECIPE_VERSION, recorded as meta["recipe_version"]
    seed: int
    ks: tuple[int, ...]
    expected_counts: dict[str, int]  # at the registered size, pinned (computing it needs the fonts)
    split_rule: str
    style: GlyphStyle = DEFAULT_STYLE
    query_gallery: bool = False

    def write(self, out_dir: str | os.PathLike, image_size: int, classes: list[GlyphClass], params: dict,
              progress: bool = True) -> PreparedDataset:
        check_image_size(image_size)
        meta = {"title": self.title, "recipe_version": self.version, "split_rule": self.split_rule,
                "params": {"image_size": image_size, "seed": self.seed, "supersample": supersample(image_size),
                           **({} if self.style == DEFAULT_STYLE else {"style": asdict(self.style)}),
                           **params}}
        return write_glyph_dataset(out_dir, self.name, classes, image_size, self.seed, meta, None, self.style,
                                   progress)

    def write_zero_shot(self, out_dir: str | os.PathLike, image_size: int, pool: tuple[str, ...], num_classes: int,
                        images_per_class: int, progress: bool = True) -> PreparedDataset:
        """A CUB-like dataset: zero_shot_classes(pool, num_classes, images_per_class)."""
        return self.write(out_dir, image_size, zero_shot_classes(pool, num_classes, images_per_class),
                          {"num_classes": num_classes, "images_per_class": images_per_class}, progress)

    def register(self, prepare) -> DatasetRecipe:
        return register_dataset(DatasetRecipe(
            name=self.name, title=self.title, ks=self.ks, fetch=_fetch, prepare=prepare,
            expected_counts=dict(self.expected_counts), embedded=True, query_gallery=self.query_gallery))


def glyph_contact_sheet(
    prepared: PreparedDataset | str | os.PathLike,
    path: str | os.PathLike,
    classes: int = 16,
    per_class: int = 8,
    zoom: int = 2,
) -> Path:
    """A PNG grid: `classes` classes spread evenly over the labels, one row each, `per_class` images."""
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.load(prepared)
    man = prepared.manifest
    imgs = prepared.images()
    labels = np.sort(man["label"].unique())
    picked = labels[np.unique(np.linspace(0, len(labels) - 1, min(classes, len(labels))).round().astype(int))]
    cell = prepared.image_size * zoom
    pad = 2
    caption_w = 5 * cell // 2 + 40
    sheet = Image.new("RGB", (caption_w + per_class * (cell + pad), len(picked) * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    big = ImageFont.truetype(str(font_dir() / "DejaVuSans.ttf"), max(10, int(cell * 0.6)))
    small = ImageFont.truetype(str(font_dir() / "DejaVuSans.ttf"), max(8, cell // 5))
    for r, label in enumerate(picked):
        rows = man[man["label"] == label].sort_values("index")
        first = rows.iloc[0]
        y = r * (cell + pad)
        ch = unicodedata.lookup(first["class_name"].split(" / ")[0])  # "<Unicode name>[ / font[ / colours]]"
        draw.text((4, y + cell // 2), ch, font=big, fill=(0, 0, 0), anchor="lm")
        draw.text((cell + 4, y + cell // 2), f"U+{ord(ch):04X}\n{first['split']} #{label}",
                  font=small, fill=(60, 60, 60), anchor="lm")
        for j, idx in enumerate(rows["index"].to_numpy()[:per_class]):
            tile = Image.fromarray(np.asarray(imgs[idx])).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (caption_w + j * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# Recipe
# ---------------------------------------------------------------------------------------------------
RECIPE_TITLE = "Glyphs: 200 characters rendered from matplotlib's fonts (embedded, no download)"


def _fetch(raw_dir: Path) -> None:
    """Nothing to fetch: the images are rendered from the fonts matplotlib ships."""


def _prepare(raw_dir: Path, out_dir: Path, image_size: int) -> PreparedDataset:
    return generate_glyphs(out_dir, image_size=image_size)


RECIPE = register_dataset(
    DatasetRecipe(
        name="glyphs",
        title=RECIPE_TITLE,
        ks=KS_SMALL,
        fetch=_fetch,
        prepare=_prepare,
        expected_counts=expected_counts(),
        embedded=True,
    )
)
