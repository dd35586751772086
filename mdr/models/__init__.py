"""Backbones (by name, through a registry) and the embedding model built on them."""
from .backbones import BACKBONES, Backbone, InputSpec, create_backbone
from .embedding import EmbeddingModel, build_model

__all__ = ["BACKBONES", "Backbone", "InputSpec", "create_backbone", "EmbeddingModel", "build_model"]

from . import bninception  # noqa: E402,F401  (registers "bninception")
from . import glyphnet  # noqa: E402,F401  (registers "glyphnet-s", "glyphnet-m", "glyphnet-l")
