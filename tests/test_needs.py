"""What a GPU profile needs is said before it runs: caches (disk from the published counts), weights, GPUs,
planned hours; `device: auto` without a GPU stops in one line unless the CPU is asked for."""
from __future__ import annotations

from pathlib import Path

import pytest

from mdr import needs as needs_mod
from mdr.config import ConfigError
from mdr.grid import load_grid

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.fixture
def grid(tmp_path):
    params = tmp_path / "params"
    (params / "profiles").mkdir(parents=True)
    (params / "tables").mkdir()
    (params / "methods.yaml").write_text((PARAMS / "methods.yaml").read_text())
    (params / "profiles" / "gpu.yaml").write_text(f"""\
name: gpu
seeds: [0, 1]
datasets: {{cub200: cub200, glyphs: glyphs}}
default_image_size: 224
image_sizes: {{224: {{data.image_size: 256, data.crop: 224}}}}
defaults:
  data: {{root: {tmp_path / 'data'}}}
  model: {{backbone: bninception, pretrained: true}}
  optim: {{lr_milestones: [1]}}
  train: {{epochs: 2, iterations_per_epoch: 50, device: auto}}
resources: {{gpu: 1, minutes_per_1000_iterations: 12}}
""")
    (params / "tables" / "t.yaml").write_text("""\
name: t
title: t
axes:
  dataset: [cub200, glyphs]
  method: [Triplet, Triplet+MDR]
rows: [method]
columns: [dataset]
""")
    return load_grid("gpu", params)


def test_cache_disk_is_the_published_image_count_times_s_squared_times_3():
    assert needs_mod.cache_bytes("cub200", 256) == (5864 + 5924) * 256 * 256 * 3 == 2_317_615_104
    assert needs_mod.cache_bytes("sop", 292) == (59551 + 60502) * 292 * 292 * 3


def test_needs_and_what_is_missing_here(grid, tmp_path, monkeypatch):
    monkeypatch.setattr(needs_mod, "_has_gpu", lambda: False)
    monkeypatch.setattr(needs_mod, "_hub_checkpoints", lambda: tmp_path / "hub")
    need = needs_mod.needs(grid)
    assert need.iterations == 8 * 2 * 50  # 2 datasets x 2 methods x 2 seeds, 100 iterations each
    assert need.planned_hours == pytest.approx(800 / 1000 * 12 / 60)
    assert need.weights == ["bninception"] and need.gpus == 1
    lines = needs_mod.missing(grid)
    # cub200 is not prepared (glyphs is embedded: the DAG makes it), the weights are absent, and no GPU
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"prepared dataset {tmp_path / 'data' / 'prepared' / 'cub200-256px'} is missing (2.3 GB")
    assert "python -m pipeline prepare cub200 --image-size 256 --source PATH" in lines[0]
    assert lines[1].startswith("pretrained weights bn_inception-52deb4733.pth (bninception) are not in")
    assert "MDR_ALLOW_CPU=1" in lines[2]
    announced = needs_mod.announce(grid)
    assert announced[0].startswith("note: profile gpu needs 2 prepared image caches") and "~0 GPU-hours" in announced[0]
    # once prepared and placed, nothing is missing but the GPU
    (tmp_path / "data" / "prepared" / "cub200-256px").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "cub200-256px" / "READY").write_text("{}")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "bn_inception-52deb4733.pth").write_bytes(b"w")
    assert needs_mod.missing(grid) == [lines[2]]


def test_device_auto_without_a_gpu_stops_unless_the_cpu_is_asked_for(grid, monkeypatch):
    monkeypatch.setattr(needs_mod, "_has_gpu", lambda: False)
    monkeypatch.delenv(needs_mod.ALLOW_CPU_ENV, raising=False)
    config = next(iter(grid.runs.values())).config
    with pytest.raises(ConfigError) as err:
        needs_mod.require_gpu(grid, config, allow_cpu=False)
    assert str(err.value).startswith("profile gpu trains on a GPU (params/profiles/gpu.yaml: resources.gpu 1")
    assert "--allow-cpu" in str(err.value)
    needs_mod.require_gpu(grid, config, allow_cpu=True)
    needs_mod.require_gpu(grid, config.model_copy(update={"train": config.train.model_copy(update={"device": "cpu"})}),
                          allow_cpu=False)
    monkeypatch.setenv(needs_mod.ALLOW_CPU_ENV, "1")
    needs_mod.require_gpu(grid, config, allow_cpu=False)
    monkeypatch.setattr(needs_mod, "_has_gpu", lambda: True)
    monkeypatch.delenv(needs_mod.ALLOW_CPU_ENV)
    needs_mod.require_gpu(grid, config, allow_cpu=False)


def test_a_paper_train_on_a_machine_without_a_gpu_is_one_line_exit_2(capsys, monkeypatch):
    import torch

    from pipeline import train as train_stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(needs_mod.ALLOW_CPU_ENV, raising=False)
    rid = next(iter(load_grid("paper").runs))
    assert train_stage.main(["--profile", "paper", "--run", rid, "--no-tracking"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: profile paper trains on a GPU (params/profiles/paper.yaml: resources.gpu 1")


@pytest.mark.slow
def test_a_dry_run_of_the_paper_profile_says_what_is_missing(tmp_path):
    """`snakemake -n --config profile=paper` on this machine: the needs, then one warning per missing thing."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    # no GPU whatever the machine has; weights neither in this test's MDR_CACHE nor in an empty torch hub
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-n", "--nolock", "--config",
                           "profile=paper"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith(("note: ", "warning: "))]
    assert lines[0].startswith("note: profile paper needs 9 prepared image caches (91 GB)")
    warnings = [line for line in lines[1:] if line.startswith("warning: ")]
    # no tuned files for the paper profile here: its fair cells wait for their tune jobs (docs/protocols.md)
    waiting = [line for line in lines[1:] if "fair cells wait for their tuned settings" in line]
    assert len(waiting) == (len(list((root / "params" / "tuned" / "paper").glob("*.yaml"))) < 12)
    missing_caches = [w for w in warnings if w.startswith("warning: prepared dataset ")]
    prepared = [d for d in ("cub200", "cars196", "sop", "inshop") for s in (256, 292)
                if (root / "data" / "prepared" / f"{d}-{s}px" / "READY").exists()]
    assert len(missing_caches) == 9 - len(prepared) - (root / "data/prepared/cifar10-32px/READY").exists()
    assert sum(w.startswith("warning: pretrained weights ") for w in warnings) == 3
    assert warnings[-1].startswith("warning: profile paper trains on 1 GPU per job and this machine has none")
