"""Guided DML (Gonzalez-Zapata et al., arXiv 2206.02029) as a regularizer on the zero-shot benchmarks.

The original is closed-set (MNIST, Fashion-MNIST, CIFAR10): a master with one small conv branch per
class (the label routes each image to its class's branch) feeding a shared head is trained first,
its outputs for every training image become targets, and a student regresses onto them. Here it is a
regularizer next to the base loss (docs/related_methods.md):

    L = weight * mean_i || proj(g(x_i)) - t(x_i) ||_2

g(x_i) the embeddings the base loss sees, proj a learnable linear map embedding_dim -> target_dim
owned by this regularizer (optimised with it), t the master's output.

Master (trained once, in `on_train_start`, on the training split only; its weights are in the
state_dict, so a resumed run does not retrain it):
  * `branches` conv branches [min(num_classes, 16)], class c routed to branch c % branches. One
    branch per class does not scale (SOP: 11,318 training classes); hashing classes onto a fixed
    number of branches keeps the label routing and the cost bounded. With branches >= number of
    classes (e.g. 10-class data) it is the paper's one branch per class.
  * Each branch: conv5x5/2 -> conv3x3/2 -> conv3x3/2 (widths w, 2w, 2w; ReLU; no normalisation,
    since a branch may see only 2-4 images of a batch), global average pooling -> h (2w-d), then a
    shared linear head -> t (`target_dim`). Images are resized to `image_size` [64] px first (the
    paper's masters see 28-32 px images; this also keeps the master cheap at 224 px).
  * Loss (1 - beta) * triplet(margin 3.0, Euclidean) + beta * mean |h(a) - h(p)| over branch features,
    beta [0.005]; each iteration one class pair: `master_batch` [32] triplets, anchors/positives from
    one class, negatives from another (the paper's fixed triplet blocks); `master_epochs` [2] x
    `master_iterations` [100]; optimiser [Adam, lr 1e-3]: the paper's SGD lr 1e-3 (`master_optimizer:
    sgd`, no momentum) hardly moves in a couple of hundred steps, which is all the budget here.
  * Its initialisation and its sampling use their own seed (`seed`) under a forked torch RNG, so
    adding this regularizer does not change the model's initialisation or the global random stream.

Zero-shot adaptation of the targets: the paper precomputes t for every training image; the engine
gives the regularizer a batch's images and labels but not their dataset indices. So t is the master's
output on the same augmented batch (`context.images`, routed by the batch labels), computed under
no_grad at every step. Targets exist only for training images, where both are the same up to the
augmentation (the paper's table would hold one fixed view; here the target follows the view).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .base import Regularizer, StepContext


class Master(nn.Module):
    """Label-routed conv branches (class c -> branch c % branches) and a shared linear head. With `input_dim`
    (the model is fed cached feature vectors, data.cached_views) the branches are two-layer MLPs of the same
    widths on those vectors: the master sees what the student sees."""

    def __init__(self, branches: int, width: int, target_dim: int, image_size: int, input_dim: int | None = None):
        super().__init__()
        self.image_size = image_size
        self.input_dim = input_dim
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, 2 * width), nn.ReLU())
            if input_dim else nn.Sequential(
                nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            for _ in range(branches)
        )
        self.feature_dim = 2 * width
        self.head = nn.Linear(2 * width, target_dim)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_dim:
            return images
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - 0.5) / 0.25

    def branch_features(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        route = labels.remainder(len(self.branches))
        h = x.new_empty(x.shape[0], self.feature_dim)
        for b in route.unique().tolist():
            rows = (route == b).nonzero(as_tuple=True)[0]
            h[rows] = self.branches[b](x[rows])
        return h

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.branch_features(images, labels)
        return self.head(h), h


class GuidedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.1, ge=0, description="lambda: weight of mean ||proj(g(x)) - t(x)||")
    target_dim: int = Field(64, ge=1, description="dimension of the master's output (the targets)")
    branches: int | None = Field(None, ge=1, description="master conv branches; class c -> branch c % branches; "
                                 "None: min(num_classes, 16)")
    branch_width: int = Field(16, ge=1, description="channels of a branch's first conv (then 2x, 2x)")
    image_size: int = Field(64, ge=8, description="the master sees images resized to this many pixels")
    master_epochs: int = Field(2, ge=0, description="master training epochs (0: an untrained master)")
    master_iterations: int = Field(100, ge=1, description="master iterations per epoch")
    master_batch: int = Field(32, ge=1, description="triplets per master iteration, all from one class pair")
    margin: float = Field(3.0, gt=0, description="master triplet margin (paper: 3.0)")
    beta: float = Field(0.005, ge=0, le=1, description="weight of mean |h(a) - h(p)| (paper: 0.003 CIFAR10, "
                        "0.005 MNIST/Fashion-MNIST)")
    master_optimizer: Literal["adam", "sgd"] = Field("adam", description="adam (default, short budget) or the "
                                                     "paper's plain sgd")
    master_lr: float = Field(1e-3, gt=0, description="master learning rate (paper: SGD 1e-3)")
    seed: int = Field(0, description="seed of the master's initialisation and training sampling")


class GuidedRegularizer(Regularizer):
    """G-DML: weight * mean ||proj(g(x)) - master(x)||, the master trained on the training classes first."""

    normalization = "batch_mean_distance"

    def __init__(self, weight: float = 0.1, target_dim: int = 64, branches: int | None = None, branch_width: int = 16,
                 image_size: int = 64, master_epochs: int = 2, master_iterations: int = 100, master_batch: int = 32,
                 margin: float = 3.0, beta: float = 0.005, master_optimizer: str = "adam", master_lr: float = 1e-3,
                 seed: int = 0, num_classes: int = 16, embedding_dim: int = 512, input_dim: int | None = None):
        super().__init__()
        self.weight, self.margin, self.beta = weight, margin, beta
        self.master_epochs, self.master_iterations, self.master_batch = master_epochs, master_iterations, master_batch
        self.master_optimizer, self.master_lr, self.seed = master_optimizer, master_lr, seed
        n_branches = branches if branches is not None else max(1, min(num_classes, 16))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.master = Master(n_branches, branch_width, target_dim, image_size, input_dim)
            self.proj = nn.Linear(embedding_dim, target_dim)
        self.master.requires_grad_(False)
        self.master.eval()
        self.register_buffer("master_trained", torch.zeros((), dtype=torch.bool))
        self.master_log: list[dict[str, float]] = []

    # -- the master ------------------------------------------------------------------------------
    def master_loss(self, images: torch.Tensor, labels: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, triplet) on stacked [anchors; positives; negatives] of `blocks` triplets each."""
        out, h = self.master(images, labels)
        oa, op, on = out.split(blocks)
        triplet = F.triplet_margin_loss(oa, op, on, margin=self.margin)
        similarity = (h[:blocks] - h[blocks:2 * blocks]).abs().mean()
        return (1 - self.beta) * triplet + self.beta * similarity, triplet

    def sample_triplets(self, members: list[np.ndarray], anchor_classes: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """Dataset rows [a..., p..., n...] of one class pair, and the pair's class positions."""
        c1 = int(rng.choice(anchor_classes))
        c2 = int(rng.choice(np.delete(np.arange(len(members)), c1)))
        m1, m2, b = members[c1], members[c2], self.master_batch
        pos = rng.integers(0, len(m1), size=b)
        partner = (pos + rng.integers(1, len(m1), size=b)) % len(m1)  # a different image of the class
        negatives = rng.choice(m2, size=b)
        return np.concatenate([m1[pos], m1[partner], negatives]), c1, c2

    def train_master(self, train_set: Any, device: torch.device) -> list[dict[str, float]]:
        labels = np.asarray(train_set.labels)
        classes = np.unique(labels)
        members = [np.flatnonzero(labels == c) for c in classes]
        anchor_classes = np.array([k for k, m in enumerate(members) if len(m) >= 2])
        if len(classes) < 2 or len(anchor_classes) == 0:
            raise ValueError("guided: the master needs two classes and a class with at least two images")
        rng = np.random.default_rng(self.seed)
        log: list[dict[str, float]] = []
        with torch.random.fork_rng(devices=[]):  # augmentations draw from torch's global RNG
            torch.manual_seed(self.seed)
            self.master.requires_grad_(True)
            self.master.train()
            params = list(self.master.parameters())
            opt = (torch.optim.Adam(params, lr=self.master_lr) if self.master_optimizer == "adam"
                   else torch.optim.SGD(params, lr=self.master_lr))
            try:
                for epoch in range(self.master_epochs):
                    sums = {"loss": 0.0, "triplet": 0.0}
                    for _ in range(self.master_iterations):
                        rows, c1, c2 = self.sample_triplets(members, anchor_classes, rng)
                        unique, inverse = np.unique(rows, return_inverse=True)
                        images = torch.stack([train_set[int(i)][0] for i in unique]).to(device)[torch.from_numpy(inverse).to(device)]
                        b = self.master_batch
                        y = torch.tensor([classes[c1]] * (2 * b) + [classes[c2]] * b, device=device)
                        loss, triplet = self.master_loss(images, y, b)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sums["loss"] += loss.item()
                        sums["triplet"] += triplet.item()
                    log.append({"epoch": epoch + 1, **{k: v / self.master_iterations for k, v in sums.items()}})
            finally:
                self.master.requires_grad_(False)
                self.master.zero_grad(set_to_none=True)
                self.master.eval()
        return log

    def on_train_start(self, model: nn.Module, train_set: Any, device: torch.device) -> None:
        self.master_log = self.train_master(train_set, device)
        self.master_trained.fill_(True)

    # -- the student term ------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.master(images, labels)[0]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, context: StepContext) -> torch.Tensor:
        if not bool(self.master_trained):
            raise RuntimeError("guided: the master is not trained; on_train_start must run first (or load the "
                               "state dict of a run that did)")
        if context.images is None:
            raise RuntimeError("guided needs the batch's images in the step context (context.images)")
        t = self.targets(context.images, labels)
        diff = self.proj(embeddings) - t
        distance = diff.pow(2).sum(dim=1).clamp_min(1e-12).sqrt().mean()
        self._terms = {"guided": float(distance.detach())}
        return self.weight * distance

    def train(self, mode: bool = True) -> "GuidedRegularizer":
        super().train(mode)
        self.master.eval()  # a fixed target network outside on_train_start
        return self

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": list(self.proj.parameters()), "lr": base_lr, "weight_decay": weight_decay}]

    def get_extra_state(self) -> dict[str, Any]:
        return {"master_log": [dict(r) for r in self.master_log]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.master_log = [dict(r) for r in state.get("master_log", [])]

    def describe(self) -> dict[str, float | list[float]]:
        if not self.master_log:
            return {}
        return {"master_triplet_first": self.master_log[0]["triplet"], "master_triplet_last": self.master_log[-1]["triplet"]}
