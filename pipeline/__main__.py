"""`python -m pipeline <stage> ...`: the stage commands that Snakemake and DVC call.

Every stage is a thin wrapper around mdr/: it parses arguments, calls the library and writes its
declared outputs atomically. Errors a user can cause end in one message and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

STAGES = {
    "prepare": "pipeline.prepare",
    "pretrain": "pipeline.pretrain",
    "train": "pipeline.train",
    "evaluate": "pipeline.evaluate",
    "aggregate": "pipeline.aggregate",
    "report": "pipeline.report",
    "runs": "pipeline.runs",
    "tracking-init": "pipeline.tracking_init",
    "tune": "pipeline.tune",
    "dvc-yaml": "pipeline.dvc_yaml",
    "exp-run": "pipeline.exp_run",
    "dvc-metrics": "pipeline.dvc_metrics",
    "track-rebuild": "pipeline.track_rebuild",
    "forget": "pipeline.forget",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    # Only the first word is the stage; everything after it (including -h) belongs to the stage's parser.
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(STAGES[args.stage])
    with _prog(f"{parser.prog} {args.stage}"):
        return module.main(argv[1:])


@contextlib.contextmanager
def _prog(name: str):
    """Stage parsers take argparse's default prog (basename of sys.argv[0], '__main__.py' under -m);
    make it the command the user typed, so usage and --help read `python -m pipeline <stage>`."""
    saved = sys.argv[0] if sys.argv else ""
    if not sys.argv:
        sys.argv.append("")
    sys.argv[0] = name
    try:
        yield
    finally:
        sys.argv[0] = saved


if __name__ == "__main__":
    sys.exit(main())
