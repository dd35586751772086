"""The training loop: one loop for every loss x regularizer x backbone (DESIGN.md principle 3).

Per epoch: `iterations_per_epoch` m-per-class batches, then the learning-rate step, an evaluation
on the test split (Recall@K; Figure 4b also on a training subset), a checkpoint of everything needed
to continue exactly (model, optimizer, scheduler, loss and regularizer state, RNG states, history,
config) and, when the epoch is the best so far, a copy of the weights as best.pt. The test embeddings
of the best and of the final epoch are kept too (mdr/retrieval.py), for the evaluate stage.

Randomness is re-seeded from (seed, epoch) at the start of every epoch, so an epoch's batches and
augmentations do not depend on how the run got there: a resumed run continues bit-for-bit.
Logging and tracking are callbacks; the run's truth is its files.

Arithmetic (train.precision): fp32 as the authors; tf32 lets CUDA matmuls and cuDNN convolutions of the
training use TF32; bf16 runs each training step's forward, loss and regularizer under bfloat16 autocast.
Evaluation embeds in float32 whatever the run's precision, and mdr/metrics.py retrieves in float32.
The process's settings are restored after each run.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mdr import checkpoint
from mdr.checkpoint import CheckpointMismatchError  # noqa: F401  (raised here; callers import it from mdr.engine)
from mdr.config import RunConfig
from mdr.data.device_augment import DeviceCrops
from mdr.data.loading import CachedImages, worker_start_method
from mdr.data.sampler import MPerClassBatchSampler
from mdr.features import CachedFeatureSet, CachedFeatureViews, UpperBackbone, lower_output_dim, split_backbone
from mdr.io import atomic_torch_save, atomic_write_text
from mdr.losses import LOSSES
from mdr.models import EmbeddingModel, build_model, create_backbone
from mdr.regularizers import REGULARIZERS, Regularizer, StepContext
from mdr.retrieval import BEST_EMBEDDINGS, FINAL_EMBEDDINGS, Embeddings
from mdr.run_data import eval_set, evaluation_sets, load_prepared, train_set_of, training_rows
from mdr.runtime import resolve_device, set_threads


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run is stopped and marked failed."""


class Callback(Protocol):
    def on_train_start(self, config: RunConfig, run_dir: Path, start_epoch: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def on_train_end(self, status: str, summary: dict[str, Any] | None, error: str | None) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    summary: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


@dataclass
class Components:
    model: EmbeddingModel
    loss: nn.Module
    regularizer: Regularizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    pretrained_from: dict[str, Any] | None = None  # the weights file the backbone started from (weights_record)


def build_components(config: RunConfig, num_classes: int, device: torch.device) -> Components:
    m = config.model
    net = create_backbone(m.backbone, m.pretrained, m.weights)
    pretrained_from = net.pretrained_from
    # input_dim: what the model is fed when it is not images (cached lower-part features), for regularizers
    # with a network of their own on the inputs (Guided DML's master)
    input_dim = None
    if config.data.cached_views:  # the lower part lives in the feature cache: train the upper part only
        lower, upper = split_backbone(net, m.backbone)
        input_dim = lower_output_dim(net, lower, config.data.crop)
        net = UpperBackbone(upper, net.feature_dim)
    context = {"num_classes": num_classes, "embedding_dim": m.embedding_dim, "input_dim": input_dim}
    regularizer = REGULARIZERS.create(config.regularizer.name, config.regularizer.params, **context)
    model = build_model(net, m.embedding_dim, config.normalization, m.freeze_bn,
                        head_factory=regularizer.build_head, channels_last=m.channels_last).to(device)
    regularizer = regularizer.to(device)
    loss = LOSSES.create(config.loss.name, config.loss.params, **context).to(device)
    o = config.optim
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": o.lr, "weight_decay": o.weight_decay}]
    loss_groups = getattr(loss, "param_groups", None)
    if callable(loss_groups):
        groups += loss_groups(o.lr)
    elif any(True for _ in loss.parameters()):
        groups.append({"params": list(loss.parameters()), "lr": o.lr, "weight_decay": o.weight_decay})
    groups += regularizer.param_groups(o.lr, o.weight_decay)
    optimizer = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=o.lr_milestones, gamma=o.lr_gamma)
    return Components(model, loss, regularizer, optimizer, scheduler, pretrained_from)


