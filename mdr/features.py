"""Cached outputs of a frozen lower backbone: the embedded profile's way to fine-tune for thousands of steps.

With `data.cached_views: N` (> 0) a run freezes its backbone's `lower` part (conv stack + pooling, e.g.
the glyphnets of mdr/models/glyphnet.py) and trains only its `upper` part and the embedding head. The
lower part's outputs are computed once per (dataset, transform, backbone weights) and shared by every
run that needs them:

  views.npy   (N, n_train, D) float32: N augmented views (the training transform, view v drawn under
              seed `view_seed(v)`) of every image of the `train` split, in manifest order;
  centre.npy  (n_images, D) float32: the test transform (centre crop) of every image, by manifest index;
  meta.json   what the cache was computed from (its `key` is the folder's hash), shapes, seconds.

The folder is `<data.root>/features/<dataset>-<size>px-<backbone>-<key>`; the key hashes everything the
numbers depend on (the prepared dataset's READY record, the transform settings, the backbone, the sha256
of its weights file, N), so a changed input gets a new folder and nothing stale is reused. It is
built under a lock (the first run of a dataset builds it, the others wait) into a temporary folder
renamed into place, so an interrupted build leaves nothing that looks complete.

A training step then draws, for each image of the batch, one of its N views at random (from the epoch's
seeded generator): an epoch's batches are the augmentation distribution of N fixed views.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from mdr.io import DamagedFileError, atomic_write_text, file_sha256

if TYPE_CHECKING:
    from mdr.config import RunConfig
    from mdr.data.prepared import PreparedDataset

FORMAT_VERSION = 1
VIEW_SEED_BASE = 0x5EED_F00D


class FeatureCacheError(DamagedFileError):
    """A feature cache that cannot be used (damaged or inconsistent with its record)."""


def view_seed(view: int) -> int:
    return VIEW_SEED_BASE + 1_000_003 * view


def cache_record(config: "RunConfig", prepared: "PreparedDataset") -> dict[str, Any]:
    """Everything the cached numbers depend on (hashed into the folder name)."""
    d, m = config.data, config.model
    weights = None
    if m.weights:
        path = Path(m.weights)
        if not path.is_file():
            # the backbone factory says which command builds it; here only the missing file matters
            raise FileNotFoundError(f"model.weights {path} does not exist")
        weights = file_sha256(path)
    return {
        "format": FORMAT_VERSION, "dataset": d.dataset, "image_size": d.image_size,
        "ready": (prepared.root / "READY").read_text(), "crop": d.crop, "crop_scale": list(d.crop_scale),
        "crop_ratio": list(d.crop_ratio), "hflip": d.hflip, "crop_interpolation": d.crop_interpolation,
        "backbone": m.backbone, "pretrained": m.pretrained, "weights_sha256": weights, "views": d.cached_views,
    }


def cache_dir(config: "RunConfig", record: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:10]
    d = config.data
    return Path(d.root) / "features" / f"{d.dataset}-{d.image_size}px-{config.model.backbone}-{key}"


@dataclass
class FeatureCache:
    root: Path
    views: np.ndarray      # (N, n_train, D), memory-mapped
    centre: np.ndarray     # (n_images, D), memory-mapped
    train_index: np.ndarray  # manifest index of each column of `views`

    def view_position(self, indices: np.ndarray) -> np.ndarray:
        """Column of `views` of each manifest index (all must be images of the train split)."""
        indices = np.asarray(indices)
        lookup = np.full(int(max(self.train_index.max(initial=-1), indices.max(initial=-1))) + 1, -1)
        lookup[self.train_index] = np.arange(len(self.train_index))
        pos = lookup[indices]
        if (pos < 0).any():
            raise ValueError(f"cached views exist only for the train split's images, not {indices[pos < 0][:5]}")
        return pos


def split_backbone(net: nn.Module, backbone: str) -> tuple[nn.Module, nn.Module]:
    lower, upper = getattr(net, "lower", None), getattr(net, "upper", None)
    if not isinstance(lower, nn.Module) or not isinstance(upper, nn.Module):
        raise ValueError(f"data.cached_views needs a backbone split into `lower` and `upper` parts "
                         f"(e.g. glyphnet-s/m/l); {backbone} has no such split: set data.cached_views: 0")
    return lower, upper


@torch.no_grad()
def lower_output_dim(net: nn.Module, lower: nn.Module, crop: int) -> int:
    """Width of the lower part's output: its `lower_dim` if it says, else measured on one blank image."""
    dim = getattr(net, "lower_dim", None)
    if dim is None:
        was_training = lower.training
        dim = int(lower.eval()(torch.zeros(1, 3, crop, crop)).shape[1])
        lower.train(was_training)
    return int(dim)


