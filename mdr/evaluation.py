"""Final evaluation of a trained run: Recall@K, MAP@R and NMI at the best and at the final epoch,
and the test class centres of the reported model (Figure 3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdr.config import RunConfig
from mdr.engine import build_components, embed, evaluation_sets, load_prepared, resolve_device, retrieval_metrics, set_threads


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
    for which, name in (("final", "checkpoint.pt"), ("best", "best.pt")):
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: train the run first (pipeline train)")
        state = torch.load(path, map_location=device, weights_only=False)
        if state["fingerprint"] != config.fingerprint():
            raise RuntimeError(f"{path} was trained with another configuration ({state['fingerprint']}, "
                               f"expected {config.fingerprint()})")
        model.load_state_dict(state["model"])
        out[f"{which}_epoch"] = int(state["epoch"]) + 1
        out[which] = retrieval_metrics(model, sets, config.eval.ks, config.eval.batch_size, device, full=True)
        if which == "best":
            split = "query" if "query" in sets else "test"
            emb = embed(model, sets[split], config.eval.batch_size, device)
            labels = sets[split].labels
            classes = np.unique(labels)
            centers = np.stack([emb[labels == c].mean(axis=0) for c in classes])
            np.save(run_dir / "class_centers.npy", centers)
    return out
