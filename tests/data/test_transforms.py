"""The training crop's resampling: PIL's Lanczos as the authors' code, or torchvision's bilinear."""
import numpy as np
import pytest
import torch
from PIL import Image

from mdr.data.loading import test_transform as centre_transform
from mdr.data.loading import train_transform


def photo_like(size=48, seed=0):
    """Smooth gradients plus sharp edges: resampling filters differ on both."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.stack([xx * 255 / size, yy * 255 / size, ((xx // 6 + yy // 6) % 2) * 255], axis=2)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def test_lanczos_crop_is_pils_lanczos_resize():
    img = photo_like()
    tensor = torch.from_numpy(img).permute(2, 0, 1)
    whole = train_transform(32, (1.0, 1.0), (1.0, 1.0), hflip=False, interpolation="lanczos")  # crop = image
    got = (whole(tensor) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    want = np.array(Image.fromarray(img).resize((32, 32), Image.LANCZOS))
    assert np.array_equal(got, want)
    bilinear = train_transform(32, (1.0, 1.0), (1.0, 1.0), hflip=False, interpolation="bilinear")(tensor)
    assert not torch.equal((bilinear * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(want))


@pytest.mark.parametrize("interpolation", ["lanczos", "bilinear"])
def test_both_give_float_crops_of_the_size_and_flip_half_the_time(interpolation):
    img = torch.from_numpy(photo_like()).permute(2, 0, 1)
    t = train_transform(24, (0.16, 1.0), (3 / 4, 4 / 3), hflip=True, interpolation=interpolation)
    torch.manual_seed(0)
    outs = [t(img) for _ in range(400)]
    assert all(o.shape == (3, 24, 24) and o.dtype == torch.float32 for o in outs)
    assert 0.0 <= min(float(o.min()) for o in outs) and max(float(o.max()) for o in outs) <= 1.0
    # the red channel grows left to right: a flipped crop has it falling
    flipped = sum(float(o[0, :, :4].mean()) > float(o[0, :, -4:].mean()) for o in outs)
    assert 160 <= flipped <= 240  # Binomial(400, 1/2): mean 200, std 10; a 4-sigma band


def test_test_transform_is_a_centre_crop():
    img = torch.from_numpy(photo_like()).permute(2, 0, 1)
    out = centre_transform(32)(img)
    assert torch.equal((out * 255).round().to(torch.uint8), img[:, 8:40, 8:40])