def load_or_build(config: "RunConfig", prepared: "PreparedDataset", progress: bool = False) -> FeatureCache:
    """The run's feature cache, built first if no run has built it yet (see the module docstring)."""
    record = cache_record(config, prepared)
    root = cache_dir(config, record)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits: another run is building the same cache
        if not (root / "READY").is_file():
            print(f"features: computing {root} (once for every run of this dataset, transform and backbone)",
                  file=sys.stderr, flush=True)
            _build(config, prepared, record, root, progress)
    return _open(root, record)


def _open(root: Path, record: dict[str, Any]) -> FeatureCache:
    remedy = f"delete the folder {root} and rerun: it is rebuilt from the prepared dataset"
    try:
        meta = json.loads((root / "meta.json").read_text())
        views = np.load(root / "views.npy", mmap_mode="r")
        centre = np.load(root / "centre.npy", mmap_mode="r")
        train_index = np.load(root / "train_index.npy")
    except (OSError, ValueError) as e:
        raise FeatureCacheError(f"feature cache {root} is damaged ({type(e).__name__}: {e}); {remedy}") from None
    if meta.get("record") != record or views.shape[:2] != (record["views"], len(train_index)) \
            or views.shape[2] != centre.shape[1]:
        raise FeatureCacheError(f"feature cache {root} does not match its record (shapes {views.shape}, "
                                f"{centre.shape}); {remedy}")
    return FeatureCache(root, views, centre, train_index)


@torch.no_grad()
def _build(config: "RunConfig", prepared: "PreparedDataset", record: dict[str, Any], root: Path,
           progress: bool) -> None:
    from tqdm.auto import tqdm

    from mdr.data.loading import CachedImages, test_transform, train_transform
    from mdr.engine import seed_everything
    from mdr.models import create_backbone

    d, m = config.data, config.model
    started = time.perf_counter()
    net = create_backbone(m.backbone, m.pretrained, m.weights).eval()
    lower, _ = split_backbone(net, m.backbone)

    def run(dataset: CachedImages, desc: str) -> np.ndarray:
        out = []
        for b in tqdm(range(0, len(dataset), 256), desc=desc, leave=False, disable=not progress):
            images = torch.stack([dataset[i][0] for i in range(b, min(b + 256, len(dataset)))])
            out.append(lower(net.preprocess(images)).float())
        return torch.cat(out).numpy()

    images_path = prepared.root / "images.npy"
    manifest = prepared.manifest
    train = prepared.split("train")
    augment = train_transform(d.crop, d.crop_scale, d.crop_ratio, d.hflip, d.crop_interpolation)
    views = []
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # a run that builds the cache draws the same numbers as one that finds it
        for v in range(d.cached_views):
            seed_everything(view_seed(v))
            views.append(run(CachedImages(images_path, train["index"].to_numpy(), train["label"].to_numpy(),
                                          augment), f"features: view {v + 1}/{d.cached_views}"))
    random.setstate(states[0])
    np.random.set_state(states[1])
    centre = run(CachedImages(images_path, manifest["index"].to_numpy(), manifest["label"].to_numpy(),
                              test_transform(d.crop)), "features: centre crops")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "views.npy", np.stack(views).astype(np.float32))
    np.save(tmp / "centre.npy", centre.astype(np.float32))
    np.save(tmp / "train_index.npy", train["index"].to_numpy().astype(np.int64))
    meta = {"record": record, "views_shape": [len(views), len(train), centre.shape[1]],
            "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
    (tmp / "READY").write_text(json.dumps({"seconds": meta["seconds"]}) + "\n")
    shutil.rmtree(root, ignore_errors=True)  # a damaged, unlocked leftover without READY
    os.replace(tmp, root)


class CachedFeatureViews:
    """Training set over cached views: `batch(positions)` -> (features, labels), one random view per image."""

    def __init__(self, cache: FeatureCache, indices: np.ndarray, labels: np.ndarray):
        self.cache = cache
        self.indices = np.asarray(indices)
        self.labels = np.asarray(labels)
        self._columns = cache.view_position(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.batch(np.array([i]))[0][0], int(self.labels[i])

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.asarray(positions)
        views = torch.randint(self.cache.views.shape[0], (len(positions),)).numpy()
        features = np.asarray(self.cache.views[views, self._columns[positions]])
        return torch.from_numpy(features), torch.from_numpy(self.labels[positions].astype(np.int64))


class CachedFeatureSet(torch.utils.data.Dataset):
    """Evaluation set over cached centre-crop features, as (feature, label) like CachedImages."""

    def __init__(self, cache: FeatureCache, indices: np.ndarray, labels: np.ndarray):
        self.features = torch.from_numpy(np.asarray(cache.centre[np.asarray(indices)]))
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[i], int(self.labels[i])


class UpperBackbone(nn.Module):
    """A split backbone's trainable `upper` part, fed the cached outputs of its frozen `lower` part."""

    def __init__(self, upper: nn.Module, feature_dim: int):
        super().__init__()
        self.upper = upper
        self.feature_dim = feature_dim

    def preprocess(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.upper(features)
