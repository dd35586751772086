"""Create the MLflow store and the profile's experiment once, before parallel jobs log to it."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--marker", help="file to write when done (the workflow's output)")
    args = p.parse_args(argv)
    from mdr.io import atomic_write_text
    from mdr.tracking import init_store, tracking_uri

    experiment = init_store(args.profile)
    print(f"MLflow store {tracking_uri()}, experiment mdr-{args.profile} (id {experiment})")
    if args.marker:
        atomic_write_text(args.marker, "ready\n")
    return 0
