"""Write results/<profile>/REPORT.md (opening with the verdicts of the published comparisons), comparisons.csv
and runs.csv from the tables' runs: `python -m pipeline report --profile smoke`."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--no-tracking", action="store_true")
    args = p.parse_args(argv)
    from mdr import layout
    from mdr.grid_cache import load_grid
    from mdr.report import write_report

    grid = load_grid(args.profile)
    path = write_report(grid)
    if not args.no_tracking and grid.profile.tracking == "live":  # at_end: the track stage logs them
        from mdr.tracking import log_tables

        files = [path, layout.comparisons_file(args.profile), layout.results_dir(args.profile) / "runs.csv"]
        for name in grid.tables:
            files += list(layout.table_files(args.profile, name, grid.tables[name].definition.kind).values())
        log_tables(args.profile, files)
    print(f"wrote {path}")
    return 0
