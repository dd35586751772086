"""Torch datasets over a prepared image cache, and the train / test transforms (docs/method.md §3)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from torchvision.transforms import v2

# torchvision is imported where a transform is built, not here: importing it costs ~3 s (it imports
# torch._dynamo), which evaluation and training on cached features never need.


def worker_start_method() -> str:
    """How DataLoader workers start: from a forkserver, so that they never fork a process in which faiss has
    run (docs/tooling.md). The server imports this module and torchvision's transforms once, when it starts,
    and every worker is a fork of it: otherwise each worker imports torch and torchvision itself to unpickle
    its CachedImages (seconds each, and a loader starts num_workers of them every epoch and every evaluation;
    81 s against 0.7 s for a loader of 8 workers on 2 busy cores). Call it before the first loader starts."""
    import multiprocessing

    multiprocessing.set_forkserver_preload(["__main__", __name__, "torchvision.transforms.v2"])
    return "forkserver"


class CachedImages(Dataset):
    """Rows `indices` of a prepared dataset's images.npy, as (`transform`(uint8 image CHW), label); with no
    transform, the uint8 image itself (data.augment_on: device, mdr/data/device_augment.py).

    Opens the memory map lazily, so it pickles cheaply into spawned/forkserver DataLoader workers.
    """

    def __init__(self, images_path: str | Path, indices: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None):
        self.images_path = str(images_path)
        self.indices = np.asarray(indices)
        self.labels = np.asarray(labels)
        self.transform = transform
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._images[self.indices[i]])).permute(2, 0, 1)
        return (image if self.transform is None else self.transform(image)), int(self.labels[i])


# The authors crop PIL images with Lanczos (torchvision.transforms on PIL, interpolation=Image.LANCZOS).
# torchvision resamples tensors only with nearest/bilinear/bicubic, so "lanczos" goes through PIL per
# image; "bilinear" stays on tensors (antialiased), cheaper, and open to batched GPU augmentation.
INTERPOLATIONS = {"lanczos": "LANCZOS", "bilinear": "BILINEAR"}  # names in v2.InterpolationMode


def train_transform(crop: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool,
                    interpolation: str = "lanczos") -> v2.Transform:
    """RandomResizedCrop(crop, scale, ratio) with `interpolation`, optional flip, float CHW in [0, 1]."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode[INTERPOLATIONS[interpolation]]
    steps: list[v2.Transform] = [v2.ToPILImage()] if interpolation == "lanczos" else []
    steps.append(v2.RandomResizedCrop(crop, scale=scale, ratio=ratio, interpolation=mode, antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if interpolation == "lanczos":
        steps.append(v2.PILToTensor())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def test_transform(crop: int) -> v2.Transform:
    from torchvision.transforms import v2

    return v2.Compose([v2.CenterCrop(crop), v2.ToDtype(torch.float32, scale=True)])
