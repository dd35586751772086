"""Write results/<profile>/REPORT.md (opening with the verdicts of the published comparisons), comparisons.csv,
runs.csv and index.html (all of it on one self-contained page) from the tables' runs:
`python -m pipeline report --profile smoke`; `--page-only` rebuilds index.html alone from the results folder."""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__)
    p.add_argument("--no-tracking", action="store_true")
    p.add_argument("--page-only", action="store_true",
                   help="rebuild index.html from the files of results/<profile>/ (no run folders needed)")
    args = p.parse_args(argv)
    from mdr import layout
    from mdr.grid_cache import load_grid
    from mdr.report import write_report

    grid = load_grid(args.profile)
    if args.page_only:
        from mdr.report_html import write_page

        print(f"wrote {write_page(grid)}")
        return 0
    path = write_report(grid)
    if not args.no_tracking and grid.profile.tracking == "live":  # at_end: the track stage logs them
        from mdr.tracking import log_tables

        files = [path, layout.page_file(args.profile), layout.comparisons_file(args.profile),
                 layout.results_dir(args.profile) / "runs.csv"]
        for name in grid.tables:
            files += list(layout.table_files(args.profile, name, grid.tables[name].definition.kind).values())
        log_tables(args.profile, files)
    print(f"wrote {path} and {layout.page_file(args.profile)}")
    return 0
