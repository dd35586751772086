"""Regularizers by name; one method per file, all behind the `Regularizer` interface (base.py).

Adding a method: write `<method>.py` with a Regularizer subclass and a pydantic params model, and add
one `REGULARIZERS.register(...)` line below.
"""
from mdr.registry import Registry

from .base import Regularizer, StepContext
from .detreg import DetRegParams, DetRegRegularizer
from .guided import GuidedParams, GuidedRegularizer
from .lsd import LSDParams, LSDRegularizer
from .mdr import MDR, MDRParams, MDRRegularizer
from .none import L2NormBaseline, NoRegularizer

REGULARIZERS: Registry[Regularizer] = Registry("regularizer")
REGULARIZERS.register("none")(NoRegularizer)
REGULARIZERS.register("l2norm")(L2NormBaseline)
REGULARIZERS.register("mdr", params=MDRParams)(MDRRegularizer)
REGULARIZERS.register("detreg", params=DetRegParams)(DetRegRegularizer)
REGULARIZERS.register("lsd", params=LSDParams)(LSDRegularizer)
REGULARIZERS.register("guided", params=GuidedParams)(GuidedRegularizer)

__all__ = ["MDR", "MDRRegularizer", "REGULARIZERS", "Regularizer", "StepContext"]
