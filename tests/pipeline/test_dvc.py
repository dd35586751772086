"""DVC as a user drives it: a temporary git repository holding the project (mdr/, pipeline/, a shrunken
params/ and the dvc.yaml generated for it), then real `dvc repro`, `dvc exp run -S`, `dvc metrics show`
and `dvc plots show`. The profile is shrunk to two runs (Triplet and Triplet+MDR, one seed, 2 epochs of
3 iterations) in two tables, one of which has no MDR run."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.dvc_yaml import render
from tests.pipeline.test_workflow import tiny_params

ROOT = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]
# Guards against a hang, not speed limits: a loaded machine (the suite beside a full reproduce) ran a step of
# this module past 300 s where it takes ~60 s alone, so they are far above any honest duration.
HANG_S = 900
pytestmark = pytest.mark.xdist_group("dvc")  # one worker, in file order: the tests share one repository

TABLES = {
    "pair": {"name": "pair", "title": "Triplet with and without MDR", "axes": {
        "dataset": ["cub200"], "method": ["Triplet", "Triplet+MDR"]},
        "rows": ["method"], "columns": ["dataset"], "metrics": ["recall_at_1"], "report_epoch": "best"},
    "baselines": {"name": "baselines", "title": "Triplet alone", "axes": {"dataset": ["cub200"], "method": ["Triplet"]},
                  "rows": ["method"], "columns": ["dataset"], "metrics": ["recall_at_1"], "report_epoch": "best"},
}


def shrink(params: Path) -> None:
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["seeds"] = [0]
    profile["tables"] = list(TABLES)
    # one job per run: these tests name the stages train@<run>; jobs of several runs: test_jobs.py
    profile["resources"]["runs_per_job"] = 1
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    for name, table in TABLES.items():
        (params / "tables" / f"{name}.yaml").write_text(yaml.safe_dump(table, sort_keys=False))


def set_mdr_weight(params: Path, weight: float) -> None:
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    override = next(o for o in profile["overrides"] if o["when"] == {"regularizer": "mdr"})
    override["set"]["regularizer"]["params"]["weight"] = weight
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def generate(repo: Path) -> None:
    (repo / "dvc.yaml").write_text(render("smoke", root=repo, params_dir=repo / "params"))


def env(repo: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("MDR_PARAMS", "PYTHONPATH")}
    # `python` in the stage commands is this interpreter; the repository's own mdr/ and params/ are used
    e.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
             MLFLOW_TRACKING_URI=f"sqlite:///{repo.parent / 'mlflow.db'}", MDR_CACHE=str(repo.parent / "cache"),
             DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    return e


def sh(repo: Path, *cmd: str, check: bool = True, timeout: int = 2 * HANG_S) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), cwd=repo, env=env(repo), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, *DVC, *args, check=check)


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message, "--allow-empty")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, glyphs_36px):
    return make_repo(tmp_path_factory.mktemp("dvc") / "repo", glyphs_36px)


def make_repo(repo: Path, glyphs: Path | None = None) -> Path:
    """A git + DVC repository holding the project with the shrunken params/ and its dvc.yaml; the embedded
    dataset as `prepare` writes it copied in from `glyphs` (saves its rendering; the prepare stage still runs
    and checks it)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("mdr", "pipeline"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    for name in (".gitignore", "Snakefile"):
        shutil.copy(ROOT / name, repo / name)
    tiny_params(repo / "params")
    shrink(repo / "params")
    if glyphs is not None:
        shutil.copytree(glyphs, repo / "data" / "prepared" / "glyphs-36px")
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "config", "core.autostage", "false")
    generate(repo)
    commit(repo, "project")
    return repo


