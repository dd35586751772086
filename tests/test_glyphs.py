"""The embedded "glyphs" dataset: split, counts, labels, determinism, image sanity, font coverage."""
from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import pytest
from PIL import Image

from mdr.data.prepared import PreparedDataset
from mdr.data import glyphs as G
from mdr.data.glyphs import render as R
from mdr.data.recipes import glyphs as recipe
from mdr.data.registry import get_dataset

C, M, S = 20, 6, 36  # a small version: 20 classes x 6 images at 36 px


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> PreparedDataset:
    return recipe.generate_glyphs(tmp_path_factory.mktemp("g1") / "glyphs-36px", image_size=S,
                             images_per_class=M, num_classes=C, progress=False)


def test_classes_disjoint_between_splits_and_counts(small):
    man = small.manifest
    train, test = small.split("train"), small.split("test")
    assert set(train["label"]).isdisjoint(test["label"])
    assert set(train["class_id"]).isdisjoint(test["class_id"])
    assert len(train) == len(test) == C // 2 * M
    assert small.meta["counts"] == {"train": C // 2 * M, "test": C // 2 * M}
    assert small.meta["classes"] == {"train": C // 2, "test": C // 2}
    assert small.images().shape == (C * M, S, S, 3) and small.images().dtype == np.uint8
    assert small.eval_splits == ("test",)
    assert man["label"].value_counts().eq(M).all()


def test_closed_set_variant_puts_every_class_in_both_splits(small, tmp_path):
    closed = recipe.generate_glyphs(tmp_path / "glyphs-closed-36px", image_size=S, images_per_class=M,
                               num_classes=C, closed_set_train=3, name="glyphs-closed", progress=False)
    train, test = closed.split("train"), closed.split("test")
    assert set(train["label"]) == set(test["label"]) == set(range(C))
    assert len(train) == 3 * C and len(test) == (M - 3) * C
    assert closed.meta["name"] == "glyphs-closed" and closed.meta["params"]["closed_set_train"] == 3
    # the same renderer: image i of a class is the zero-shot dataset's image i of that class
    np.testing.assert_array_equal(closed.images()[: M], small.images()[: M])
    assert sorted(train[train["label"] == 0]["path"])[-1].endswith("0002.png")
    with pytest.raises(ValueError, match="closed_set_train"):
        recipe.generate_glyphs(tmp_path / "bad", image_size=S, images_per_class=M, num_classes=C, closed_set_train=M,
                          progress=False)


def test_labels_contiguous_and_manifest_columns(small):
    man = small.manifest
    assert sorted(man["label"].unique()) == list(range(C))
    assert man["label"].is_monotonic_increasing
    # the first half of the canonical class order is train, the second half test
    assert set(small.split("train")["label"]) == set(range(C // 2))
    classes = G.glyph_classes()[:C]
    per_label = man.groupby("label").first()
    assert [chr(c) for c in per_label["class_id"]] == list(classes)
    assert list(per_label["class_name"]) == [unicodedata.name(ch) for ch in classes]
    row = man.iloc[M + 3]
    assert row["path"] == f"glyph/U+{int(row['class_id']):04X}/0003.png"


def test_meta(small):
    meta = small.meta
    assert meta["name"] == "glyphs" and meta["generator_version"] == G.GENERATOR_VERSION
    assert meta["params"] == {"image_size": S, "images_per_class": M, "num_classes": C, "seed": 0,
                              "supersample": G.supersample(S), "closed_set_train": None}
    assert meta["images_sha256"] == hashlib.sha256((small.root / "images.npy").read_bytes()).hexdigest()
    files = [f["file"] for f in meta["fonts"]]
    assert "DejaVuSans.ttf" in files and all(len(f["sha256"]) == 64 for f in meta["fonts"])
    assert meta["class_chars"] == "".join(G.glyph_classes()[:C])


def test_generation_is_bit_identical(small, tmp_path):
    again = recipe.generate_glyphs(tmp_path / "glyphs-36px", image_size=S, images_per_class=M, num_classes=C,
                              progress=False)
    for name in ("images.npy", "manifest.csv", "meta.json"):
        assert (again.root / name).read_bytes() == (small.root / name).read_bytes(), name


def test_a_class_alone_equals_that_class_in_a_full_generation(small, tmp_path):
    # fresh caches and reverse order: nothing may depend on what was rendered before
    R._glyph_mask.cache_clear()
    R._pil_font.cache_clear()
    label = C - 1
    ch = G.glyph_classes()[label]
    alone = np.stack([G.render_glyph(ch, i, S) for i in reversed(range(M))])[::-1]
    np.testing.assert_array_equal(alone, small.images()[label * M:(label + 1) * M])
    # a smaller dataset is a prefix of a larger one (same seed): class images do not depend on num_classes
    two = recipe.generate_glyphs(tmp_path / "two", image_size=S, images_per_class=M, num_classes=2, progress=False)
    np.testing.assert_array_equal(two.images(), small.images()[: 2 * M])


def test_images_are_not_blank_and_vary_within_a_class(small):
    imgs = np.asarray(small.images()).astype(np.int16)
    flat = imgs.reshape(len(imgs), -1)
    assert (flat.std(axis=1) > 10).all(), "some images are (almost) uniform"
    assert ((flat.max(axis=1) - flat.min(axis=1)) > 80).all(), "some images lack contrast"
    for label in range(C):
        block = flat[label * M:(label + 1) * M]
        dist = np.abs(block[:, None] - block[None]).mean(axis=2)
        off = dist[~np.eye(M, dtype=bool)]
        assert (off > 5).all(), f"class {label} has near-duplicate images"


def test_class_list_and_font_coverage():
    classes = G.glyph_classes()
    assert len(classes) == recipe.DEFAULT_NUM_CLASSES == 200 and len(set(classes)) == 200
    for ch in classes:
        fonts = G.fonts_for(ch)
        assert len(fonts) >= G.MIN_FONTS, (ch, len(fonts))
        assert len({f.family for f in fonts}) >= G.MIN_FAMILIES, ch
    # one of each visually identical group
    for group in ("AΑА", "BΒВ", "EΕЕ", "HΗН", "KΚК", "MΜМ", "PΡР", "TΤТ", "XΧХ", "CСϹc", "O0oОΟοо", "IlΙІӀ|",
                  "3ЗƷʒ", "ΣƩ∑", "ΠП∏", "VvѴ∨", "Λ∧", "Δ∆△", "U∪", "εɛ", "γɣ", "Θθ"):
        assert len(set(group) & set(classes)) <= 1, group
    # each half holds its share of every script
    half = len(classes) // 2
    for group, chars in G.CLASS_GROUPS.items():
        n_train = sum(ch in chars for ch in classes[:half])
        assert abs(n_train - len(chars) / 2) <= 1, (group, n_train, len(chars))


def test_canonical_order_is_stable():
    # pinned: a change to the class list or its order changes the train/test split of every result
    classes = G.glyph_classes()
    assert hashlib.sha256("".join(classes).encode()).hexdigest() == G.CLASSES_SHA256


def test_contact_sheet(small, tmp_path):
    out = G.glyph_contact_sheet(small, tmp_path / "sheet.png", classes=8, per_class=4)
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 4 * S and im.height >= 8 * S


def test_recipe_registered():
    recipe = get_dataset("glyphs")
    assert recipe.embedded and recipe.ks == (1, 2, 4, 8)
    assert recipe.expected_counts == {"train": 4000, "test": 4000}
    recipe.fetch(None)  # nothing to download


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError):
        recipe.generate_glyphs(tmp_path / "x", num_classes=1, progress=False)
    with pytest.raises(ValueError):
        recipe.generate_glyphs(tmp_path / "x", num_classes=10_000, progress=False)
    assert not (tmp_path / "x").exists()
