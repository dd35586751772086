# The DAG of every table and figure, built from params/ by one expansion (mdr/grid.py).
#   snakemake --cores 8                          # smoke profile: embedded data, CPU, minutes
#   snakemake --cores 8 --config profile=paper   # the authors' protocol on the four datasets (GPU)
# Stages: prepare -> train -> evaluate -> aggregate -> report; each is `python -m pipeline <stage>`.
import json
import math
import os
import re
import sys

sys.path.insert(0, workflow.basedir)

from mdr import layout
from mdr.config import ConfigError
from mdr.data.registry import prepared_dir
from mdr.grid_cache import load_grid

PROFILE = config.get("profile", "smoke")
if "use_tuned" in config:  # every stage command inherits it (mdr/grid.py load_grid)
    os.environ["MDR_USE_TUNED"] = str(bool(config["use_tuned"])).lower()
try:
    GRID = load_grid(PROFILE)
except ConfigError as error:
    sys.exit(f"error: {error}")
PY = sys.executable
RES = GRID.profile.resources
TABLES = list(GRID.tables)
KIND = {name: table.definition.kind for name, table in GRID.tables.items()}
RESULT_FILES = [str(f) for t in TABLES for f in layout.table_files(PROFILE, t, KIND[t]).values()]


def in_workdir(path):
    # Snakemake matches a target by its spelling: a file under the working directory is named relative to it,
    # so `snakemake params/tuned/smoke/cub200-mdr.yaml` finds rule tune (PARAMS_DIR is absolute)
    rel = os.path.relpath(os.path.abspath(path))
    return str(path) if rel.startswith("..") else rel


def names_regex(kind):
    names = [t for t in TABLES if KIND[t] == kind]
    return "|".join(names) if names else "(?!)"


def prepared_marker(run):
    c = GRID.runs[run].config.data
    return str(prepared_dir(c.root, c.dataset, c.image_size) / "READY")


def run_minutes(config):
    # a job's wall-time limit on a cluster (SLURM's --time): the run's iterations at the profile's rate
    # (its resources.minutes_per_1000_iterations, evaluations included), plus 10 minutes of start-up
    iterations = config.train.epochs * config.train.iterations_per_epoch
    return math.ceil(iterations / 1000 * RES.get("minutes_per_1000_iterations", 10)) + 10


def table_metrics(wildcards):
    return [str(layout.metrics_file(PROFILE, rid)) for cell in GRID.tables[wildcards.table].cells for rid in cell.run_ids]


wildcard_constraints:
    run="[^/]+",
    table="[^/]+",
    dataset="[^/]+",


TRACK_AT_END = GRID.profile.tracking == "at_end"


onstart:
    # One workflow tool per workspace: held until Snakemake exits; DVC's stages refuse meanwhile (mdr/locking.py)
    from mdr.locking import LockedError, hold_workspace_for_this_process

    try:
        hold_workspace_for_this_process()
    except LockedError as error:
        sys.exit(f"error: {error}")


if workflow.is_main_process:  # what this machine lacks for the profile, before any job (`snakemake -n` too)
    from mdr.needs import announce

    for line in announce(GRID):
        print(line, file=sys.stderr)

if not workflow.is_main_process:  # a cluster job of the Snakemake that holds the workspace lock on the login node
    from mdr.locking import HOLDER_ENV, REMOTE_JOB

    os.environ[HOLDER_ENV] = REMOTE_JOB


rule all:
    input:
        str(layout.report_file(PROFILE)),
        str(layout.page_file(PROFILE)),
        RESULT_FILES,
        f"results/{PROFILE}/metrics.json",
        [str(layout.tracked_marker(PROFILE))] if TRACK_AT_END else [],
        # the fair runs' tuned settings (rule tune; committed for the smoke profile, so not remade there)
        [in_workdir(f) for f in GRID.fair_tuned_files()],


rule prepare:
    output:
        "data/prepared/{dataset}-{size}px/READY",
    wildcard_constraints:
        size=r"\d+",  # dataset names may contain '-' (glyphs-closed)
    resources:
        mem_mb=4000,
    shell:
        "{PY} -m pipeline prepare {wildcards.dataset} --image-size {wildcards.size} --data-root data"


from mdr.pretrain import PRETRAIN_DATASET, PRETRAIN_IMAGE_SIZE


rule pretrain:
    # the embedded "ImageNet" start of a glyphnet backbone (mdr/pretrain.py); loading it checks the sidecar's
    # sha256, and a damaged file is removed there, so the next run of this rule rebuilds it
    input:
        str(prepared_dir("data", PRETRAIN_DATASET, PRETRAIN_IMAGE_SIZE) / "READY"),
    output:
        weights="data/pretrained/{backbone}.pt",
        sidecar="data/pretrained/{backbone}.json",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{PY} -m pipeline pretrain --backbone {wildcards.backbone} --data-root data --out {output.weights} --no-bars"


