"""The feature cache of a frozen lower backbone (mdr/features.py) and the engine's path through it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdr import features
from mdr.config import ConfigError, validate_run_config
from mdr.data.loading import CachedImages
from mdr.data.loading import test_transform as centre_crop
from mdr.engine import train
from mdr.run_data import load_prepared
from mdr.models import create_backbone
from tests.conftest import tiny_config


@pytest.fixture
def weights(tmp_path):
    """A glyphnet-s weights file (a seeded initialisation stands for the pretrain stage's output)."""
    torch.manual_seed(1)
    path = tmp_path / "glyphnet-s.pt"
    torch.save(create_backbone("glyphnet-s").state_dict(), path)
    return path


@pytest.fixture
def cached_config(tiny_data, weights):
    def make(**overrides):
        settings = {"data.cached_views": 3, "model.backbone": "glyphnet-s", "model.weights": str(weights),
                    "model.freeze_bn": True, "data.crop_interpolation": "bilinear", "regularizer.name": "none"}
        return tiny_config(tiny_data, **{**settings, **overrides})
    return make


def test_cache_holds_the_lower_part_outputs_of_every_view_and_centre_crop(cached_config, weights):
    config = cached_config()
    prepared = load_prepared(config)
    cache = features.load_or_build(config, prepared)
    train_rows = prepared.split("train")
    assert cache.views.shape == (3, len(train_rows), 128)
    # the centre features are the frozen lower part of the weights file on the centre crops
    net = create_backbone("glyphnet-s", weights=str(weights)).eval()
    images = CachedImages(prepared.root / "images.npy", prepared.manifest["index"].to_numpy(),
                          prepared.manifest["label"].to_numpy(), centre_crop(16))
    crops = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():  # in the cache's batches of 256 images
        expected = torch.cat([net.lower(net.preprocess(crops[b:b + 256])) for b in range(0, len(crops), 256)])
    # The same float32 ops on the same batches in the same process (one code path, one thread count): bit-equal.
    # Not a tolerance: the float32 forward error bound of these four convolutions (|weights| on |inputs|) is as
    # large as the features themselves here, so no bound would tell a wrong crop or weights file from rounding.
    np.testing.assert_array_equal(np.asarray(cache.centre), expected.numpy())
    # the views are augmented: two views of one image differ
    assert not np.allclose(cache.views[0], cache.views[1])


def test_cache_is_built_once_and_reused(cached_config, monkeypatch):
    config = cached_config()
    prepared = load_prepared(config)
    first = features.load_or_build(config, prepared)
    built = []
    monkeypatch.setattr(features, "_build", lambda *a, **k: built.append(a))
    again = features.load_or_build(config, prepared)
    assert built == [] and again.root == first.root
    np.testing.assert_array_equal(np.asarray(again.views), np.asarray(first.views))


def test_cache_key_follows_what_the_numbers_depend_on(cached_config, tmp_path):
    prepared = load_prepared(cached_config())
    base = features.cache_dir(cached_config(), features.cache_record(cached_config(), prepared))
    for change in ({"data.cached_views": 4}, {"data.crop_scale": (0.6, 1.0)}, {"model.backbone": "glyphnet-m"}):
        config = cached_config(**change)
        assert features.cache_dir(config, features.cache_record(config, prepared)) != base, change
    # a different weights file (by content) is a different cache, a copy of the same one is not
    w1, w2, w3 = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    w3.write_bytes(b"one")
    keys = [features.cache_record(cached_config(**{"model.weights": str(w)}), prepared)["weights_sha256"]
            for w in (w1, w2, w3)]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_a_damaged_cache_is_named_with_the_remedy(cached_config):
    config = cached_config()
    prepared = load_prepared(config)
    cache = features.load_or_build(config, prepared)
    (cache.root / "views.npy").write_bytes(b"not an array")
    with pytest.raises(features.FeatureCacheError, match=f"feature cache {cache.root} is damaged.*delete the folder"):
        features.load_or_build(config, prepared)


def test_a_backbone_without_a_lower_upper_split_is_refused(cached_config, tiny_data, tmp_path):
    torch.save(create_backbone("smallcnn").state_dict(), tmp_path / "smallcnn.pt")
    config = cached_config(**{"model.backbone": "smallcnn", "model.weights": str(tmp_path / "smallcnn.pt")})
    with pytest.raises(ValueError, match="smallcnn has no such split: set data.cached_views: 0"):
        train(config, tiny_data.parent / "run", progress=False, echo=False)


def test_channels_last_or_no_weights_with_cached_features_is_a_config_error(cached_config):
    data = cached_config().model_dump(mode="json")
    data["model"]["channels_last"] = True
    with pytest.raises(ConfigError, match="set model.channels_last: false"):
        validate_run_config(data, "here")
    data["model"].update(channels_last=False, weights=None)
    with pytest.raises(ConfigError, match="needs the pretrained weights file in model.weights"):
        validate_run_config(data, "here")


def view_draws(cache, positions, seed):
    torch.manual_seed(seed)
    ds = features.CachedFeatureViews(cache, cache.train_index, np.zeros(len(cache.train_index), dtype=int))
    return ds.batch(positions)[0].numpy()


def test_a_batch_draws_one_cached_view_per_image_from_the_seeded_generator(cached_config):
    config = cached_config()
    cache = features.load_or_build(config, load_prepared(config))
    positions = np.arange(len(cache.train_index))
    a, b = view_draws(cache, positions, 5), view_draws(cache, positions, 5)
    np.testing.assert_array_equal(a, b)
    views = np.asarray(cache.views)
    picked = [next(v for v in range(3) if np.array_equal(a[i], views[v, i])) for i in positions]
    assert len(set(picked)) > 1  # not always the same view


@pytest.mark.parametrize("regularizer", ["none", "mdr", "lsd", "guided"])
def test_training_on_cached_features_is_deterministic(cached_config, tmp_path, regularizer):
    config = cached_config(**{"regularizer.name": regularizer})
    if regularizer == "guided":
        config.regularizer.params.update(master_iterations=2, master_epochs=1)
    first = train(config, tmp_path / "a", progress=False, echo=False)
    second = train(config, tmp_path / "b", resume=False, progress=False, echo=False)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in second.history]
    assert all(np.isfinite(r["loss"]) for r in first.history)
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    # the model is the upper part and the head: the lower part's weights live only in the cache
    assert not any(k.startswith("backbone.lower") for k in state["model"])
    assert any(k.startswith("backbone.upper") for k in state["model"])


def test_the_cache_is_invisible_to_a_run(cached_config, tiny_data, tmp_path):
    """A run that builds the cache and one that finds it draw the same numbers (the build forks the RNG)."""
    config = cached_config()
    first = train(config, tmp_path / "a", progress=False, echo=False)  # builds it
    again = train(config, tmp_path / "b", progress=False, echo=False)  # finds it
    assert [r["loss"] for r in first.history] == [r["loss"] for r in again.history]
    folders = [p for p in (tiny_data / "features").iterdir() if p.is_dir()]
    assert len(folders) == 1 and json.loads((folders[0] / "meta.json").read_text())["record"]["views"] == 3
