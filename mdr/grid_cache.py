"""The resolved grid, kept on disk under the digest of everything it is resolved from.

Resolving params/ validates every run config (~500 in the smoke profile) against the registries, and
the registries import torch: about 5 s, paid by every Snakemake start (a no-op rerun too) and by every
stage command. The grid is a pure function of its inputs, so `load_grid` keeps it under
runs/.grid-cache/<profile>-<digest>.pickle, the digest covering:
  the profile name and `use_tuned` as load_grid would resolve them ($MDR_USE_TUNED included),
  the params folder's path and every file under it (params/tuned/ too),
  every .py file of the mdr package (the registries, the config models, the resolution code),
  the Python and pydantic versions (pickle and the models' defaults).
Any change to them is another digest, so a cached grid is never used for other inputs; a configuration
error is never cached (it is raised again, with its message, on every call). An unreadable cache file is
resolved again and rewritten. Set MDR_GRID_CACHE=0 to resolve every time.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path

import pydantic

from mdr import grid as grid_module
from mdr.layout import grid_cache_dir

PACKAGE_DIR = Path(__file__).resolve().parent
DIGEST_LENGTH = 20


def _resolved_use_tuned(use_tuned: bool | None) -> str:
    if use_tuned is not None:
        return str(bool(use_tuned))
    return "env:" + os.environ.get("MDR_USE_TUNED", "").strip().lower()


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts)


def grid_digest(profile: str, params_dir: Path, use_tuned: bool | None) -> str:
    """sha256 over everything `load_grid(profile, params_dir, use_tuned)` depends on."""
    h = hashlib.sha256()
    params_dir = Path(params_dir).resolve()
    header = (profile, _resolved_use_tuned(use_tuned), str(params_dir), sys.version, pydantic.VERSION)
    h.update(repr(header).encode())
    for root, pattern in ((params_dir, "*"), (PACKAGE_DIR, "*.py")):
        for path in _files(root, pattern):
            h.update(f"\0{root.name}/{path.relative_to(root)}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def _enabled() -> bool:
    return os.environ.get("MDR_GRID_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def load_grid(profile: str = "smoke", params_dir: Path | None = None, use_tuned: bool | None = None,
              cache_dir: Path | None = None) -> grid_module.Grid:
    """`mdr.grid.load_grid`, read from the cache when its inputs are unchanged (same arguments, same errors)."""
    params_dir = Path(params_dir) if params_dir is not None else grid_module.PARAMS_DIR
    if not _enabled():
        return grid_module.load_grid(profile, params_dir, use_tuned)
    folder = Path(cache_dir) if cache_dir is not None else grid_cache_dir()
    path = folder / f"{profile}-{grid_digest(profile, params_dir, use_tuned)}.pickle"
    try:
        with open(path, "rb") as f:
            cached = pickle.load(f)
        if isinstance(cached, grid_module.Grid):
            return cached
    except Exception:  # missing, truncated or foreign (pickle raises many kinds): resolve again, overwrite
        pass
    grid = grid_module.load_grid(profile, params_dir, use_tuned)
    _write(folder, path, grid)
    return grid


def _write(folder: Path, path: Path, grid: grid_module.Grid) -> None:
    """Atomically (concurrent jobs may write the same digest), then drop this profile's older digests."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(grid, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        tmp = None
    except OSError:  # a read-only or full disk costs only speed: the grid is returned all the same
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    profile = path.name[: -len("-.pickle") - DIGEST_LENGTH]
    for old in folder.glob(f"{profile}-*.pickle"):
        if old != path and re.fullmatch(rf"{re.escape(profile)}-[0-9a-f]{{{DIGEST_LENGTH}}}\.pickle", old.name):
            old.unlink(missing_ok=True)
