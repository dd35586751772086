"""Per-step training cost of each regularizer next to the plain triplet loss.

    python -m benchmarks.bench_regularizers [--backbone resnet18 --size 224 --batch 128 --steps 5]
    python -m benchmarks.bench_regularizers --size 64 --batch 64      # a quicker CPU setting

For each method (none = the plain triplet loss, mdr, l2norm, detreg, lsd, guided) the script builds what
the engine builds (mdr.engine.build_components's pieces: REGULARIZERS.create with the method's default
params, build_model with the regularizer's head and normalisation, the triplet loss, Adam over the
model's, loss's and regularizer's groups) on the same backbone, embedding size, image size and batch,
then times full training steps, exactly the engine's step:

    embeddings = model(images); loss = triplet(embeddings, labels) + reg(embeddings, labels, StepContext)
    zero_grad; backward; optimizer.step

with `time.perf_counter()` around each step. All methods are built first and stepped round-robin (step
1 of every method, then step 2, ...), so a change in the machine's load affects them alike. The first
`--warmup` steps of each are not counted; the table gives the median of the next `--steps` steps and
its ratio to the plain loss's median (also the fastest step and its ratio: the least disturbed
estimate on a busy machine), in wall-clock seconds and in process CPU seconds
(`time.process_time()`, all threads; less sensitive to other processes on a shared machine, though
OpenMP spin-waiting counts in it). Images are one fixed
random batch (uniform in [0, 1]) already in memory, `--per-class` images per class, so data loading
is not part of the measure. torch uses `--threads` threads (2).

State set up outside the timed steps, as in a run:
  * lsd: `on_epoch_end` once (the teacher is the model's copy) and steps of epoch 1 of 2, so the
    teacher's extra forward runs (in epoch 0 the term is 0 and skipped).
  * guided: the master's per-step cost does not depend on its weights, so it is marked trained
    without training; its one-off training (on_train_start) is timed separately on a few
    iterations over random images and extrapolated to the default master_epochs x master_iterations.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mdr.losses import LOSSES
from mdr.models import build_model
from mdr.regularizers import REGULARIZERS, StepContext

METHODS = ("none", "mdr", "l2norm", "detreg", "lsd", "guided")


class RandomImages(torch.utils.data.Dataset):
    """What on_train_start receives: (image CHW in [0, 1], label) and `.labels`."""

    def __init__(self, n: int, classes: int, size: int, seed: int = 0):
        self.labels = np.arange(n) % classes
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.rand(3, self.size, self.size, generator=g), int(self.labels[i])


def build(method: str, args: argparse.Namespace, num_classes: int):
    torch.manual_seed(0)
    context = {"num_classes": num_classes, "embedding_dim": args.embedding_dim}
    reg = REGULARIZERS.create(method, {}, **context)
    model = build_model(args.backbone, args.embedding_dim, reg.normalization, freeze_bn=True,
                        head_factory=reg.build_head)
    loss = LOSSES.create("triplet", {}, **context)
    groups = [{"params": list(model.parameters()), "lr": 1e-5, "weight_decay": 1e-5}]
    groups += reg.param_groups(1e-5, 1e-5)
    optimizer = torch.optim.Adam(groups, lr=1e-5)
    return model, loss, reg, optimizer


class Runner:
    """One method's model, loss, regularizer and optimizer, set up as in a run; `step()` times one step."""

    def __init__(self, method: str, args: argparse.Namespace):
        classes = args.batch // args.per_class
        self.model, self.loss_fn, self.reg, self.optimizer = build(method, args, num_classes=classes)
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(args.batch, 3, args.size, args.size, generator=g)
        self.labels = torch.arange(classes).repeat_interleave(args.per_class)
        self.epoch, self.num_epochs, self.iteration = 0, 2, 0
        if method == "lsd":
            self.reg.on_epoch_end(self.model, 0)
            self.epoch = 1
        if method == "guided":
            self.reg.master_trained.fill_(True)
        self.model.train()
        self.loss_fn.train()
        self.reg.train()

    def step(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one training step."""
        start, cpu_start = time.perf_counter(), time.process_time()
        context = StepContext(epoch=self.epoch, num_epochs=self.num_epochs, iteration=self.iteration,
                              images=self.images, model=self.model)
        embeddings = self.model(self.images)
        total = self.loss_fn(embeddings, self.labels) + self.reg(embeddings, self.labels, context)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.iteration += 1
        return time.perf_counter() - start, time.process_time() - cpu_start


def time_master(args: argparse.Namespace, iterations: int) -> tuple[float, int]:
    """Seconds per master iteration (guided's default params) and the default iteration count."""
    classes = max(2, args.batch // args.per_class)
    reg = REGULARIZERS.create("guided", {}, num_classes=classes, embedding_dim=args.embedding_dim)
    default_total = reg.master_epochs * reg.master_iterations
    reg.master_epochs, reg.master_iterations = 1, iterations
    data = RandomImages(classes * args.per_class, classes, args.size)
    start = time.perf_counter()
    reg.train_master(data, torch.device("cpu"))
    return (time.perf_counter() - start) / iterations, default_total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=224, help="image size (square crop)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--per-class", type=int, default=4, help="images per class in the batch")
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--master-iterations", type=int, default=5, help="guided: master iterations timed (0: skip)")
    args = p.parse_args(argv)
    if args.batch % args.per_class:
        p.error("--batch must be a multiple of --per-class")
    torch.set_num_threads(args.threads)
    methods = ["none"] + [m for m in args.methods if m != "none"]
    print(f"backbone {args.backbone}, {args.size} px, batch {args.batch} ({args.per_class}/class), "
          f"embedding {args.embedding_dim}, {args.threads} threads, median of {args.steps} steps after "
          f"{args.warmup} warm-up, torch {torch.__version__}", flush=True)
    runners = {m: Runner(m, args) for m in methods}
    wall: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(args.warmup + args.steps):  # round-robin, so load changes hit every method alike
        step = {m: runners[m].step() for m in methods}
        if i >= args.warmup:
            for m in methods:
                wall[m].append(step[m][0])
                cpu[m].append(step[m][1])
        print(f"  step {i + 1}{' (warm-up)' if i < args.warmup else ''}: "
              + "  ".join(f"{m} {w:.3f}" for m, (w, _) in step.items()), flush=True)
    del runners
    base_wall, base_cpu = statistics.median(wall["none"]), statistics.median(cpu["none"])
    print()
    base_min = min(wall["none"])
    print(f"{'method':13s} {'normalization':20s} {'s/step':>8s} {'x plain':>8s} {'min':>8s} {'x plain':>8s} "
          f"{'max':>8s} {'cpu s':>8s} {'x plain':>8s}")
    for m in methods:
        med, med_cpu, low = statistics.median(wall[m]), statistics.median(cpu[m]), min(wall[m])
        norm = REGULARIZERS.get(m).factory.normalization
        label = "none (plain)" if m == "none" else m
        print(f"{label:13s} {norm:20s} {med:8.3f} {med / base_wall:8.2f} {low:8.3f} {low / base_min:8.2f} "
              f"{max(wall[m]):8.3f} {med_cpu:8.3f} {med_cpu / base_cpu:8.2f}")
    if "guided" in methods and args.master_iterations > 0:
        per_it, total = time_master(args, args.master_iterations)
        print(f"\nguided master (one-off, on_train_start): {per_it:.3f} s/iteration over {args.master_iterations} "
              f"iterations -> ~{per_it * total:.0f} s for the default {total} iterations")


if __name__ == "__main__":
    main()
