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
    args = p.parse_args(argv)
    from mdr.data import prepare_dataset

    prepared = prepare_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size,
                               fetch=not args.no_fetch)
    counts = ", ".join(f"{k} {v:,}" for k, v in prepared.meta["counts"].items())
    print(f"{args.dataset}: prepared at {prepared.root} ({counts})")
    return 0
