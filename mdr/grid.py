"""The experiment grid: params/ (profiles, methods, tables) -> the runs to train and the table cells.

One function, `load_grid(profile)`, is the single source of truth for Snakemake, DVC and every stage
command. A table declares axes (each value a bundle of settings); the product of its axes gives its
cells; every cell is trained once per seed. A cell's config is resolved in this order, later wins:

  profile.defaults -> the logical dataset (profile.datasets maps e.g. cub200 to glyphs in `smoke`)
  -> the method (params/methods.yaml) -> the image-size preset (profile.image_sizes)
  -> profile.overrides whose `when` matches (per-dataset lr, lambda, ...) -> table.fixed -> the cell's settings

An override matches on the run's facts: the table, the logical dataset, the method, and the loss, regularizer,
backbone and eval.protocol the run will actually use (a table axis that sets one of them counts), so that e.g.
`- when: {protocol: fair}` `set: {data.validation_classes: 10}` applies to the fair cells of any table.

A run's id is a readable slug plus the hash of its fully resolved config, so tables that need the
same run share it, and a changed parameter gives a new run instead of silently reusing an old one.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mdr.config import ConfigError, RunConfig, _short_errors
from mdr.params_schema import SPECIAL_KEYS, Method, Profile, TableDef

# $MDR_PARAMS points the whole pipeline at another params folder (tests, private experiments).
PARAMS_DIR = Path(os.environ.get("MDR_PARAMS", Path(__file__).resolve().parent.parent / "params"))


@dataclass
class RunSpec:
    run_id: str
    config: RunConfig
    tags: dict[str, str]
    tables: list[str] = field(default_factory=list)


@dataclass
class Cell:
    labels: dict[str, str]
    facts: dict[str, Any]
    paper: dict[str, Any]
    run_ids: list[str]


@dataclass
class Table:
    definition: TableDef
    cells: list[Cell]


@dataclass(frozen=True)
class DatasetFacts:
    """What the Snakefile's start needs of a dataset's recipe, kept in the (cached) grid: importing the
    recipes brings pandas, half a second of every Snakemake start, a no-op rerun included."""
    embedded: bool  # generated here (the DAG's prepare job makes it), nothing to download
    published_images: int  # the recipe's expected image count over all splits (0 when it states none)

    @classmethod
    def of(cls, dataset: str) -> "DatasetFacts":
        """Read from the dataset's recipe (importing the recipes)."""
        from mdr.data.registry import get_dataset

        recipe = get_dataset(dataset)
        return cls(recipe.embedded, sum(recipe.expected_counts.values()))


@dataclass
class Grid:
    profile: Profile
    methods: dict[str, Method]
    runs: dict[str, RunSpec]
    tables: dict[str, Table]
    # tuned file -> the fair cells left out until it is written (its tune job: Snakemake's `tune` rule)
    awaiting_tuning: dict[str, list[str]] = field(default_factory=dict)
    params_dir: Path = PARAMS_DIR
    dataset_facts: dict[str, DatasetFacts] = field(default_factory=dict)  # every dataset of `runs`

    def tuned_input(self, run: str) -> str | None:
        """The tuned file that a fair run's config was resolved with (None for a published run)."""
        r = self.runs[run]
        if r.config.eval.protocol != "fair":
            return None
        return str(tuned_file(self.params_dir, self.profile.name, r.tags["dataset"], r.config.regularizer.name))

    def fair_tuned_files(self) -> list[str]:
        """The tuned files that the fair runs need: those they read and those that their cells wait for."""
        read = {f for r in self.runs if (f := self.tuned_input(r))}
        return sorted(read | set(self.awaiting_tuning))

    def datasets(self) -> list[tuple[str, int]]:
        """(dataset, image_size) pairs that must be prepared."""
        return sorted({(r.config.data.dataset, r.config.data.image_size) for r in self.runs.values()})



def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def _parse(model: type[BaseModel], data: Any, source: Path | str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_short_errors(e)}") from None


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = copy.deepcopy(value)


def _apply(config: dict[str, Any], settings: dict[str, Any]) -> None:
    for dotted, value in settings.items():
        if isinstance(value, dict) and not dotted.endswith("params"):
            _apply(config, {f"{dotted}.{k}": v for k, v in value.items()})
        else:
            set_path(config, dotted, value)


