"""The m-per-class batch sampler of the authors' code (docs/method.md §3), exactly:
each iteration shuffles the classes, then takes min(m, class size) random images from each class in
turn until the batch is full (the last class may contribute fewer, to fill the batch exactly)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


class MPerClassBatchSampler:
    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, images_per_class: int,
                 iterations: int, seed: int = 0):
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        if len(self.classes) < 2:
            raise ValueError("the m-per-class sampler needs at least two classes")
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        if sum(min(len(m), images_per_class) for m in self.members) < batch_size:
            raise ValueError(
                f"a batch of {batch_size} cannot be filled with {images_per_class} images per class from "
                f"{len(self.classes)} classes; lower train.batch_size"
            )
        self.batch_size, self.m, self.iterations = batch_size, images_per_class, iterations
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[list[int]]:
        g = self.generator
        for _ in range(self.iterations):
            batch: list[int] = []
            for c in torch.randperm(len(self.classes), generator=g).tolist():
                members = self.members[c]
                take = min(self.m, len(members), self.batch_size - len(batch))
                picks = torch.randperm(len(members), generator=g)[:take].numpy()
                batch.extend(members[picks].tolist())
                if len(batch) == self.batch_size:
                    break
            yield batch
