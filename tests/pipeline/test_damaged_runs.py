"""Damaged or crafted files in a run folder, at the command line: one line on stderr, exit 2, nothing
executed (issue 18, items 1 and 8)."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from mdr.grid import load_grid
from tests.pipeline.test_workflow import run, tiny_params
from tests.test_checkpoint import write_payload


def _one_line_error(result, starts):
    """Exit 2 and one `error:` line, the last on stderr (MLflow may log INFO lines before it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith(f"error: {starts}"), result.stderr[-3000:]
    assert result.stderr.count("error") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_and_evaluate_refuse_a_crafted_checkpoint(tmp_path):
    params = tiny_params(tmp_path / "params")
    rid = next(iter(load_grid("smoke", params).runs))
    folder = tmp_path / "runs" / "smoke" / rid
    folder.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    for name in ("checkpoint.pt", "best.pt"):
        write_payload(folder / name, marker, "torch.save")
    for stage in ("train", "evaluate"):
        result = run([sys.executable, "-m", "pipeline", stage, "--run", rid, "--no-tracking"], tmp_path)
        _one_line_error(result, f"runs/smoke/{rid}/checkpoint.pt was not loaded: it holds objects other than tensors")
        assert not marker.exists()


@pytest.mark.slow
def test_track_names_a_damaged_history(tmp_path, tiny_data):
    from tests.conftest import tiny_config

    tiny_params(tmp_path / "params")  # the workspace's params/: runs are described by params/methods.yaml
    folder = tmp_path / "runs" / "smoke" / "tiny-run-seed0-00000000"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(tiny_config(tiny_data).model_dump(mode="json")))
    (folder / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.5}])[:-5])
    result = run([sys.executable, "-m", "pipeline", "track-rebuild"], tmp_path)
    _one_line_error(result, f"runs/smoke/{folder.name}/history.json is damaged (not valid JSON: ")
    assert "it rewrites history.json from the checkpoint" in result.stderr