def load_profile(name: str, params_dir: Path = PARAMS_DIR) -> Profile:
    path = params_dir / "profiles" / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (params_dir / "profiles").glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}; allowed: {', '.join(available)} (files in {params_dir / 'profiles'})")
    return _parse(Profile, _read_yaml(path), path)


def load_methods(params_dir: Path = PARAMS_DIR) -> dict[str, Method]:
    path = params_dir / "methods.yaml"
    data = _read_yaml(path) or {}
    return {name: _parse(Method, spec, f"{path}: method {name!r}") for name, spec in data.items()}


def load_table(name: str, params_dir: Path = PARAMS_DIR) -> TableDef:
    path = params_dir / "tables" / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (params_dir / "tables").glob("*.yaml"))
        raise ConfigError(f"unknown table {name!r}; allowed: {', '.join(available)}")
    table = _parse(TableDef, _read_yaml(path), path)
    if table.name != name:
        raise ConfigError(f"{path}: `name: {table.name}` differs from the file name {name}")
    return table


def resolve(profile: Profile, methods: dict[str, Method], table: TableDef, settings: dict[str, Any],
            seed: int, source: str, params_dir: Path = PARAMS_DIR) -> tuple[RunConfig, dict[str, Any]]:
    """The validated RunConfig of one cell and seed, and the logical facts (dataset, method, ...) behind it."""
    merged = {**table.fixed, **settings}
    special = {k: merged.pop(k) for k in SPECIAL_KEYS if k in merged}
    config: dict[str, Any] = copy.deepcopy(profile.defaults)
    facts: dict[str, Any] = {"table": table.name}
    # which file set which keys, in order: a bad value is blamed on the file that set it last
    profile_file = params_dir / "profiles" / f"{profile.name}.yaml"
    layers: list[tuple[str, set[str]]] = [(str(profile_file), _dotted(profile.defaults))]

    dataset = special.get("dataset")
    if dataset is None:
        raise ConfigError(f"{source}: no dataset; give the table a `dataset` axis or fixed value")
    if dataset not in profile.datasets:
        raise ConfigError(f"{source}: dataset {dataset!r} is not in profile {profile.name}'s datasets "
                          f"({', '.join(profile.datasets)})")
    facts["dataset"] = dataset
    set_path(config, "data.dataset", profile.datasets[dataset])
    layers.append((f"{profile_file} [datasets]", {"data.dataset"}))

    method_name = special.get("method")
    if method_name is None:
        raise ConfigError(f"{source}: no method; give the table a `method` axis or fixed value")
    if method_name not in methods:
        raise ConfigError(f"{source}: unknown method {method_name!r}; allowed: {', '.join(methods)} (params/methods.yaml)")
    method = methods[method_name]
    facts.update(method=method_name, loss=method.loss, regularizer=method.regularizer)
    set_path(config, "loss.name", method.loss)
    set_path(config, "regularizer.name", method.regularizer)
    _apply(config, method.set)
    layers.append((f"{params_dir / 'methods.yaml'} [{method_name}]", {"loss.name", "regularizer.name"} | _dotted(method.set)))

    size = int(special.get("image_size", profile.default_image_size))
    if size not in profile.image_sizes:
        raise ConfigError(f"{source}: image_size {size} has no preset in profile {profile.name} "
                          f"(allowed: {sorted(profile.image_sizes)})")
    facts["image_size"] = size
    _apply(config, profile.image_sizes[size])
    layers.append((f"{profile_file} [image_sizes.{size}]", _dotted(profile.image_sizes[size])))

    # A table may vary the loss, regularizer or backbone directly (e.g. the regularizers table): the facts
    # that overrides match on are what the run will actually use.
    facts["loss"] = merged.get("loss.name", facts["loss"])
    facts["regularizer"] = merged.get("regularizer.name", facts["regularizer"])
    facts["backbone"] = merged.get("model.backbone", config.get("model", {}).get("backbone"))
    facts["protocol"] = merged.get("eval.protocol", config.get("eval", {}).get("protocol", "published"))
    for override in profile.overrides:
        if override.matches(facts):
            _apply(config, override.set)
            layers.append((f"{profile_file} [overrides]", _dotted(override.set)))
    # --- tuning: the tuned settings come after the profile's, before the table's; a fair run needs them ---
    if profile.use_tuned or facts["protocol"] == "fair":
        path = tuned_file(params_dir, profile.name, dataset, facts["regularizer"])
        if facts["protocol"] == "fair" and not path.exists():
            raise AwaitingTuning(path, source)
        tuned = tuned_settings(params_dir, profile.name, dataset, facts["regularizer"], facts["loss"])
        _apply(config, tuned)
        layers.append((str(path), _dotted(tuned)))
    # --- end tuning ---
    _apply(config, merged)
    layers.append((source, _dotted(merged)))
    logical_backbone = config.get("model", {}).get("backbone")
    if logical_backbone in profile.backbones:
        set_path(config, "model.backbone", profile.backbones[logical_backbone])
        layers.append((f"{profile_file} [backbones]", {"model.backbone"}))
    config["seed"] = seed
    return _validated(config, source, layers), facts


