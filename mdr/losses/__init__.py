"""Base metric losses by name. A loss is an nn.Module: (embeddings, labels) -> scalar.

Losses may own parameters (e.g. the margin loss's per-class beta); the engine hands them to the
optimizer. A loss may report per-step quantities with `terms() -> dict[str, float]` (the sampled
losses: the fraction of anchors that fell back to uniform negatives); the engine averages them per
epoch into history.json as `loss_<name>`. Importing this package registers every loss.
"""
from mdr.registry import Registry

import torch.nn as nn

LOSSES: Registry[nn.Module] = Registry("loss")

from . import triplet  # noqa: E402,F401  (registers)
from . import contrastive  # noqa: E402,F401
from . import margin  # noqa: E402,F401

__all__ = ["LOSSES"]
