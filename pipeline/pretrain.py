"""Pretrain one backbone on the embedded "ImageNet": `python -m pipeline pretrain --backbone glyphnet-m`.

Softmax training on the train split of the prepared glyphs-imagenet (36 px, under --data-root), writing
<data-root>/pretrained/<backbone>.pt (the backbone's state dict, what model.weights loads) and its JSON
sidecar (sha256 and the training record). See mdr/pretrain.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.common import disk_full_reported, stage


@stage
def main(argv: list[str]) -> int:
    from mdr import pretrain as P

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", required=True, help="backbone name (glyphnet-s, glyphnet-m, glyphnet-l)")
    p.add_argument("--data-root", default="data", help="holds prepared/glyphs-imagenet-36px/ (default: data)")
    p.add_argument("--out", help="weights file to write (default: <data-root>/pretrained/<backbone>.pt)")
    p.add_argument("--epochs", type=int, default=P.DEFAULT_EPOCHS, help=f"default {P.DEFAULT_EPOCHS}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-bars", action="store_true", help="no progress bars (epoch lines are still printed)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1:
        p.error(f"--epochs and --threads must be >= 1, got {args.epochs} and {args.threads}")
    from mdr.data.registry import prepared_dir
    from mdr.models import BACKBONES
    from mdr.models.pretrained_file import pretrained_path

    BACKBONES.get(args.backbone)  # an unknown name fails here, listing the known ones
    out = pretrained_path(args.data_root, args.backbone) if args.out is None else args.out
    data = prepared_dir(args.data_root, P.PRETRAIN_DATASET, P.PRETRAIN_IMAGE_SIZE)
    with disk_full_reported(Path(out).parent):
        record = P.pretrain_backbone(args.backbone, data, out, epochs=args.epochs, threads=args.threads,
                                     progress=not args.no_bars)
    print(f"{args.backbone}: wrote {out} (test accuracy {record['test_accuracy'][-1]:.3f} after {args.epochs} "
          f"epochs, {record['seconds_total']:.0f} s)")
    return 0