def run_ids(repo: Path) -> dict[str, str]:
    """regularizer name -> run id, from the generated dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {rid.split("-")[3]: rid for rid in stages["train"]["foreach"]}


def built(repo: Path) -> subprocess.CompletedProcess:
    return dvc(repo, "repro")


@pytest.mark.slow
def test_dvc_repro_runs_the_profile_and_a_second_repro_does_nothing(repo):
    ids = run_ids(repo)
    assert sorted(ids) == ["mdr", "none"]
    first = built(repo)
    assert ran(first) == {
        "grid", "prepare@glyphs-36px", "tracking_init", *(f"{s}@{r}" for s in ("train", "evaluate") for r in ids.values()),
        "aggregate-pair", "aggregate-baselines", "report", "metrics", "track"}
    results = repo / "results" / "smoke"
    assert "Triplet+MDR" in (results / "pair.md").read_text() and (results / "REPORT.md").exists()
    for rid in ids.values():
        assert (repo / "runs" / "smoke" / rid / "best.pt").exists()
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}

    start = time.perf_counter()
    second = dvc(repo, "repro")
    print(f"no-op dvc repro: {time.perf_counter() - start:.1f}s")
    assert ran(second) == set()
    assert "Data and pipelines are up to date." in second.stdout
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_dvc_metrics_and_plots_show(repo, tmp_path):
    built(repo)
    metrics = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    data = next(iter(metrics.values()))["data"]["results/smoke/metrics.json"]["data"]  # the workspace
    assert data["runs"] == {"finished": 2, "total": 2}
    assert 0 <= data["pair"]["Triplet+MDR"]["cub200"]["recall_at_1"] <= 100
    assert set(data["baselines"]) == {"Triplet"}
    assert "pair.Triplet+MDR.cub200.recall_at_1" in dvc(repo, "metrics", "show").stdout

    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    assert {"pair-loss", "pair-recall_at_1", "baselines-loss", "baselines-recall_at_1"} <= set(plots["data"])
    values = plots["data"]["pair-recall_at_1"][0]["content"]["data"]["values"]
    assert sorted({(v["epoch"], "mdr" in v["filename"]) for v in values}) == [(1, False), (1, True), (2, False), (2, True)]
    html = dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists(), html.stdout


@pytest.mark.slow
def test_changing_mdr_lambda_reruns_only_the_mdr_run_and_its_tables(repo):
    built(repo)
    commit(repo, "built")
    old = run_ids(repo)
    set_mdr_weight(repo / "params", 0.3)
    generate(repo)
    new = run_ids(repo)
    assert new["none"] == old["none"] and new["mdr"] != old["mdr"]  # lambda is in the MDR run's hash only

    start = time.perf_counter()
    result = dvc(repo, "repro")
    print(f"dvc repro after changing MDR's lambda: {time.perf_counter() - start:.1f}s")
    assert ran(result) == {"grid", f"train@{new['mdr']}", f"evaluate@{new['mdr']}", "aggregate-pair", "report", "metrics",
                           "track"}
    for stage in (f"train@{old['none']}", "aggregate-baselines", "prepare@glyphs-36px", "tracking_init"):
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    assert (repo / "runs" / "smoke" / old["mdr"] / "best.pt").exists()  # the old run is kept, not deleted
    config = yaml.safe_load((repo / "runs" / "smoke" / new["mdr"] / "config.yaml").read_text())
    assert config["regularizer"]["params"]["weight"] == 0.3
    assert new["mdr"] in (repo / "results" / "smoke" / "pair.csv").read_text()
    assert ran(dvc(repo, "repro")) == set()
    commit(repo, "lambda 0.3")


@pytest.mark.slow
def test_dvc_exp_run_with_a_changed_parameter(repo):
    built(repo)
    commit(repo, "before the experiment")
    result = dvc(repo, "exp", "run", "-S", "params/tables/baselines.yaml:report_epoch=final")
    # the table's own file is a param of its aggregate stage: only it and what reads it rerun
    assert {"grid", "aggregate-baselines", "report"} <= ran(result) <= {"grid", "aggregate-baselines", "report", "metrics",
                                                                        "track"}
    assert "final epoch" in (repo / "results" / "smoke" / "baselines.md").read_text()
    assert yaml.safe_load((repo / "params" / "tables" / "baselines.yaml").read_text())["report_epoch"] == "final"
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert len(experiments) == 1
    params = json.dumps(experiments[0])
    assert '"report_epoch": "final"' in params
    sh(repo, "git", "checkout", "--", ".")  # back to the committed workspace
    dvc(repo, "checkout")


PROFILE = "params/profiles/smoke.yaml"
LAMBDA = "overrides.0.set.regularizer.params.weight"  # MDR's lambda: the smoke profile's first override


def exp_run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "pipeline", "exp-run", *args, check=check)


def experiments(repo: Path) -> list[dict]:
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    return [e for rev in shown for e in (rev.get("experiments") or [])]


@pytest.mark.slow
def test_exp_run_with_a_parameter_that_changes_the_runs(repo):
    """MDR's lambda defines runs: plain `dvc exp run -S` stops at the grid stage and says what to use;
    `pipeline exp-run -S` applies it, regenerates dvc.yaml and records an experiment that trains only
    the new MDR run."""
    built(repo)
    commit(repo, "before the lambda experiment")
    old = run_ids(repo)
    plain = dvc(repo, "exp", "run", "-S", f"{PROFILE}:{LAMBDA}=0.2", check=False)
    assert plain.returncode != 0 and ran(plain) == {"grid"}
    assert "python -m pipeline exp-run -S" in plain.stdout + plain.stderr
    sh(repo, "git", "checkout", "--", ".")

    result = exp_run(repo, "-S", f"{LAMBDA}=0.2", "-n", "lambda-0.2")
    new = run_ids(repo)
    assert new["none"] == old["none"] and new["mdr"] != old["mdr"]
    assert "dvc.yaml regenerated: 4 stage(s) added or removed" in result.stdout
    assert ran(result) == {"grid", f"train@{new['mdr']}", f"evaluate@{new['mdr']}", "aggregate-pair", "report", "metrics",
                           "track"}
    config = yaml.safe_load((repo / "runs" / "smoke" / new["mdr"] / "config.yaml").read_text())
    assert config["regularizer"]["params"]["weight"] == 0.2
    assert new["mdr"] in (repo / "results" / "smoke" / "pair.csv").read_text()
    [experiment] = [e for e in experiments(repo) if e.get("name") == "lambda-0.2"]
    assert '"weight": 0.2' in json.dumps(experiment)
    sh(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout")


@pytest.mark.slow
def test_exp_run_queue_keeps_the_workspace(repo):
    """--queue: the queued experiment has its own params and dvc.yaml; the workspace is left as it was."""
    before = {f: (repo / f).read_text() for f in (PROFILE, "dvc.yaml")}
    exp_run(repo, "-S", f"{LAMBDA}=0.25", "-n", "lambda-0.25", "--queue")
    assert {f: (repo / f).read_text() for f in before} == before
    dvc(repo, "queue", "start")
    deadline = time.time() + 600
    while "lambda-0.25" not in {e.get("name") for e in experiments(repo)} or \
            "Running" in dvc(repo, "queue", "status").stdout or "Queued" in dvc(repo, "queue", "status").stdout:
        assert time.time() < deadline, dvc(repo, "queue", "status").stdout
        time.sleep(2)
    status = dvc(repo, "queue", "status").stdout
    assert "Failed" not in status, status + dvc(repo, "queue", "logs", "lambda-0.25", check=False).stdout
    [experiment] = [e for e in experiments(repo) if e.get("name") == "lambda-0.25"]
    assert '"weight": 0.25' in json.dumps(experiment)
    # it ran in a copy of the repository, which has no runs/ (checkpoints are not DVC outputs): every run
    # was trained again there, as the README says
    logs = dvc(repo, "queue", "logs", "lambda-0.25").stdout
    assert f"train@{run_ids(repo)['none']}" in ran(subprocess.CompletedProcess([], 0, logs, ""))


def test_exp_run_refuses_a_bad_set_and_changes_nothing(repo):
    files = [repo / PROFILE, repo / "dvc.yaml"]
    before = [f.read_text() for f in files]
    typo = LAMBDA.replace("weight", "wieght")
    cases = {
        f"{typo}=0.2": "Could not override",  # a key that does not exist
        f"+{typo}=0.2": "wieght: unknown key",  # added, but MDR has no such parameter
        "defaults.train.epochs=0": "train.epochs: Input should be greater than 0",
        "params/nosuch.yaml:seeds=[0]": "params/nosuch.yaml does not exist",
        "seeds": "expected [FILE:]KEY=VALUE",
    }
    for spec, reason in cases.items():
        result = exp_run(repo, "-S", spec, check=False)
        assert result.returncode == 2, (spec, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and reason in result.stderr, (spec, result.stderr)
        assert "running: " not in result.stdout  # dvc was never called
        assert [f.read_text() for f in files] == before, spec


def check(repo: Path, monkeypatch, capsys) -> tuple[int, str]:
    """`python -m pipeline dvc-yaml --check` in the repository, in this process (no second torch import)."""
    import mdr.grid
    from pipeline.dvc_yaml import main

    monkeypatch.chdir(repo)
    monkeypatch.setattr(mdr.grid, "PARAMS_DIR", repo / "params")
    capsys.readouterr()
    code = main(["--check"])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_a_stale_dvc_yaml_is_caught_before_any_job(repo, monkeypatch, capsys):
    built(repo)
    params = repo / "params" / "profiles" / "smoke.yaml"
    saved = params.read_text()
    profile = yaml.safe_load(saved)
    profile["defaults"]["train"]["epochs"] = 3
    params.write_text(yaml.safe_dump(profile, sort_keys=False))
    try:
        code, err = check(repo, monkeypatch, capsys)
        assert code == 1
        assert "dvc.yaml is out of date with params/ (profile smoke)" in err
        assert "python -m pipeline dvc-yaml --profile smoke" in err
        assert "stages params/ now adds: evaluate@glyphs-smallcnn-triplet-mdr" in err
        # `dvc repro` (and `dvc exp run -S ...`) on the stale file stops at the grid stage, before any job
        result = dvc(repo, "repro", check=False)
        assert result.returncode != 0
        assert ran(result) == {"grid"}
        assert "dvc.yaml is out of date with params/" in result.stdout + result.stderr
    finally:
        params.write_text(saved)
    assert check(repo, monkeypatch, capsys)[0] == 0


@pytest.mark.slow
def test_snakemake_touch_adopts_what_dvc_built(repo):
    """After `dvc repro`, `snakemake --touch` records the outputs, and Snakemake has nothing to do."""
    built(repo)
    smk = [sys.executable, "-m", "snakemake", "--cores", "1"]
    sh(repo, *smk, "--touch")
    dry = sh(repo, *smk, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_committed_dvc_yaml_matches_params():
    """The dvc.yaml in the repository is what `python -m pipeline dvc-yaml` gives from params/ now."""
    path = ROOT / "dvc.yaml"
    assert path.exists(), "dvc.yaml missing: run `python -m pipeline dvc-yaml`"
    from mdr.grid import PARAMS_DIR

    if PARAMS_DIR.resolve() != (ROOT / "params").resolve():
        pytest.skip("MDR_PARAMS points to another params/ folder; the committed dvc.yaml describes the "
                    "repository's params/ (unset MDR_PARAMS to run this check)")
    assert path.read_text() == render("smoke", root=ROOT), (
        "dvc.yaml is out of date with params/: run `python -m pipeline dvc-yaml` and commit it")


@pytest.mark.slow
def test_dvc_repro_refuses_to_run_while_snakemake_builds_the_workspace(tmp_path):
    from tests.pipeline.test_locking import exclusively_held, wait_for

    work = make_repo(tmp_path / "repo")
    snakemake = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(work / "Snakefile"), "--cores", "2"],
                                 cwd=work, env=env(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
    try:
        wait_for(lambda: exclusively_held(work / "runs" / ".workspace.lock"), snakemake, seconds=HANG_S)
        refused = dvc(work, "repro", check=False)
        ended = snakemake.poll()
    finally:
        # The point is made; no need to build the tables. The whole group, so a running job does not keep
        # Snakemake waiting for it (minutes on a loaded machine).
        os.killpg(snakemake.pid, signal.SIGTERM)
        log, _ = snakemake.communicate(timeout=HANG_S)
    assert ended is None, f"snakemake ended (exit {ended}) before dvc was refused:\n{log[-3000:]}"
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert f"error: the workspace {work} is in use by pid {snakemake.pid} (" in out and "Snakemake is building it" in out
    assert ran(refused) == {"grid"} and not (work / "dvc.lock").exists()  # its first stage stopped it


@pytest.mark.slow
def test_forget_retrains_exactly_one_run_with_dvc_and_with_snakemake(repo):
    work = repo  # the module's repository, built by the tests before this one (or here, run alone)
    built(work)
    ids = run_ids(work)
    mdr_run = work / "runs" / "smoke" / ids["mdr"]
    other = (work / "runs" / "smoke" / ids["none"] / "checkpoint.pt").stat().st_mtime_ns
    baselines = (work / "results" / "smoke" / "baselines.md").stat().st_mtime_ns

    def forget() -> None:
        out = sh(work, sys.executable, "-m", "pipeline", "forget", "--run", ids["mdr"])
        assert f"deleted runs/smoke/{ids['mdr']}" in out.stdout and "deleted results/smoke/pair.md" in out.stdout
        assert not mdr_run.exists() and not (work / "results" / "smoke" / "pair.md").exists()

    forget()
    again = dvc(work, "repro")
    assert ran(again) == {f"train@{ids['mdr']}", f"evaluate@{ids['mdr']}", "aggregate-pair", "report", "metrics", "track"}
    assert (mdr_run / "metrics.json").exists() and "Triplet+MDR" in (work / "results" / "smoke" / "pair.md").read_text()

    snakemake = [sys.executable, "-m", "snakemake", "-s", str(work / "Snakefile"), "--cores", "2"]
    sh(work, *snakemake, "--touch")  # adopt what DVC built (README: keeping the two records in step)
    forget()
    retrained = sh(work, *snakemake)
    jobs = {line.split()[0]: int(line.split()[1]) for line in retrained.stderr.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert jobs.get("train") == 1 and jobs.get("evaluate") == 1 and jobs.get("aggregate_table") == 1, retrained.stderr
    assert (mdr_run / "metrics.json").exists() and "Triplet+MDR" in (work / "results" / "smoke" / "pair.md").read_text()
    assert (work / "runs" / "smoke" / ids["none"] / "checkpoint.pt").stat().st_mtime_ns == other  # not retrained
    assert (work / "results" / "smoke" / "baselines.md").stat().st_mtime_ns == baselines
