"""mdr: a reproducible benchmark for deep metric learning regularizers.

`from mdr import MDR` gives the Multi-level Distance Regularization loss (mdr/regularizers/mdr.py).
"""
from mdr.regularizers.mdr import MDR, MDRRegularizer

__all__ = ["MDR", "MDRRegularizer"]
__version__ = "0.1.0"
