"""data.augment_on: device (mdr/data/device_augment.py): uint8 batches cropped and flipped where the run trains,
with the loader path's draws and, where both upsample, its pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mdr.engine as engine
from mdr.config import ConfigError, validate_run_config
from mdr.data.device_augment import DeviceCrops
from mdr.data.loading import train_transform
from tests.conftest import tiny_config

# The loader path resizes uint8 tensors in two separable passes (rows, then columns), each rounding to uint8:
# the first pass's error (<= half a grey level) goes through the second's convex weights, which adds its own,
# so it is at most one grey level off the exact bilinear value; the device path keeps floats. Beyond that, both
# interpolate at the same points with float32 weights from coordinates below 64 px: each weight is off by at
# most ~64 x 2^-23 ~ 8e-6, four taps of values <= 1: 4e-5. So they differ by at most 1 / 255 + 4e-5; 1e-4 leaves room.
ROUNDING = 1 / 255 + 1e-4


def loader_batch(images: torch.Tensor, crop: int, scale, hflip: bool) -> torch.Tensor:
    transform = train_transform(crop, scale, (3 / 4, 4 / 3), hflip, "bilinear")
    return torch.stack([transform(image) for image in images])


def test_the_boxes_and_flips_are_the_loader_paths_draws_and_upsampling_its_pixels():
    # boxes of 20-40% of 64 x 64 (at most 47 px wide) into 48 px crops: always upsampled, where both paths
    # interpolate the same way; only the outermost output pixels (which torchvision takes from the box's edge
    # and roi_align from the image around it) may differ
    images = torch.randint(0, 256, (24, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    scale = (0.2, 0.4)
    torch.manual_seed(7)
    ours = DeviceCrops(48, scale, (3 / 4, 4 / 3), hflip=True)(images)
    torch.manual_seed(7)
    theirs = loader_batch(images, 48, scale, hflip=True)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (24, 3, 48, 48)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert float((ours[inner] - theirs[inner]).abs().max()) <= ROUNDING
    # a box off by one pixel, or a flip drawn in another order, would be far off on noise
    torch.manual_seed(8)
    other = loader_batch(images, 48, scale, hflip=True)
    assert float((ours[inner] - other[inner]).abs().mean()) > 0.1


def test_downscaled_boxes_sample_where_the_box_lies():
    # a horizontal ramp (grey level 4x at column x): bilinear sampling and averaging keep a linear image linear,
    # so output column k of box [x0, x1) holds 4 (x0 + (k + 0.5) (x1 - x0) / crop - 0.5) / 255 exactly up to float
    # rounding (values < 1, a few float32 operations: 1e-5); the first and last columns may sample outside
    # the image where it is clamped, so they are left out
    ramp = (4 * torch.arange(64)).to(torch.uint8).expand(8, 3, 64, 64).contiguous()
    crops = DeviceCrops(16, (0.5, 1.0), (3 / 4, 4 / 3), hflip=False)
    torch.manual_seed(3)
    boxes, flips = crops.draw(8, 64, 64)
    assert not flips.any()
    torch.manual_seed(3)
    out = crops(ramp)
    k = torch.arange(16, dtype=torch.float64)
    for b, (x0, _, x1, _) in enumerate(boxes.tolist()):
        assert x1 - x0 > 16  # downscaled
        expected = 4 * (x0 + (k + 0.5) * (x1 - x0) / 16 - 0.5) / 255
        got = out[b, 0].double()
        assert torch.allclose(got[:, 1:-1], expected[1:-1].expand(16, 14), atol=1e-5)


def test_the_flip_rate_is_one_half():
    crops = DeviceCrops(8, (0.5, 1.0), (3 / 4, 4 / 3), hflip=True)
    torch.manual_seed(0)
    _, flips = crops.draw(4000, 16, 16)
    # binomial(4000, 1/2): standard deviation 0.0079; 5 of them: fails with probability < 1e-6 for any seed
    assert abs(float(flips.float().mean()) - 0.5) < 0.04
    assert not DeviceCrops(8, (0.5, 1.0), (3 / 4, 4 / 3), hflip=False).draw(100, 16, 16)[1].any()


def test_a_float_batch_is_refused():
    with pytest.raises(TypeError, match="uint8 batch"):
        DeviceCrops(8, (0.5, 1.0), (3 / 4, 4 / 3), hflip=False)(torch.zeros(2, 3, 16, 16))


def test_the_engine_trains_on_the_same_crops_either_way(tiny_data, monkeypatch):
    """The first batch a run's model sees with augment_on device equals the loader path's (bilinear, no
    workers) up to ROUNDING inside the crop's border; both runs train to finite losses."""
    seen = []
    real = engine.build_components

    def build(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()) if m.training else None)
        return parts

    monkeypatch.setattr(engine, "build_components", build)
    first = {}
    for where in ("loader", "device"):
        seen.clear()
        config = tiny_config(tiny_data, **{"data.crop_interpolation": "bilinear", "data.augment_on": where,
                                           "train.epochs": 1, "optim.lr_milestones": []})
        result = engine.train(config, tiny_data.parent / where, progress=False, echo=False)
        assert np.isfinite(result.history[-1]["loss"])
        first[where] = seen[0]
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert first["device"].shape == first["loader"].shape
    assert float((first["device"][inner] - first["loader"][inner]).abs().max()) <= ROUNDING


def test_the_config_refuses_lanczos_and_cached_features_on_the_device(tiny_data):
    base = tiny_config(tiny_data).model_dump(mode="json")
    base["data"]["augment_on"] = "device"
    with pytest.raises(ConfigError, match=r"data\.augment_on device.*crop_interpolation is lanczos.*bilinear"):
        validate_run_config(base, "test")
    base["data"].update(crop_interpolation="bilinear", cached_views=2)
    base["model"]["weights"] = "w.pt"
    with pytest.raises(ConfigError, match=r"data\.augment_on device.*cached_views"):
        validate_run_config(base, "test")
    # the default, loader, is how every run trained before the field existed: ids unchanged
    loader = tiny_config(tiny_data)
    assert '"augment_on"' not in loader.canonical_json()
    device = tiny_config(tiny_data, **{"data.crop_interpolation": "bilinear", "data.augment_on": "device"})
    assert '"augment_on":"device"' in device.canonical_json()