@contextmanager
def float32_arithmetic(tf32: bool) -> Iterator[None]:
    """Within the block, CUDA matmuls and cuDNN convolutions in TF32 (`tf32`) or in full float32; the
    process's settings are restored after. torch's legacy switches, as mdr/metrics.py uses (torch refuses
    to read the precision once both its APIs have set it); on a CPU they change nothing but oneDNN matmuls
    on the few processors with TF32 units, which is why tf32 is applied on CUDA devices only."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def _training_arithmetic(config: RunConfig, device: torch.device):
    """The float32 settings of the run's training (train.precision tf32 takes effect on CUDA only)."""
    return float32_arithmetic(tf32=config.train.precision == "tf32" and device.type == "cuda")


@torch.no_grad()
def embed(model: EmbeddingModel, dataset: CachedImages, batch_size: int, device: torch.device,
          desc: str | None = None, num_workers: int = 0) -> np.ndarray:
    """Embeddings of a whole set, in float32 whatever the run trained in; with `desc`, a transient progress
    bar of its batches (evaluation). Images are decoded by `num_workers` loader processes (cached features
    are a tensor in memory: read in this process)."""
    model.eval()
    workers = 0 if isinstance(dataset, CachedFeatureSet) else num_workers
    pinned = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pinned,
                        multiprocessing_context=worker_start_method() if workers else None)
    batches = tqdm(loader, desc=desc, leave=False, disable=desc is None, dynamic_ncols=True)
    with float32_arithmetic(tf32=False):
        out = [model(images.to(device, non_blocking=pinned)).float().cpu() for images, _ in batches]
    return torch.cat(out).numpy()


def embed_sets(model: EmbeddingModel, sets: dict[str, CachedImages], batch_size: int,
               device: torch.device, progress: bool = False, num_workers: int = 0) -> Embeddings:
    """Embeddings of evaluation sets as made by `evaluation_sets` ({'test'} or {'query', 'gallery'})."""
    def run(name: str) -> np.ndarray:
        return embed(model, sets[name], batch_size, device, f"embedding {name}" if progress else None, num_workers)

    if "query" in sets:
        return Embeddings(run("query"), sets["query"].labels, run("gallery"), sets["gallery"].labels)
    return Embeddings(run("test"), sets["test"].labels)


def retrieval_metrics(model: EmbeddingModel, sets: dict[str, CachedImages], ks: list[int], batch_size: int,
                      device: torch.device, full: bool = False, num_workers: int = 0) -> dict[str, float]:
    """Recall@K (and with `full`, MAP@R and NMI) of a model on prepared evaluation sets."""
    return embed_sets(model, sets, batch_size, device, num_workers=num_workers).metrics(ks, full, device)


