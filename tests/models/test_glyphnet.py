"""The glyphnet backbones: shapes and capacities, and loading the pretrain stage's file with verification."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mdr.models import BACKBONES, create_backbone
from mdr.models.glyphnet import GlyphNet
from mdr.models.pretrained_file import PretrainedWeightsError, sidecar_path
from pipeline.common import stage

NAMES = ("glyphnet-s", "glyphnet-m", "glyphnet-l")


def conv_params(net: GlyphNet) -> int:
    return sum(p.numel() for n, p in net.lower.named_parameters() if p.dim() == 4)


def test_three_registered_backbones_with_lower_and_upper_parts():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 32, 32)
    lower_dims = []
    for name in NAMES:
        assert name in BACKBONES
        net = create_backbone(name).eval()
        assert net.feature_dim == 512
        with torch.no_grad():
            low = net.lower(net.preprocess(x))
            out = net(net.preprocess(x))
        assert low.shape == (5, net.lower_dim)
        assert out.shape == (5, 512)
        assert torch.equal(out, net.upper(low))  # forward is exactly upper(lower(x))
        assert (out >= 0).all()  # upper ends in ReLU
        lower_dims.append(net.lower_dim)
    assert lower_dims == [128, 256, 384]


def test_capacities_differ_clearly():
    # 3x3 convolutions of widths w, 2w, 4w, 8w from 3 channels: 9 * (3w + 2w^2 + 8w^2 + 32w^2) weights
    expected = {name: 9 * (3 * w + 42 * w * w) for name, w in zip(NAMES, (16, 32, 48))}
    nets = {name: create_backbone(name) for name in NAMES}
    assert {name: conv_params(net) for name, net in nets.items()} == expected
    totals = [sum(p.numel() for p in nets[n].parameters()) for n in NAMES]
    assert totals[1] > 3 * totals[0] and totals[2] > 2 * totals[1]


def test_input_of_other_sizes_is_pooled_globally():
    net = create_backbone("glyphnet-s").eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 48, 48)).shape == (2, 512)


def save_stage_output(tmp_path, name="glyphnet-s", net=None):
    """A weights file where the pretrain stage writes it, with its sidecar."""
    path = tmp_path / "pretrained" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    net = net or create_backbone(name)
    torch.save(net.state_dict(), path)
    sidecar_path(path).write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    return path, net


def test_weights_round_trip(tmp_path):
    path, saved = save_stage_output(tmp_path)
    loaded = create_backbone("glyphnet-s", pretrained=True, weights=str(path))
    for (k, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert path.exists() and sidecar_path(path).exists()


def test_pretrained_without_weights_names_the_commands():
    with pytest.raises(PretrainedWeightsError) as e:
        create_backbone("glyphnet-m", pretrained=True)
    message = str(e.value)
    assert "\n" not in message
    assert "model.weights" in message and "data/pretrained/glyphnet-m.pt" in message
    assert "`snakemake data/pretrained/glyphnet-m.pt`" in message
    assert "`python -m pipeline pretrain --backbone glyphnet-m --data-root data`" in message


def test_missing_file_says_which_command_builds_it(tmp_path):
    path = tmp_path / "pretrained" / "glyphnet-l.pt"
    with pytest.raises(PretrainedWeightsError) as e:
        create_backbone("glyphnet-l", pretrained=True, weights=str(path))
    message = str(e.value)
    assert f"not found: {path}" in message and "\n" not in message
    assert f"`python -m pipeline pretrain --backbone glyphnet-l --data-root {tmp_path}`" in message


def test_missing_file_elsewhere_names_the_out_option(tmp_path):
    path = tmp_path / "mine.pt"
    with pytest.raises(PretrainedWeightsError, match=f"--backbone glyphnet-s --out {path}"):
        create_backbone("glyphnet-s", weights=str(path))


def assert_removed_with(path, *phrases, capsys):
    """Building the backbone through the stage machinery: exit 2, one line naming the file and the fault,
    and the file and its sidecar gone."""

    @stage(writes=False)
    def build(argv):
        create_backbone("glyphnet-s", pretrained=True, weights=str(path))
        return 0

    assert build([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: pretrained weights ")
    assert str(path) in err and "removed it and glyphnet-s.json" in err
    assert "the next `snakemake` (or `dvc repro`) rebuilds it" in err
    for phrase in phrases:
        assert phrase in err, err
    assert not path.exists() and not sidecar_path(path).exists()


def test_sha_mismatch_removes_the_file(tmp_path, capsys):
    path, _ = save_stage_output(tmp_path)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # still a file, now with other bytes
    path.write_bytes(bytes(data))
    assert_removed_with(path, "its sha256 ", "differs from", "recorded in", capsys=capsys)


def test_corrupt_file_without_sidecar_removes_it(tmp_path, capsys):
    path, _ = save_stage_output(tmp_path)
    sidecar_path(path).unlink()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert_removed_with(path, "torch.load cannot read it", capsys=capsys)


def test_state_dict_of_another_net_removes_it(tmp_path, capsys):
    path, _ = save_stage_output(tmp_path, net=create_backbone("glyphnet-m"))  # saved as glyphnet-s.pt
    assert_removed_with(path, "does not fit the architecture", "shapes lower.0.weight (32, 3, 3, 3) (expected "
                        "(16, 3, 3, 3))", capsys=capsys)


def test_unreadable_sidecar_removes_both(tmp_path, capsys):
    path, _ = save_stage_output(tmp_path)
    sidecar_path(path).write_text("{not json")
    assert_removed_with(path, "sidecar", "is unreadable", capsys=capsys)


def test_users_own_bad_file_is_left_in_place(tmp_path):
    path = tmp_path / "mine.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError) as e:
        create_backbone("glyphnet-s", weights=str(path))
    assert "left in place" in str(e.value) and "torch.load cannot read it" in str(e.value)
    assert path.read_bytes() == b"not a torch file"
