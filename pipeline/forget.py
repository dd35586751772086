"""Forget runs so that the next `snakemake` or `dvc repro` trains them again:
`python -m pipeline forget --profile smoke --run <run-id> [--run <run-id> ...]`.

Deleting a run folder alone is not enough: Snakemake does not rebuild a missing intermediate file when
the tables downstream of it exist ("Nothing to be done"), so the tables would keep the deleted run's
numbers. This command deletes, for each run, its folder (under the run's writer lock, so never while
it trains) and the files of every table that uses it, and ends its MLflow run (the store is rebuilt
from the folders). Both workflow tools then see the missing tables, and rebuild exactly those: the
run is trained and evaluated again, its tables, the report and the metrics are rebuilt; other runs
are not touched.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="run id (repeat for several)")
    args = p.parse_args(argv)

    from mdr import layout
    from mdr.grid_cache import load_grid
    from mdr.locking import hold_run
    from pipeline.train import raise_unknown_run

    grid = load_grid(args.profile)
    for rid in args.run:
        if rid not in grid.runs:
            raise_unknown_run(rid, grid)
    tables = {name for rid in args.run for name in grid.runs[rid].tables}
    for rid in args.run:
        folder = layout.run_dir(args.profile, rid)
        if folder.exists():
            with hold_run(folder):
                shutil.rmtree(folder)
            print(f"deleted {folder}")
    for name in sorted(tables):
        for f in layout.table_files(args.profile, name, grid.tables[name].definition.kind).values():
            if f.exists():
                f.unlink()
                print(f"deleted {f}")
    _forget_tracked(args.profile, args.run)
    print(f"now `snakemake --cores all --config profile={args.profile}` (or `dvc repro`) trains "
          f"{'it' if len(args.run) == 1 else 'them'} again and rebuilds {', '.join(sorted(tables))}")
    return 0


def _forget_tracked(profile: str, run_ids: list[str]) -> None:
    """Delete the runs' MLflow runs, so that tracking logs the new training afresh; tracking is a side
    channel, so trouble with the store is a warning."""
    try:
        from mlflow import MlflowClient

        from mdr.tracking import experiment_name, tracking_uri

        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
            return  # no store yet: do not create one
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment_name(profile))
        if exp is None:
            return
        for rid in run_ids:
            for run in client.search_runs([exp.experiment_id], filter_string=f"tags.run_id = '{rid}'"):
                client.delete_run(run.info.run_id)
    except Exception as e:
        warnings.warn(f"MLflow runs of {', '.join(run_ids)} were not deleted: {type(e).__name__}: {e}", stacklevel=2)
