"""Final evaluation of a trained run: Recall@K, MAP@R and NMI at the best and at the final epoch,
and the test class centres of the reported model (Figure 3).

eval.protocol (docs/protocols.md): under `published` the best epoch is the best test epoch, as the authors'
code reports it. Under `fair` training evaluated the validation classes, so best.pt is the epoch of the best
validation Recall@1 and the embeddings kept by training are validation embeddings: the test split is
embedded here, once per reported checkpoint, and metrics.json also says the protocol and the validation
Recall@1 that chose the epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdr import checkpoint
from mdr.config import RunConfig
from mdr.io import DamagedFileError
from mdr.retrieval import BEST_EMBEDDINGS, FINAL_EMBEDDINGS, Embeddings
from mdr.runtime import resolve_device, set_threads


def evaluate_run(config: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Full metrics of the best and the final epoch. They come from the test embeddings that training
    kept for those epochs; when those are missing or stale (a run folder from an older version), the
    test set is embedded again from the checkpoints, which gives the same numbers."""
    if config.eval.protocol == "fair":
        return _evaluate_fair(config, Path(run_dir))
    run_dir = Path(run_dir)
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    fingerprint = config.fingerprint()
    out: dict[str, Any] = {"fingerprint": fingerprint}
    embeddings: dict[str, Embeddings] = {}
    model, sets = None, None
    for which, name, kept in (("final", checkpoint.CHECKPOINT, FINAL_EMBEDDINGS), ("best", checkpoint.BEST, BEST_EMBEDDINGS)):
        state = _checkpoint(run_dir, name, fingerprint, device)
        epoch = out[f"{which}_epoch"] = int(state["epoch"]) + 1
        if which == "final":
            history = state["history"]
        if which == "best" and epoch == out["final_epoch"]:
            out["best"], embeddings["best"] = out["final"], embeddings["final"]  # same weights: reuse
            continue
        emb = Embeddings.load(run_dir / kept, epoch=epoch, fingerprint=fingerprint)
        if emb is None:
            from mdr.engine import build_components, embed_sets
            from mdr.run_data import evaluation_sets, load_prepared

            if model is None:
                prepared = load_prepared(config)
                num_classes = int(prepared.manifest["label"].max()) + 1
                model = build_components(config, num_classes, device).model
                sets = evaluation_sets(prepared, config)
            model.load_state_dict(state["model"])
            emb = embed_sets(model, sets, config.eval.batch_size, device, num_workers=config.data.num_workers)
        out[which], embeddings[which] = emb.metrics(config.eval.ks, full=True, device=device), emb
    _finish(config, run_dir, out, history, embeddings["best"])
    return out


def _finish(config: RunConfig, run_dir: Path, out: dict[str, Any], history: list[dict[str, Any]],
            best: Embeddings) -> None:
    """The training cost per iteration in both epochs' metrics, and the test class centres of the best epoch."""
    # Training cost, for the regularizers table: mean wall time per iteration over the run's epochs.
    per_iteration = float(np.mean([r["seconds"] / config.train.iterations_per_epoch for r in history]))
    for which in ("best", "final"):
        out[which] = {**out[which], "seconds_per_iteration": per_iteration}
    emb, labels = best.query, best.query_labels
    classes = np.unique(labels)
    np.save(run_dir / "class_centers.npy", np.stack([emb[labels == c].mean(axis=0) for c in classes]))


def reported_sets(prepared: Any, config: RunConfig) -> dict[str, Any]:
    """The test split(s) as evaluation sees them ({'test'} or {'query', 'gallery'}), whatever
    data.validation_classes holds out of the training classes."""
    from mdr.run_data import eval_set

    return {split: eval_set(prepared, config, prepared.split(split)) for split in prepared.eval_splits}


def _evaluate_fair(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The fair protocol: best.pt is the epoch of the best validation Recall@1 (the engine's choice, on the
    held-out training classes); the test split is embedded from best.pt and from the final checkpoint,
    never from the validation embeddings that training kept."""
    from mdr.engine import build_components, embed_sets
    from mdr.run_data import load_prepared

    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    fingerprint = config.fingerprint()
    final = _checkpoint(run_dir, checkpoint.CHECKPOINT, fingerprint, device)
    best = _checkpoint(run_dir, checkpoint.BEST, fingerprint, device)
    history = final["history"]
    out: dict[str, Any] = {"fingerprint": fingerprint, "protocol": "fair",
                           "final_epoch": int(final["epoch"]) + 1, "best_epoch": int(best["epoch"]) + 1}
    chosen = next((r for r in history if r["epoch"] == out["best_epoch"]), None)
    if chosen is None or "recall_at_1" not in chosen:
        raise RunNotTrainedError(f"{run_dir / checkpoint.BEST} is of epoch {out['best_epoch']}, which the run's history "
                                 f"does not show evaluated on the validation classes; "
                                 f"{checkpoint.train_again(run_dir, REPAIRS[checkpoint.BEST])}")
    out["validation"] = {"epoch": out["best_epoch"], "recall_at_1": chosen["recall_at_1"],
                         "classes": config.data.validation_classes}
    prepared = load_prepared(config)
    num_classes = int(prepared.manifest["label"].max()) + 1
    model = build_components(config, num_classes, device).model
    sets = reported_sets(prepared, config)
    embeddings: dict[str, Embeddings] = {}
    for which, state in (("final", final), ("best", best)):
        if which == "best" and out["best_epoch"] == out["final_epoch"]:
            out["best"], embeddings["best"] = out["final"], embeddings["final"]  # same weights: reuse
            continue
        model.load_state_dict(state["model"])
        emb = embed_sets(model, sets, config.eval.batch_size, device, num_workers=config.data.num_workers)
        out[which], embeddings[which] = emb.metrics(config.eval.ks, full=True, device=device), emb
    _finish(config, run_dir, out, history, embeddings["best"])
    return out


class RunNotTrainedError(DamagedFileError):
    """A checkpoint that evaluation needs is missing."""


# What training again does about each file (mdr.engine.train on resume); the same command repairs both.
REPAIRS = {checkpoint.CHECKPOINT: f"it goes on from {checkpoint.PREVIOUS} when there is one",
           checkpoint.BEST: "it rebuilds best.pt"}


def _checkpoint(run_dir: Path, name: str, fingerprint: str, device: torch.device) -> dict[str, Any]:
    """A checkpoint of the run, or an error naming it and the command that repairs it; a damaged or
    missing one also marks the run "damaged" in status.json, which must not go on saying "finished"."""
    path = run_dir / name
    again = checkpoint.train_again(run_dir, REPAIRS[name])
    keys = checkpoint.CHECKPOINT_KEYS if name == checkpoint.CHECKPOINT else checkpoint.BEST_KEYS
    try:
        return checkpoint.load(path, fingerprint, device, keys, again)
    except FileNotFoundError:
        error: DamagedFileError = RunNotTrainedError(f"{path} is missing; {again}")
    except checkpoint.UnusableCheckpointError as e:
        error = e
    if (run_dir / "status.json").exists():
        from mdr.engine import write_status

        write_status(run_dir, "damaged", error=str(error))
    raise error
