"""train.precision (fp32 / tf32 / bf16) and the evaluation loader's workers (mdr/engine.py)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import mdr.engine as engine
from mdr.config import ConfigError, validate_run_config
from mdr.data.loading import CachedImages
from mdr.data.loading import test_transform as centre_crop
from mdr.engine import embed, float32_arithmetic, train
from mdr.run_data import load_prepared
from mdr.grid import run_id
from tests.conftest import tiny_config


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _watch_forward(monkeypatch):
    """Record, for every forward of the run's model: training mode, output dtype, float32 matmul precision."""
    seen = []
    real = engine.build_components

    def build(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.model.register_forward_hook(lambda m, _, out: seen.append(
            (m.training, out.dtype, torch.get_float32_matmul_precision())))
        return parts

    monkeypatch.setattr(engine, "build_components", build)
    return seen


def test_an_unknown_precision_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"^table1 / run 3: invalid configuration: train\.precision: "
                                          r"Input should be 'fp32', 'tf32' or 'bf16'$"):
        validate_run_config({"train": {"precision": "fp16"}}, "table1 / run 3")
    assert validate_run_config({}, "defaults").train.precision == "fp32"


def test_the_run_id_names_a_precision_other_than_fp32_and_fp32_ids_are_unchanged(tiny_data):
    fp32 = tiny_config(tiny_data)
    ids = {p: run_id(tiny_config(tiny_data, **{"train.precision": p})) for p in ("fp32", "tf32", "bf16")}
    assert len(set(ids.values())) == 3
    assert "-16px-seed0-" in ids["fp32"] and "fp32" not in ids["fp32"]
    assert "-16px-bf16-seed0-" in ids["bf16"] and "-16px-tf32-seed0-" in ids["tf32"]
    # fp32 is how every run trained before the field existed: its hash is the one without the field
    before = fp32.model_dump(mode="json")
    del before["train"]["precision"]
    del before["data"]["augment_on"]  # data.augment_on loader: likewise (tests/data/test_device_augment.py)
    del before["eval"]["protocol"]  # eval.protocol published: likewise (tests/test_protocol.py)
    assert fp32.fingerprint() == hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    assert "precision: fp32" in engine.config_yaml(fp32)  # recorded with the run all the same
    # ... and so is the hash of its seeds' job (mdr/jobs.py), which names dvc.yaml's stages
    from mdr.jobs import seedless_hash

    del before["seed"]
    assert seedless_hash(fp32) == hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    assert seedless_hash(fp32) != seedless_hash(tiny_config(tiny_data, **{"train.precision": "bf16"}))


@pytest.mark.parametrize("loss", ["triplet", "margin"])  # margin: distance-weighted sampling under autocast
def test_bf16_trains_under_autocast_with_finite_losses_and_evaluates_in_float32(tiny_data, tmp_path, monkeypatch,
                                                                                loss):
    seen = _watch_forward(monkeypatch)
    config = tiny_config(tiny_data, **{"train.precision": "bf16", "loss.name": loss})
    result = train(config, tmp_path / "run", progress=False, echo=False)
    training = {dtype for is_training, dtype, _ in seen if is_training}
    evaluating = {dtype for is_training, dtype, _ in seen if not is_training}
    assert training == {torch.bfloat16} and evaluating == {torch.float32}
    assert all(np.isfinite(r[k]) for r in result.history for k in ("loss", "metric_loss", "regularizer_loss"))
    assert not torch.is_autocast_enabled("cpu")
    assert (tmp_path / "run" / "config.yaml").read_text().count("precision: bf16") == 1


def test_fp32_is_reproducible_and_tf32_on_cpu_is_fp32_with_a_warning(tiny_data, tmp_path, monkeypatch, capsys):
    config = tiny_config(tiny_data)
    seen = _watch_forward(monkeypatch)
    torch.set_float32_matmul_precision("high")  # whatever the process had set: the run trains in float32
    try:
        a = train(config, tmp_path / "a", progress=False, echo=False)
        assert {precision for _, _, precision in seen} == {"highest"}
        assert torch.get_float32_matmul_precision() == "high"  # restored after the run
    finally:
        torch.set_float32_matmul_precision("highest")
    b = train(config, tmp_path / "b", progress=False, echo=False)
    capsys.readouterr()
    tf32 = train(tiny_config(tiny_data, **{"train.precision": "tf32"}), tmp_path / "c", progress=False, echo=False)
    assert "train.precision tf32" in capsys.readouterr().err
    assert _strip(a.history) == _strip(b.history) == _strip(tf32.history)
    emb = [np.load(tmp_path / run / "final_embeddings.npz")["query"] for run in "abc"]
    assert np.array_equal(emb[0], emb[1]) and np.array_equal(emb[0], emb[2])


def test_float32_arithmetic_sets_tf32_within_the_block_and_restores_the_process_settings():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with float32_arithmetic(tf32=True):
            assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("medium", False)
        with pytest.raises(RuntimeError), float32_arithmetic(tf32=False):
            assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("highest", False)
            raise RuntimeError("a failing run")
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("medium", False)
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_evaluation_embeddings_are_the_same_with_loader_workers(tiny_data):
    config = tiny_config(tiny_data)
    prepared = load_prepared(config)
    rows = prepared.manifest
    images = CachedImages(prepared.root / "images.npy", rows["index"].to_numpy(), rows["label"].to_numpy(),
                          centre_crop(config.data.crop))
    torch.manual_seed(0)
    model = engine.build_components(config, int(rows["label"].max()) + 1, torch.device("cpu")).model
    alone = embed(model, images, 5, torch.device("cpu"))  # 5: batches that do not divide the set
    with_workers = embed(model, images, 5, torch.device("cpu"), num_workers=2)
    assert alone.shape == (len(rows), 8) and alone.dtype == np.float32
    assert np.array_equal(alone, with_workers)
