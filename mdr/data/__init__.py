"""Datasets: recipes (mdr/data/recipes), raw-file fetching (fetch/), the prepared format (prepared.py).

`prepare_dataset(name)` is the one entry point that does not need the pipeline: it fetches the raw files
if needed, extracts them once, prepares once, and returns the PreparedDataset. Importing this package
is cheap (numpy, pandas, pooch and PIL are imported only when a function runs).
"""
from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .prepared import PreparedDataset
    from .registry import DatasetRecipe

__all__ = ["prepare_dataset", "load_prepared"]


def prepare_dataset(
    name: str,
    data_root: str | Path = "data",
    image_size: int = 256,
    fetch: bool = True,
    progress: bool = True,
    source: str | Path | None = None,
) -> "PreparedDataset":
    """Fetch (if needed), extract once, prepare once; return the prepared dataset.

    Layout: raw files in `<data_root>/raw/<name>/`, the prepared copy in
    `<data_root>/prepared/<name>-<image_size>px/`. A prepared copy with READY whose meta matches (name,
    image size, format and recipe version, the published counts) is returned as is, without touching the
    raw files. `fetch=False` never downloads: the raw files must already be in place (they are still
    verified). Raises `mdr.data.fetch.ManualDownloadRequired` with instructions when files must be
    obtained by hand (Cars-196, In-Shop, or when every mirror fails).

    `source`: the user's own copy (an extracted folder, a differently packed archive, or a folder holding the
    expected files), used instead of downloading and remembered in the raw folder (mdr/data/usercopy.py). A
    copy already prepared and intact is kept as it is.
    """
    from .registry import get_dataset, prepared_dir, raw_dir

    recipe = get_dataset(name)
    if int(image_size) < 1:
        from mdr.config import ConfigError

        raise ConfigError(f"image size {image_size} is not a size: the prepared cache needs a positive number of "
                          f"pixels per side; pass e.g. --image-size 256 (the paper's protocol)")
    out = prepared_dir(data_root, name, image_size)
    raw = raw_dir(data_root, name)
    if source is not None:
        from .usercopy import UserCopyError, register

        if recipe.sources is None:
            raise UserCopyError(f"dataset {name} is generated, not read from files; drop --source")
        for line in register(raw, recipe.sources(), source):
            print(f"{name}: using {line}")
    ds = _usable(out, recipe, image_size, quiet=True)
    if ds is not None:
        return ds
    with _lock(out.with_name(f".{out.name}.lock")):
        # Another process may have finished the same work while this one waited for the lock.
        ds = _usable(out, recipe, image_size, quiet=False)
        if ds is not None:
            return ds
        if fetch:
            _call(recipe.fetch, raw, progress=progress)
        return _call(recipe.prepare, raw, out, image_size, progress=progress)


def _usable(out: Path, recipe: "DatasetRecipe", image_size: int, quiet: bool) -> "PreparedDataset | None":
    """The prepared copy at `out` if it is intact and current, else None (it is then prepared again).
    A damaged copy is said so on stderr (unless `quiet`: the caller checks again under the lock)."""
    from .prepared import PreparedDataset, PreparedDatasetDamagedError

    if not (out / "READY").exists():
        return None
    try:
        ds = PreparedDataset.load(out)
    except PreparedDatasetDamagedError as e:
        if not quiet:
            print(f"prepared dataset {e.root} is damaged ({e.fault}); preparing it again", file=sys.stderr)
        return None
    return ds if meta_matches(ds.meta, recipe, image_size) else None


@contextmanager
def _lock(path: Path):
    """An exclusive advisory lock (POSIX flock), so parallel jobs do not prepare the same dataset twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_prepared(name: str, data_root: str | Path = "data", image_size: int = 256) -> "PreparedDataset":
    """The prepared copy, without fetching or preparing anything (DatasetNotPreparedError if absent)."""
    from .prepared import PreparedDataset
    from .registry import prepared_dir

    return PreparedDataset.load(prepared_dir(data_root, name, image_size))


def meta_matches(meta: dict[str, Any], recipe: "DatasetRecipe", image_size: int) -> bool:
    """Is a prepared copy with this meta what `recipe` would produce now at `image_size`?"""
    from .prepared import FORMAT_VERSION

    if meta.get("name") != recipe.name or int(meta.get("image_size", -1)) != int(image_size):
        return False
    if meta.get("format_version") != FORMAT_VERSION:
        return False
    if recipe.expected_counts and meta.get("counts") != dict(recipe.expected_counts):
        return False
    version = getattr(sys.modules.get(getattr(recipe.prepare, "__module__", "")), "RECIPE_VERSION", None)
    if version is not None and meta.get("recipe_version") != version:
        return False
    return True


def _call(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """Call fn(*args, **the optional keywords it accepts) (recipes differ in what they accept)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **optional)
    return fn(*args, **{k: v for k, v in optional.items() if k in params})
