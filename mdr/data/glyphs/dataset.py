"""Writing glyph classes as a prepared dataset (mdr/data/prepared.py), the `GlyphRecipe` each embedded glyph
dataset module declares, and a contact sheet to look at one (mdr/data/GLYPH_BENCHMARKS.md)."""
from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..prepared import PreparedDataset, write_prepared
from ..registry import DatasetRecipe, register_dataset
from .fonts import FONTS, font_sha256, font_dir
from .render import DEFAULT_STYLE, GlyphSpec, GlyphStyle, render_spec, supersample

GENERATOR_VERSION = "1"


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
        "generator": "mdr.data.glyphs",
        "generator_version": GENERATOR_VERSION,
        **meta,
        "class_chars": "".join(dict.fromkeys(c.spec.char for c in classes)),
        "fonts": [{"file": f.file, "family": f.family, "sha256": font_sha256(f.file)} for f in FONTS if f in used],
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
            name=self.name, title=self.title, ks=self.ks, fetch=nothing_to_fetch, prepare=prepare,
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


def nothing_to_fetch(raw_dir: Path) -> None:
    """Nothing to fetch: the images are rendered from the fonts matplotlib ships."""
