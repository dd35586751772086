"""List the runs of a profile's grid: `python -m pipeline runs --profile smoke [--table table1]`."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage(writes=False)
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--table", help="only the runs of this table")
    args = p.parse_args(argv)
    from mdr.grid_cache import load_grid

    grid = load_grid(args.profile)
    for rid, spec in grid.runs.items():
        if args.table is None or args.table in spec.tables:
            print(f"{rid}\t{','.join(spec.tables)}")
    return 0
