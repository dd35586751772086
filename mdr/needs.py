"""What a profile needs before it can run, said before it runs: prepared datasets (and the disk their
caches take), pretrained weights, a GPU, and the device-hours it plans for.

The Snakefile prints `missing(grid)` as warnings when it parses (so `snakemake -n` says what is missing),
and `pipeline train` refuses `train.device: auto` on a GPU profile without a GPU (`require_gpu`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mdr.config import ConfigError

# `pipeline train --allow-cpu`, or this variable for the jobs Snakemake and DVC start: train a GPU
# profile's `device: auto` runs on the CPU all the same.
ALLOW_CPU_ENV = "MDR_ALLOW_CPU"


@dataclass(frozen=True)
class Needs:
    datasets: list[tuple[str, int, int]]  # (dataset, image size, cache bytes) of every cache the grid trains on
    weights: list[str]  # backbones whose pretrained ImageNet weights the grid loads
    gpus: int  # GPUs per training job (the profile's resources.gpu)
    iterations: int  # training iterations of the whole grid, each run once
    planned_hours: float | None  # at the profile's resources.minutes_per_1000_iterations, where it gives one


def cache_bytes(dataset: str, image_size: int, published_images: int | None = None) -> int:
    """The prepared image cache: every image of the published counts at S x S x 3 uint8 bytes (the count read
    from the dataset's recipe unless given)."""
    if published_images is None:
        from mdr.grid import DatasetFacts

        published_images = DatasetFacts.of(dataset).published_images
    return published_images * image_size * image_size * 3


def needs(grid) -> Needs:
    runs = list(grid.runs.values())
    weights = sorted({r.config.model.backbone for r in runs if r.config.model.pretrained and not r.config.model.weights})
    iterations = sum(r.config.train.epochs * r.config.train.iterations_per_epoch for r in runs)
    rate = grid.profile.resources.get("minutes_per_1000_iterations")
    return Needs(datasets=[(d, s, cache_bytes(d, s, grid.dataset_facts[d].published_images))
                           for d, s in grid.datasets()], weights=weights,
                 gpus=int(grid.profile.resources.get("gpu", 0)), iterations=iterations,
                 planned_hours=iterations / 1000 * rate / 60 if rate else None)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def missing(grid) -> list[str]:
    """One line per thing the grid needs that this machine lacks; datasets the DAG makes itself (embedded) are
    not missing."""
    from mdr.data.registry import prepared_dir

    need = needs(grid)
    roots = {(r.config.data.dataset, r.config.data.image_size): r.config.data.root for r in grid.runs.values()}
    lines = []
    for dataset, size, size_bytes in need.datasets:
        folder = prepared_dir(roots[dataset, size], dataset, size)
        if not grid.dataset_facts[dataset].embedded and not (folder / "READY").exists():
            lines.append(f"prepared dataset {folder} is missing ({size_bytes / 1e9:.1f} GB of cache): the prepare "
                         f"job fetches it where it can, else `python -m pipeline prepare {dataset} --image-size "
                         f"{size} --source PATH` with your copy (README, Datasets)")
    if need.weights:  # imported only then: mdr.models imports torch, seconds of every Snakemake start
        from mdr.models.weights import KNOWN_WEIGHTS, cache_dir
    for backbone in need.weights:
        name = KNOWN_WEIGHTS.get(backbone, (backbone,))[0]
        # where weights_path looks before it downloads (present is enough here; loading verifies the hash)
        if not any((folder / name).is_file() for folder in (cache_dir() / "weights", _hub_checkpoints())):
            lines.append(f"pretrained weights {name} ({backbone}) are not in {cache_dir() / 'weights'}: the first "
                         f"training job downloads them, or place the file there (README, Weights)")
    if need.gpus and not _has_gpu():
        lines.append(f"profile {grid.profile.name} trains on {need.gpus} GPU per job and this machine has none "
                     f"(torch sees no CUDA device): its train jobs will stop unless {ALLOW_CPU_ENV}=1 "
                     f"(train on the CPU, far slower)")
    return lines


def summary(grid) -> str:
    """What the whole profile needs, in one line."""
    need = needs(grid)
    hours = (f"~{need.planned_hours:,.0f} GPU-hours at the profile's planning rate (resources."
             f"minutes_per_1000_iterations; not measured on a GPU)" if need.planned_hours else "time not estimated")
    return (f"profile {grid.profile.name} needs {len(need.datasets)} prepared image caches "
            f"({sum(b for *_, b in need.datasets) / 1e9:.0f} GB), pretrained weights of "
            f"{', '.join(need.weights) or 'no backbone'}, {need.gpus or 'no'} GPU per training job; "
            f"{len(grid.runs)} runs, {need.iterations:,} training iterations, {hours}")


def announce(grid) -> list[str]:
    """What the Snakefile prints when it parses: for a GPU profile its needs, then what is missing here."""
    head = [f"note: {summary(grid)}"] if needs(grid).gpus else []
    return head + [f"warning: {line}" for line in missing(grid)] + awaiting_tuning(grid)


def awaiting_tuning(grid) -> list[str]:
    """A line when fair cells wait for their tuned settings: the default target (or `tune_fair`) runs their tune
    jobs, the next invocation trains the fair runs (their ids hash the tuned values, so they exist only once the
    values do). A narrower target runs no tune job, so the line names the one that does."""
    if not grid.awaiting_tuning:
        return []
    files = sorted(os.path.relpath(f) for f in grid.awaiting_tuning)
    cells = sum(len(v) for v in grid.awaiting_tuning.values())
    return [f"note: {cells} fair cells wait for their tuned settings ({len(files)} files: {', '.join(files[:3])}"
            f"{', ...' if len(files) > 3 else ''}) and are left out of every table until they have them; the default "
            f"target tunes them (or `snakemake tune_fair` alone): run the same command again afterwards to train, "
            f"evaluate and report them"]


def require_gpu(grid, config, allow_cpu: bool) -> None:
    """A GPU profile's `device: auto` run without a GPU stops in one line, unless the CPU was asked for."""
    allow_cpu = allow_cpu or os.environ.get(ALLOW_CPU_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if not grid.profile.resources.get("gpu") or config.train.device != "auto" or allow_cpu or _has_gpu():
        return
    profile_file = Path("params") / "profiles" / f"{grid.profile.name}.yaml"
    raise ConfigError(f"profile {grid.profile.name} trains on a GPU ({profile_file}: resources.gpu "
                      f"{grid.profile.resources['gpu']}, train.device auto) and torch sees no CUDA device here: run it "
                      f"on a machine with a GPU, or ask for the CPU explicitly with `--allow-cpu` "
                      f"({ALLOW_CPU_ENV}=1 for Snakemake and DVC jobs)")
