"""The pretrain stage: deterministic weights, the sidecar, the CLI end to end, and its DAG entries.

A tiny stand-in for glyphs-imagenet (4 glyph classes, 6 images each: 4 train, 2 test) is generated with
mdr.data.recipes.glyphs.generate_glyphs into <tmp>/data/prepared/glyphs-imagenet-36px."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mdr.data.recipes.glyphs import generate_glyphs
from mdr.models import create_backbone
from mdr.models.pretrained_file import sidecar_path
from mdr.pretrain import pretrain_backbone
from pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain") / "data"
    generate_glyphs(root / "prepared" / "glyphs-imagenet-36px", image_size=36, images_per_class=6, num_classes=4,
                    closed_set_train=4, name="glyphs-imagenet", progress=False)
    return root


def prepared(data_root: Path) -> Path:
    return data_root / "prepared" / "glyphs-imagenet-36px"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_pretrains_write_identical_weights_and_a_sidecar(data_root, tmp_path):
    a, b = tmp_path / "a" / "glyphnet-s.pt", tmp_path / "b" / "glyphnet-s.pt"
    records = [pretrain_backbone("glyphnet-s", prepared(data_root), out, epochs=2, batch_size=8, lr=1e-3, seed=3,
                                 threads=1, progress=False, echo=False) for out in (a, b)]
    assert a.read_bytes() == b.read_bytes()
    sidecar = json.loads(sidecar_path(a).read_text())
    assert sidecar == records[0]
    assert sidecar["sha256"] == sha256(a) and sidecar["file"] == "glyphnet-s.pt"
    assert sidecar["settings"] | {"epochs": 2, "batch_size": 8, "seed": 3, "threads": 1} == sidecar["settings"]
    assert sidecar["dataset"] | {"name": "glyphs-imagenet", "classes": 4, "train_images": 16,
                                 "test_images": 8} == sidecar["dataset"]
    for key in ("train_loss", "train_accuracy", "test_accuracy", "seconds"):
        assert len(sidecar[key]) == 2, key
    # accuracies over 16 train (2 batches of 8) and 8 test images are multiples of 1/16 and 1/8
    assert all(round(x * 16, 6) == int(round(x * 16)) and 0 <= x <= 1 for x in sidecar["train_accuracy"])
    assert all(round(x * 8, 6) == int(round(x * 8)) and 0 <= x <= 1 for x in sidecar["test_accuracy"])
    assert set(sidecar["versions"]) >= {"python", "torch", "numpy"} and sidecar["versions"]["torch"] == torch.__version__
    # the backbone alone (no classifier), in the layout a fresh net loads strictly
    state = torch.load(a, weights_only=True)
    assert set(state) == set(create_backbone("glyphnet-s").state_dict())
    assert all(v.is_contiguous() for v in state.values())
    loaded = create_backbone("glyphnet-s", pretrained=True, weights=str(a))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not torch.equal(state["lower.0.weight"], create_backbone("glyphnet-s").state_dict()["lower.0.weight"])


def test_another_seed_gives_other_weights(data_root, tmp_path):
    outs = [tmp_path / f"{seed}" / "glyphnet-s.pt" for seed in (0, 1)]
    for seed, out in zip((0, 1), outs):
        pretrain_backbone("glyphnet-s", prepared(data_root), out, epochs=1, batch_size=8, seed=seed, progress=False,
                          echo=False)
    assert outs[0].read_bytes() != outs[1].read_bytes()


def test_stage_cli_end_to_end_then_a_corrupt_file_is_removed(data_root, monkeypatch, capsys):
    monkeypatch.chdir(data_root.parent)
    assert main(["pretrain", "--backbone", "glyphnet-s", "--data-root", "data", "--epochs", "1", "--no-bars"]) == 0
    out = capsys.readouterr().out
    weights = data_root / "pretrained" / "glyphnet-s.pt"
    assert "pretrain glyphnet-s: epoch 1/1: loss " in out and "test accuracy" in out
    assert "wrote data/pretrained/glyphnet-s.pt" in out
    assert json.loads(sidecar_path(weights).read_text())["sha256"] == sha256(weights)
    with open(weights, "r+b") as f:  # damage it in place
        f.seek(200)
        f.write(b"\0" * 64)
    from pipeline.common import stage

    @stage(writes=False)
    def load(argv):
        create_backbone("glyphnet-s", pretrained=True, weights="data/pretrained/glyphnet-s.pt")
        return 0

    assert load([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pretrained weights data/pretrained/glyphnet-s.pt for glyphnet-s are damaged: its "
                          "sha256 ") and err.count("\n") == 1
    assert not weights.exists() and not sidecar_path(weights).exists()


def test_stage_without_prepared_data_names_the_prepare_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--backbone", "glyphnet-m", "--data-root", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "elsewhere/prepared/glyphs-imagenet-36px is missing" in err
    assert "`python -m pipeline prepare glyphs-imagenet --image-size 36 --data-root elsewhere`" in err
    assert not (tmp_path / "elsewhere" / "pretrained").exists()


def test_a_dataset_whose_test_classes_are_not_trained_on_is_refused(tmp_path, monkeypatch, capsys):
    # class-disjoint splits (a benchmark's, not glyphs-imagenet's): no accuracy on held-out images is possible
    generate_glyphs(tmp_path / "data" / "prepared" / "glyphs-imagenet-36px", image_size=36, images_per_class=2,
                    num_classes=4, name="glyphs-imagenet", progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--backbone", "glyphnet-s", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "its test split has 2 classes without training images" in err and err.count("\n") == 1
    assert not (tmp_path / "data" / "pretrained").exists()


def test_a_dataset_without_a_test_split_is_refused(tmp_path, monkeypatch, capsys):
    import numpy as np
    import pandas as pd

    from mdr.data.prepared import write_prepared

    manifest = pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "class_id": [0, 1], "class_name": ["A", "B"],
                             "split": ["train", "train"]})
    write_prepared(tmp_path / "data" / "prepared" / "glyphs-imagenet-36px", manifest,
                   np.zeros((2, 36, 36, 3), np.uint8), {"name": "glyphs-imagenet"})
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--backbone", "glyphnet-s", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "pretraining needs a train and a test split" in err and "found train;" in err and err.count("\n") == 1


def test_stage_rejects_an_unknown_backbone_and_bad_epochs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--backbone", "glyphnet-xl"]) == 2
    assert "unknown backbone 'glyphnet-xl'; allowed: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--backbone", "glyphnet-s", "--epochs", "0"])
    assert done.value.code == 2 and "--epochs and --threads must be >= 1, got 0" in capsys.readouterr().err


def glyphnet_params(dst: Path) -> Path:
    """params/ whose smoke profile trains glyphnet-m from the pretrain stage's weights, one seed, one table."""
    shutil.copytree(ROOT / "params", dst)
    path = dst / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["seeds"] = [0]
    profile["tables"] = ["table1"]
    profile["defaults"]["model"].update(backbone="glyphnet-m", pretrained=True, weights="data/pretrained/glyphnet-m.pt")
    path.write_text(yaml.safe_dump(profile))
    return dst


