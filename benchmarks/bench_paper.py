"""What the paper profile costs: seconds per training iteration and per evaluation, and from those the
device-hours of each table and of the whole profile.

    python -m benchmarks.bench_paper [--devices cpu,cuda] [--threads 2] [--iterations 3] [--shapes all]

Runs: the paper profile's grid (mdr.grid.load_grid("paper"), what `python -m pipeline runs --profile paper`
lists), each run counted once per table that uses it and once in the whole profile.

Training: per training shape (backbone, crop, batch size, frozen BN; the shapes of the grid's runs), one
Triplet + MDR model built as a run builds it (mdr.engine.build_components, random initial weights: the
cost of a step does not depend on them), then `--iterations` steps (after one untimed warm-up) of the
engine's step: forward, loss + regularizer, backward, Adam step, on a float32 batch of random images
already on the device (the input pipeline is not timed). Median seconds per step. Other regularizers are
charged their shape's figure: MDR, DetReg and L2 cost little next to the backbone; LSD adds a teacher
forward and G-DML trains its master first, so their rows are lower bounds.

Evaluation, per dataset at its real test size (mdr/data/recipes EXPECTED_COUNTS; CUB 5,924, Cars 8,131,
SOP 60,502, In-Shop 14,218 queries x 12,612 gallery, CIFAR-10 10,000) and real class count:
- embed: the seconds per image of the eval-mode forward at eval.batch_size (from `--eval-batches`
  batches) times the test images;
- per-epoch retrieval: Recall@K of the profile's Ks as the engine computes it (Embeddings.metrics on the
  run's device), on random embeddings of the real size and dimension, every class with >= 2 items;
- final retrieval: Recall@K + MAP@R (one search), twice per run (best and final epoch); NMI (faiss k-means
  on the CPU, one centroid per class) only with `--nmi`, "not measured" otherwise.
A run costs epochs x iterations x step + evaluations x (embed + per-epoch retrieval) + 2 x final
retrieval. Devices: every one in `--devices` that exists; a missing one is printed as "not measured".
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.bench_recall import make_data

# Test split sizes (the recipes' published counts) and class counts (docs/datasets.md).
TEST_CLASSES = {"cub200": 100, "cars196": 98, "sop": 11316, "inshop": 3985, "cifar10": 10}
TRAIN_CLASSES = {"cub200": 100, "cars196": 98, "sop": 11318, "inshop": 3997, "cifar10": 10}
NOT_MEASURED = "not measured"


def split_sizes(dataset: str) -> tuple[int, int | None]:
    """(queries, gallery) of the dataset's test split; gallery None: each test image against all others."""
    import importlib

    counts = importlib.import_module(f"mdr.data.recipes.{dataset}").EXPECTED_COUNTS
    if "query" in counts:
        return counts["query"], counts["gallery"]
    return counts["test"], None


@dataclass(frozen=True)
class Shape:
    backbone: str
    crop: int
    batch_size: int
    freeze_bn: bool

    def __str__(self) -> str:
        return f"{self.backbone} {self.crop}px batch {self.batch_size}{'' if self.freeze_bn else ' (BN trained)'}"


def shape_of(config) -> Shape:
    return Shape(config.model.backbone, config.data.crop, config.train.batch_size, config.model.freeze_bn)


