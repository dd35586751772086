"""Drawing one image of a glyph class: a pure function of (seed, class, image index, size, style), bit-identical
across runs and independent of generation order (mdr/data/GLYPHS.md)."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .fonts import FAMILIES, GlyphFont, font_path_file, fonts_for, glyph_code

DEFAULT_IMAGE_SIZE = 36
DEFAULT_SEED = 0

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


