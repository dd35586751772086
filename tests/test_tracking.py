"""MLflow side channel: concurrent writers, rebuilding the store from run folders, a real tracking server."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from mdr import tracking
from tests.conftest import tiny_config
from tests.postgres import free_port

WRITERS = 8
EPOCHS = 12


def _records(seed: int) -> list[dict]:
    return [{"epoch": e, "iteration": 10 * e, "loss": 1.0 / (e + seed), "lr": 1e-3, "recall_at_1": 0.1 * e / EPOCHS,
             "recall_at_2": 0.2 * e / EPOCHS} for e in range(1, EPOCHS + 1)]


def _evaluation(rid: str, seed: int) -> dict:
    return {"run": rid, "tags": {"method": "Triplet+MDR", "dataset": "cub200"}, "best_epoch": EPOCHS,
            "best": {"recall_at_1": 0.5 + seed / 100, "map_at_r": 0.2}, "final": {"recall_at_1": 0.49, "map_at_r": 0.19}}


def fake_run(profile: str, rid: str, seed: int, run_dir: Path, data_root: Path) -> list[str]:
    """What `pipeline train` + `pipeline evaluate` send to MLflow, without training. Returns the warnings
    (a failed MLflow call is a warning: tracking never fails a run, so a lost run would be silent)."""
    config = tiny_config(data_root, seed=seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = tracking.MLflowLogger(profile, rid, {"method": "Triplet+MDR", "dataset": "cub200"})
        logger.on_train_start(config, run_dir, 1)
        for record in _records(seed):
            logger.on_epoch_end(record)
        logger.on_train_end("finished", {"best_epoch": EPOCHS}, None)
        metrics = _evaluation(rid, seed)
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        tracking.log_evaluation(profile, rid, metrics, [run_dir / "metrics.json", run_dir / "config.yaml"])
    return [str(w.message) for w in caught if "MLflow" in str(w.message)]


def _writer(uri: str, workdir: str, index: int, barrier, results) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(workdir)
    barrier.wait(timeout=120)  # all eight start their MLflow runs at the same moment
    try:
        problems = fake_run("smoke", f"writer-{index}", index, Path(workdir) / "runs" / "smoke" / f"writer-{index}",
                            Path(workdir) / "data")
    except Exception as e:  # pragma: no cover - reported to the parent
        problems = [f"{type(e).__name__}: {e}"]
    results.put((index, problems))


def _create_store(uri: str, workdir: str) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(workdir)
    tracking.init_store("smoke")


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs(uri: str, profile: str = "smoke") -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(tracking.experiment_name(profile))
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def test_eight_concurrent_writers_lose_no_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts go to ./mlruns
    # fork: the writers start at once (no re-import of torch); this process opens no store before the
    # forks, so no sqlite connection is shared. The store is created first, as tracking_init does.
    ctx = multiprocessing.get_context("fork")
    creator = ctx.Process(target=_create_store, args=(uri, str(tmp_path)))
    creator.start()
    creator.join(120)
    assert creator.exitcode == 0
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, str(tmp_path), i, barrier, results)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    reports = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert reports == {i: [] for i in range(WRITERS)}, reports

    runs = _runs(uri)
    by_id = {r.data.tags["run_id"]: r for r in runs}
    assert sorted(by_id) == sorted(f"writer-{i}" for i in range(WRITERS)) and len(runs) == WRITERS
    client = _client(uri)
    for i in range(WRITERS):
        run = by_id[f"writer-{i}"]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["best_recall_at_1"] == pytest.approx(0.5 + i / 100)
        assert run.data.params["seed"] == str(i) and run.data.tags["seed"] == str(i)
        for key in ("loss", "recall_at_1", "recall_at_2", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (i, key)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "config.yaml"}


def _run_folder(root: Path, rid: str, seed: int, data_root: Path, status: str = "finished") -> None:
    folder = root / "runs" / "smoke" / rid
    folder.mkdir(parents=True)
    config = tiny_config(data_root, seed=seed)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    (folder / "history.json").write_text(json.dumps(_records(seed)))
    (folder / "status.json").write_text(json.dumps({"status": status}))
    (folder / "best.pt").write_bytes(b"weights" * 100)
    if status == "finished":
        (folder / "metrics.json").write_text(json.dumps(_evaluation(rid, seed)))


def test_rebuild_store_from_run_folders_is_idempotent(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    for seed in range(3):
        _run_folder(tmp_path, f"tiny-run-seed{seed}-0000000{seed}", seed, tmp_path / "data")
    _run_folder(tmp_path, "tiny-run-seed9-00000009", 9, tmp_path / "data", status="interrupted")
    (tmp_path / "runs" / "smoke" / "never-started").mkdir()
    results = tmp_path / "results" / "smoke"
    results.mkdir(parents=True)
    for name in ("table1.md", "table1.csv", "REPORT.md"):
        (results / name).write_text(f"{name}\n")

    first = tracking.rebuild_store("smoke")
    assert first == {"created": 4, "updated": 0, "unchanged": 0, "skipped": 1, "aggregate": "created"}
    second = tracking.rebuild_store("smoke")
    assert second == {"created": 0, "updated": 0, "unchanged": 4, "skipped": 1, "aggregate": "unchanged"}

    runs = _runs(uri)
    assert len(runs) == 5  # 4 runs + the aggregate run, nothing duplicated
    client = _client(uri)
    by_id = {r.data.tags.get("run_id"): r for r in runs}
    run = by_id["tiny-run-seed1-00000001"]
    assert run.info.status == "FINISHED" and run.data.tags["profile"] == "smoke"
    assert run.data.tags["method"] == "Triplet+MDR" and run.data.tags["seed"] == "1"
    assert run.data.params["train.epochs"] == "3" and run.data.params["regularizer.name"] == "mdr"
    assert run.data.metrics["best_recall_at_1"] == pytest.approx(0.51) and run.data.metrics["best_epoch"] == EPOCHS
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, EPOCHS + 1))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"best.pt", "config.yaml", "history.json", "metrics.json"}
    assert by_id["tiny-run-seed9-00000009"].info.status == "KILLED"
    aggregate = [r for r in runs if r.data.tags.get("kind") == "aggregate"]
    assert len(aggregate) == 1
    assert {a.path for a in client.list_artifacts(aggregate[0].info.run_id, "tables")} == {
        "tables/table1.md", "tables/table1.csv", "tables/REPORT.md"}

    # a run that goes on (resumed: two more epochs, new metrics) is updated in place, not duplicated
    folder = tmp_path / "runs" / "smoke" / "tiny-run-seed1-00000001"
    history = _records(1) + [{"epoch": EPOCHS + 1, "loss": 0.01}, {"epoch": EPOCHS + 2, "loss": 0.005}]
    (folder / "history.json").write_text(json.dumps(history))
    metrics = _evaluation("tiny-run-seed1-00000001", 1)
    metrics["best"]["recall_at_1"] = 0.75
    (folder / "metrics.json").write_text(json.dumps(metrics))
    third = tracking.rebuild_store("smoke")
    assert third == {"created": 0, "updated": 1, "unchanged": 3, "skipped": 1, "aggregate": "unchanged"}
    assert len(_runs(uri)) == 5
    run = client.get_run(run.info.run_id)
    assert run.data.metrics["best_recall_at_1"] == pytest.approx(0.75)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, EPOCHS + 3))


def test_rebuild_completes_a_run_logged_live_without_duplicating_it(tmp_path, monkeypatch):
    """A store filled live (MLflowLogger + log_evaluation) and then rebuilt: same runs, no doubled metric steps."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    rid = "tiny-live-seed0-0000000a"
    folder = tmp_path / "runs" / "smoke" / rid
    assert fake_run("smoke", rid, 0, folder, tmp_path / "data") == []
    (folder / "history.json").write_text(json.dumps(_records(0)))
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    assert tracking.rebuild_store("smoke")["updated"] == 1
    assert tracking.rebuild_store("smoke")["unchanged"] == 1
    runs = [r for r in _runs(uri) if r.data.tags.get("run_id") == rid]
    assert len(runs) == 1
    history = _client(uri).get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))


