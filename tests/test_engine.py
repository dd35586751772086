import json

import pytest
import torch

from mdr.engine import CheckpointMismatchError, NonFiniteLossError, train
from tests.conftest import StopAfter, tiny_config


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_continues_bit_for_bit(tiny_data, tmp_path):
    config = tiny_config(tiny_data)
    straight = train(config, tmp_path / "a", progress=False, echo=False)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False, echo=False, callbacks=[StopAfter(2)])
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "interrupted"
    resumed = train(config, tmp_path / "b", progress=False, echo=False)
    assert _strip(resumed.history) == _strip(straight.history)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for key in ("model", "regularizer"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resuming"
    assert b["regularizer"]["mdr.initialized"]
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "finished"


def test_the_pretrained_weights_file_is_logged_and_kept_in_the_summary(tiny_data, tmp_path, capsys):
    import hashlib

    from mdr.models import create_backbone
    from mdr.models.pretrained_file import sidecar_path

    weights = tmp_path / "pretrained" / "glyphnet-s.pt"
    weights.parent.mkdir()
    torch.save(create_backbone("glyphnet-s").state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar_path(weights).write_text(json.dumps({"sha256": sha}))
    config = tiny_config(tiny_data, **{"model.backbone": "glyphnet-s", "model.pretrained": True,
                                       "model.weights": str(weights), "train.epochs": 1, "optim.lr_milestones": []})
    result = train(config, tmp_path / "run", progress=False)
    record = {"file": str(weights.resolve()), "sha256": sha, "verified": f"the sha256 in {sidecar_path(weights)}"}
    assert result.summary["pretrained_weights"] == record
    assert (f"[run] pretrained weights: {weights.resolve()} (sha256 {sha}; checked against the sha256 in "
            f"{sidecar_path(weights)})") in capsys.readouterr().out
    assert "pretrained_weights" not in train(tiny_config(tiny_data), tmp_path / "scratch", progress=False, echo=False).summary


def test_history_records_recall_and_best_checkpoint(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data), tmp_path / "run", progress=False, echo=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(0 <= r["recall_at_1"] <= 1 for r in result.history)
    assert {"reg_mdr", "reg_level_0", "metric_loss", "lr"} <= set(result.history[0])
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert best["epoch"] + 1 == result.best_epoch
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "history.json").exists()


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_data)
    import mdr.engine as engine

    real_create = engine.LOSSES.create

    class NanAfter(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, e, y):
            self.calls += 1
            out = self.inner(e, y)
            return out * float("nan") if self.calls > 4 else out

    monkeypatch.setattr(engine.LOSSES, "create", lambda *a, **k: NanAfter(real_create(*a, **k)))
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, iteration 2 .*checkpoints up to epoch 1"):
        train(config, tmp_path / "run", progress=False, echo=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLossError" in status["error"]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["epoch"] == 0


def test_a_checkpoint_of_another_config_is_never_reused(tiny_data, tmp_path):
    train(tiny_config(tiny_data, **{"train.epochs": 2, "optim.lr_milestones": [1]}), tmp_path / "run", progress=False, echo=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointMismatchError, match="different configuration"):
        train(tiny_config(tiny_data, **{"optim.lr": 5e-4}), tmp_path / "run", progress=False, echo=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_validation_classes_are_carved_out_of_training_and_test_is_untouched(tiny_data, tmp_path):
    from mdr.run_data import evaluation_sets, load_prepared, training_rows

    config = tiny_config(tiny_data, **{"data.validation_classes": 1, "train.batch_size": 6})
    prepared = load_prepared(config)
    train = training_rows(prepared, config)
    val = evaluation_sets(prepared, config)["test"]
    test_labels = set(prepared.split("test")["label"])
    assert set(val.labels) == {3} and 3 not in set(train["label"])  # the last training class
    assert not (set(val.labels) | set(train["label"])) & test_labels
    result = train_fn(config, tmp_path)
    assert result.history[-1]["recall_at_1"] >= 0


def train_fn(config, tmp_path):
    from mdr.engine import train as run_train

    return run_train(config, tmp_path / "val", progress=False, echo=False)


def test_evaluation_from_kept_embeddings_equals_embedding_the_test_set_again(tiny_data, tmp_path, monkeypatch):
    import mdr.engine
    from mdr.evaluation import evaluate_run

    config = tiny_config(tiny_data, **{"eval.every": 1})
    result = train(config, tmp_path / "run", progress=False, echo=False)
    run = tmp_path / "run"
    assert (run / "best_embeddings.npz").exists() and (run / "final_embeddings.npz").exists()
    with monkeypatch.context() as m:
        m.setattr(mdr.engine, "embed_sets", lambda *a: pytest.fail("embedded the test set again"))
        from_kept = evaluate_run(config, run)
    # the per-epoch Recall@1 of training is the final metric of the same epoch
    final = next(r for r in result.history if r["epoch"] == from_kept["final_epoch"])
    assert from_kept["final"]["recall_at_1"] == pytest.approx(final["recall_at_1"])
    for name in ("best_embeddings.npz", "final_embeddings.npz"):
        (run / name).unlink()
    recomputed = evaluate_run(config, run)
    for which in ("best", "final"):
        for key, value in recomputed[which].items():
            if key != "nmi":  # k-means in NMI may differ in the last digit; Recall and MAP@R must not
                assert from_kept[which][key] == pytest.approx(value, abs=1e-6), (which, key)


def test_embeddings_of_another_epoch_or_config_are_not_used(tmp_path):
    import numpy as np

    from mdr.retrieval import Embeddings

    emb = Embeddings(np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1]))
    emb.save(tmp_path / "e.npz", epoch=3, fingerprint="abc")
    assert Embeddings.load(tmp_path / "e.npz", epoch=3, fingerprint="abc") is not None
    assert Embeddings.load(tmp_path / "e.npz", epoch=2, fingerprint="abc") is None
    assert Embeddings.load(tmp_path / "e.npz", epoch=3, fingerprint="abd") is None
    assert Embeddings.load(tmp_path / "missing.npz", epoch=3, fingerprint="abc") is None
    (tmp_path / "bad.npz").write_bytes(b"truncated")
    assert Embeddings.load(tmp_path / "bad.npz", epoch=3, fingerprint="abc") is None


