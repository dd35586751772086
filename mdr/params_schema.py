"""The schema of the params/ files: a profile, a method, a table and its axes, as pydantic models.

Each model forbids unknown keys, so a misspelt key in params/ stops with its name rather than being ignored;
mdr/grid.py resolves what these models hold into runs and table cells.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mdr.comparisons import Comparison, check as check_comparisons

SPECIAL_KEYS = ("dataset", "method", "image_size")
MATCH_KEYS = ("table", "dataset", "method", "loss", "regularizer", "backbone", "protocol")


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _distinct(seeds: list[int]) -> list[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{seeds} repeats seed {', '.join(map(str, repeated))}: a seed names one run, so a repeat "
                         f"would count that run twice in the mean and spread; list each seed once")
    return seeds


# The seeds a table's cells are trained with: distinct, since each seed is one independent run.
Seeds = Annotated[list[int], AfterValidator(_distinct)]


def _runs_per_job(resources: dict[str, Any]) -> dict[str, Any]:
    n = resources.get("runs_per_job", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"runs_per_job must be an integer >= 1 (the runs one train or evaluate job handles, "
                         f"mdr/jobs.py), found {n!r}; set e.g. `runs_per_job: 4`, or remove it for one run per job")
    return resources


# Snakemake's resources of a train job, and `runs_per_job`: how many runs (of one config, seeds apart) a job handles.
Resources = Annotated[dict[str, Any], AfterValidator(_runs_per_job)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Override(Strict):
    when: dict[str, Any] = Field(description="all of: table, dataset, method, loss, regularizer, backbone, protocol")
    set: dict[str, Any]

    @model_validator(mode="after")
    def _keys(self) -> "Override":
        unknown = sorted(set(self.when) - set(MATCH_KEYS))
        if unknown:
            raise ValueError(f"override `when` keys {unknown} unknown; allowed: {', '.join(MATCH_KEYS)}")
        return self

    def matches(self, facts: dict[str, Any]) -> bool:
        for key, want in self.when.items():
            wanted = want if isinstance(want, list) else [want]
            if facts.get(key) not in wanted:
                return False
        return True


class Profile(Strict):
    name: str
    description: str = ""
    seeds: Seeds = Field(min_length=1)
    datasets: dict[str, str] = Field(description="logical (paper) dataset -> dataset trained on")
    backbones: dict[str, str] = Field(default_factory=dict, description="logical (paper) backbone -> backbone "
                                      "trained (e.g. bninception -> glyphnet-m in the embedded profile); applied last")
    table_seeds: dict[str, Seeds] = Field(default_factory=dict, description="seeds of the named tables in this "
                                          "profile, where they differ from `seeds` (a table's own `seeds` wins)")
    default_image_size: int = 224
    image_sizes: dict[int, dict[str, Any]] = Field(description="preset name (paper crop size) -> settings")
    defaults: dict[str, Any]
    overrides: list[Override] = Field(default_factory=list)
    tables: list[str] | None = Field(None, description="tables to build; default: every file in params/tables")
    resources: Resources = Field(default_factory=dict, description="Snakemake resources of train jobs, and "
                                 "runs_per_job (default 1): the runs of one config, seeds apart, that a job trains")
    tracking: Literal["live", "at_end"] = Field(
        "live", description="live: train and evaluate log each run to MLflow as it goes; at_end: one `track` "
        "stage after the report logs every run from its folder (track-rebuild), which saves each job the "
        "~2 s of MLflow start-up that matters when runs last seconds")
    # --- tuning (mdr/tuning/; the tuned file is written by mdr/tuning/outputs.py) ---
    use_tuned: bool = Field(False, description="apply params/tuned/<profile>/<dataset>-<regularizer>.yaml to the runs of that regularizer")


class Method(Strict):
    loss: str
    regularizer: str = "none"
    set: dict[str, Any] = Field(default_factory=dict)


class Axis(Strict):
    path: str | None = None
    values: list[Any] | None = None
    choices: dict[str, dict[str, Any]] | None = None
    paper: str | None = Field(None, description="column of paper_results.csv this axis's value matches")

    @model_validator(mode="after")
    def _one_kind(self) -> "Axis":
        if (self.values is None) == (self.choices is None):
            raise ValueError("an axis has either `values` (with `path`) or `choices`")
        if self.values is not None and self.path is None:
            raise ValueError("an axis with `values` needs the config `path` they set")
        return self

    def bundles(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(label, settings, paper attributes) for each value of the axis."""
        if self.choices is not None:
            out = []
            for label, bundle in self.choices.items():
                bundle = dict(bundle)
                paper = bundle.pop("paper", {})
                out.append((label, bundle, paper))
            return out
        assert self.values is not None and self.path is not None
        return [(_label(v), {self.path: v}, {self.paper: v} if self.paper else {}) for v in self.values]


class TableDef(Strict):
    name: str
    title: str
    kind: Literal["table", "figure"] = "table"
    figure: Literal["bars", "curves", "tsne"] | None = Field(None, description="renderer in mdr/figures.py")
    axes: dict[str, Axis | list[Any]]
    rows: list[str]
    columns: list[str] = Field(default_factory=list)
    metrics: list[str] | Literal["dataset_ks"] = "dataset_ks"
    fixed: dict[str, Any] = Field(default_factory=dict)
    published: str | None = Field(None, description="the `table` key of paper_results.csv to show beside ours")
    report_epoch: Literal["best", "final"] = "best"
    seeds: Seeds | None = None
    note: str = ""
    comparisons: list[Comparison] = Field(default_factory=list, description="published claims tested over seeds (mdr/comparisons.py)")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="cells not run: each entry maps axes to "
                                          "labels, and a combination matching every one of them is left out "
                                          "(e.g. `{dataset: sop, protocol: fair}`)")

    @model_validator(mode="after")
    def _layout(self) -> "TableDef":
        if self.kind == "figure" and self.figure is None:
            raise ValueError("a table of kind figure needs `figure:` (bars, curves or tsne)")
        names = set(self.axes)
        placed = self.rows + self.columns
        if sorted(placed) != sorted(names):
            raise ValueError(f"rows + columns {placed} must name every axis exactly once; axes are {sorted(names)}")
        self._check_exclude()
        check_comparisons(self)
        return self

    def _check_exclude(self) -> None:
        for i, entry in enumerate(self.exclude):
            if not entry:
                raise ValueError(f"exclude[{i}] is empty; name at least one axis and its value, e.g. {{dataset: sop}}")
            for axis, value in entry.items():
                if axis not in self.axes:
                    raise ValueError(f"exclude[{i}]: {axis!r} is not an axis of the table; allowed: {', '.join(self.axes)}")
                labels = [label for label, _, _ in self.axis(axis).bundles()]
                if _label(value) not in labels:
                    raise ValueError(f"exclude[{i}]: {value!r} is not a value of axis {axis}; allowed: {', '.join(labels)}")

    def excluded(self, labels: dict[str, str]) -> bool:
        """Whether the cell of these axis labels is one the table leaves out (`exclude`)."""
        return any(all(labels.get(axis) == _label(value) for axis, value in entry.items()) for entry in self.exclude)

    def axis(self, name: str) -> Axis:
        spec = self.axes[name]
        if isinstance(spec, Axis):
            return spec
        if name in SPECIAL_KEYS:  # shorthand: `dataset: [cub200, cars196]`, `method: [Triplet, ...]`
            return Axis(choices={_label(v): {name: v} for v in spec})
        raise ValueError(f"axis {name!r} given as a plain list needs `path:`; only {SPECIAL_KEYS} have a shorthand")
