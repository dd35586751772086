"""The five embedded glyph datasets of the miniature (mdr/data/GLYPH_BENCHMARKS.md): disjoint character pools,
each dataset's structure at its registered size (planned, not rendered), and small renderings: byte-identical
twice, the manifest as planned, every image the renderer's picture of its class."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mdr.data.prepared import PreparedDataset
from mdr.data import glyphs as G
from mdr.data.glyphs.render import _luminance
from mdr.data.recipes import glyphs_cars, glyphs_cub, glyphs_imagenet, glyphs_inshop, glyphs_sop
from mdr.data.registry import get_dataset, prepared_dir
from pipeline import prepare

S = 36
BENCHMARKS = (glyphs_cub, glyphs_cars, glyphs_sop, glyphs_inshop)
ALL = (glyphs_imagenet, *BENCHMARKS)
# small versions, rendered in the tests: a few classes with few images each
SMALL = {
    glyphs_imagenet: {"num_chars": 2, "images_per_class": 4, "test_per_class": 1},
    glyphs_cub: {"num_classes": 4, "images_per_class": 3},
    glyphs_cars: {"num_classes": 4, "images_per_class": 3},
    glyphs_sop: {"num_classes": 8},
    glyphs_inshop: {"num_pairs": 4, "schemes_per_item": 2},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("glyph-benchmarks")
    return {m: m.generate(root / f"{m.NAME}-{S}px", S, progress=False, **SMALL[m]) for m in ALL}


def _sha(ds: PreparedDataset, name: str) -> str:
    return hashlib.sha256((ds.root / name).read_bytes()).hexdigest()


def _chars(plan) -> set[str]:
    return {c.spec.char for c in plan}


def _by_split(plan) -> dict[str, set[int]]:
    labels: dict[str, set[int]] = {}
    for c in plan:
        for split in set(c.splits):
            labels.setdefault(split, set()).add(c.label)
    return labels


# --------------------------------------------------------------------------------- pools and registration


def test_the_pools_split_the_canonical_characters_and_keep_every_script():
    bench, imnet = G.benchmark_chars(), G.imagenet_chars()
    assert len(bench) == len(imnet) == 100 and not set(bench) & set(imnet)
    assert bench + imnet == G.glyph_classes()
    for group, chars in G.CLASS_GROUPS.items():  # each pool holds about half of every script
        assert abs(sum(ch in chars for ch in bench) - len(chars) / 2) <= 1, group


def test_no_imagenet_character_is_in_any_benchmark():
    imnet = _chars(glyphs_imagenet.classes())
    assert imnet == set(G.imagenet_chars())
    for module in BENCHMARKS:
        chars = _chars(module.classes())
        assert chars <= set(G.benchmark_chars()) and not chars & imnet, module.NAME


def test_pinned_counts_are_what_the_recipes_generate_and_registered():
    for module in ALL:
        recipe = get_dataset(module.NAME)
        assert G.split_counts(module.classes()) == module.DATASET.expected_counts == recipe.expected_counts, module.NAME
        assert recipe.embedded and recipe.prepare.__module__ == module.__name__
    assert get_dataset("glyphs-cub").ks == get_dataset("glyphs-cars").ks == (1, 2, 4, 8)
    assert get_dataset("glyphs-sop").ks == (1, 10, 100, 1000)
    assert get_dataset("glyphs-inshop").ks == (1, 10, 20, 30, 40, 50)
    assert get_dataset("glyphs-inshop").query_gallery
    assert not any(get_dataset(m.NAME).query_gallery for m in ALL if m is not glyphs_inshop)


def test_every_dataset_seeds_its_own_images():
    seeds = [m.DATASET.seed for m in ALL]
    assert len(set(seeds)) == len(seeds) and G.DEFAULT_SEED not in seeds


# ------------------------------------------------------------------ each dataset's structure at full size


def test_imagenet_is_hundreds_of_character_family_classes_with_held_out_images():
    plan = glyphs_imagenet.classes()
    assert len(plan) == 471 and len({(c.spec.char, c.spec.family) for c in plan}) == 471
    for c in plan:
        assert c.spec.family in G.FAMILIES and c.spec.fonts()
        assert c.splits == ("train",) * 25 + ("test",) * 5
    assert len({c.class_id for c in plan}) == len(plan)


@pytest.mark.parametrize("module, per_class", [(glyphs_cub, 60), (glyphs_cars, 80)])
def test_cub_and_cars_are_100_characters_split_half_half(module, per_class):
    plan = module.classes()
    assert len(plan) == len(_chars(plan)) == 100
    assert all(len(c.splits) == per_class and len(set(c.splits)) == 1 for c in plan)
    splits = _by_split(plan)
    assert splits["train"] == set(range(50)) and splits["test"] == set(range(50, 100))
    assert all(c.spec == G.GlyphSpec(c.spec.char) for c in plan)  # fonts vary per image


def test_cars_differs_from_cub_in_its_halves_seed_and_viewpoints():
    cub, cars = glyphs_cub.classes(), glyphs_cars.classes()
    cub_train = {c.spec.char for c in cub if c.splits[0] == "train"}
    cars_test = {c.spec.char for c in cars if c.splits[0] == "test"}
    assert cub_train == cars_test
    cub_style, wider = glyphs_cub.DATASET.style, glyphs_cars.DATASET.style
    assert cub_style == glyphs_cub.CUB_STYLE and wider == glyphs_cars.CARS_STYLE
    # both wider than glyphs' default (poses, viewpoints); Cars' the widest, and its glyphs fill more of the frame
    assert cub_style.rotation_deg > G.ROTATION_DEG and cub_style.shear > G.SHEAR and cub_style.log_aspect > G.LOG_ASPECT
    assert wider.rotation_deg > cub_style.rotation_deg and wider.shear > cub_style.shear
    assert wider.log_aspect > cub_style.log_aspect and wider.fill[0] > cub_style.fill[0]


def test_sop_is_over_a_thousand_font_file_products_with_sop_like_counts():
    plan = glyphs_sop.classes()
    assert len(plan) == 1200 and len({(c.spec.char, c.spec.file) for c in plan}) == 1200
    assert all(len(c.spec.fonts()) == 1 for c in plan)  # one fixed font file per product
    counts = np.array([len(c.splits) for c in plan])
    assert counts.min() == 2 and counts.max() == 12
    assert 5.0 <= counts.mean() <= 5.6  # SOP: 5.3
    # skewed as SOP's: the mode is the minimum, and each count is no more frequent than the one below it
    # (up to the sampling noise of ~100 classes per count: 2 sigma ~ 20)
    freq = np.bincount(counts)[2:]
    assert freq.argmax() == 0 and all(freq[k + 1] <= freq[k] + 20 for k in range(len(freq) - 1))
    splits = _by_split(plan)
    assert splits["train"] == set(range(600)) and splits["test"] == set(range(600, 1200))
    # the characters are SOP's super-classes: shared by train and test, the products are not
    train_chars = {c.spec.char for c in plan if c.splits[0] == "train"}
    test_chars = {c.spec.char for c in plan if c.splits[0] == "test"}
    assert len(train_chars & test_chars) >= 90


def test_inshop_items_have_query_and_gallery_images_and_train_items_are_apart():
    plan = glyphs_inshop.classes()
    assert len(plan) == 1000 and len({(c.spec.char, c.spec.file, c.spec.colours) for c in plan}) == 1000
    train = [c for c in plan if "train" in c.splits]
    test = [c for c in plan if "train" not in c.splits]
    assert len(train) == len(test) == 500
    assert [c.label for c in train] == list(range(500))
    for c in plan:
        assert 3 <= len(c.splits) <= 8 and c.spec.colours in {(fg, bg) for _, fg, bg in glyphs_inshop.COLOUR_SCHEMES}
    for c in train:
        assert set(c.splits) == {"train"}
    for c in test:
        n_query, n_gallery = c.splits.count("query"), c.splits.count("gallery")
        assert n_query >= 1 and n_gallery >= 1 and n_query + n_gallery == len(c.splits)
    # whole (character, font file) pairs are on one side, with all their colours
    assert not {(c.spec.char, c.spec.file) for c in train} & {(c.spec.char, c.spec.file) for c in test}


def test_inshop_colour_schemes_contrast():
    for name, fg, bg in glyphs_inshop.COLOUR_SCHEMES:
        assert abs(_luminance(np.array(fg)) - _luminance(np.array(bg))) >= 0.45, name


# -------------------------------------------------------------------------------------- small renderings


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.NAME)
def test_generation_is_byte_identical_twice(module, small, tmp_path):
    again = module.generate(tmp_path / f"{module.NAME}-{S}px", S, progress=False, **SMALL[module])
    for name in ("images.npy", "manifest.csv", "meta.json"):
        assert _sha(again, name) == _sha(small[module], name), name
    assert small[module].meta["images_sha256"] == _sha(small[module], "images.npy")


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.NAME)
def test_manifest_is_the_plan_and_each_image_the_renderer_picture_of_its_class(module, small):
    ds = small[module]
    plan = module.classes(**SMALL[module])
    man = ds.manifest
    assert list(man["label"]) == [c.label for c in plan for _ in c.splits]
    assert list(man["split"]) == [s for c in plan for s in c.splits]
    assert man.groupby("label")["class_id"].nunique().eq(1).all() and man["class_id"].nunique() == len(plan)
    assert ds.meta["name"] == module.NAME and ds.meta["recipe_version"] == module.RECIPE_VERSION
    assert ds.meta["counts"] == G.split_counts(plan)
    recorded = {"image_size": S, "seed": module.DATASET.seed, "supersample": 4, **SMALL[module]}
    assert recorded.items() <= ds.meta["params"].items()
    last = plan[-1]  # rendered alone, after everything else: nothing depends on generation order
    first_row = int(man.index[man["label"] == last.label][0])
    for i in range(len(last.splits)):
        np.testing.assert_array_equal(ds.images()[first_row + i], G.render_spec(last.spec, i, S, module.DATASET.seed, module.DATASET.style))
    imgs = np.asarray(ds.images()).reshape(len(man), -1).astype(np.int16)
    assert (imgs.std(axis=1) > 10).all(), "some images are (almost) uniform"


def test_classes_of_one_character_do_not_share_draws(small):
    # two products of one character: same index, different fonts and different draws (geometry, colours)
    plan = glyphs_sop.classes()
    a, b = [c for c in plan if c.spec.char == plan[0].spec.char][:2]
    assert a.spec.key() != b.spec.key() and G.GlyphSpec("A").key() == [ord("A")]  # plain classes keep glyphs' seeds
    ia, ib = (G.render_spec(c.spec, 0, S, glyphs_sop.DATASET.seed).astype(np.int16) for c in (a, b))
    assert np.abs(ia - ib).mean() > 10
    # cub and cars draw the same character differently (own seeds and styles)
    ch = G.benchmark_chars()[0]
    cub = G.render_spec(G.GlyphSpec(ch), 0, S, glyphs_cub.DATASET.seed, glyphs_cub.CUB_STYLE)
    cars = G.render_spec(G.GlyphSpec(ch), 0, S, glyphs_cars.DATASET.seed, glyphs_cars.CARS_STYLE)
    assert np.abs(cub.astype(np.int16) - cars).mean() > 10


def test_inshop_small_has_query_and_gallery_splits(small):
    ds = small[glyphs_inshop]
    assert ds.eval_splits == ("query", "gallery")
    query, gallery = ds.split("query"), ds.split("gallery")
    assert set(query["label"]) == set(gallery["label"]) and set(query["label"]).isdisjoint(ds.split("train")["label"])
    assert ds.meta["classes"] == {"train": 4, "query": 4, "gallery": 4}  # 2 pairs x 2 schemes on each side


def test_rejects_bad_parameters(tmp_path):
    for call in (lambda: glyphs_cub.generate(tmp_path / "x", num_classes=1, progress=False),
                 lambda: glyphs_cars.generate(tmp_path / "x", num_classes=101, progress=False),
                 lambda: glyphs_sop.generate(tmp_path / "x", num_classes=10_000, progress=False),
                 lambda: glyphs_inshop.generate(tmp_path / "x", schemes_per_item=9, progress=False),
                 lambda: glyphs_imagenet.generate(tmp_path / "x", test_per_class=30, progress=False)):
        with pytest.raises(ValueError, match="must be between"):
            call()
    assert not list(tmp_path.iterdir())


def test_too_small_an_image_size_is_one_line_exit_2(tmp_path, capsys):
    rc = prepare.main(["glyphs-sop", "--image-size", "4", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("error: image size 4 is too small for the glyph datasets: they are rendered at 8 px per side "
                      "or more; pass e.g. --image-size 36 (the smoke profile's)")
    assert not (prepared_dir(tmp_path, "glyphs-sop", 4) / "READY").exists()


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pipeline_prepares_glyphs_sop(tmp_path, capsys):
    rc = prepare.main(["glyphs-sop", "--image-size", "36", "--data-root", str(tmp_path)])
    out, _ = capsys.readouterr()
    root = prepared_dir(tmp_path, "glyphs-sop", 36)
    assert rc == 0 and f"glyphs-sop: prepared at {root}" in out
    ds = PreparedDataset.load(root)
    assert ds.meta["counts"] == glyphs_sop.DATASET.expected_counts and ds.images().shape == (6358, 36, 36, 3)
    assert ds.meta["classes"] == {"train": 600, "test": 600}
    mtime = (root / "READY").stat().st_mtime_ns
    assert prepare.main(["glyphs-sop", "--image-size", "36", "--data-root", str(tmp_path)]) == 0
    assert (root / "READY").stat().st_mtime_ns == mtime  # prepared once, then reused
