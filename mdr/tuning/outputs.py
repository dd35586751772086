"""What a study writes: the tuned params document (params/tuned/<profile>/<dataset>-<regularizer>.yaml,
`tuned_document`, `write_outputs`), the optimization-history and parameter-importance plots
(`write_plots`) and the summary with one row per trial (`summary_markdown`) under
results/<profile>/tuning/; `_fmt` formats a value for these and for the trial lines."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from mdr.grid import tuned_file
from mdr.tuning.context import TuningContext
from mdr.tuning.space import loss_keys, loss_params, regularizer_params
from mdr.tuning.trials import _state, is_interrupted, trial_counts


# ---- outputs --------------------------------------------------------------------------------------

def tuned_document(ctx: TuningContext, study: Any) -> dict[str, Any] | None:
    """params/tuned/<profile>/<dataset>-<regularizer>.yaml's content: the best trial's params; None without one."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    counts = trial_counts(study)
    params = best.user_attrs.get("regularizer_params") or regularizer_params(ctx.regularizer, best.params)
    loss = best.user_attrs.get("loss_params") or loss_params(best.params)
    baseline = next((t for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get("baseline") and _state(t) == "COMPLETE"), None)
    return {
        "profile": ctx.profile,
        "dataset": ctx.dataset,
        "trained_on": ctx.base.data.dataset,
        "method": ctx.method,
        "regularizer": {"name": ctx.regularizer, "params": params},
        **({"loss": {"name": ctx.base.loss.name, "params": loss}} if loss else {}),
        "search": dict(best.params),
        "study": {
            "name": ctx.study_name,
            "best_trial": best.number,
            "best_validation_recall_at_1": round(float(best.value), 6),
            "best_epoch": best.user_attrs.get("best_epoch"),
            "baseline_validation_recall_at_1": round(float(baseline.value), 6) if baseline is not None else None,
            "validation_classes": ctx.validation_classes,
            "finished_trials": counts["finished"],
            "complete": counts["complete"], "pruned": counts["pruned"], "failed": counts["failed"],
        },
    }


def write_outputs(ctx: TuningContext, study: Any) -> dict[str, Path]:
    from mdr.io import atomic_write_text

    out: dict[str, Path] = {}
    doc = tuned_document(ctx, study)
    if doc is not None:
        path = tuned_file(ctx.params_dir, ctx.profile, ctx.dataset, ctx.regularizer)
        header = (f"# Tuned {ctx.regularizer} settings for {ctx.dataset} in profile {ctx.profile}, written by\n"
                  f"# `python -m pipeline tune --profile {ctx.profile} --dataset {ctx.dataset} --method {ctx.method}` (study {ctx.study_name}).\n"
                  f"# Selected on {ctx.validation_classes} held-out training classes, never on test classes.\n"
                  f"# The grid applies regularizer.params (and loss.params to runs of this loss) to the runs of\n"
                  f"# eval.protocol fair, and to every run when use_tuned is on.\n")
        atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
        out["tuned"] = path
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    out.update(write_plots(ctx, study))
    summary = ctx.results_dir / f"{ctx.stem}.md"
    atomic_write_text(summary, summary_markdown(ctx, study, doc))
    out["summary"] = summary
    return out


def write_plots(ctx: TuningContext, study: Any) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = {}
    complete = [t for t in study.get_trials(deepcopy=False) if _state(t) == "COMPLETE"]
    for name, plot, need in (("history", ovm.plot_optimization_history, 1), ("importances", ovm.plot_param_importances, 2)):
        path = ctx.results_dir / f"{ctx.stem}-{name}.png"
        fig = None
        try:
            if len(complete) < need:
                raise ValueError(f"needs at least {need} completed trial{'s' if need > 1 else ''}; "
                                 f"the study has {len(complete)}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal" with few trials
                ax = plot(study)
            fig = (ax if not hasattr(ax, "figure") else ax.figure)
            if name == "history" and hasattr(ax, "set_ylabel"):
                ax.set_ylabel("validation Recall@1")
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
        except Exception as e:  # too few trials, no variation in a parameter, ...
            if fig is not None:
                plt.close(fig)
            fig, ax = plt.subplots(figsize=(7, 4.5))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{ctx.study_name}: no {name} plot yet\n{type(e).__name__}: {e}", ha="center",
                    va="center", wrap=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        out[name] = path
    return out


def summary_markdown(ctx: TuningContext, study: Any, doc: dict[str, Any] | None) -> str:
    counts = trial_counts(study)
    lines = [f"# Tuning {ctx.regularizer} on {ctx.dataset} ({ctx.profile} profile)", "",
             f"Study `{ctx.study_name}`: {ctx.method}, trained on `{ctx.base.data.dataset}` less its last "
             f"{ctx.validation_classes} training classes, which are the validation set (the test classes are never "
             f"used). TPE sampler, median pruning on per-epoch validation Recall@1; a trial's value is its best "
             f"validation Recall@1.", "",
             f"Trials: {counts['finished']} finished ({counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['failed']} failed), {counts['interrupted']} interrupted (retried).", ""]
    if doc is not None:
        s = doc["study"]
        base = s.get("baseline_validation_recall_at_1")
        best = {**doc["regularizer"]["params"], **loss_keys(doc.get("loss", {}).get("params", {}))}
        default = {**ctx.base.regularizer.params, **loss_keys(ctx.base.loss.params)}
        lines += [f"**Best**: trial {s['best_trial']}, validation R@1 {100 * s['best_validation_recall_at_1']:.2f} "
                  f"(epoch {s['best_epoch']}): " + ", ".join(f"{k} = {_fmt(v)}" for k, v in best.items())
                  + (f". The untuned defaults (the baseline trial): {100 * base:.2f}." if base is not None else "."),
                  f"Written to `{tuned_file(Path('params'), ctx.profile, ctx.dataset, ctx.regularizer)}`; the default is "
                  + ", ".join(f"{k} = {_fmt(default.get(k))}" for k in best) + ".", ""]
    lines += [f"![optimization history]({ctx.stem}-history.png) ![parameter importances]({ctx.stem}-importances.png)", "",
              "val R@1: a complete trial's best validation Recall@1 (at `epoch`); in brackets, the last value a pruned "
              "or failed trial reported. Levels: `num_levels` levels `spacing` apart, symmetric around 0.", "",
              "| trial | state | val R@1 | epoch | " + " | ".join(ctx.space) + " | note |",
              "|---:|---|---:|---:|" + "---:|" * len(ctx.space) + "---|"]
    for t in study.get_trials(deepcopy=False):
        state = "INTERRUPTED" if is_interrupted(t) else _state(t)
        if state in ("RUNNING", "WAITING"):
            continue
        if state == "COMPLETE":
            value = f"{100 * t.value:.2f}"
            epoch = str(t.user_attrs.get("best_epoch", ""))
        elif t.intermediate_values:
            step = max(t.intermediate_values)
            value, epoch = f"({100 * t.intermediate_values[step]:.2f})", str(step)
        else:
            value, epoch = "", ""
        note = t.user_attrs.get("failure", "") if state in ("FAIL", "INTERRUPTED") else ""
        if t.user_attrs.get("baseline"):
            note = ("baseline: the untuned defaults " + note).strip()
        if t.user_attrs.get("retry_of") is not None:
            note = (note + f" retry of trial {t.user_attrs['retry_of']}").strip()
        cells = [_fmt(t.params.get(k, "")) for k in ctx.space]
        lines.append(f"| {t.number} | {state} | {value} | {epoch} | " + " | ".join(cells) + f" | {note.replace('|', '/')[:200]} |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
