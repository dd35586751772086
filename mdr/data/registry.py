"""The dataset registry: one recipe per dataset (sources, layout reader, class split, expected counts).

A recipe knows how to get raw files (`fetch`, which may tell the user to place them by hand) and how to
turn them into the prepared format (mdr/data/prepared.py). Training and evaluation only ever see
prepared datasets, so the embedded dataset and the four benchmarks go through the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mdr.registry import UnknownNameError

if TYPE_CHECKING:  # only a type here: the Snakefile imports this module, and prepared.py brings pandas
    from .prepared import PreparedDataset

# Recall@K cut-offs each dataset is reported at in the literature.
KS_SMALL = (1, 2, 4, 8)


@dataclass(frozen=True)
class DatasetRecipe:
    name: str
    title: str
    ks: tuple[int, ...]
    # fetch(raw_dir): make the raw files present and verified in raw_dir, or raise with instructions.
    fetch: Callable[[Path], None]
    # prepare(raw_dir, out_dir, image_size): raw files -> prepared dataset (asserting expected counts).
    prepare: Callable[[Path, Path, int], PreparedDataset]
    expected_counts: dict[str, int] = field(default_factory=dict)
    # sources(): the recipe's raw files (read when called, so a patched module-level SOURCES is seen);
    # what `prepare --source` looks for in a user's own copy. None: the recipe has no raw files (embedded).
    sources: Callable[[], list] | None = None
    embedded: bool = False  # generated locally, needs no download
    query_gallery: bool = False  # In-Shop: query vs gallery instead of leave-one-out


DATASETS: dict[str, DatasetRecipe] = {}


def register_dataset(recipe: DatasetRecipe) -> DatasetRecipe:
    if recipe.name in DATASETS:
        raise ValueError(f"dataset {recipe.name!r} is registered twice")
    DATASETS[recipe.name] = recipe
    return recipe


def get_dataset(name: str) -> DatasetRecipe:
    _load_builtin_recipes()
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError("dataset", name, sorted(DATASETS)) from None


def dataset_names() -> list[str]:
    _load_builtin_recipes()
    return sorted(DATASETS)


def prepared_dir(data_root: str | Path, name: str, image_size: int) -> Path:
    """Where the prepared copy of dataset `name` at `image_size` lives."""
    return Path(data_root) / "prepared" / f"{name}-{image_size}px"


def raw_dir(data_root: str | Path, name: str) -> Path:
    return Path(data_root) / "raw" / name


def _load_builtin_recipes() -> None:
    # Importing the recipe modules registers them; kept lazy so importing the registry is cheap.
    from . import recipes  # noqa: F401
