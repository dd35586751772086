"""Pretrained ImageNet weights: fetched once, verified by hash, cached; a local file overrides.

Known weights (`KNOWN_WEIGHTS`): torchvision's ImageNet checkpoints for resnet18, resnet50 (IMAGENET1K_V1,
the classic weights metric-learning papers used) and googlenet, and Cadene's BN-Inception
(bn_inception-52deb4733.pth; torchvision has none). Their file names follow the torch-hub convention
`<name>-<first hex digits of the sha256>.pth`, which is how they are verified.

Lookup order for `load_pretrained_state_dict(name)`:
  1. `local_path` (the backbone's `weights` parameter): that file, verified against the sha256 prefix in
     its name when it has one (offline machines point here);
  2. the cache `$MDR_CACHE/weights/` (default `~/.cache/mdr/weights/`);
  3. torch hub's own cache (`torch.hub.get_dir()/checkpoints/`) if it already holds the same file;
  4. download into the cache through mdr.data.fetch (mirrors, resume, hash check).
Everything is loaded with `torch.load(weights_only=True)`; the state dict is returned as stored (key
mapping, e.g. for BN-Inception, is the architecture's business).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from mdr.io import file_sha256


class WeightsUnavailableError(RuntimeError):
    pass


# name -> (file name, download URLs in order). The sha256 prefix is taken from the file name.
KNOWN_WEIGHTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet18": ("resnet18-f37072fd.pth", ("https://download.pytorch.org/models/resnet18-f37072fd.pth",)),
    "resnet50": ("resnet50-0676ba61.pth", ("https://download.pytorch.org/models/resnet50-0676ba61.pth",)),
    "googlenet": ("googlenet-1378be20.pth", ("https://download.pytorch.org/models/googlenet-1378be20.pth",)),
    "bninception": ("bn_inception-52deb4733.pth",
                    ("http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",)),
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.[^.]+$")


def cache_dir() -> Path:
    """`$MDR_CACHE` or `~/.cache/mdr`."""
    env = os.environ.get("MDR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdr"


def hash_prefix(filename: str) -> str | None:
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def weights_source(name: str):
    """The fetch Source of the known weights `name`."""
    from mdr.data.fetch import Source

    if name not in KNOWN_WEIGHTS:
        raise WeightsUnavailableError(
            f"no known pretrained weights for backbone {name!r} (known: {', '.join(sorted(KNOWN_WEIGHTS))}); "
            "set the backbone's `weights` parameter to a local state-dict file"
        )
    filename, urls = KNOWN_WEIGHTS[name]
    return Source(filename, urls=urls, sha256_prefix=hash_prefix(filename),
                  manual_hint=f"{urls[0]} (any machine with internet access)")


def weights_path(name: str, local_path: str | os.PathLike | None = None, progress: bool = True,
                 download: bool = True) -> Path:
    """The verified file holding the weights `name` (downloading them into the cache if needed)."""
    from mdr.data.fetch import FetchError, ManualDownloadRequired, Source, fetch_sources, verify_file

    if local_path is not None:
        path = Path(local_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file for {name} not found: {path}; check model.weights")
        prefix = hash_prefix(path.name)
        if prefix is not None:
            try:
                file_source = Source(path.name, sha256_prefix=prefix)
                verify_file(file_source, path)
            except FetchError as e:
                raise WeightsUnavailableError(f"weights file for {name} is damaged: {e}") from None
        return path
    source = weights_source(name)
    target_dir = cache_dir() / "weights"
    if not (target_dir / source.filename).is_file():
        hub = _torch_hub_checkpoint(source.filename)
        if hub is not None and file_sha256(hub).startswith(source.sha256_prefix or ""):
            return hub  # torch's own cache already holds it (left untouched; a bad copy there is ignored)
    try:
        return fetch_sources([source], target_dir, progress=progress, download=download)[source.filename].path
    except ManualDownloadRequired as e:
        raise WeightsUnavailableError(
            f"pretrained weights for {name} are not available: {source.filename} could not be downloaded.\n{e}\n"
            f"Alternatively set the backbone's `weights` parameter (model.weights) to a local copy of "
            f"{source.filename}."
        ) from None
    except FetchError as e:
        raise WeightsUnavailableError(f"pretrained weights for {name}: {e}") from None


def _torch_hub_checkpoint(filename: str) -> Path | None:
    try:
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    except Exception:  # noqa: BLE001 - an odd TORCH_HOME must not break loading
        return None
    return path if path.is_file() else None


def weights_record(path: str | os.PathLike, verified: str | None) -> dict[str, str | None]:
    """Where a backbone's pretrained weights came from, for the run's record (trained.json, the log): the
    file, its sha256, and what that was checked against (None: nothing, e.g. a local file without a hash)."""
    path = Path(path)
    return {"file": str(path.resolve()), "sha256": file_sha256(path), "verified": verified}


def load_pretrained_state_dict(name: str, local_path: str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of backbone `name`, from `local_path` or the verified cache/download."""
    return load_pretrained(name, local_path, progress)[0]


def load_pretrained(name: str, local_path: str | None = None,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str | None]]:
    """load_pretrained_state_dict, and the `weights_record` of the file it was read from."""
    path = weights_path(name, local_path=local_path, progress=progress)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable weights file"
        raise WeightsUnavailableError(
            f"cannot load the weights file {path} for {name} ({type(e).__name__}: {e}); it is not a plain "
            "state dict saved by torch (or is damaged)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"the weights file {path} for {name} does not hold a state dict of tensors")
    # weights_path checked every file whose name carries a sha256 prefix (the cache's and torch hub's always do)
    prefix = hash_prefix(path.name)
    return state, weights_record(path, f"the sha256 prefix {prefix} in its name" if prefix else None)
