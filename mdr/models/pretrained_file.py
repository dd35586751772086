"""The pretrain stage's weights file, loaded with verification.

`python -m pipeline pretrain --backbone NAME` (mdr/pretrain.py) writes `<data root>/pretrained/NAME.pt` (the
backbone's state dict) and the sidecar `NAME.json` beside it (its sha256 and the training record). Loading
checks the sha256 when the sidecar exists, that torch can read the file, and that the state dict fits the
architecture. A file that fails is removed together with its sidecar when it is the stage's output, so the
next `snakemake` (or `dvc repro`) sees the output missing and rebuilds it; one error names the file, the
fault, and that. A file of the user's own elsewhere is never removed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from mdr.io import file_sha256

from .weights import WeightsUnavailableError


class PretrainedWeightsError(WeightsUnavailableError):
    """A pretrain-stage weights file that is missing or unusable; the message says what rebuilds it."""


def pretrained_path(data_root: str | Path, backbone: str) -> Path:
    """Where the pretrain stage writes the weights of `backbone`."""
    return Path(data_root) / "pretrained" / f"{backbone}.pt"


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def is_stage_output(name: str, path: Path) -> bool:
    """Whether `path` is where the pretrain stage writes `name` (then it may be removed and rebuilt)."""
    return path.name == f"{name}.pt" and path.parent.name == "pretrained"


def build_command(name: str, path: Path | None) -> str:
    """The command(s) that write the weights of `name` to `path` (default: data/pretrained/NAME.pt)."""
    path = pretrained_path("data", name) if path is None else path
    if is_stage_output(name, path):
        command = f"`python -m pipeline pretrain --backbone {name} --data-root {path.parent.parent}`"
        return f"`snakemake {path}` or {command}" if path == pretrained_path("data", name) else command
    return f"`python -m pipeline pretrain --backbone {name} --out {path}`"


def missing_weights_error(name: str, path: Path | None) -> PretrainedWeightsError:
    if path is None:
        return PretrainedWeightsError(
            f"backbone {name} has no downloadable weights: set model.weights to {pretrained_path('data', name)}, "
            f"which {build_command(name, None)} builds")
    return PretrainedWeightsError(f"pretrained weights for {name} not found: {path}; build them with "
                                  f"{build_command(name, path)}")


def load_verified(name: str, weights: str | Path, net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in `weights`, checked (sha256 against the sidecar, readable, fits `net`)."""
    path = Path(weights)
    if not path.is_file():
        raise missing_weights_error(name, path)
    fault = _sha_fault(path)
    state = None
    if fault is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable weights file"
            fault = f"torch.load cannot read it ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    if fault is None:
        fault = _fit_fault(state, net)
    if fault is not None:
        raise _damaged(name, path, fault)
    return state


def _sha_fault(path: Path) -> str | None:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None  # a weights file of the user's own: nothing recorded to check against
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        return f"its sidecar {sidecar} is unreadable ({type(e).__name__}: {e})"
    actual = file_sha256(path)
    if actual != expected:
        return f"its sha256 {actual[:16]}... differs from {str(expected)[:16]}... recorded in {sidecar}"
    return None


def _fit_fault(state: object, net: nn.Module) -> str | None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "it does not hold a state dict of tensors"
    wanted = net.state_dict()
    missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in wanted.items()
              if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if items]
    return f"its state dict does not fit the architecture: {'; '.join(parts)}"


def _damaged(name: str, path: Path, fault: str) -> PretrainedWeightsError:
    sidecar = sidecar_path(path)
    if is_stage_output(name, path):
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return PretrainedWeightsError(
            f"pretrained weights {path} for {name} are damaged: {fault}; removed it and {sidecar.name}, so the next "
            f"`snakemake` (or `dvc repro`) rebuilds it (or run {build_command(name, path)})")
    return PretrainedWeightsError(
        f"pretrained weights {path} for {name} are unusable: {fault}; the file is not the pretrain stage's output, so it "
        f"was left in place: replace it, or set model.weights to {pretrained_path('data', name)} "
        f"(built by {build_command(name, None)})")
