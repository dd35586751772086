"""The training augmentation of one paper batch, per image in the loader against in batch on the device.

    python -m benchmarks.bench_augment [--batch 128] [--size 256] [--crop 224] [--repeats 5] [--threads 2]

A batch of random uint8 images (size x size, as the prepared cache holds them) becomes `crop` x `crop` float
crops with a flip, three ways, timed pair by pair in this process (median of `--repeats`, after one warm-up):
- loader, lanczos: mdr.data.loading.train_transform as the paper profile runs it (PIL per image), one process;
- loader, bilinear: the same on tensors (torchvision's antialiased bilinear), one process;
- device: mdr.data.device_augment.DeviceCrops on the batch, on the CPU and on CUDA when there is one (after
  copying the uint8 batch there; the copy is timed too).
The loader's figure is the CPU time one worker spends per batch: `data.num_workers` workers share it, so a GPU
step shorter than (that figure / workers) waits on the loader, which the device path does not.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_paper import synchronize
from mdr.data.device_augment import DeviceCrops
from mdr.data.loading import train_transform

SCALE, RATIO = (0.16, 1.0), (3 / 4, 4 / 3)


def timed(fn, device: torch.device | None = None) -> float:
    if device is not None:
        synchronize(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        synchronize(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    ways = {}
    for interpolation in ("lanczos", "bilinear"):
        transform = train_transform(args.crop, SCALE, RATIO, True, interpolation)
        ways[f"loader, {interpolation} (1 process)"] = (lambda t=transform: torch.stack([t(x) for x in images]), None)
    crops = DeviceCrops(args.crop, SCALE, RATIO, hflip=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        ways[f"device ({device.type}, copy included)"] = (lambda d=device: crops(images.to(d, non_blocking=True)), device)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for name, (fn, device) in ways.items():
        timed(fn, device)  # warm-up
    for _ in range(args.repeats):  # pair by pair: every way once per round
        for name, (fn, device) in ways.items():
            seconds[name].append(timed(fn, device))
    anchor = statistics.median(seconds["loader, lanczos (1 process)"])
    print(f"one batch of {args.batch} images {args.size} px -> {args.crop} px crops, flip; {args.threads} threads; "
          f"median of {args.repeats}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:34s} {1000 * median:9.1f} ms   x{median / anchor:.3f} of the lanczos loader")
    if not torch.cuda.is_available():
        print("  device (cuda): not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