def _rng_state() -> dict[str, Any]:
    """The RNG states, numpy's as plain lists: torch.load(weights_only=True) reads no numpy arrays."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state()}


def train(config: RunConfig, run_dir: str | os.PathLike, *, resume: bool = True, progress: bool = True,
          echo: bool = True, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> TrainResult:
    """Train (or continue) the run described by `config` in `run_dir`; see the module docstring.

    progress: a tqdm bar per epoch; echo: one line per epoch (loss, Recall@1, best so far)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    if config.train.precision == "tf32" and device.type != "cuda":
        _warn(f"train.precision tf32 switches CUDA matmuls and convolutions to TF32: on {device.type} this run "
              f"computes in float32, as fp32 would (its id still says tf32)")
    # Before anything else: a damaged or crafted checkpoint is reported before the data is even opened.
    state = _resume_state(config, run_dir, device) if resume else None
    prepared = load_prepared(config)
    train_rows = training_rows(prepared, config)
    num_classes = int(prepared.manifest["label"].max()) + 1
    seed_everything(config.seed)
    parts = build_components(config, num_classes, device)
    if echo and parts.pretrained_from is not None:
        tqdm.write(f"[{run_dir.name}] {_weights_line(parts.pretrained_from)}")
    model, loss_fn, regularizer = parts.model, parts.loss, parts.regularizer

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        regularizer.load_state_dict(state["regularizer"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        if echo and start_epoch >= config.train.epochs:  # nothing left to train: say where its outputs are
            tqdm.write(f"[{run_dir.name}] already complete ({start_epoch}/{config.train.epochs} epochs): its "
                       f"checkpoints and history are in {run_dir} (`pipeline train --no-resume` trains it afresh)")
        elif echo:
            tqdm.write(f"[{run_dir.name}] resuming after epoch {start_epoch} of {config.train.epochs}")
        # The checkpoint's history is the truth: this also repairs a damaged or stale history.json.
        atomic_write_text(run_dir / checkpoint.HISTORY, json.dumps(history, indent=1) + "\n")
    atomic_write_text(run_dir / "config.yaml", config_yaml(config))
    write_status(run_dir, "running")
    for cb in callbacks:
        cb.on_train_start(config, run_dir, start_epoch)

    train_set = train_set_of(prepared, config, train_rows, progress)
    eval_sets = evaluation_sets(prepared, config)
    train_eval_set = None
    if config.eval.train_subset:
        pick = np.random.default_rng(config.seed).permutation(len(train_rows))[: config.eval.train_subset]
        train_eval_set = {"test": eval_set(prepared, config, train_rows.iloc[np.sort(pick)])}
    if start_epoch == 0:
        with _training_arithmetic(config, device):
            regularizer.on_train_start(model, train_set, device)

    epochs = config.train.epochs
    try:
        for epoch in range(start_epoch, epochs):
            with _training_arithmetic(config, device):
                record = _train_epoch(config, parts, train_set, epoch, device, progress)
            evaluate_now = (epoch + 1) % config.eval.every == 0 or epoch + 1 == epochs
            embeddings = None
            workers = config.data.num_workers
            if evaluate_now:
                embeddings = embed_sets(model, eval_sets, config.eval.batch_size, device, progress, workers)
                record.update(embeddings.metrics(config.eval.ks, device=device))
                if train_eval_set is not None:
                    train_metrics = retrieval_metrics(model, train_eval_set, config.eval.ks, config.eval.batch_size,
                                                      device, num_workers=workers)
                    record.update({f"train_{k}": v for k, v in train_metrics.items()})
            history.append(record)
            regularizer.on_epoch_end(model, epoch)
            is_best = evaluate_now and _is_best(history, record)
            state = {
                "epoch": epoch, "fingerprint": config.fingerprint(), "config": config.model_dump(mode="json"),
                "model": model.state_dict(), "loss": loss_fn.state_dict(), "regularizer": regularizer.state_dict(),
                "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                "rng": _rng_state(), "history": history,
            }
            # Embeddings first: after an interruption between these writes, the epoch reruns identically.
            if embeddings is not None and is_best:
                embeddings.save(run_dir / BEST_EMBEDDINGS, epoch=epoch + 1, fingerprint=config.fingerprint())
            if embeddings is not None and epoch + 1 == epochs:
                embeddings.save(run_dir / FINAL_EMBEDDINGS, epoch=epoch + 1, fingerprint=config.fingerprint())
            if is_best:
                _save_best(state, run_dir)
            checkpoint.save(state, run_dir)
            atomic_write_text(run_dir / checkpoint.HISTORY, json.dumps(history, indent=1) + "\n")
            if echo:
                tqdm.write(f"[{run_dir.name}] " + _epoch_line(config, record, history))
            for cb in callbacks:
                cb.on_epoch_end(record)
    except BaseException as e:  # KeyboardInterrupt too: the status must say the run did not finish
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        write_status(run_dir, status, error=f"{type(e).__name__}: {e}")
        for cb in callbacks:
            cb.on_train_end(status, None, f"{type(e).__name__}: {e}")
        raise
    best_epoch = _best_epoch(history)
    summary: dict[str, Any] = {"best_epoch": best_epoch, "epochs": epochs}
    if parts.pretrained_from is not None:
        summary["pretrained_weights"] = parts.pretrained_from
    write_status(run_dir, "finished")
    for cb in callbacks:
        cb.on_train_end("finished", summary, None)
    return TrainResult(run_dir, history, best_epoch, summary)


def _resume_state(config: RunConfig, run_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint to continue from (mdr/checkpoint.py), or None to train from epoch 1. A best.pt that
    cannot be the history's best epoch is rewritten from the checkpoint when that is the best epoch;
    otherwise its weights are nowhere else, so the run is trained again from epoch 1 (deterministic)."""
    fingerprint = config.fingerprint()
    try:
        state = checkpoint.resume_state(run_dir, fingerprint, device, _warn)
        if state is None or not any("recall_at_1" in r for r in state["history"]):
            return state  # nothing evaluated yet, so no best.pt to have
        best_epoch, resumed_epoch = _best_epoch(state["history"]), state["epoch"] + 1
        problem = checkpoint.best_problem(run_dir, fingerprint, device, best_epoch, resumed_epoch)
    except checkpoint.UnusableCheckpointError as e:
        write_status(run_dir, "damaged", error=str(e))
        raise
    if problem is None:
        return state
    if best_epoch == resumed_epoch:
        _warn(f"{problem}: rewritten from the checkpoint of epoch {best_epoch}")
        _save_best(state, run_dir)
        return state
    _warn(f"{problem}: the weights of epoch {best_epoch} are in no other file, so the run is trained again "
          f"from epoch 1")
    return None


def _save_best(state: dict[str, Any], run_dir: Path) -> None:
    atomic_torch_save({k: state[k] for k in ("epoch", "fingerprint", "config") + checkpoint.BEST_KEYS[1:]},
                      run_dir / checkpoint.BEST)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _train_epoch(config: RunConfig, parts: Components, train_set: CachedImages, epoch: int,
                 device: torch.device, progress: bool) -> dict[str, Any]:
    model, loss_fn, regularizer, optimizer = parts.model, parts.loss, parts.regularizer, parts.optimizer
    t = config.train
    seed = epoch_seed(config.seed, epoch)
    seed_everything(seed)
    sampler = MPerClassBatchSampler(train_set.labels, t.batch_size, t.images_per_class, t.iterations_per_epoch, seed)
    d = config.data
    workers = d.num_workers
    # data.augment_on device: train_set_of left the images uint8 (the config refuses it with cached features)
    augment = DeviceCrops(d.crop, d.crop_scale, d.crop_ratio, d.hflip) if d.augment_on == "device" else None
    if isinstance(train_set, CachedFeatureViews):  # cached features: a batch is one indexing, no loader
        loader: Any = (train_set.batch(np.asarray(positions)) for positions in sampler)
    else:
        loader = DataLoader(
            train_set, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            multiprocessing_context=worker_start_method() if workers else None,
        )
    model.train()
    loss_fn.train()
    regularizer.train()
    sums: dict[str, float] = {}
    bf16 = t.precision == "bf16"
    started = time.perf_counter()
    bar = tqdm(loader, total=t.iterations_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
               disable=not progress, dynamic_ncols=True)
    for i, (images, labels) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        context = StepContext(epoch=epoch, num_epochs=t.epochs, iteration=epoch * t.iterations_per_epoch + i,
                              images=images, model=model)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            embeddings = model(images)
            if not bool(torch.isfinite(embeddings).all()):  # before the loss: the samplers cannot draw from NaN
                raise _non_finite("the embeddings became non-finite", epoch, i)
            # The loss and regularizer see float32 embeddings (a no-op in fp32); their pairwise distances are
            # float32 under autocast too (mdr/losses/distances.py), their own layers run in bfloat16.
            embeddings = embeddings.float()
            metric_loss = loss_fn(embeddings, labels)
            reg_loss = regularizer(embeddings, labels, context)
            total = metric_loss + reg_loss
        if not torch.isfinite(total):
            raise _non_finite(f"loss became {total.item()}", epoch, i,
                              f" (metric loss {metric_loss.item():.4g}, regularizer {reg_loss.item():.4g}, "
                              f"terms {regularizer.terms()})")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step_terms = {"loss": total.item(), "metric_loss": metric_loss.item(), "regularizer_loss": reg_loss.item(),
                      **{f"reg_{k}": v for k, v in regularizer.terms().items()},
                      **{f"loss_{k}": v for k, v in (loss_fn.terms() if hasattr(loss_fn, "terms") else {}).items()}}
        for k, v in step_terms.items():
            sums[k] = sums.get(k, 0.0) + v
        if i % 10 == 0:
            bar.set_postfix(loss=f"{step_terms['loss']:.4f}")
    parts.scheduler.step()
    n = t.iterations_per_epoch
    record: dict[str, Any] = {"epoch": epoch + 1, "iteration": (epoch + 1) * n,
                              "seconds": round(time.perf_counter() - started, 3),
                              "lr": optimizer.param_groups[0]["lr"]}
    record.update({k: v / n for k, v in sums.items()})
    record.update({f"reg_{k}": v for k, v in regularizer.describe().items()})
    return record


def _non_finite(what: str, epoch: int, i: int, detail: str = "") -> NonFiniteLossError:
    return NonFiniteLossError(
        f"{what} at epoch {epoch + 1}, iteration {i + 1}{detail}. The run is stopped; checkpoints up to epoch "
        f"{epoch} are kept. Lower optim.lr or the regularizer's weight, or check the data, then rerun (it "
        f"resumes from the last checkpoint)."
    )


def _is_best(history: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    return _best_epoch(history) == record["epoch"]


def _best_epoch(history: list[dict[str, Any]]) -> int:
    """The epoch with the highest test Recall@1 (first one on ties); what the authors' code reports."""
    scored = [r for r in history if "recall_at_1" in r]
    if not scored:
        return history[-1]["epoch"] if history else 0
    return max(scored, key=lambda r: (r["recall_at_1"], -r["epoch"]))["epoch"]


def _epoch_line(config: RunConfig, record: dict[str, Any], history: list[dict[str, Any]]) -> str:
    line = f"epoch {record['epoch']}/{config.train.epochs}  loss {record['loss']:.4f}  {record['seconds']:.1f}s"
    if "recall_at_1" in record:
        best = _best_epoch(history)
        best_r1 = next(r["recall_at_1"] for r in history if r["epoch"] == best)
        line += f"  R@1 {100 * record['recall_at_1']:.2f}  (best {100 * best_r1:.2f} @ epoch {best})"
    return line


def _weights_line(record: dict[str, Any]) -> str:
    checked = f"checked against {record['verified']}" if record["verified"] else "nothing to check it against"
    return f"pretrained weights: {record['file']} (sha256 {record['sha256']}; {checked})"


def config_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def write_status(run_dir: Path, status: str, error: str | None = None) -> None:
    payload = {"status": status}
    if error:
        payload["error"] = error
    atomic_write_text(run_dir / "status.json", json.dumps(payload, indent=1) + "\n")


