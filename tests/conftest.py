"""Shared fixtures: every test gets its own MLflow store and cache, and tiny prepared datasets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mdr.data.prepared import write_prepared
from mdr.data.registry import DATASETS, DatasetRecipe, prepared_dir


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path_factory, monkeypatch):
    store = tmp_path_factory.mktemp("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("MDR_CACHE", str(tmp_path_factory.mktemp("cache")))


def _tiny_prepare(raw_dir, out_dir, image_size):
    return make_blob_dataset(out_dir, image_size)


def make_blob_dataset(out_dir, image_size: int, classes: int = 8, per_class: int = 6, seed: int = 0):
    """A prepared dataset whose classes differ by colour and blob position: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, rows = [], []
    for c in range(classes):
        colour = rng.integers(0, 256, size=3)
        cy, cx = rng.integers(2, image_size - 2, size=2)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(image_size, image_size, 3)).astype(np.int64)
            yy, xx = np.mgrid[:image_size, :image_size]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (image_size / 4) ** 2
            img[mask] = colour
            images.append(img.astype(np.uint8))
            rows.append({"path": f"blob/{c}/{i}.png", "label": c, "class_id": c + 1, "class_name": f"blob{c}",
                         "split": "train" if c < classes // 2 else "test"})
    manifest = pd.DataFrame(rows).assign(index=0)
    return write_prepared(out_dir, manifest, np.stack(images), {"name": "tiny"})


if "tiny" not in DATASETS:
    DATASETS["tiny"] = DatasetRecipe(name="tiny", title="test blobs", ks=(1, 2), fetch=lambda raw: None,
                                     prepare=_tiny_prepare, embedded=True)


@pytest.fixture
def tiny_data(tmp_path):
    """A data root holding the prepared `tiny` dataset at 16 px."""
    root = tmp_path / "data"
    make_blob_dataset(prepared_dir(root, "tiny", 16), 16)
    return root


def tiny_config(data_root, **overrides):
    from mdr.config import RunConfig

    base = {
        "seed": 0,
        "data": {"dataset": "tiny", "root": str(data_root), "image_size": 16, "crop": 16, "hflip": True},
        "model": {"backbone": "smallcnn", "pretrained": False, "freeze_bn": False, "embedding_dim": 8},
        "regularizer": {"name": "mdr"},
        "optim": {"lr": 1e-3, "lr_milestones": [2]},
        "train": {"epochs": 3, "iterations_per_epoch": 3, "batch_size": 8, "images_per_class": 2, "device": "cpu", "threads": 1},
        "eval": {"ks": [1, 2], "batch_size": 64},
    }
    for dotted, value in overrides.items():
        node = base
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return RunConfig.model_validate(base)


class StopAfter:
    """An engine callback that interrupts training after a given epoch, as Ctrl-C would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_start(self, *a):
        pass

    def on_epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt

    def on_train_end(self, *a):
        pass


@pytest.fixture(scope="session")
def glyphs_36px(tmp_path_factory):
    """The embedded glyphs prepared at 36 px, as `python -m pipeline prepare glyphs --image-size 36` writes them:
    this checkout's data/prepared/glyphs-36px when it is complete, else rendered once per test process (~25 s).
    Workspaces copy it in; their `prepare` then only checks it."""
    from pathlib import Path

    from mdr.data import prepare_dataset

    own = Path(__file__).resolve().parents[1] / "data" / "prepared" / "glyphs-36px"
    if (own / "READY").exists():
        return own
    return prepare_dataset("glyphs", tmp_path_factory.mktemp("glyphs"), 36, progress=False).root


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for this test session (tests/postgres.py); `.database()` gives a URL."""
    from tests.postgres import Unavailable, start_server

    try:
        server = start_server()
    except Unavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()
