"""`python -m pipeline <stage> --help` shows that stage's own usage and options, for every stage."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from pipeline.__main__ import STAGES, main

TOP_LEVEL_CHOICES = "{" + ",".join(sorted(STAGES)) + "}"


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_help_is_its_own(stage, capsys):
    with pytest.raises(SystemExit) as done:
        main([stage, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m pipeline {stage} "), out[:200]
    assert TOP_LEVEL_CHOICES not in out  # not the top-level usage
    doc = importlib.import_module(STAGES[stage]).__doc__.strip().splitlines()[0]
    assert _words(doc) in _words(out)  # the stage's own description


def test_prepare_help_lists_its_options_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "pipeline", "prepare", "-h"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m pipeline prepare ")
    for option in ("--image-size", "--data-root", "--no-fetch", "--source"):
        assert option in done.stdout, option


def test_stage_usage_error_names_the_stage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["prepare"])
    assert done.value.code == 2
    assert "python -m pipeline prepare: error: the following arguments are required: dataset" in capsys.readouterr().err


def test_top_level_help_and_unknown_stage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and TOP_LEVEL_CHOICES in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["nonsense"])
    assert done.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