_VALIDATED: dict[str, RunConfig] = {}


def _validated(config: dict[str, Any], source: str, layers: list[tuple[str, set[str]]] = ()) -> RunConfig:
    """Validate once per distinct config: tables share most of their runs (e.g. four datasets mapped to glyphs)."""
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _VALIDATED:
        try:
            _VALIDATED[key] = RunConfig.model_validate(config)
        except ValidationError as e:
            raise ConfigError(f"{_blame(e, layers, source)}: invalid configuration: {_short_errors(e)}") from None
    return _VALIDATED[key].model_copy(deep=True)


def _dotted(settings: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key that `settings` (nested or dotted, as _apply takes them) sets."""
    keys: set[str] = set()
    for k, v in settings.items():
        key = f"{prefix}{k}"
        keys |= _dotted(v, key + ".") if isinstance(v, dict) and v else {key}
    return keys


def _blame(e: ValidationError, layers: list[tuple[str, set[str]]], source: str) -> str:
    """The file (and section) that last set each invalid key, and the run it broke; `source` alone when unknown."""
    def overlaps(key: str, path: str) -> bool:
        return key == path or path.startswith(key + ".") or key.startswith(path + ".")

    files = []
    for err in e.errors():
        path = ".".join(str(p) for p in err["loc"])
        files.append(next((label for label, keys in reversed(layers) if any(overlaps(k, path) for k in keys)), source))
    where = ", ".join(dict.fromkeys(files))
    return where if where == source else f"{where} (in the run of {source})"


# --- tuning ---
def tuned_file(params_dir: Path, profile: str, dataset: str, regularizer: str) -> Path:
    """Where `python -m pipeline tune` writes a profile's tuned settings of a regularizer for a logical dataset."""
    return params_dir / "tuned" / profile / f"{dataset}-{regularizer}.yaml"


def override_setting(profile: Profile, facts: dict[str, Any], dotted: str) -> Any:
    """What the profile's overrides that match `facts` set `dotted` to (the last one wins); None if none sets it.
    The tuner asks it for the validation classes of the fair runs, which its studies must hold out too."""
    config: dict[str, Any] = {}
    for override in profile.overrides:
        if override.matches(facts):
            _apply(config, override.set)
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


class AwaitingTuning(Exception):
    """A fair run's tuned settings (params/tuned/<profile>/<dataset>-<regularizer>.yaml) are not written yet:
    the grid leaves its cell out (Grid.awaiting_tuning) until the tune job has written them."""

    def __init__(self, path: Path, source: str):
        super().__init__(f"{source}: eval.protocol fair needs {path}, which is not written yet")
        self.path, self.source = path, source


def tuned_settings(params_dir: Path, profile: str, dataset: str, regularizer: str,
                   loss: str | None = None) -> dict[str, Any]:
    """The tuned `regularizer.params.*` settings for this dataset and regularizer, and the tuned `loss.params.*`
    when the study tuned the run's `loss`; {} if none were tuned."""
    path = tuned_file(params_dir, profile, dataset, regularizer)
    if not path.exists():
        return {}
    data = _read_yaml(path) or {}
    section = data.get("regularizer") if isinstance(data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("params"), dict):
        raise ConfigError(f"{path}: expected `regularizer: {{name: ..., params: {{...}}}}` (written by pipeline tune)")
    if section.get("name") != regularizer:
        return {}
    settings = {f"regularizer.params.{k}": v for k, v in section["params"].items()}
    tuned_loss = data.get("loss")
    if tuned_loss is not None:
        if not isinstance(tuned_loss, dict) or not isinstance(tuned_loss.get("params"), dict):
            raise ConfigError(f"{path}: expected `loss: {{name: ..., params: {{...}}}}` (written by pipeline tune)")
        if tuned_loss.get("name") == loss:
            settings.update({f"loss.params.{k}": v for k, v in tuned_loss["params"].items()})
    return settings
# --- end tuning ---


def run_id(config: RunConfig) -> str:
    c = config
    precision = "" if c.train.precision == "fp32" else f"-{c.train.precision}"  # the default says nothing
    protocol = "" if c.eval.protocol == "published" else f"-{c.eval.protocol}"  # likewise
    return (f"{c.data.dataset}-{c.model.backbone}-{c.loss.name}-{c.regularizer.name}"
            f"-d{c.model.embedding_dim}-{c.data.crop}px{precision}{protocol}-seed{c.seed}-{c.fingerprint()}")


def expand_table(profile: Profile, methods: dict[str, Method], table: TableDef,
                 runs: dict[str, RunSpec], params_dir: Path = PARAMS_DIR,
                 awaiting: dict[str, list[str]] | None = None) -> Table:
    """The table's cells and their runs (added to `runs`). A fair cell whose tuned settings are not written yet
    is left out, and recorded in `awaiting` (tuned file -> cells)."""
    axes = {name: table.axis(name).bundles() for name in table.rows + table.columns}
    seeds = table.seeds or profile.table_seeds.get(table.name) or profile.seeds
    cells = []
    for combo in itertools.product(*axes.values()):
        labels, settings, paper = {}, {}, {}
        for axis_name, (label, bundle, paper_attrs) in zip(axes, combo):
            labels[axis_name] = label
            settings.update(bundle)
            paper.update(paper_attrs)
        if table.excluded(labels):
            continue
        ids = []
        facts: dict[str, Any] = {}
        for seed in seeds:
            source = f"params/tables/{table.name}.yaml [{', '.join(f'{k}={v}' for k, v in labels.items())}, seed {seed}]"
            try:
                config, facts = resolve(profile, methods, table, settings, seed, source, params_dir)
            except AwaitingTuning as e:  # the cell waits for its tune job (the same file for every seed)
                if awaiting is not None:
                    awaiting.setdefault(str(e.path), []).append(f"{table.name} [{', '.join(f'{k}={v}' for k, v in labels.items())}]")
                break
            rid = run_id(config)
            spec = runs.setdefault(rid, RunSpec(rid, config, tags=run_tags(facts)))
            if table.name not in spec.tables:
                spec.tables.append(table.name)
            ids.append(rid)
        if not ids:
            continue
        paper = {"dataset": facts["dataset"], "method": facts["method"], **paper}
        cells.append(Cell(labels, facts, paper, ids))
    return Table(table, cells)


def run_tags(facts: dict[str, Any]) -> dict[str, str]:
    """A run's tags (metrics.json, MLflow, runs.csv): its facts less the table; the protocol only when not the
    published one, so the tags of every run from before eval.protocol existed are unchanged."""
    return {k: str(v) for k, v in facts.items()
            if k != "table" and not (k == "protocol" and v == "published")}


def load_grid(profile_name: str = "smoke", params_dir: Path = PARAMS_DIR, use_tuned: bool | None = None) -> Grid:
    """Expand params/ for one profile. Raises ConfigError (naming file and key) on any mistake.
    use_tuned: if given, overrides the profile's `use_tuned`; else $MDR_USE_TUNED does (1/true or 0/false), which
    the Snakefile sets from `--config use_tuned=true` so that every stage command resolves the same runs."""
    profile = load_profile(profile_name, params_dir)
    if use_tuned is None and os.environ.get("MDR_USE_TUNED", "").strip():
        use_tuned = os.environ["MDR_USE_TUNED"].strip().lower() in ("1", "true", "yes", "on")
    if use_tuned is not None:
        profile = profile.model_copy(update={"use_tuned": use_tuned})
    methods = load_methods(params_dir)
    names = profile.tables or sorted(p.stem for p in (params_dir / "tables").glob("*.yaml"))
    runs: dict[str, RunSpec] = {}
    awaiting: dict[str, list[str]] = {}
    tables = {name: expand_table(profile, methods, load_table(name, params_dir), runs, params_dir, awaiting)
              for name in names}
    # the recipes are imported already: validating the runs' dataset names did it
    facts = {d: DatasetFacts.of(d) for d in sorted({r.config.data.dataset for r in runs.values()})}
    return Grid(profile, methods, runs, tables, awaiting, Path(params_dir), facts)