def representative(runs, shape: Shape):
    """The config to time a shape with: a Triplet + MDR run of that shape, else its first run."""
    same = [r.config for r in runs if shape_of(r.config) == shape]
    tm = [c for c in same if (c.loss.name, c.regularizer.name) == ("triplet", "mdr")]
    config = (tm or same)[0].model_copy(deep=True)
    config.model.pretrained, config.model.weights = False, None  # no download; the cost is the same
    return config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(config, device: torch.device, iterations: int) -> tuple[float, float]:
    """Median wall and CPU seconds (all threads) of one training step (see the module docstring); the step
    is the engine's. On a shared machine the CPU time is the steadier figure."""
    from mdr.engine import build_components
    from mdr.regularizers import StepContext

    parts = build_components(config, TRAIN_CLASSES[config.data.dataset], device)
    model, loss_fn, regularizer = parts.model, parts.loss, parts.regularizer
    t, crop = config.train, config.data.crop
    images = torch.randn(t.batch_size, 3, crop, crop, device=device)
    labels = (torch.arange(t.batch_size, device=device) // t.images_per_class).long()
    model.train()
    seconds, cpu = [], []
    for i in range(iterations + 1):  # the first step warms up (allocator, kernels) and is not counted
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        embeddings = model(images)
        total = loss_fn(embeddings, labels) + regularizer(
            embeddings, labels, StepContext(epoch=0, num_epochs=t.epochs, iteration=i, images=images, model=model))
        parts.optimizer.zero_grad(set_to_none=True)
        total.backward()
        parts.optimizer.step()
        synchronize(device)
        if i:
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(seconds), statistics.median(cpu)


@torch.no_grad()
def time_embedding(config, device: torch.device, batches: int) -> float:
    """Seconds per test image of the eval-mode forward at eval.batch_size."""
    from mdr.engine import build_components

    model = build_components(config, TRAIN_CLASSES[config.data.dataset], device).model.eval()
    crop, n = config.data.crop, config.eval.batch_size
    images = torch.randn(n, 3, crop, crop, device=device)
    model(images)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        model(images)
    synchronize(device)
    return (time.perf_counter() - t0) / (batches * n)


def random_embeddings(dataset: str, dim: int, seed: int = 0):
    """mdr.retrieval.Embeddings of the dataset's test size and class count (random, float32)."""
    from mdr.retrieval import Embeddings

    n_query, n_gallery = split_sizes(dataset)
    x, y, _ = make_data(n_query + (n_gallery or 0), dim, TEST_CLASSES[dataset], noise=2.2, seed=seed)
    if n_gallery is None:
        return Embeddings(x, y)
    return Embeddings(x[:n_query], y[:n_query], x[n_query:], y[n_query:])


def time_retrieval(config, device: torch.device, nmi: bool) -> dict[str, float | str]:
    from mdr.metrics import nmi as nmi_score

    emb = random_embeddings(config.data.dataset, config.model.embedding_dim)
    ks = config.eval.ks
    t0 = time.perf_counter()
    emb.metrics(ks, device=device)  # per epoch, as the engine: Recall@K
    synchronize(device)
    t1 = time.perf_counter()
    emb.metrics(ks, full=True, device=device, nmi=False)  # final: Recall@K + MAP@R from one search
    synchronize(device)
    t3 = time.perf_counter()
    out: dict[str, float | str] = {"epoch_retrieval": t1 - t0, "final_retrieval": t3 - t1, "nmi": NOT_MEASURED}
    if nmi:  # faiss k-means on the CPU whatever the device
        t4 = time.perf_counter()
        nmi_score(emb.query, emb.query_labels)
        out["nmi"] = time.perf_counter() - t4
    return out


def run_seconds(config, step: float, per_image: float, retrieval: dict[str, float | str]) -> float:
    t, e = config.train, config.eval
    n_query, n_gallery = split_sizes(config.data.dataset)
    evaluations = len({*range(e.every, t.epochs + 1, e.every), t.epochs})
    embed = per_image * (n_query + (n_gallery or 0) + e.train_subset)
    final = 2 * (retrieval["final_retrieval"] + (retrieval["nmi"] if isinstance(retrieval["nmi"], float) else 0.0))
    return t.epochs * t.iterations_per_epoch * step + evaluations * (embed + retrieval["epoch_retrieval"]) + final


def fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="cpu,cuda", help="comma list of torch devices to measure on")
    p.add_argument("--threads", type=int, default=2, help="torch and faiss threads on the CPU")
    p.add_argument("--iterations", type=int, default=3, help="timed training steps per shape (after 1 warm-up)")
    p.add_argument("--eval-batches", type=int, default=1, help="timed eval-mode forward batches per shape")
    p.add_argument("--shapes", default="all",
                   help="'all' (every training shape of the grid), 'paper' (BN-Inception 224 px at batch 128 "
                        "and 256: CUB/Cars and SOP/In-Shop), or a comma list of indices of the printed shapes")
    p.add_argument("--datasets", default="all", help="'all' or a comma list: the test sets to time retrieval on")
    p.add_argument("--nmi", action="store_true", help="also time NMI (faiss k-means on the CPU; minutes on SOP)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.eval_batches < 1:
        p.error("--iterations and --eval-batches must be at least 1")  # one line on stderr, exit 2

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    from mdr.grid import load_grid

    grid = load_grid("paper")
    runs = list(grid.runs.values())
    shapes = sorted({shape_of(r.config) for r in runs}, key=str)
    print(f"paper profile: {len(runs)} runs, {len(grid.tables)} tables, {len(shapes)} training shapes")
    print(f"threads: {args.threads} (torch, faiss); cpu count {os.cpu_count()}; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs share these cores)")
    for i, s in enumerate(shapes):
        print(f"  shape {i}: {s}: {sum(shape_of(r.config) == s for r in runs)} runs")
    if args.shapes == "paper":
        chosen = [s for s in shapes if s.backbone == "bninception" and s.crop == 224]
    elif args.shapes == "all":
        chosen = shapes
    else:
        chosen = [shapes[int(i)] for i in args.shapes.split(",")]
    datasets = sorted({r.config.data.dataset for r in runs})
    if args.datasets != "all":
        datasets = [d for d in datasets if d in args.datasets.split(",")]

    available = {"cpu": True, "cuda": torch.cuda.is_available()}
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    measured = [d for d in devices if available.get(d, False)]
    for d in devices:
        if d not in measured:
            print(f"device {d}: {NOT_MEASURED} (none here)")
    if "cuda" in measured:
        print(f"cuda: {torch.cuda.get_device_name(0)}")

    step: dict[tuple[str, Shape], float] = {}
    per_image: dict[tuple[str, Shape], float] = {}
    retrieval: dict[tuple[str, str], dict[str, float | str]] = {}
    for d in measured:
        device = torch.device(d)
        for s in chosen:
            config = representative(runs, s)
            step[d, s], cpu = time_training(config, device, args.iterations)
            per_image[d, s] = time_embedding(config, device, args.eval_batches)
            print(f"[{d}] {s}: {step[d, s]:.3f} s/iteration (CPU {cpu:.3f} s), {per_image[d, s] * 1e3:.2f} ms/test "
                  "image", flush=True)
        for ds in datasets:
            config = next(r.config for r in runs if r.config.data.dataset == ds)
            retrieval[d, ds] = time_retrieval(config, device, args.nmi)
            r = retrieval[d, ds]
            print(f"[{d}] {ds} retrieval: per epoch {r['epoch_retrieval']:.2f} s, final {r['final_retrieval']:.2f} s, "
                  f"NMI {fmt(r['nmi'], '.2f')}", flush=True)

    print()
    rows = []
    for s in shapes:
        rows.append([str(s)] + [fmt(step.get((d, s), NOT_MEASURED), ".3f") for d in devices])
    print("seconds per training iteration")
    print(table(["shape"] + devices, rows))
    print()
    rows = []
    for ds in sorted({r.config.data.dataset for r in runs}):
        n_query, n_gallery = split_sizes(ds)
        config = next(r.config for r in runs if r.config.data.dataset == ds)
        size = f"{n_query} x {n_gallery}" if n_gallery else f"{n_query}"
        cells = []
        for d in devices:
            if (d, ds) not in retrieval:
                cells.append(NOT_MEASURED)
                continue
            r, img = retrieval[d, ds], per_image.get((d, shape_of(config)))
            embed = f"embed {img * (n_query + (n_gallery or 0)):.1f} + " if img else "embed not measured + "
            cells.append(f"{embed}R@K {r['epoch_retrieval']:.2f} | final {r['final_retrieval']:.2f} "
                         f"+ NMI {fmt(r['nmi'], '.1f')}")
        rows.append([ds, size, f"{TEST_CLASSES[ds]}", ",".join(map(str, config.eval.ks))] + cells)
    print("seconds per evaluation (per epoch: embed the test set + Recall@K; final, twice per run: Recall@K + MAP@R)")
    print(table(["dataset", "test set", "classes", "Ks"] + devices, rows))
    print()

    def hours(d: str, ids) -> str:
        total, missing = 0.0, 0
        for rid in ids:
            c = grid.runs[rid].config
            key = (d, shape_of(c))
            if key not in step or (d, c.data.dataset) not in retrieval:
                missing += 1
                continue
            total += run_seconds(c, step[key], per_image[key], retrieval[d, c.data.dataset])
        if missing == len(ids):
            return NOT_MEASURED
        return f"{total / 3600:.1f}" + (f" ({missing} runs not measured)" if missing else "")

    rows = []
    for name, tab in grid.tables.items():
        ids = sorted({i for cell in tab.cells for i in cell.run_ids})
        rows.append([name, str(len(ids))] + [hours(d, ids) for d in devices])
    rows.append(["whole profile (each run once)", str(len(runs))] + [hours(d, list(grid.runs)) for d in devices])
    print("device-hours (a run shared by tables counts in each of them)")
    print(table(["table", "runs"] + devices, rows))


if __name__ == "__main__":
    main()
