"""The paper-cost benchmark's arithmetic: a run's device-seconds from per-step and per-evaluation figures,
and the test sets it times retrieval on (the real sizes and class counts)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_paper import TEST_CLASSES, random_embeddings, run_seconds, split_sizes
from mdr.config import RunConfig


def config(epochs: int, every: int, dataset: str = "cub200", train_subset: int = 0) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"dataset": dataset},
        "optim": {"lr_milestones": [epochs // 2]},
        "train": {"epochs": epochs, "iterations_per_epoch": 100},
        "eval": {"every": every, "train_subset": train_subset},
    })


def test_run_seconds_hand_computed():
    retrieval = {"epoch_retrieval": 0.1, "final_retrieval": 1.0, "nmi": "not measured"}
    # 100 x 100 steps of 0.5 s; 100 evaluations of (5,924 images x 1 ms + 0.1 s); final twice 1.0 s
    assert run_seconds(config(100, 1), 0.5, 1e-3, retrieval) == pytest.approx(5000 + 100 * (5.924 + 0.1) + 2.0)
    # every 3 of 10 epochs: evaluated after 3, 6, 9 and the last (10); NMI counted when measured
    retrieval["nmi"] = 4.0
    assert run_seconds(config(10, 3), 0.5, 1e-3, retrieval) == pytest.approx(500 + 4 * (5.924 + 0.1) + 2 * 5.0)
    # Figure 4(b)'s training subset is embedded at every evaluation too
    assert run_seconds(config(10, 5, train_subset=1000), 0.0, 1e-3, retrieval) == pytest.approx(
        2 * (6.924 + 0.1) + 2 * 5.0)


def test_test_sets_have_the_published_sizes():
    assert split_sizes("sop") == (60502, None)
    assert split_sizes("inshop") == (14218, 12612)
    emb = random_embeddings("inshop", 4)
    assert emb.query.shape == (14218, 4) and emb.gallery.shape == (12612, 4)
    assert emb.query.dtype == np.float32
    labels = np.concatenate([emb.query_labels, emb.gallery_labels])
    assert len(np.unique(labels)) == TEST_CLASSES["inshop"] == 3985
    assert np.bincount(labels).min() >= 2
