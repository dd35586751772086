"""The search space -> a trial's params: `suggest` draws a trial's values from the space,
`regularizer_params` turns them into the regularizer's params (mdr: num_levels + spacing -> symmetric
`levels`), `loss_params` picks the base loss's (the space's `loss.<name>` entries), and `baseline_point`
maps the untuned params back to a point of the space, so the study can run the defaults first as its
reference."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdr.tuning.spec import Distribution


# ---- search space -> regularizer params -----------------------------------------------------------

def symmetric_levels(num_levels: int, spacing: float) -> list[float]:
    """n levels `spacing` apart, symmetric around 0: (3, 3.0) -> [-3, 0, 3]; (2, 3.0) -> [-1.5, 1.5]."""
    return [round((i - (num_levels - 1) / 2) * spacing, 4) + 0.0 for i in range(num_levels)]


LOSS_PREFIX = "loss."  # a search-space entry of the base loss (params/tuning.yaml loss_search_spaces)


def loss_keys(params: dict[str, Any]) -> dict[str, Any]:
    """The base loss's params as search-space entries ({'margin': 0.3} -> {'loss.margin': 0.3})."""
    return {f"{LOSS_PREFIX}{k}": v for k, v in params.items()}


def loss_params(sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values -> the base loss's params ({'loss.margin': 0.3} -> {'margin': 0.3})."""
    return {k[len(LOSS_PREFIX):]: v for k, v in sampled.items() if k.startswith(LOSS_PREFIX)}


def regularizer_params(regularizer: str, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values -> the regularizer's params (mdr: num_levels + spacing -> levels)."""
    params = {k: v for k, v in sampled.items() if not k.startswith(LOSS_PREFIX)}
    if regularizer == "mdr":
        params["levels"] = symmetric_levels(int(params.pop("num_levels")), float(params.pop("spacing")))
    return params


def baseline_point(regularizer: str, params: dict[str, Any], space: dict[str, Distribution]) -> dict[str, Any] | None:
    """The search-space point of the untuned params (mdr: [-3, 0, 3] -> num_levels 3, spacing 3; the base
    loss's as `loss.<name>`), or None if they cannot be expressed in the space (e.g. asymmetric levels, or a
    value out of range)."""
    point = dict(params)
    if regularizer == "mdr":
        levels = [float(x) for x in point.pop("levels")]
        n = len(levels)
        spacing = (levels[-1] - levels[0]) / (n - 1) if n > 1 else 0.0
        if n < 2 or symmetric_levels(n, spacing) != [round(x, 4) + 0.0 for x in levels]:
            return None
        point.update(num_levels=n, spacing=spacing)
    if set(point) != set(space):
        return None
    for name, dist in space.items():
        if not dist.low <= point[name] <= dist.high:
            return None
    return {k: (int(v) if space[k].type == "int" else float(v)) for k, v in point.items()}


def suggest(trial: Any, space: dict[str, Distribution]) -> dict[str, Any]:
    return {name: dist.suggest(trial, name) for name, dist in space.items()}
