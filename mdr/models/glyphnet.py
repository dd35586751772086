"""GlyphNets: the embedded profile's three "ImageNet" backbones for 32 px glyphs (small / medium / large).

Each is a `lower` part (conv-BN-ReLU-maxpool blocks, then global average pooling: (N, 3, H, W) ->
(N, lower_dim)) and an `upper` part (Linear(lower_dim, 512) + BatchNorm + ReLU: (N, lower_dim) -> (N, 512)), and
forward(x) = upper(lower(x)). The split is what the feature cache needs: `lower` is frozen and its
outputs cached per image and view, `upper` is fine-tuned. The widths are SmallCNN's (32, 64, 128, 256)
times 0.5 / 1 / 1.5: 0.16 M / 0.52 M / 1.07 M parameters. Not x2 for the large one: that costs 4.4x the medium
one per training step on one CPU thread (x1.5: 2.7x), beyond the smoke profile's pretraining budget.

Weights come from the pretrain stage (`python -m pipeline pretrain --backbone <name>`, mdr/pretrain.py):
`pretrained=True` needs `weights` (model.weights) naming that file; it is checked against the sha256 in its
JSON sidecar when loaded (mdr/models/pretrained_file.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import BACKBONES, Backbone, BackboneParams, SmallCNN

FEATURE_DIM = 512
WIDTHS: dict[str, tuple[int, ...]] = {
    "glyphnet-s": (16, 32, 64, 128),
    "glyphnet-m": (32, 64, 128, 256),
    "glyphnet-l": (48, 96, 192, 384),
}


class GlyphNet(Backbone):
    input_spec = SmallCNN.input_spec  # [0, 1] centred on 0.5

    def __init__(self, widths: tuple[int, ...], feature_dim: int = FEATURE_DIM):
        super().__init__()
        blocks = SmallCNN(widths).features  # conv-BN-ReLU-maxpool per width
        self.lower = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.lower_dim = widths[-1]
        # BatchNorm before the ReLU, as in every conv block: with Linear + ReLU alone, softmax pretraining drove
        # all 512 units negative within the first epoch (dead ReLUs, loss stuck at log(classes))
        self.upper = nn.Sequential(nn.Linear(self.lower_dim, feature_dim, bias=False), nn.BatchNorm1d(feature_dim),
                                   nn.ReLU(inplace=True))
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))


def build_glyphnet(name: str, pretrained: bool = False, weights: str | None = None) -> GlyphNet:
    net = GlyphNet(WIDTHS[name])
    if weights:
        from .pretrained_file import load_verified, sidecar_path
        from .weights import weights_record

        net.load_state_dict(load_verified(name, weights, net))
        sidecar = sidecar_path(weights)  # load_verified checked the file against it when there is one
        net.pretrained_from = weights_record(weights, f"the sha256 in {sidecar}" if sidecar.is_file() else None)
    elif pretrained:
        from .pretrained_file import missing_weights_error

        raise missing_weights_error(name, None)
    return net


def _register(name: str) -> None:
    def factory(pretrained: bool = False, weights: str | None = None) -> Backbone:
        return build_glyphnet(name, pretrained, weights)

    factory.__doc__ = (f"GlyphNet {name[-1].upper()} (widths {WIDTHS[name]}, {FEATURE_DIM}-d features); weights "
                       f"from `python -m pipeline pretrain --backbone {name}`")
    BACKBONES.register(name, params=BackboneParams)(factory)


for _name in WIDTHS:
    _register(_name)
