"""Aggregate one table from its runs' metrics: `python -m pipeline aggregate --profile smoke --table table1`."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--table", required=True)
    p.add_argument("--partial", action="store_true",
                   help="write the table even when some of its runs have no metrics.json yet (cells say 'not run')")
    args = p.parse_args(argv)
    from mdr import layout
    from mdr.config import ConfigError
    from mdr.grid_cache import load_grid
    from mdr.report import write_table

    grid = load_grid(args.profile)
    if args.table not in grid.tables:
        raise ConfigError(f"unknown table {args.table!r} in profile {args.profile}; allowed: {', '.join(grid.tables)}")
    # A workflow trusts what this stage writes: a table missing runs (not evaluated yet, or deleted by another
    # tool meanwhile) must not become an up-to-date output. By hand, --partial writes it anyway.
    runs = dict.fromkeys(rid for cell in grid.tables[args.table].cells for rid in cell.run_ids)
    missing = [layout.metrics_file(args.profile, rid) for rid in runs if not layout.metrics_file(args.profile, rid).exists()]
    if missing and not args.partial:
        raise ConfigError(f"table {args.table} needs the metrics of {len(runs)} runs, {len(missing)} are missing "
                          f"(e.g. {missing[0]}); nothing was written. Build them first (`snakemake` or `dvc repro`), "
                          f"or add --partial to write the table with those cells marked 'not run'")
    files = write_table(grid, args.table)
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0
