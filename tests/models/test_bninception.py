"""BN-Inception: architecture, preprocessing and loading Cadene's checkpoint layout.

The reference below is written from the published architecture (Ioffe & Szegedy 2015, Table 1 as
ported to Caffe/PyTorch by Cadene's `bninception`), independently of mdr.models.bninception's table:
every layer with its channels, kernel, stride and padding, and a plain functional forward pass over a
state dict in Cadene's flat naming.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdr.models.backbones import BACKBONES
from mdr.models.bninception import BNInception, map_cadene_state_dict

# (name, in, out, kernel, stride, padding) of the stem convolutions
STEM = [
    ("conv1_7x7_s2", 3, 64, 7, 2, 3),
    ("conv2_3x3_reduce", 64, 64, 1, 1, 0),
    ("conv2_3x3", 64, 192, 3, 1, 1),
]
# name: (in, #1x1, #3x3 reduce, #3x3, #double 3x3 reduce, #double 3x3, pool, pool proj, stride)
BLOCKS = {
    "3a": (192, 64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (256, 64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (320, 0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (576, 224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (576, 192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (576, 160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (608, 96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (608, 0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (1024, 352, 192, 320, 192, 224, "max", 128, 1),
}


def reference_convs() -> list[tuple[str, int, int, int]]:
    """(cadene layer name, in, out, kernel) of every convolution, in Cadene's order."""
    convs = [(n, i, o, k) for n, i, o, k, _, _ in STEM]
    for name, (c_in, c1, c3r, c3, cdr, cd, _pool, proj, _s) in BLOCKS.items():
        p = f"inception_{name}_"
        if c1:
            convs.append((p + "1x1", c_in, c1, 1))
        convs += [(p + "3x3_reduce", c_in, c3r, 1), (p + "3x3", c3r, c3, 3),
                  (p + "double_3x3_reduce", c_in, cdr, 1), (p + "double_3x3_1", cdr, cd, 3),
                  (p + "double_3x3_2", cd, cd, 3)]
        if proj:
            convs.append((p + "pool_proj", c_in, proj, 1))
    return convs


def reference_keys(bn_shape_1c: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of Cadene's bn_inception state dict, classifier included."""
    keys = []
    for name, c_in, c_out, k in reference_convs():
        keys += [(f"{name}.weight", (c_out, c_in, k, k)), (f"{name}.bias", (c_out,))]
        bn = (1, c_out) if bn_shape_1c else (c_out,)
        keys += [(f"{name}_bn.{p}", bn) for p in ("weight", "bias", "running_mean", "running_var")]
    keys += [("last_linear.weight", (1000, 1024)), ("last_linear.bias", (1000,))]
    return keys


def distinct_state(bn_shape_1c: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor filled with its own constant (its position + 1)."""
    return {k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(reference_keys(bn_shape_1c))}


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_keys():
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("_bn.weight"):
            t = 0.8 + 0.4 * torch.rand(shape, generator=g)
        elif len(shape) == 4:
            t = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        state[key] = t
    return state


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BN-Inception in eval mode written with functional ops straight from Cadene's keys."""

    def cbr(name, x, stride=1, pad=0):
        x = F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride, pad)
        x = F.batch_norm(x, sd[f"{name}_bn.running_mean"], sd[f"{name}_bn.running_var"],
                         sd[f"{name}_bn.weight"], sd[f"{name}_bn.bias"], False, 0.0, 1e-5)
        return F.relu(x)

    x = cbr("conv1_7x7_s2", x, 2, 3)
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = cbr("conv2_3x3", cbr("conv2_3x3_reduce", x), 1, 1)
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    for name, (c_in, c1, _, _, _, _, pool, proj, s) in BLOCKS.items():
        assert x.shape[1] == c_in
        p = f"inception_{name}_"
        outs = [cbr(p + "1x1", x)] if c1 else []
        outs.append(cbr(p + "3x3", cbr(p + "3x3_reduce", x), s, 1))
        d = cbr(p + "double_3x3_1", cbr(p + "double_3x3_reduce", x), 1, 1)
        outs.append(cbr(p + "double_3x3_2", d, s, 1))
        if pool == "avg":
            q = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
        else:
            q = F.max_pool2d(x, 3, s, 1 if s == 1 else 0, ceil_mode=True)
        outs.append(cbr(p + "pool_proj", q) if proj else q)
        x = torch.cat(outs, 1)
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def model() -> BNInception:
    return BNInception().eval()


def test_registered_and_dimensions(model):
    assert "bninception" in BACKBONES
    assert model.feature_dim == 1024
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1024)
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1024)


