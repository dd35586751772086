"""Jobs of several runs: which runs one `pipeline train` / `pipeline evaluate` process handles.

A process costs seconds before it does anything (importing torch, resolving the grid), which matters when
runs last seconds. The profile's `resources.runs_per_job` (default 1) groups the runs that differ only by
their seed, sorted by seed, into chunks of at most that many runs; each chunk is one job of Snakemake and
one stage of DVC (pipeline/dvc_yaml.py), with each run's own outputs.

A job's id is its runs' readable slug, `seeds<a>_<b>...` and the hash of their config without the seed
(`glyphs-smallcnn-triplet-none-d128-32px-seeds0_1-1a2b3c4d`): it depends only on the runs it holds, so
adding a table leaves every other job as it was. Adding a seed to a config regroups that config's chunks.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mdr.config import RunConfig
from mdr.grid import Grid, RunSpec


@dataclass(frozen=True)
class Job:
    job_id: str
    run_ids: tuple[str, ...]


def runs_per_job(grid: Grid) -> int:
    """The profile's resources.runs_per_job (validated by mdr.grid.Profile)."""
    return int(grid.profile.resources.get("runs_per_job", 1))


def seedless_hash(config: RunConfig) -> str:
    """Hash of the config without its seed: equal for exactly the runs that differ only by their seed."""
    # the run's canonical form (RunConfig.canonical_json): a field added with a default that keeps old runs
    # (train.precision fp32) renames neither the runs nor their jobs
    data = json.loads(config.canonical_json())
    data.pop("seed")
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def _slug(spec: RunSpec) -> str:
    """The run id less its `-seed<N>-<hash>` ending (mdr.grid.run_id)."""
    return spec.run_id.removesuffix(f"-seed{spec.config.seed}-{spec.config.fingerprint()}")


def jobs(grid: Grid) -> dict[str, Job]:
    """Every job of the grid, by id, in the order of the grid's runs (a group where its first run is)."""
    size = runs_per_job(grid)
    groups: dict[str, list[RunSpec]] = {}
    for spec in grid.runs.values():
        groups.setdefault(f"{_slug(spec)}\0{seedless_hash(spec.config)}", []).append(spec)
    out: dict[str, Job] = {}
    for key, specs in groups.items():
        slug, digest = key.split("\0")
        specs = sorted(specs, key=lambda s: s.config.seed)
        for start in range(0, len(specs), size):
            chunk = specs[start:start + size]
            job_id = f"{slug}-seeds{'_'.join(str(s.config.seed) for s in chunk)}-{digest}"
            out[job_id] = Job(job_id, tuple(s.run_id for s in chunk))
    return out


def pretrained_weights(config: RunConfig) -> str | None:
    """The run's model.weights when the pretrain stage writes it (under <data.root>/pretrained/), so that a
    train job depends on that stage; None for no weights file or one the user provides."""
    weights = config.model.weights
    if not weights:
        return None
    path = Path(os.path.normpath(weights))
    if path.is_relative_to(Path(os.path.normpath(config.data.root)) / "pretrained"):
        return path.as_posix()
    return None
