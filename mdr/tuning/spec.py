"""params/tuning.yaml: the pydantic models of the file (search spaces, per-profile settings), `load_tuning`
that reads and validates it with one-line messages (`yaml_error` for a syntax fault), `method_for` (the
method that tunes a regularizer), and the two errors of the package: `TuningError`, a problem the user
can fix, and `TrialFailed`, a trial fault that fails the trial but not the study."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mdr.config import ConfigError, _short_errors
from mdr.grid import PARAMS_DIR, load_methods

TUNING_FILE = "tuning.yaml"


class TuningError(RuntimeError):
    """A problem the user can fix (a corrupt or locked store, a changed study, nothing tuned yet)."""


class TrialFailed(Exception):
    """A trial fault that must not stop the study (diverged, out of memory); the trial is marked FAIL."""


# ---- params/tuning.yaml ---------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(Strict):
    type: Literal["int", "float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> "Distribution":
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log distribution needs low > 0")
        return self

    def suggest(self, trial: Any, name: str) -> float | int:
        if self.type == "int":
            return trial.suggest_int(name, low=int(self.low), high=int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, low=self.low, high=self.high, step=self.step, log=self.log)


class DatasetTuning(Strict):
    validation_classes: int = Field(gt=0, description="training classes held out for validation (never test classes)")


class ProfileTuning(Strict):
    n_trials: int = Field(gt=0)
    datasets: dict[str, DatasetTuning]
    tune: list[str] = Field(default_factory=list, description="logical datasets the tune_all target tunes")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted settings applied to trials only")
    sampler: dict[str, Any] = Field(default_factory=dict, description="TPESampler keyword arguments")
    pruner: dict[str, Any] = Field(default_factory=dict, description="MedianPruner keyword arguments")

    @model_validator(mode="after")
    def _listed(self) -> "ProfileTuning":
        missing = [d for d in self.tune if d not in self.datasets]
        if missing:
            raise ValueError(f"tune lists {missing}, which have no entry under datasets")
        return self


class TuningSpec(Strict):
    method: str
    search_spaces: dict[str, dict[str, Distribution]]
    # the base loss's knobs, searched together with the regularizer's (the trial's params `loss.<name>`), so
    # that a baseline (regularizer none) gets the same search and the same budget as a regularized method
    loss_search_spaces: dict[str, dict[str, Distribution]] = Field(default_factory=dict)
    profiles: dict[str, ProfileTuning]


def load_tuning(params_dir: Path = PARAMS_DIR) -> TuningSpec:
    path = Path(params_dir) / TUNING_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (the tuning settings)") from None
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error(path, e)) from None
    try:
        return TuningSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_short_errors(e)}") from None


def yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """One line: the file, the line and column of the fault, and what is wrong there."""
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    if context is not None and mark is not None and getattr(e, "context", None):
        # an unclosed bracket or quote is found lines later: point at where it was opened
        what = f"{e.context} opened here: {what} at line {mark.line + 1}, column {mark.column + 1}"
        mark = context
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: not valid YAML ({what}); fix the file there"


def tuned_regularizer(params_dir: Path = PARAMS_DIR) -> str:
    """The regularizer of tuning.yaml's method (what `tune_all` tunes), read from params/methods.yaml without
    resolving a run config (the Snakefile asks at every start; resolving imports torch)."""
    spec = load_tuning(params_dir)
    methods = load_methods(Path(params_dir))
    if spec.method not in methods:
        raise ConfigError(f"{Path(params_dir) / TUNING_FILE}: unknown method {spec.method!r}; allowed: "
                          f"{', '.join(methods)} (params/methods.yaml)")
    return methods[spec.method].regularizer


def method_for(regularizer: str, params_dir: Path = PARAMS_DIR) -> str:
    """The method that tunes `regularizer`: the one in params/methods.yaml with tuning.yaml's method's loss
    and this regularizer (mdr -> Triplet+MDR, lsd -> Triplet+LSD, ...)."""
    spec = load_tuning(params_dir)
    methods = load_methods(Path(params_dir))
    loss = methods[spec.method].loss
    for name, m in methods.items():
        if m.loss == loss and m.regularizer == regularizer:
            return name
    raise ConfigError(f"{Path(params_dir) / 'methods.yaml'}: no method with loss {loss!r} and regularizer "
                      f"{regularizer!r} to tune (tunable regularizers: {', '.join(spec.search_spaces)})")