def test_track_rebuild_command(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _run_folder(tmp_path, "tiny-cmd-seed0-0000000b", 0, tmp_path / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "pipeline", "track-rebuild", "--profile", "smoke"]
    out = [subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert out[0].returncode == 0, out[0].stderr[-2000:]
    assert "1 runs created" in out[0].stdout and "1 unchanged" in out[1].stdout
    assert len(_runs(uri)) == 1


# --- a real tracking server ---------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def mlflow_server(tmp_path, request):
    """`mlflow server` on 127.0.0.1 with a sqlite or a PostgreSQL backend (a real server, tests/postgres.py)
    and proxied artifacts in tmp; stopped at the end."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.exists():
        pytest.skip(f"no `mlflow` command beside {sys.executable}: this Python lacks the project's dependencies "
                    "(make test installs them into .venv, where this test runs)")
    if request.param == "postgresql":
        backend = request.getfixturevalue("postgres").database("mlflow")
    else:
        backend = f"sqlite:///{tmp_path / 'server.db'}"
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, tmp_path, backend
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server's own process group (it starts uvicorn workers)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_tracking_server_given_by_MLFLOW_TRACKING_URI_is_used(mlflow_server, monkeypatch):
    url, tmp, backend = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    work = tmp / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert tracking.tracking_uri() == url
    rid = "tiny-server-seed3-0000000c"
    folder = work / "runs" / "smoke" / rid
    assert fake_run("smoke", rid, 3, folder, work / "data") == []
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    (folder / "history.json").write_text(json.dumps(_records(3)))
    (work / "results" / "smoke").mkdir(parents=True)
    (work / "results" / "smoke" / "table1.md").write_text("| a |\n")
    tracking.log_tables("smoke", [work / "results" / "smoke" / "table1.md"])
    assert tracking.rebuild_store("smoke")["updated"] == 1  # through the server as well

    runs = _runs(url)
    assert len(runs) == 2  # the run and the aggregate run
    run = next(r for r in runs if r.data.tags.get("run_id") == rid)
    assert run.info.status == "FINISHED" and run.data.tags["profile"] == "smoke"
    assert run.data.metrics["best_recall_at_1"] == pytest.approx(0.53)
    client = _client(url)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "recall_at_1")) == list(range(1, EPOCHS + 1))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "config.yaml", "history.json"}
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp / "download"))
    assert json.loads(Path(local).read_text())["best"]["recall_at_1"] == pytest.approx(0.53)
    # the artifacts went through the server into its artifacts destination, not into this folder
    assert any((tmp / "server-artifacts").rglob("metrics.json"))
    assert not (work / "mlruns").exists() and not (work / "mlartifacts").exists()
    shutil.rmtree(tmp / "download")
    if backend.startswith("postgresql"):  # the server's records really are in PostgreSQL
        import sqlalchemy

        engine = sqlalchemy.create_engine(backend)
        try:
            with engine.connect() as conn:
                tagged = set(conn.execute(sqlalchemy.text("SELECT value FROM tags WHERE key = 'run_id'")).scalars())
        finally:
            engine.dispose()
        assert rid in tagged


# ---- a store that cannot be written: one line naming it, exit 2 ------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _tracking_init(store: Path, cwd: Path, profile: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", "tracking-init", "--profile", profile], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_naming(result: subprocess.CompletedProcess, store: Path, said: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    last = lines[0]
    assert last.startswith(f"error: the MLflow store sqlite:///{store} cannot be used: {said}"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "MLFLOW_TRACKING_URI" in last


def test_a_read_only_store_ends_in_one_line_naming_it(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs to make read-only (needs root or CAP_SYS_ADMIN); root ignores file modes")
    try:
        store = folder / "mlflow.db"
        assert _tracking_init(store, tmp_path, "first").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        _one_line_naming(_tracking_init(store, tmp_path, "second"), store, "attempt to write a readonly database. ")
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_locked_store_ends_in_one_line_naming_it(tmp_path):
    store = tmp_path / "mlflow.db"
    assert _tracking_init(store, tmp_path, "first").returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], "
                               "isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\n"
                               "time.sleep(600)", str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _one_line_naming(_tracking_init(store, tmp_path, "second"), store, "database is locked. ")
    finally:
        holder.kill()
        holder.wait()
