"""Pretraining a backbone on the embedded "ImageNet" (glyphs-imagenet): the smoke profile's ImageNet start.

Softmax training: the backbone followed by a linear classifier (feature_dim -> classes), cross-entropy on
the prepared dataset's `train` split, Adam at a constant lr, with the smoke profile's training
augmentation (mdr/data/loading.py: RandomResizedCrop to 32 px, scale (0.5, 1), no flip, antialiased
bilinear). After every epoch the accuracy on the `test` split (the same classes' held-out images, centre
crop) is printed. Deterministic: seeded once, `threads` fixed, no worker processes, so the same inputs
give a byte-identical weights file on one machine.

Writes the backbone's state dict without the classifier (what `model.weights` loads) atomically, then its
sidecar JSON (mdr/models/pretrained_file.py): sha256 of the .pt, the settings, per-epoch accuracies and
seconds, and the library versions.
"""
from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

PRETRAIN_DATASET = "glyphs-imagenet"
PRETRAIN_IMAGE_SIZE = 36
CROP = 32
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
INTERPOLATION = "bilinear"
EVAL_BATCH = 500
# Sized for the smoke budget: on glyphs-imagenet (11,775 train images) an epoch took 18-26 / 41 / 69 s for
# glyphnet-s / m / l on one thread of the shared 2-core machine, so 3 epochs are ~3.5 min for the largest; test
# accuracy after 3 (s, m): 25.6%, 27.4%, still rising. Adam at 2e-3 left glyphnet-m at chance; 5e-4 is slower.
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 1e-3
DEFAULT_SEED = 0


def pretrain_backbone(name: str, prepared_dir: str | Path, out_path: str | Path, *, epochs: int = DEFAULT_EPOCHS,
                      batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, seed: int = DEFAULT_SEED,
                      threads: int = 1, progress: bool = True, echo: bool = True) -> dict[str, Any]:
    """Pretrain backbone `name` on the prepared dataset in `prepared_dir`; write `out_path` and its sidecar.
    Returns the sidecar's record."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from mdr.data.loading import CachedImages, test_transform, train_transform
    from mdr.data.prepared import PreparedDataset
    from mdr.io import atomic_torch_save, atomic_write_text
    from mdr.models import create_backbone
    from mdr.models.pretrained_file import sidecar_path
    from mdr.io import file_sha256

    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    from mdr.config import ConfigError

    prepared = PreparedDataset.load(prepared_dir)
    splits = set(prepared.manifest["split"])
    if not {"train", "test"} <= splits:
        raise ConfigError(f"{prepared.root}: pretraining needs a train and a test split (held-out images of the "
                          f"training classes), found {', '.join(sorted(splits))}; prepare {PRETRAIN_DATASET} there")
    train_rows, test_rows = prepared.split("train"), prepared.split("test")
    classes = np.unique(train_rows["label"].to_numpy())
    unseen = sorted(set(test_rows["label"]) - set(classes))
    if unseen:
        raise ConfigError(f"{prepared.root}: its test split has {len(unseen)} classes without training images (label "
                          f"{unseen[0]}, ...); pretraining needs held-out images of the training classes")
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    images = prepared.root / "images.npy"

    def rows_set(rows, transform) -> CachedImages:  # labels 0..C-1 in the order of `classes`
        return CachedImages(images, rows["index"].to_numpy(), np.searchsorted(classes, rows["label"].to_numpy()),
                            transform)

    train_set = rows_set(train_rows, train_transform(CROP, CROP_SCALE, CROP_RATIO, False, INTERPOLATION))
    test_set = rows_set(test_rows, test_transform(CROP))
    net = create_backbone(name)
    classifier = nn.Linear(net.feature_dim, len(classes))
    model = nn.Sequential(net, classifier).to(memory_format=torch.channels_last)  # ~2x faster on one CPU thread
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # drop_last: a final batch of one image would break BatchNorm's training statistics
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=0,
                        drop_last=len(train_set) > batch_size, generator=torch.Generator().manual_seed(seed))

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return net.preprocess(x).contiguous(memory_format=torch.channels_last)

    record: dict[str, Any] = {"train_loss": [], "train_accuracy": [], "test_accuracy": [], "seconds": []}
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in tqdm(loader, desc=f"pretrain {name} epoch {epoch}/{epochs}", unit="batch", leave=False,
                         disable=not progress):
            logits = model(inputs(x))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        test_accuracy = _accuracy(model, test_set, inputs)
        seconds = time.perf_counter() - started
        for key, value in (("train_loss", loss_sum / seen), ("train_accuracy", correct / seen),
                           ("test_accuracy", test_accuracy), ("seconds", seconds)):
            record[key].append(round(value, 6))
        if echo:
            print(f"pretrain {name}: epoch {epoch}/{epochs}: loss {loss_sum / seen:.3f}, train accuracy "
                  f"{correct / seen:.3f}, test accuracy {test_accuracy:.3f} ({seconds:.1f} s)", flush=True)

    out_path = Path(out_path)
    # contiguous copies: channels_last tensors would be saved as such, and loaded so into a plain model
    atomic_torch_save({k: v.contiguous() for k, v in net.state_dict().items()}, out_path)
    sidecar = {
        "backbone": name, "file": out_path.name, "sha256": file_sha256(out_path),
        "dataset": {"name": prepared.name, "root": str(prepared.root), "classes": len(classes),
                    "train_images": len(train_set), "test_images": len(test_set),
                    "images_sha256": prepared.meta.get("images_sha256")},
        "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
                     "optimizer": "Adam", "crop": CROP, "crop_scale": list(CROP_SCALE), "hflip": False,
                     "interpolation": INTERPOLATION},
        **record, "seconds_total": round(sum(record["seconds"]), 3), "versions": _versions(),
    }
    atomic_write_text(sidecar_path(out_path), json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def _accuracy(model, dataset, inputs) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), EVAL_BATCH):
            batch = [dataset[i] for i in range(start, min(start + EVAL_BATCH, len(dataset)))]
            x = torch.stack([b[0] for b in batch])
            y = torch.tensor([b[1] for b in batch])
            correct += int((model(inputs(x)).argmax(1) == y).sum())
    return correct / max(len(dataset), 1)


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__}