def test_parameter_shapes_match_reference(model):
    n_reference = sum(torch.Size(s).numel() for k, s in reference_keys() if not k.startswith("last_linear"))
    n_model = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert n_model == n_reference
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(reference_convs())
    assert all(bn.eps == 1e-5 and bn.affine for bn in bns)


def test_preprocess_is_bgr_255_minus_mean(model):
    x = torch.rand(2, 3, 4, 5)
    y = model.preprocess(x)
    expected = torch.stack([x[:, 2] * 255 - 104, x[:, 1] * 255 - 117, x[:, 0] * 255 - 128], dim=1)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("bn_shape_1c", [False, True])
def test_every_tensor_lands_in_its_place(bn_shape_1c):
    cadene = distinct_state(bn_shape_1c)
    net = BNInception()
    net.load_state_dict(map_cadene_state_dict(cadene))
    loaded = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    # each model tensor is one constant, and the constants are exactly those of Cadene's file
    # (classifier excluded), each used once, with the right number of elements
    seen = {}
    for key, t in loaded.items():
        value = t.flatten()[0].item()
        assert torch.all(t == value), key
        assert value not in seen, (key, seen.get(value))
        seen[value] = key
    for key, t in cadene.items():
        if key.startswith("last_linear"):
            assert t.flatten()[0].item() not in seen
            continue
        local = seen[t.flatten()[0].item()]
        assert loaded[local].numel() == t.numel()
    assert len(seen) == len(cadene) - 2
    # spot checks of the naming scheme
    blk = net.blocks["3a"].convs
    assert blk["double_3x3_reduce"].bn.bias[0] == cadene["inception_3a_double_3x3_reduce_bn.bias"].flatten()[0]
    assert blk["pool_proj"].conv.weight[0, 0, 0, 0] == cadene["inception_3a_pool_proj.weight"][0, 0, 0, 0]
    stem = net.stem["conv1_7x7_s2"]
    assert stem.bn.running_mean[0] == cadene["conv1_7x7_s2_bn.running_mean"].flatten()[0]


def test_loaded_model_computes_reference_forward():
    sd = {k: v.double() for k, v in random_state().items()}
    net = BNInception().eval()
    net.load_state_dict(map_cadene_state_dict(sd))
    net.double()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ours, ref = net(x), reference_forward(sd, x)
    assert ours.shape == (2, 1024) and ours.dtype == torch.float64
    # In float64 any two evaluations differ by <= (sum of the layers' dot-product lengths, ~1e5) x u64
    # (1.1e-16) x the absolute network: ~1e-11 of it; 1e-6 of the output's scale leaves 1e5 for the absolute
    # network's growth, while a tensor in the wrong place changes the output by its own scale.
    assert (ours - ref).abs().max() <= 1e-6 * ref.abs().max()


def test_mapping_reports_missing_unexpected_and_shape():
    sd = distinct_state()
    del sd["inception_4b_3x3.bias"]
    sd["inception_9z_1x1.weight"] = torch.zeros(1)
    sd["conv2_3x3_bn.running_var"] = torch.zeros(7)
    with pytest.raises(ValueError) as e:
        map_cadene_state_dict(sd)
    msg = str(e.value)
    assert "blocks.4b.convs.3x3.conv.bias" in msg
    assert "inception_9z_1x1.weight" in msg
    assert "conv2_3x3_bn.running_var" in msg


def test_factory_loads_a_local_weights_file(tmp_path):
    sd = random_state(seed=3)
    sd = {k: (v.unsqueeze(0) if "_bn." in k else v) for k, v in sd.items()}  # the (1, C) variant
    path = tmp_path / "bn_inception.pth"
    torch.save(sd, path)
    net = BACKBONES.create("bninception", {"weights": str(path)})
    torch.testing.assert_close(net.blocks["5b"].convs["pool_proj"].bn.running_var,
                               sd["inception_5b_pool_proj_bn.running_var"][0])
    torch.testing.assert_close(net.stem["conv2_3x3"].conv.weight, sd["conv2_3x3.weight"])
