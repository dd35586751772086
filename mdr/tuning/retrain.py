"""Retraining the best configuration on all training classes: `retrain_best` trains the tuned config (the
grid's run under use_tuned) for the profile's seeds, evaluates it on the test classes once, and
`best_test_markdown` compares it with the default config's runs in
results/<profile>/tuning/<dataset>-<regularizer>-best-test.md."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from mdr.config import RunConfig
from mdr.grid import PARAMS_DIR, load_methods, load_profile, run_id, run_tags, tuned_file
from mdr.tuning.context import RESULTS, method_config
from mdr.tuning.outputs import _fmt
from mdr.tuning.spec import TuningError, load_tuning


# ---- retraining the best configuration on all training classes ------------------------------------

def retrain_best(profile: str, dataset: str, *, params_dir: Path = PARAMS_DIR, seeds: list[int] | None = None,
                 tracking: bool = True, echo: Callable[[str], None] | None = print, progress: bool = False,
                 method: str | None = None) -> Path:
    """Train the tuned config (the grid's run under use_tuned: all training classes, the test split for
    evaluation) for the profile's seeds, evaluate it, and compare with the default config's runs where
    they have been evaluated. Writes results/<profile>/tuning/<dataset>-<regularizer>-best-test.md."""
    from mdr import layout
    from mdr.engine import train
    from mdr.evaluation import evaluate_run
    from mdr.io import atomic_write_text

    params_dir = Path(params_dir)
    spec = load_tuning(params_dir)
    method = method or spec.method
    prof = load_profile(profile, params_dir)
    regularizer = method_config(profile, dataset, method, 0, params_dir)[1]["regularizer"]
    path = tuned_file(params_dir, profile, dataset, regularizer)
    if not path.exists():
        raise TuningError(f"{path} does not exist: run `python -m pipeline tune --profile {profile} --dataset {dataset} "
                          f"--method {method}` first")
    tuned_doc = yaml.safe_load(path.read_text())
    say = echo or (lambda s: None)
    rows = []
    for seed in seeds or prof.seeds:
        config, facts = method_config(profile, dataset, method, seed, params_dir, use_tuned=True)
        default, _ = method_config(profile, dataset, method, seed, params_dir, use_tuned=False)
        assert config.data.validation_classes == 0
        rid = run_id(config)
        run_dir = layout.run_dir(profile, rid)
        metrics_path = layout.metrics_file(profile, rid)
        if not metrics_path.exists():
            callbacks = []
            if tracking:
                from mdr.describe import describe_config
                from mdr.tracking import MLflowLogger

                name, tags = describe_config(config.model_dump(mode="json"), load_methods(Path(params_dir)),
                                             config.fingerprint())
                callbacks.append(MLflowLogger(profile, rid, {**tags, "stands_in_for": str(facts["dataset"]), "tuned": "true",
                                                             "study": tuned_doc["study"]["name"]}, f"tuned {name}"))
            say(f"[retrain] {rid}: training the tuned config on all training classes (seed {seed})")
            summary = train(config, run_dir, resume=True, progress=progress, echo=echo is not None, callbacks=callbacks).summary
            atomic_write_text(layout.trained_marker(profile, rid),
                              json.dumps({"run": rid, "fingerprint": config.fingerprint(), **summary}, indent=1) + "\n")
            metrics = {"run": rid, "tags": run_tags(facts), **evaluate_run(config, run_dir)}
            atomic_write_text(metrics_path, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            if tracking:
                from mdr.tracking import log_evaluation

                log_evaluation(profile, rid, metrics, [metrics_path, run_dir / "config.yaml", run_dir / "history.json"])
        tuned_metrics = json.loads(metrics_path.read_text())
        default_id = run_id(default)
        default_path = layout.metrics_file(profile, default_id)
        default_metrics = json.loads(default_path.read_text()) if default_path.exists() else None
        rows.append((seed, rid, tuned_metrics, default_id, default_metrics))
    out = RESULTS / profile / "tuning" / f"{dataset}-{regularizer}-best-test.md"
    atomic_write_text(out, best_test_markdown(profile, dataset, tuned_doc, rows, config))
    say(f"[retrain] wrote {out}")
    return out


def best_test_markdown(profile: str, dataset: str, tuned_doc: dict[str, Any], rows: list[tuple], config: RunConfig) -> str:
    import numpy as np

    ks = list(config.eval.ks)
    keys = [f"recall_at_{k}" for k in ks]
    keys = [k for k in keys if all(k in r[2]["best"] for r in rows)]
    header = "| config | seed | run | " + " | ".join(k.replace("recall_at_", "R@") for k in keys) + " |"
    lines = [f"# Tuned vs default {tuned_doc['regularizer']['name']} on {dataset} ({profile} profile): test Recall@K", "",
             f"Tuned on validation classes (study `{tuned_doc['study']['name']}`, best validation R@1 "
             f"{100 * tuned_doc['study']['best_validation_recall_at_1']:.2f}), then retrained on all training classes "
             f"and tested once on the test classes. Best epoch on the test split, as in the grid's tables.", "",
             "Tuned: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in tuned_doc["regularizer"]["params"].items()), "",
             header, "|---|---:|---|" + "---:|" * len(keys)]
    tuned_vals, default_vals = [], []
    for seed, rid, tuned, did, default in rows:
        tuned_vals.append([tuned["best"][k] for k in keys])
        lines.append(f"| tuned | {seed} | `{rid}` | " + " | ".join(f"{100 * tuned['best'][k]:.2f}" for k in keys) + " |")
        if default is not None:
            default_vals.append([default["best"].get(k, float("nan")) for k in keys])
            lines.append(f"| default | {seed} | `{did}` | " + " | ".join(f"{100 * default['best'].get(k, float('nan')):.2f}" for k in keys) + " |")
        else:
            lines.append(f"| default | {seed} | `{did}` | " + " | ".join("not evaluated" for _ in keys) + " |")
    for name, vals in (("tuned", tuned_vals), ("default", default_vals)):
        if vals:
            a = 100 * np.asarray(vals)
            lines.append(f"| **{name} mean ± std** | {len(vals)} seeds | | " + " | ".join(
                f"{m:.2f} ± {s:.2f}" for m, s in zip(a.mean(axis=0), a.std(axis=0))) + " |")
    if all(r[1] == r[3] for r in rows):
        lines += ["", "The best trial is the untuned default configuration: both rows are the same runs."]
    elif not default_vals:
        lines += ["", "The default runs have not been evaluated yet (`snakemake` or `python -m pipeline train/evaluate`)."]
    return "\n".join(lines) + "\n"
