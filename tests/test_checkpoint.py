"""A run's checkpoints and history, damaged or crafted: nothing executed, one message naming the file,
and training the run again repairs what can be repaired (issue 18, items 1, 6 and 8)."""
import json
import pickle

import pytest
import torch

from mdr.checkpoint import UnusableCheckpointError, read_history
from mdr.engine import train
from mdr.evaluation import evaluate_run
from mdr.io import DamagedFileError
from tests.conftest import tiny_config
from tests.test_engine import _strip


class Payload:
    """Unpickling this creates `marker` (open(marker, "w")): what an attacker's code would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path, marker, how, protocol=2):
    state = {"epoch": 0, "fingerprint": "00000000", "model": Payload(marker)}
    if how == "torch.save":
        torch.save(state, path)
    else:  # a plain pickle, as torch's legacy format
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=protocol)


def _train(config, run, **kw):
    return train(config, run, progress=False, echo=False, **kw)


def _status(run):
    return json.loads((run / "status.json").read_text())


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def trained(tiny_data, tmp_path):
    """A finished 3-epoch run (evaluated every epoch), and its config."""
    config = tiny_config(tiny_data, **{"eval.every": 1})
    run = tmp_path / "run"
    result = _train(config, run)
    return config, run, result


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(trained, tmp_path, name, how):
    config, run, _ = trained
    marker = tmp_path / "payload-ran"
    write_payload(run / name, marker, how)
    refused = rf"{run / name} was not loaded: it holds objects other than tensors and plain data"
    with pytest.raises(UnusableCheckpointError, match=refused):
        _train(config, run)
    assert not marker.exists()
    assert _status(run)["status"] == "damaged"
    with pytest.raises(UnusableCheckpointError, match=refused + r".*delete it unless you know where it came from"):
        evaluate_run(config, run)
    assert not marker.exists()
    assert (run / name).exists()  # left for the user to look at


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_payload_in_a_pickle_torch_cannot_parse_is_set_aside_unrun(trained, tmp_path, capsys):
    """Pickle protocol 4 starts with a FRAME opcode that torch's restricted reader stops at, before the
    payload's GLOBAL: to it the file is foreign bytes, so the run goes on from checkpoint.prev.pt."""
    config, run, _ = trained
    marker = tmp_path / "payload-ran"
    write_payload(run / "checkpoint.pt", marker, "pickle.dump", protocol=4)
    _train(config, run)
    assert "not a PyTorch checkpoint: Unsupported operand 149" in capsys.readouterr().err
    assert not marker.exists() and (run / "checkpoint.damaged.pt").exists()


def test_the_rng_states_in_a_checkpoint_are_plain_data(trained):
    _, run, _ = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # raised on numpy's state before
    kind, key, *_ = state["rng"]["numpy"]
    assert kind == "MT19937" and len(key) == 624 and all(isinstance(k, int) for k in key)


def test_a_damaged_checkpoint_goes_on_from_the_previous_one_bit_for_bit(trained, capsys):
    config, run, straight = trained
    final = _weights(run / "checkpoint.pt")
    assert torch.load(run / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1  # epoch 2 of 3
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnusableCheckpointError, match=rf"{run / 'checkpoint.pt'} is damaged \(RuntimeError: .*"
                                                      r"python -m pipeline train --profile .* --run run"):
        evaluate_run(config, run)
    assert _status(run)["status"] == "damaged"
    capsys.readouterr()
    resumed = _train(config, run)
    warning = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} is damaged" in warning and "going on from" in warning
    assert (run / "checkpoint.damaged.pt").read_bytes() == data[: len(data) // 2]
    assert _strip(resumed.history) == _strip(straight.history)
    assert _same(_weights(run / "checkpoint.pt"), final)
    assert _status(run)["status"] == "finished"
    assert evaluate_run(config, run)["final_epoch"] == 3


@pytest.mark.parametrize("junk,reason", [(b"", r"EOFError: file ends early"),
                                          (b"\x00" * 64, r"not a PyTorch checkpoint: Unsupported operand 0"),
                                          (b"junk junk", r"not a PyTorch checkpoint: KeyError \d+")])
def test_a_damaged_checkpoint_without_a_previous_one_names_the_way_out(trained, junk, reason):
    config, run, _ = trained
    (run / "checkpoint.prev.pt").unlink()
    (run / "checkpoint.pt").write_bytes(junk)
    with pytest.raises(UnusableCheckpointError, match=rf"{run / 'checkpoint.pt'} is damaged \({reason}\); there is "
                                                      r"no checkpoint.prev.pt to go on from: delete it"):
        _train(config, run)
    assert _status(run)["status"] == "damaged"
    (run / "checkpoint.pt").unlink()  # what the message says to do
    assert [r["epoch"] for r in _train(config, run).history] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_best_checkpoint_of_the_last_epoch_is_rebuilt_from_the_checkpoint(tiny_data, tmp_path, damage, capsys):
    config = tiny_config(tiny_data, **{"eval.every": 3})  # only the last epoch is scored: it is the best
    run = tmp_path / "run"
    _train(config, run)
    before = evaluate_run(config, run)
    if damage == "missing":
        (run / "best.pt").unlink()
    else:
        (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    what = "is missing" if damage == "missing" else r"is damaged \(RuntimeError: PytorchStreamReader .*\)"
    with pytest.raises(DamagedFileError, match=rf"{run / 'best.pt'} {what}; train the run again .*: it rebuilds best.pt"):
        evaluate_run(config, run)
    assert _status(run)["status"] == "damaged"
    capsys.readouterr()
    _train(config, run)  # the advice
    assert "rewritten from the checkpoint of epoch 3" in capsys.readouterr().err
    assert _same(_weights(run / "best.pt"), _weights(run / "checkpoint.pt"))
    assert _status(run)["status"] == "finished"
    after = evaluate_run(config, run)
    assert after["best"]["recall_at_1"] == before["best"]["recall_at_1"] and after["best_epoch"] == 3


def test_a_lost_best_checkpoint_of_an_earlier_epoch_is_trained_again(trained, capsys):
    config, run, straight = trained
    # Make epoch 1 the best of the checkpoint's history, so that best.pt's weights are in no other file.
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["history"][0]["recall_at_1"] = 2.0
    torch.save(state, run / "checkpoint.pt")
    (run / "best.pt").unlink()
    capsys.readouterr()
    again = _train(config, run)
    assert "the weights of epoch 1 are in no other file, so the run is trained again from epoch 1" in capsys.readouterr().err
    assert _strip(again.history) == _strip(straight.history)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] + 1 == straight.best_epoch


def test_a_best_checkpoint_newer_than_the_checkpoint_is_kept(trained):
    """Written just before an interruption: the epoch that reruns writes it again, nothing is retrained."""
    config, run, _ = trained
    # Go back to the checkpoint of epoch 2 (as if epoch 3 was interrupted after best.pt was written).
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    best["epoch"] = 2
    torch.save(best, run / "best.pt")
    result = _train(config, run)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert torch.load(run / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1  # resumed, not retrained


def test_a_damaged_history_is_named_and_rewritten_by_training_again(trained):
    config, run, straight = trained
    (run / "history.json").write_text('[{"epoch": 1, "lo')
    with pytest.raises(DamagedFileError, match=rf"{run / 'history.json'} is damaged \(not valid JSON: .*\); train "
                                               r"the run again .*: it rewrites history.json from the checkpoint"):
        read_history(run)
    _train(config, run)
    assert read_history(run) == json.loads(json.dumps(straight.history))
