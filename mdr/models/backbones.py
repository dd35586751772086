"""Backbone registry: name -> feature extractor with its own input convention.

Every backbone takes RGB images as floats in [0, 1] and applies its own preprocessing (`InputSpec`),
so the data pipeline does not depend on the backbone (BN-Inception wants BGR in 0-255 minus a mean,
ResNets want ImageNet mean/std).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict

from mdr.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False
    scale: float = 1.0  # multiply [0, 1] input by this before mean/std (255 for BN-Inception)


class Backbone(nn.Module):
    """A feature extractor: (N, 3, H, W) preprocessed -> (N, feature_dim) pooled features."""

    feature_dim: int
    input_spec: InputSpec
    # the file its pretrained weights were loaded from (mdr.models.weights.weights_record); None: not pretrained
    pretrained_from: dict[str, str | None] | None = None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB floats in [0, 1] -> what this backbone's weights were trained on."""
        spec = self.input_spec
        x = images.flip(1) if spec.bgr else images
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * spec.scale - mean) / std


class BackboneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pretrained: bool = False
    weights: str | None = None  # a local weights file; overrides any download


BACKBONES: Registry[Backbone] = Registry("backbone")


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None) -> Backbone:
    return BACKBONES.create(name, {"pretrained": pretrained, "weights": weights})


class TorchvisionBackbone(Backbone):
    """A torchvision classifier with its classification layer removed (global average pooled)."""

    input_spec = InputSpec(IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, net: nn.Module, feature_dim: int):
        super().__init__()
        net.fc = nn.Identity()
        self.net = net
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _load_weights(module: nn.Module, name: str, pretrained: bool, weights: str | None) -> dict[str, str | None] | None:
    """Load the ImageNet weights into `module` when asked; returns where they came from (weights_record)."""
    if not (pretrained or weights):
        return None
    from .weights import load_pretrained

    state, record = load_pretrained(name, local_path=weights)
    missing, unexpected = module.load_state_dict(state, strict=False)
    allowed_missing = {k for k in missing if k.startswith("fc.")}
    if set(missing) - allowed_missing or [k for k in unexpected if not k.startswith("fc.")]:
        raise ValueError(
            f"pretrained weights for {name} do not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; check that the weights file is the {name} ImageNet checkpoint"
        )
    return record


@BACKBONES.register("resnet18", params=BackboneParams)
def resnet18(pretrained: bool = False, weights: str | None = None) -> Backbone:
    """ResNet-18 (torchvision), 512-d pooled features."""
    from torchvision.models import resnet18 as build

    net = build(weights=None)
    record = _load_weights(net, "resnet18", pretrained, weights)
    backbone = TorchvisionBackbone(net, 512)
    backbone.pretrained_from = record
    return backbone


@BACKBONES.register("resnet50", params=BackboneParams)
def resnet50(pretrained: bool = False, weights: str | None = None) -> Backbone:
    """ResNet-50 (torchvision), 2048-d pooled features."""
    from torchvision.models import resnet50 as build

    net = build(weights=None)
    record = _load_weights(net, "resnet50", pretrained, weights)
    backbone = TorchvisionBackbone(net, 2048)
    backbone.pretrained_from = record
    return backbone


@BACKBONES.register("googlenet", params=BackboneParams)
def googlenet(pretrained: bool = False, weights: str | None = None) -> Backbone:
    """GoogLeNet / Inception-v1 (torchvision), 1024-d pooled features."""
    from torchvision.models import googlenet as build

    net = build(weights=None, aux_logits=False, init_weights=not (pretrained or weights))
    record = _load_weights(net, "googlenet", pretrained, weights)
    backbone = TorchvisionBackbone(net, 1024)
    backbone.pretrained_from = record
    # torchvision's ImageNet GoogLeNet expects transform_input=False with ImageNet mean/std.
    return backbone


class SmallCNN(Backbone):
    """Four conv-BN-ReLU-pool blocks (256-d features); about 0.085 s per batch of 64 at 32 px on one
    CPU thread, so the smoke profile trains a run in well under a minute."""

    input_spec = InputSpec((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@BACKBONES.register("smallcnn", params=BackboneParams)
def smallcnn(pretrained: bool = False, weights: str | None = None) -> Backbone:
    """A small CNN trained from scratch (no pretrained weights); the CPU smoke profile's backbone."""
    if pretrained:
        raise ValueError("backbone smallcnn has no pretrained weights; set model.pretrained: false")
    net = SmallCNN()
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net