def test_channels_last_gives_the_same_embeddings():
    from mdr.models import build_model

    torch.manual_seed(0)
    plain = build_model("smallcnn", 8, "none", False).eval()
    fast = build_model("smallcnn", 8, "none", False, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        # Either layout's float32 result is within (sum_l K_l) u |net|(|x|) of the exact one, K_l the terms of
        # layer l's dot products and |net| the network with |weights| (no cancellation, ReLU a no-op):
        # the standard forward error bound of a product of matrices. Twice that bounds their difference.
        k_terms = 3 * 9 + 32 * 9 + 64 * 9 + 128 * 9 + 1 + 256  # the four 3x3 convs, the mean pool (1 px), the head
        bound = 2 * k_terms * 2.0**-24 * _absolute_network(plain)(plain.backbone.preprocess(x).abs())
        assert bool(((fast(x) - plain(x)).abs() <= bound).all())


def _absolute_network(model):
    """backbone (no preprocessing) + head with every weight and bias replaced by its absolute value."""
    import copy

    net = copy.deepcopy(model).eval()
    for m in net.modules():
        for name in ("weight", "bias"):
            if isinstance(getattr(m, name, None), torch.Tensor):
                getattr(m, name).abs_()
        if isinstance(m, torch.nn.BatchNorm2d):  # eval BN: |x - mean| / sqrt(var + eps) * |gamma| + |beta|
            m.running_mean.zero_()
    return lambda pre: net.head(net.backbone(pre))