rule tracking_init:
    output:
        str(layout.tracking_ready(PROFILE)),
    shell:
        "{PY} -m pipeline tracking-init --profile {PROFILE} --marker {output}"


from mdr.jobs import jobs, pretrained_weights, runs_per_job


def weights_made_here(run_ids):
    # the model.weights files that the pretrain stage writes (under <data.root>/pretrained/)
    return sorted({w for r in run_ids if (w := pretrained_weights(GRID.runs[r].config))})


if runs_per_job(GRID) == 1:  # one job per run (the paper profile)

    rule train:
        input:
            data=lambda w: prepared_marker(w.run),
            tracking=str(layout.tracking_ready(PROFILE)),
            weights=lambda w: weights_made_here([w.run]),
            # a fair run's tuned settings: their content is in the run id, so their date is not (ancient)
            tuned=lambda w: [ancient(in_workdir(f)) for f in [GRID.tuned_input(w.run)] if f],
        output:
            f"runs/{PROFILE}/{{run}}/trained.json",
        params:
            # Every hyperparameter is in the run id's hash; the fingerprint makes Snakemake see it too.
            fingerprint=lambda w: GRID.runs[w.run].config.fingerprint(),
        threads: RES.get("threads", 1)
        resources:
            mem_mb=RES.get("mem_mb", 4000),
            gpu=RES.get("gpu", 0),
            runtime=lambda w: run_minutes(GRID.runs[w.run].config),
        shell:
            "{PY} -m pipeline train --profile {PROFILE} --run {wildcards.run} --no-bars"

    rule evaluate:
        input:
            f"runs/{PROFILE}/{{run}}/trained.json",
        output:
            f"runs/{PROFILE}/{{run}}/metrics.json",
        threads: RES.get("threads", 1)
        resources:
            mem_mb=RES.get("mem_mb", 4000),
            gpu=RES.get("gpu", 0),
        shell:
            "{PY} -m pipeline evaluate --profile {PROFILE} --run {wildcards.run}"

else:  # resources.runs_per_job > 1: one train and one evaluate rule per job of several runs (mdr/jobs.py)
    for JOB in jobs(GRID).values():

        rule:
            name:
                f"train_{JOB.job_id}"
            input:
                data=sorted({prepared_marker(r) for r in JOB.run_ids}),
                tracking=str(layout.tracking_ready(PROFILE)),
                weights=weights_made_here(JOB.run_ids),
                tuned=[ancient(in_workdir(f)) for f in sorted({GRID.tuned_input(r) for r in JOB.run_ids} - {None})],
            output:
                [str(layout.trained_marker(PROFILE, r)) for r in JOB.run_ids],
            params:
                fingerprint=" ".join(GRID.runs[r].config.fingerprint() for r in JOB.run_ids),
                runs=" ".join(f"--run {r}" for r in JOB.run_ids),
            threads: RES.get("threads", 1)
            resources:
                mem_mb=RES.get("mem_mb", 4000),
                gpu=RES.get("gpu", 0),
                runtime=sum(run_minutes(GRID.runs[r].config) for r in JOB.run_ids),
            shell:
                "{PY} -m pipeline train --profile {PROFILE} {params.runs} --no-bars"

        rule:
            name:
                f"evaluate_{JOB.job_id}"
            input:
                [str(layout.trained_marker(PROFILE, r)) for r in JOB.run_ids],
            output:
                [str(layout.metrics_file(PROFILE, r)) for r in JOB.run_ids],
            params:
                runs=" ".join(f"--run {r}" for r in JOB.run_ids),
            threads: RES.get("threads", 1)
            resources:
                mem_mb=RES.get("mem_mb", 4000),
                gpu=RES.get("gpu", 0),
            shell:
                "{PY} -m pipeline evaluate --profile {PROFILE} {params.runs}"


rule aggregate_table:
    input:
        table_metrics,
    output:
        csv=f"results/{PROFILE}/{{table}}.csv",
        md=f"results/{PROFILE}/{{table}}.md",
        tex=f"results/{PROFILE}/{{table}}.tex",
    wildcard_constraints:
        table=names_regex("table"),
    shell:
        "{PY} -m pipeline aggregate --profile {PROFILE} --table {wildcards.table}"


rule aggregate_figure:
    input:
        table_metrics,
    output:
        csv=f"results/{PROFILE}/{{table}}.csv",
        md=f"results/{PROFILE}/{{table}}.md",
        png=f"results/{PROFILE}/{{table}}.png",
    wildcard_constraints:
        table=names_regex("figure"),
    shell:
        "{PY} -m pipeline aggregate --profile {PROFILE} --table {wildcards.table}"


rule report:
    input:
        RESULT_FILES,
    output:
        str(layout.report_file(PROFILE)),
        str(layout.page_file(PROFILE)),  # index.html: the report, tables, figures and run configs on one page
    shell:
        "{PY} -m pipeline report --profile {PROFILE}"


