"""Final evaluation of a trained run: Recall@K, MAP@R and NMI at the best and at the final epoch,
and the test class centres of the reported model (Figure 3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdr.config import RunConfig
from mdr.engine import (build_components, evaluation_sets, load_prepared, resolve_device,
                        retrieval_metrics_and_embeddings, set_threads)


def evaluate_run(config: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    prepared = load_prepared(config)
    num_classes = int(prepared.manifest["label"].max()) + 1
    parts = build_components(config, num_classes, device)
    model = parts.model
    sets = evaluation_sets(prepared, config)
    out: dict[str, Any] = {"fingerprint": config.fingerprint()}
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for which, name in (("final", "checkpoint.pt"), ("best", "best.pt")):
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: train the run first (pipeline train)")
        state = torch.load(path, map_location=device, weights_only=False)
        if state["fingerprint"] != config.fingerprint():
            raise RuntimeError(f"{path} was trained with another configuration ({state['fingerprint']}, "
                               f"expected {config.fingerprint()})")
        out[f"{which}_epoch"] = int(state["epoch"]) + 1
        if which == "final":
            history = state["history"]
        if which == "best" and out["best_epoch"] == out["final_epoch"]:
            out["best"], embeddings["best"] = out["final"], embeddings["final"]  # same weights: reuse
            continue
        model.load_state_dict(state["model"])
        out[which], emb, labels = retrieval_metrics_and_embeddings(
            model, sets, config.eval.ks, config.eval.batch_size, device, full=True)
        embeddings[which] = (emb, labels)
    # Training cost, for the regularizers table: mean wall time per iteration over the run's epochs.
    per_iteration = float(np.mean([r["seconds"] / config.train.iterations_per_epoch for r in history]))
    for which in ("best", "final"):
        out[which] = {**out[which], "seconds_per_iteration": per_iteration}
    emb, labels = embeddings["best"]
    classes = np.unique(labels)
    np.save(run_dir / "class_centers.npy", np.stack([emb[labels == c].mean(axis=0) for c in classes]))
    return out
