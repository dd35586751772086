"""One study's context: `TuningContext` (profile, dataset, method, regularizer, base config, storage and
study name, and the paths of its trial folders and results), `make_context` that builds it from params/,
`method_config` (the grid's resolved config of a method on a dataset, tuned or not), `trial_config` (the
base config with a trial's params and the held-out validation classes) and `default_storage` (the
journal file of a profile and dataset)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdr.config import ConfigError, RunConfig, validate_run_config
from mdr.grid import PARAMS_DIR, load_methods, load_profile, override_setting, resolve, set_path
from mdr.params_schema import TableDef
from mdr.tuning.space import loss_keys
from mdr.tuning.spec import TUNING_FILE, Distribution, ProfileTuning, TuningSpec, load_tuning

STORE_DIR = Path("optuna")
RUNS = Path("runs")
RESULTS = Path("results")


# ---- one study's context --------------------------------------------------------------------------

@dataclass
class TuningContext:
    profile: str
    dataset: str
    params_dir: Path
    spec: TuningSpec
    settings: ProfileTuning
    regularizer: str
    base: RunConfig  # the method's config for the dataset, seed 0, untuned
    storage: str  # a journal file path or a storage URL
    study_name: str
    method: str  # the tuned method (params/methods.yaml); its regularizer's search space is searched

    @property
    def space(self) -> dict[str, Distribution]:
        """The regularizer's search space and the base loss's (as `loss.<name>`), searched together."""
        loss = self.spec.loss_search_spaces.get(self.base.loss.name, {})
        return {**self.spec.search_spaces[self.regularizer], **loss_keys(loss)}

    def untuned_params(self) -> dict[str, Any]:
        """The base config's values of what the space searches: the regularizer's params (all of them: the
        space may search a function of some, as mdr's levels) and the loss's as `loss.<name>`."""
        loss = self.spec.loss_search_spaces.get(self.base.loss.name, {})
        return {**self.base.regularizer.params, **loss_keys({k: self.base.loss.params[k] for k in loss})}

    @property
    def validation_classes(self) -> int:
        return self.settings.datasets[self.dataset].validation_classes

    @property
    def trial_root(self) -> Path:
        return RUNS / self.profile / "tuning" / self.stem

    @property
    def stem(self) -> str:
        """<dataset>-<regularizer>: names this study's trial folders, tuned file, summary and plots."""
        return f"{self.dataset}-{self.regularizer}"

    def trial_dir(self, number: int) -> Path:
        return self.trial_root / f"trial-{number}"

    @property
    def results_dir(self) -> Path:
        return RESULTS / self.profile / "tuning"

    @property
    def experiment(self) -> str:
        return f"{self.profile}-tuning"  # MLflow experiment mdr-<profile>-tuning

    def study_attrs(self) -> dict[str, Any]:
        """What makes trials comparable; a study created with other values is refused on resume."""
        return {"profile": self.profile, "dataset": self.dataset, "method": self.method,
                "validation_classes": self.validation_classes,
                "search_space": {k: v.model_dump() for k, v in self.space.items()},
                "trial_settings": self.settings.set, "base_fingerprint": self.base.fingerprint()}


def method_config(profile: str, dataset: str, method: str, seed: int, params_dir: Path = PARAMS_DIR,
                  use_tuned: bool = False) -> tuple[RunConfig, dict[str, Any]]:
    """The grid's resolved config of `method` on `dataset` (what table1's cell trains), tuned or not."""
    prof = load_profile(profile, params_dir).model_copy(update={"use_tuned": use_tuned})
    methods = load_methods(params_dir)
    table = TableDef(name="tuning", title="tuning base", axes={"dataset": [dataset], "method": [method]},
                     rows=["dataset", "method"])
    source = f"params/tuning.yaml [profile {profile}, dataset {dataset}, method {method}, seed {seed}]"
    return resolve(prof, methods, table, {"dataset": dataset, "method": method}, seed, source, params_dir)


def default_storage(profile: str, dataset: str) -> str:
    return str(STORE_DIR / profile / f"{dataset}.journal")


def make_context(profile: str, dataset: str, params_dir: Path = PARAMS_DIR, storage: str | None = None,
                 study_name: str | None = None, method: str | None = None) -> TuningContext:
    """`method`: what to tune (default: params/tuning.yaml's `method`)."""
    params_dir = Path(params_dir)
    spec = load_tuning(params_dir)
    if profile not in spec.profiles:
        raise ConfigError(f"{params_dir / TUNING_FILE}: no tuning settings for profile {profile!r} "
                          f"(profiles: {', '.join(spec.profiles)})")
    settings = spec.profiles[profile]
    if dataset not in settings.datasets:
        raise ConfigError(f"{params_dir / TUNING_FILE}: profile {profile} has no tuning settings for dataset "
                          f"{dataset!r}; add `{dataset}: {{validation_classes: N}}` under profiles.{profile}.datasets "
                          f"(tunable: {', '.join(settings.datasets)})")
    method = method or spec.method
    base, facts = method_config(profile, dataset, method, 0, params_dir)
    fair = override_setting(load_profile(profile, params_dir), {**facts, "protocol": "fair"}, "data.validation_classes")
    held_out = settings.datasets[dataset].validation_classes
    if fair is not None and fair != held_out:
        raise ConfigError(f"{params_dir / TUNING_FILE}: profiles.{profile}.datasets.{dataset}.validation_classes is "
                          f"{held_out}, but the fair runs of {method} on {dataset} hold out {fair} "
                          f"({params_dir / 'profiles' / f'{profile}.yaml'}, `when: {{protocol: fair}}`); the tuned values must be "
                          f"chosen on the fair runs' validation classes: set both to the same number")
    regularizer = facts["regularizer"]
    if regularizer not in spec.search_spaces:
        raise ConfigError(f"{params_dir / TUNING_FILE}: method {method} uses regularizer {regularizer!r}, "
                          f"which has no search space (search_spaces: {', '.join(spec.search_spaces)})")
    return TuningContext(profile, dataset, params_dir, spec, settings, regularizer, base,
                         storage or default_storage(profile, dataset),
                         study_name or f"{profile}-{dataset}-{regularizer}", method)


def trial_config(ctx: TuningContext, reg_params: dict[str, Any], seed: int = 0,
                 loss_params: dict[str, Any] | None = None) -> RunConfig:
    """The base config with the trial's regularizer and loss params, the held-out validation classes and the
    profile's trial-only settings."""
    data = ctx.base.model_dump(mode="json")
    for dotted, value in ctx.settings.set.items():
        set_path(data, dotted, value)
    data["regularizer"]["params"].update(reg_params)
    data["loss"]["params"].update(loss_params or {})
    data["data"]["validation_classes"] = ctx.validation_classes
    data["seed"] = seed
    config = validate_run_config(data, f"tuning trial ({ctx.profile}/{ctx.dataset})")
    assert config.data.validation_classes > 0, "tuning must never select on the test classes"
    return config
