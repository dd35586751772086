"""The training augmentation done on the run's device, in batch (`data.augment_on: device`).

The loader then sends the cached uint8 images as they are (a quarter of float32's bytes, pinned when the
device is a GPU), and `DeviceCrops` does RandomResizedCrop + horizontal flip + [0, 1] scaling of the whole
batch where it trains. What stays the same as `mdr.data.loading.train_transform` (`augment_on: loader`):
- the boxes and the flips: drawn on the CPU by torchvision's own code (v2.RandomResizedCrop.make_params,
  the flip's `torch.rand(1) < p`), image by image in batch order from the global RNG: with a loader of
  no workers, the same draws as the loader path makes, in the same order (tests/data/test_device_augment.py);
- upsampling (a box smaller than the crop): bilinear at the output pixels' centres, as torchvision's.
What differs: a box larger than the crop is shrunk by `torchvision.ops.roi_align` averaging
ceil(box / crop) x ceil(box / crop) bilinear samples per output pixel, not torchvision's antialiased
triangle filter; and pixels at a box's edge are interpolated with the image around the box, where
torchvision's crop-then-resize repeats the box's edge pixels. Lanczos (the authors' PIL resampling) has no
batched form: the config refuses it with `device`.
"""
from __future__ import annotations

import torch


class DeviceCrops:
    """RandomResizedCrop(crop, scale, ratio) and an optional horizontal flip of a uint8 batch (B, C, S, S),
    on the batch's device; returns float32 (B, C, crop, crop) in [0, 1]."""

    def __init__(self, crop: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool):
        from torchvision.transforms import v2

        self.crop = crop
        self.hflip = hflip
        self._boxes = v2.RandomResizedCrop(crop, scale=scale, ratio=ratio)

    def draw(self, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, in order: its box (left, top, right, bottom in pixels) and whether it is flipped,
        drawn as the loader path's transforms draw them (crop, then flip, per image)."""
        shape = torch.empty(3, height, width, device="meta")  # make_params reads only the size
        boxes, flips = [], []
        for _ in range(batch):
            p = self._boxes.make_params([shape])
            boxes.append((p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]))
            flips.append(bool(torch.rand(1) < 0.5) if self.hflip else False)  # v2.RandomHorizontalFlip's draw
        return torch.tensor(boxes, dtype=torch.float32), torch.tensor(flips)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"DeviceCrops takes a uint8 batch (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        b, _, h, w = images.shape
        boxes, flips = self.draw(b, h, w)
        index = torch.arange(b, dtype=torch.float32).unsqueeze(1)
        rois = torch.cat([index, boxes], dim=1).to(images.device)
        # aligned=True: pixel i covers [i, i + 1), so output pixel k of a box [x0, x1) samples at
        # x0 + (k + 0.5) (x1 - x0) / crop, as torchvision's resize (align_corners=False) does
        out = roi_align(images.float(), rois, output_size=(self.crop, self.crop), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        flips = flips.to(images.device)
        if bool(flips.any()):
            out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
        return out.div_(255.0)
