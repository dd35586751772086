"""What a run trains and is evaluated on: its prepared dataset, split into training rows, held-out validation
classes and evaluation sets, as images with their transforms or as the cached features of the frozen lower
part (mdr/features.py) when `data.cached_views` is set."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mdr.config import RunConfig
from mdr.data.loading import CachedImages, test_transform, train_transform
from mdr.data.prepared import PreparedDataset
from mdr.data.registry import prepared_dir
from mdr.features import CachedFeatureSet, CachedFeatureViews, load_or_build

if TYPE_CHECKING:
    import pandas as pd


def load_prepared(config: RunConfig) -> PreparedDataset:
    return PreparedDataset.load(prepared_dir(config.data.root, config.data.dataset, config.data.image_size))


def training_rows(prepared: PreparedDataset, config: RunConfig) -> "pd.DataFrame":
    """The training split, less the held-out validation classes when `data.validation_classes` > 0."""
    rows = prepared.split("train")
    held_out = validation_labels(prepared, config)
    return rows[~rows["label"].isin(held_out)] if held_out else rows


def validation_labels(prepared: PreparedDataset, config: RunConfig) -> list[int]:
    n = config.data.validation_classes
    if not n:
        return []
    labels = sorted(prepared.split("train")["label"].unique())
    if n >= len(labels) - 1:
        raise ValueError(f"data.validation_classes {n} leaves fewer than 2 of the {len(labels)} training classes")
    return [int(x) for x in labels[-n:]]


def evaluation_sets(prepared: PreparedDataset, config: RunConfig, progress: bool = False) -> dict[str, Any]:
    """What per-epoch evaluation retrieves on: the test split(s) with the test transform ({'test': ...} or
    {'query': ..., 'gallery': ...}), or the held-out training classes when tuning (validation_classes > 0).
    With data.cached_views, the cached centre-crop features of the same images."""
    held_out = validation_labels(prepared, config)
    if held_out:
        rows = prepared.split("train")
        return {"test": eval_set(prepared, config, rows[rows["label"].isin(held_out)], progress)}
    return {split: eval_set(prepared, config, prepared.split(split), progress) for split in prepared.eval_splits}


def eval_set(prepared: PreparedDataset, config: RunConfig, rows: "pd.DataFrame", progress: bool = False):
    """Rows of a prepared dataset as seen at test time: centre crops, or their cached features."""
    indices, labels = rows["index"].to_numpy(), rows["label"].to_numpy()
    if config.data.cached_views:
        return CachedFeatureSet(load_features(prepared, config, progress), indices, labels)
    return CachedImages(prepared.root / "images.npy", indices, labels, test_transform(config.data.crop))


def train_set_of(prepared: PreparedDataset, config: RunConfig, rows: "pd.DataFrame", progress: bool = False):
    """The training images with the training augmentation, or their cached augmented views."""
    indices, labels = rows["index"].to_numpy(), rows["label"].to_numpy()
    if config.data.cached_views:
        return CachedFeatureViews(load_features(prepared, config, progress), indices, labels)
    d = config.data
    if d.augment_on == "device":  # uint8 images as cached; _train_epoch crops them on the device (DeviceCrops)
        return CachedImages(prepared.root / "images.npy", indices, labels, None)
    return CachedImages(prepared.root / "images.npy", indices, labels,
                        train_transform(d.crop, d.crop_scale, d.crop_ratio, d.hflip, d.crop_interpolation))


def load_features(prepared: PreparedDataset, config: RunConfig, progress: bool = False):
    return load_or_build(config, prepared, progress)
