"""Fetch (where possible), verify and prepare one dataset: `python -m pipeline prepare glyphs --image-size 36`."""
from __future__ import annotations

import argparse

from pipeline.common import stage


@stage
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dataset", help="dataset name (e.g. glyphs, cub200, cars196, sop, inshop)")
    p.add_argument("--image-size", type=int, default=256, help="side of the prepared image cache (default 256)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--no-fetch", action="store_true", help="never download; use files already placed")
    p.add_argument("--source", metavar="PATH",
                   help="use your own copy instead of downloading: the extracted folder (e.g. CUB_200_2011/), an "
                        "archive packed differently (.tar.gz), or a folder holding the files (In-Shop: Img/img.zip, "
                        "Eval/list_eval_partition.txt); remembered for later runs in <data-root>/raw/<dataset>/; default: the dataset's entry in "
                        "params/sources.yaml")
    args = p.parse_args(argv)
    from mdr.data import prepare_dataset

    source = args.source if args.source is not None else configured_source(args.dataset)
    prepared = prepare_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size,
                               fetch=not args.no_fetch, source=source)
    counts = ", ".join(f"{k} {v:,}" for k, v in prepared.meta["counts"].items())
    print(f"{args.dataset}: prepared at {prepared.root} ({counts})")
    for name, facts in sorted(prepared.meta.get("sources", {}).items()):
        if isinstance(facts, dict) and not facts.get("verified_against_published_hash", True):
            print(f"{args.dataset}: note: {_unchecked(name, facts)} is recorded in {prepared.root / 'meta.json'}")
    return 0


def _unchecked(name: str, facts: dict) -> str:
    """Why a source was not checked against a published checksum, and what was recorded instead."""
    if facts.get("kind") == "folder":
        return (f"{facts['user_copy']} is an extracted folder, which has no published checksum; its file list and "
                f"the published counts were checked; the sha256 of its listing and annotation files")
    if facts.get("kind") == "archive":
        return (f"{facts['user_copy']} is not the published {name} (its checksum differs); the published counts were "
                f"checked; its sha256")
    return f"{name} has no published checksum; its sha256"


def configured_source(dataset: str) -> str | None:
    """The dataset's entry in params/sources.yaml (`sources: {name: path}`), or None."""
    import yaml

    from mdr.config import ConfigError
    from mdr.data.registry import dataset_names
    from mdr.grid import PARAMS_DIR

    path = PARAMS_DIR / "sources.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, dict) or set(data) - {"sources"}:
        raise ConfigError(f"{path}: expected one key `sources` holding `dataset: path` entries, found "
                          f"{type(data).__name__ if not isinstance(data, dict) else sorted(data)}; see the comment at its top")
    unknown = sorted(set(sources) - set(dataset_names()))
    if unknown:
        raise ConfigError(f"{path}: sources.{unknown[0]}: unknown dataset; known: {', '.join(dataset_names())}")
    value = sources.get(dataset)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: sources.{dataset}: expected a path, found {value!r}")
    return value
