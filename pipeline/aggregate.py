"""Aggregate one table from its runs' metrics: `python -m pipeline aggregate --profile smoke --table table1`."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--table", required=True)
    args = p.parse_args(argv)
    from mdr.config import ConfigError
    from mdr.grid import load_grid
    from mdr.report import write_table

    grid = load_grid(args.profile)
    if args.table not in grid.tables:
        raise ConfigError(f"unknown table {args.table!r} in profile {args.profile}; allowed: {', '.join(grid.tables)}")
    files = write_table(grid, args.table)
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0
