"""BN-Inception (Ioffe & Szegedy 2015, "Batch Normalization"), the backbone of MDR and most DML papers.

The layer layout is the one of Cadene's `pretrainedmodels.bninception` (a port of the Caffe model whose
ImageNet weights metric-learning papers use): a stem of three conv-BN-ReLU units and two max pools,
then ten Inception blocks 3a ... 5b, described here by a table (`INCEPTION_BLOCKS`) instead of being
written out layer by layer. Every convolution has a bias and is followed by BatchNorm (eps 1e-5,
affine) and ReLU. Output: global average pooling of the 1024-channel 5b map -> (N, 1024).

Differences from Cadene's module, none of which changes the ImageNet features at 224 px:
- global pooling is an adaptive mean over the spatial map (Cadene: AvgPool2d(7)), so 256 px input
  (the HORDE "†" setting) yields 1024-d features too;
- BN momentum is PyTorch's default 0.1 (Cadene's file says 0.9, a Caffe-convention leftover); it only
  matters when BN statistics are updated, and the MDR protocol freezes them;
- no classifier: `last_linear` is dropped when loading the weights.

Input convention of the weights: BGR, 0-255, minus the BGR mean (104, 117, 128), std 1
(`Backbone.preprocess` converts the project's RGB [0, 1] images).

Weights: `map_cadene_state_dict` renames Cadene's flat keys (`inception_3a_double_3x3_reduce_bn.bias`)
to this module's (`blocks.3a.convs.double_3x3_reduce.bn.bias`) and checks that every tensor fits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn

from .backbones import BACKBONES, Backbone, BackboneParams, InputSpec

BN_EPS = 1e-5


@dataclass(frozen=True)
class StemConv:
    name: str  # Cadene's layer name
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int


# conv1 -> maxpool -> conv2_reduce -> conv2 -> maxpool (both pools: 3x3, stride 2, ceil mode)
STEM: tuple[StemConv, ...] = (
    StemConv("conv1_7x7_s2", 3, 64, 7, 2, 3),
    StemConv("conv2_3x3_reduce", 64, 64, 1, 1, 0),
    StemConv("conv2_3x3", 64, 192, 3, 1, 1),
)
POOL_AFTER = {"conv1_7x7_s2", "conv2_3x3"}


@dataclass(frozen=True)
class InceptionSpec:
    """One Inception block: four branches concatenated in this order.

    1x1:        1x1 conv (absent when c_1x1 == 0, i.e. in the stride-2 blocks 3c and 4e)
    3x3:        1x1 reduce -> 3x3 (stride `stride`)
    double_3x3: 1x1 reduce -> 3x3 -> 3x3 (stride `stride`)
    pool:       3x3 avg or max pool (stride `stride`) -> 1x1 pool_proj (absent when c_pool_proj == 0:
                the pooled input is passed on unchanged)
    """

    name: str
    c_1x1: int
    c_3x3_reduce: int
    c_3x3: int
    c_double_reduce: int
    c_double: int
    pool: str  # "avg" or "max"
    c_pool_proj: int
    stride: int = 1

    def c_out(self, c_in: int) -> int:
        return self.c_1x1 + self.c_3x3 + self.c_double + (self.c_pool_proj or c_in)


INCEPTION_BLOCKS: tuple[InceptionSpec, ...] = (
    #             name  1x1  3x3r  3x3  d3x3r d3x3 pool   proj  stride
    InceptionSpec("3a", 64, 64, 64, 64, 96, "avg", 32),
    InceptionSpec("3b", 64, 64, 96, 64, 96, "avg", 64),
    InceptionSpec("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    InceptionSpec("4a", 224, 64, 96, 96, 128, "avg", 128),
    InceptionSpec("4b", 192, 96, 128, 96, 128, "avg", 128),
    InceptionSpec("4c", 160, 128, 160, 128, 160, "avg", 128),
    InceptionSpec("4d", 96, 128, 192, 160, 192, "avg", 128),
    InceptionSpec("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    InceptionSpec("5a", 352, 192, 320, 160, 224, "avg", 128),
    InceptionSpec("5b", 352, 192, 320, 192, 224, "max", 128),
)


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    def __init__(self, spec: InceptionSpec, c_in: int):
        super().__init__()
        s = spec.stride
        convs: dict[str, ConvBNReLU] = {}
        self.branches: list[list[str]] = []
        if spec.c_1x1:
            convs["1x1"] = ConvBNReLU(c_in, spec.c_1x1, 1)
            self.branches.append(["1x1"])
        convs["3x3_reduce"] = ConvBNReLU(c_in, spec.c_3x3_reduce, 1)
        convs["3x3"] = ConvBNReLU(spec.c_3x3_reduce, spec.c_3x3, 3, s, 1)
        self.branches.append(["3x3_reduce", "3x3"])
        convs["double_3x3_reduce"] = ConvBNReLU(c_in, spec.c_double_reduce, 1)
        convs["double_3x3_1"] = ConvBNReLU(spec.c_double_reduce, spec.c_double, 3, 1, 1)
        convs["double_3x3_2"] = ConvBNReLU(spec.c_double, spec.c_double, 3, s, 1)
        self.branches.append(["double_3x3_reduce", "double_3x3_1", "double_3x3_2"])
        if spec.c_pool_proj:
            convs["pool_proj"] = ConvBNReLU(c_in, spec.c_pool_proj, 1)
        self.convs = nn.ModuleDict(convs)
        pad = 1 if s == 1 else 0
        if spec.pool == "avg":
            self.pool: nn.Module = nn.AvgPool2d(3, s, pad, ceil_mode=True, count_include_pad=True)
        elif spec.pool == "max":
            self.pool = nn.MaxPool2d(3, s, pad, ceil_mode=True)
        else:
            raise ValueError(f"unknown pool {spec.pool!r} in Inception block {spec.name}")
        self.c_out = spec.c_out(c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for branch in self.branches:
            y = x
            for name in branch:
                y = self.convs[name](y)
            outs.append(y)
        pooled = self.pool(x)
        outs.append(self.convs["pool_proj"](pooled) if "pool_proj" in self.convs else pooled)
        return torch.cat(outs, dim=1)


class BNInception(Backbone):
    """BN-Inception feature extractor: (N, 3, H, W) BGR 0-255 minus mean -> (N, 1024)."""

    input_spec = InputSpec(mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0), bgr=True, scale=255.0)

    def __init__(self):
        super().__init__()
        self.stem = nn.ModuleDict({s.name: ConvBNReLU(s.c_in, s.c_out, s.kernel, s.stride, s.padding) for s in STEM})
        self.stem_pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        blocks = {}
        c = STEM[-1].c_out
        for spec in INCEPTION_BLOCKS:
            blocks[spec.name] = InceptionBlock(spec, c)
            c = blocks[spec.name].c_out
        self.blocks = nn.ModuleDict(blocks)
        self.feature_dim = c  # 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, unit in self.stem.items():
            x = unit(x)
            if name in POOL_AFTER:
                x = self.stem_pool(x)
        for block in self.blocks.values():
            x = block(x)
        return x.mean(dim=(2, 3))


# ---- Cadene's checkpoint -> this module -------------------------------------------------------

_CADENE_DROPPED = ("last_linear.",)
_BLOCK_LAYER = re.compile(r"inception_(\d[a-z])_(.+)")


def cadene_key_to_local(key: str) -> str:
    """`inception_3a_3x3_bn.running_var` -> `blocks.3a.convs.3x3.bn.running_var`;
    `conv1_7x7_s2.weight` -> `stem.conv1_7x7_s2.conv.weight`."""
    layer, _, param = key.rpartition(".")
    part = "conv"
    if layer.endswith("_bn"):
        layer, part = layer[: -len("_bn")], "bn"
    m = _BLOCK_LAYER.fullmatch(layer)
    if m:
        return f"blocks.{m[1]}.convs.{m[2]}.{part}.{param}"
    return f"stem.{layer}.{part}.{param}"


@lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ref = BNInception()
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def map_cadene_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Cadene `bn_inception-*.pth` state dict to `BNInception`'s keys.

    BN tensors stored as (1, C) (some versions of the file) are squeezed to (C,); `last_linear.*` is
    dropped; a missing `num_batches_tracked` is filled with 0. Raises ValueError listing the missing,
    unexpected and wrongly-shaped keys if the file is not a BN-Inception checkpoint.
    """
    expected = _expected_shapes()
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    for key, value in state.items():
        if key.startswith(_CADENE_DROPPED):
            continue
        local = cadene_key_to_local(key)
        if local not in expected:
            unexpected.append(key)
            continue
        shape = expected[local]
        if tuple(value.shape) != shape and tuple(value.shape) == (1, *shape):
            value = value.reshape(shape)
        if tuple(value.shape) != shape:
            bad_shape.append(f"{key}: {tuple(value.shape)} != {shape}")
            continue
        out[local] = value
    for local in expected:
        if local.endswith("num_batches_tracked") and local not in out:
            out[local] = torch.zeros((), dtype=torch.long)
    missing = sorted(k for k in expected if k not in out)
    if missing or unexpected or bad_shape:
        raise ValueError(
            "the weights file is not a Cadene BN-Inception checkpoint (bn_inception-*.pth): "
            f"{len(missing)} missing {missing[:10]}, {len(unexpected)} unexpected {sorted(unexpected)[:10]}, "
            f"{len(bad_shape)} wrong shape {bad_shape[:10]}"
        )
    return out


@BACKBONES.register("bninception", params=BackboneParams)
def bninception(pretrained: bool = False, weights: str | None = None) -> Backbone:
    """BN-Inception (Cadene's ImageNet port), 1024-d pooled features; the paper's main backbone."""
    net = BNInception()
    if pretrained or weights:
        from . import weights as weights_module

        state, net.pretrained_from = weights_module.load_pretrained("bninception", local_path=weights)
        net.load_state_dict(map_cadene_state_dict(state))
    return net