def test_dvc_yaml_has_a_pretrain_stage_for_the_weights_the_runs_load(tmp_path):
    from pipeline.dvc_yaml import build

    stages = build("smoke", root=tmp_path, params_dir=glyphnet_params(tmp_path / "params"))["stages"]
    assert stages["pretrain"]["foreach"] == {
        "glyphnet-m": {"out": "data/pretrained/glyphnet-m.pt", "sidecar": "data/pretrained/glyphnet-m.json"}}
    do = stages["pretrain"]["do"]
    assert do["cmd"] == "python -m pipeline pretrain --backbone ${key} --data-root data --out ${item.out} --no-bars"
    assert do["deps"] == ["data/prepared/glyphs-imagenet-36px/READY"]
    assert [next(iter(o)) for o in do["outs"]] == ["${item.out}", "${item.sidecar}"]
    assert stages["prepare"]["foreach"]["glyphs-imagenet-36px"] == {"dataset": "glyphs-imagenet", "size": 36}
    order = list(stages)
    assert order.index("prepare") < order.index("pretrain") < order.index("tracking_init")  # before every train stage


def test_dvc_yaml_without_runs_on_the_stages_weights_has_no_pretrain_stage(tmp_path):
    from pipeline.dvc_yaml import build

    params = glyphnet_params(tmp_path / "params")
    path = params / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["defaults"]["model"]["weights"] = "mine/glyphnet-m.pt"  # the user's own file: no stage writes it
    path.write_text(yaml.safe_dump(profile))
    stages = build("smoke", root=tmp_path, params_dir=params)["stages"]
    assert "pretrain" not in stages and "glyphs-imagenet-36px" not in stages["prepare"]["foreach"]


@pytest.mark.slow
def test_snakemake_plans_the_pretrain_rule(tmp_path):
    params = glyphnet_params(tmp_path / "params")
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "1", "data/pretrained/glyphnet-l.pt"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MDR_PARAMS": str(params)})
    assert done.returncode == 0, done.stderr[-3000:]
    plan = done.stdout + done.stderr
    assert "rule pretrain:" in plan and "data/pretrained/glyphnet-l.json" in plan
    assert "rule prepare:" in plan and "data/prepared/glyphs-imagenet-36px/READY" in plan
    assert "-m pipeline pretrain --backbone glyphnet-l --data-root data --out data/pretrained/glyphnet-l.pt" in plan