rule dvc_metrics:
    # each table cell's headline metric, keyed by its labels (for `dvc metrics show/diff`)
    input:
        RESULT_FILES,
        str(layout.report_file(PROFILE)),
    output:
        f"results/{PROFILE}/metrics.json",
    shell:
        "{PY} -m pipeline dvc-metrics --profile {PROFILE} " + " ".join(TABLES)


rule track:
    # profiles with `tracking: at_end`: every run and the tables into MLflow in one process (idempotent)
    input:
        [str(layout.metrics_file(PROFILE, rid)) for rid in GRID.runs],
        str(layout.report_file(PROFILE)),
        f"results/{PROFILE}/metrics.json",
        tracking=str(layout.tracking_ready(PROFILE)),
    output:
        str(layout.tracked_marker(PROFILE)),
    shell:
        "{PY} -m pipeline track-rebuild --profile {PROFILE} --marker {output}"


# ---- tuning (Optuna): the fair runs' studies are in the default target (tune_fair); `tune_all` runs the
# profile's own list (params/tuning.yaml `tune`) ----
from mdr.grid import PARAMS_DIR, tuned_file
from mdr.tuning import load_tuning, method_config, method_for, tuned_regularizer

try:
    TUNING = load_tuning()
    TUNE_SETTINGS = TUNING.profiles.get(PROFILE)
    TUNED_REGULARIZER = tuned_regularizer() if TUNE_SETTINGS and TUNE_SETTINGS.tune else "mdr"
except ConfigError as error:
    sys.exit(f"error: {error}")


def weights_made_here_for_tuning(wildcards):
    # the pretrained start of the tuned method's backbone, when the pretrain stage makes it
    w = pretrained_weights(method_config(PROFILE, wildcards.dataset, method_for(wildcards.regularizer), 0)[0])
    return [w] if w else []


def tune_prepared_marker(wildcards):
    c = method_config(PROFILE, wildcards.dataset, method_for(wildcards.regularizer), 0)[0].data
    return str(prepared_dir(c.root, c.dataset, c.image_size) / "READY")


def tune_inputs(wildcards):
    return {"data": tune_prepared_marker(wildcards), "tracking": str(layout.tracking_ready(PROFILE)),
            "weights": weights_made_here_for_tuning(wildcards)}


# A tuned file that exists is a source, not an output: rule tune's pattern leaves it out. Snakemake reruns a job
# whose inputs another job of the DAG remakes, ancient() or not (a fresh clone prepares its data anew), and
# reruns a job whose set of inputs changed since its last run, so neither ancient inputs nor declaring none for
# an existing file keeps the committed studies from being tuned again. To tune again, delete the file.
_TUNED_HERE = sorted(p.stem for p in tuned_file(PARAMS_DIR, PROFILE, "x", "y").parent.glob("*.yaml"))
_NOT_TUNED_YET = "(?!(?:" + "|".join(re.escape(n) for n in _TUNED_HERE) + r")\.yaml$)" if _TUNED_HERE else ""


rule tune:
    # a tuned file is made when it is missing (the smoke profile's are committed; docs/protocols.md)
    input:
        unpack(tune_inputs),
    # params/tuned/<profile>/<dataset>-<regularizer>.yaml; the method is the tuning method's loss with that
    # regularizer (mdr -> Triplet+MDR, lsd -> Triplet+LSD, ...)
    output:
        in_workdir(tuned_file(PARAMS_DIR, PROFILE, "{dataset}", "{regularizer}")),
    wildcard_constraints:
        dataset=_NOT_TUNED_YET + "[^/-]+",
    params:
        method=lambda w: method_for(w.regularizer),
        settings=lambda w: json.dumps(
            {
                "method": method_for(w.regularizer),
                "spaces": {k: {n: d.model_dump() for n, d in v.items()} for k, v in TUNING.search_spaces.items()},
                "loss_spaces": {k: {n: d.model_dump() for n, d in v.items()} for k, v in TUNING.loss_search_spaces.items()},
                "profile": TUNE_SETTINGS.model_dump() if TUNE_SETTINGS else None,
            },
            sort_keys=True,
        ),
    threads: RES.get("threads", 1)
    resources:
        mem_mb=RES.get("mem_mb", 4000),
        gpu=RES.get("gpu", 0),
        # every trial at most a full run (pruned ones stop early)
        runtime=lambda w: TUNE_SETTINGS.n_trials * run_minutes(
            method_config(PROFILE, w.dataset, method_for(w.regularizer), 0)[0]),
    shell:
        "{PY} -m pipeline tune --profile {PROFILE} --dataset {wildcards.dataset} --method {params.method} --no-bars"


rule tune_fair:
    # the studies whose tuned settings the fair runs read (the `all` target includes them)
    input:
        [in_workdir(f) for f in GRID.fair_tuned_files()],


rule tune_all:
    input:
        [in_workdir(tuned_file(PARAMS_DIR, PROFILE, d, TUNED_REGULARIZER)) for d in (TUNE_SETTINGS.tune if TUNE_SETTINGS else [])],
