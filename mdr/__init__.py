"""mdr: a reproducible benchmark for deep metric learning regularizers.

`from mdr import MDR` gives the Multi-level Distance Regularization loss (mdr/regularizers/mdr.py).
"""
from typing import Any

__all__ = ["MDR", "MDRRegularizer"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `import mdr.layout` (every pipeline stage) does not import torch and the regularizers.
    if name in __all__:
        from mdr.regularizers import mdr as module

        return getattr(module, name)
    raise AttributeError(f"module 'mdr' has no attribute {name!r}")
