"""The smoke profile turned back into its cheap from-scratch form, for tests about the DAG and the stages.

The smoke profile is the paper in miniature (four glyph benchmarks, glyphnet backbones pretrained by the
DAG on glyphs-imagenet, cached lower features): a workflow test on it would render glyphs-imagenet and
pretrain a backbone (minutes) before its first run. Tests that are about the workflow, not about the
miniature, shrink a copy of params/ with `from_scratch`: every paper dataset on the embedded `glyphs`
(the closed-set stand-in kept), a SmallCNN trained from scratch, no weights file, no feature cache, the
paper's MDR lambda as the first override (some tests edit it there), one seed list for every table, and the
published protocol alone (the fair cells need tuned files and validation classes: tests/test_protocol.py).
"""
from __future__ import annotations

from pathlib import Path

import yaml

# MDR's lambda first: tests address it as overrides.0 (test_dvc's LAMBDA, test_grid's edits)
OVERRIDES = [
    {"when": {"regularizer": "mdr"}, "set": {"regularizer": {"params": {"weight": 0.6, "level_penalty": 0.01}}}},
    {"when": {"regularizer": "detreg"}, "set": {"regularizer": {"params": {"hidden": 128, "hidden_layers": 1}}}},
]


def smoke_path(params: Path) -> Path:
    return Path(params) / "profiles" / "smoke.yaml"


def from_scratch(params: Path, runs_per_job: int = 1) -> Path:
    """Rewrite the smoke profile of the params/ copy `params` in place into the from-scratch form, with
    resources.runs_per_job `runs_per_job`; returns `params`."""
    path = smoke_path(params)
    profile = yaml.safe_load(path.read_text())
    profile["datasets"] = {name: "glyphs-closed" if name == "cifar10" else "glyphs" for name in profile["datasets"]}
    profile.pop("backbones", None)
    profile.pop("table_seeds", None)
    profile["overrides"] = [dict(o) for o in OVERRIDES]
    defaults = profile["defaults"]
    defaults["data"]["cached_views"] = 0
    defaults["model"].pop("weights", None)
    # trained from scratch: BatchNorm must learn its statistics
    defaults["model"].update(backbone="smallcnn", pretrained=False, freeze_bn=False)
    defaults["train"]["batch_size"] = 64
    profile["resources"]["runs_per_job"] = runs_per_job
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    for table in (Path(params) / "tables").glob("*.yaml"):
        published_only(table)
    return Path(params)


def published_only(table: Path) -> Path:
    """Rewrite a table file in place without its `protocol` axis (and the `exclude` entries naming it), so that
    its cells are the published protocol's alone; returns `table`."""
    doc = yaml.safe_load(table.read_text())
    if "protocol" not in doc.get("axes", {}):
        return table
    del doc["axes"]["protocol"]
    for side in ("rows", "columns"):
        doc[side] = [a for a in doc.get(side, []) if a != "protocol"]
    doc["exclude"] = [e for e in doc.get("exclude", []) if "protocol" not in e]
    table.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return table
