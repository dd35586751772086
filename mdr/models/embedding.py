"""Backbone + linear embedding head, with the normalisation the method asks for (docs/method.md §2.2).

normalization:
  batch_mean_distance  training mode only: output divided by the batch's mean off-diagonal pairwise
                       distance (not detached), so the mean distance is 1 and a margin is relative;
                       eval mode returns the raw output ("learning without L2 normalization").
  l2                   L2-normalised in training and evaluation.
  none                 raw output always.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdr.losses.distances import euclidean_pdist, mean_offdiagonal

from .backbones import Backbone, create_backbone

NORMALIZATIONS = ("batch_mean_distance", "l2", "none")


class EmbeddingModel(nn.Module):
    def __init__(self, backbone: Backbone, embedding_dim: int, normalization: str = "batch_mean_distance",
                 freeze_bn: bool = False, head: nn.Module | None = None, channels_last: bool = False):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
        self.backbone = backbone
        self.head = head if head is not None else nn.Linear(backbone.feature_dim, embedding_dim)
        self.normalization = normalization
        self.freeze_bn = freeze_bn
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if mode and self.freeze_bn:
            # Frozen BN as in the authors' code: running statistics fixed, affine parameters still trained.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of RGB images in [0, 1]."""
        images = self.backbone.preprocess(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        e = self.head(features)
        if self.normalization == "l2":
            return F.normalize(e, dim=1)
        if self.normalization == "batch_mean_distance" and self.training:
            return e / mean_offdiagonal(euclidean_pdist(e))
        return e

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(images))


def build_model(backbone: str | Backbone, embedding_dim: int, normalization: str, freeze_bn: bool,
                pretrained: bool = False, weights: str | None = None,
                head_factory: "Callable[[int, int], nn.Module | None] | None" = None,
                channels_last: bool = False) -> EmbeddingModel:
    """`head_factory(feature_dim, embedding_dim)` may supply a head other than the linear one; `backbone` is
    a registered name (built with `pretrained` / `weights`) or an already built backbone."""
    net = create_backbone(backbone, pretrained, weights) if isinstance(backbone, str) else backbone
    head = head_factory(net.feature_dim, embedding_dim) if head_factory else None
    return EmbeddingModel(net, embedding_dim, normalization, freeze_bn, head, channels_last)
