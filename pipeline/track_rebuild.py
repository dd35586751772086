"""Rebuild the MLflow store from the run folders (idempotent): `python -m pipeline track-rebuild --profile smoke`.

Recreates every run of runs/<profile>/ (params from config.yaml, per-epoch metrics from history.json,
final metrics and tags from metrics.json, best.pt and the files as artifacts) and the aggregate run
holding results/<profile>/. Runs already in the store (found by their run_id tag) are updated, never
duplicated. The store is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project root.
"""
from __future__ import annotations

from pipeline.common import parser, stage


@stage
def main(argv: list[str]) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs-root", default="runs", help="folder holding <profile>/<run-id>/ (default runs)")
    p.add_argument("--results-root", default="results", help="folder holding <profile>/ tables (default results)")
    p.add_argument("--marker", help="write the counts to this file when done (the workflows' `track` stage)")
    args = p.parse_args(argv)
    import json

    from mdr.io import atomic_write_text
    from mdr.tracking import experiment_name, rebuild_store, tracking_uri

    counts = rebuild_store(args.profile, args.runs_root, args.results_root)
    if args.marker:
        atomic_write_text(args.marker, json.dumps({"store": tracking_uri(), **counts}, indent=1) + "\n")
    print(f"MLflow store {tracking_uri()}, experiment {experiment_name(args.profile)}: "
          f"{counts['created']} runs created, {counts['updated']} updated, {counts['unchanged']} unchanged, "
          f"{counts['skipped']} folders without config.yaml skipped; aggregate run {counts['aggregate']}")
    return 0
