"""Test-set embeddings of one epoch, and the retrieval metrics computed from them.

Training embeds the test split at every evaluated epoch anyway (to pick the best epoch); it keeps the
embeddings of the best and of the final epoch (`best_embeddings.npz`, `final_embeddings.npz`), so the
evaluate stage computes the full metrics without embedding the test set a second time. Each file
records the epoch and the config fingerprint, so stale embeddings are never mistaken for current ones.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdr.io import atomic_write

BEST_EMBEDDINGS = "best_embeddings.npz"
FINAL_EMBEDDINGS = "final_embeddings.npz"


@dataclass
class Embeddings:
    """Query (or, on single-split datasets, test) embeddings and labels; a gallery when there is one."""

    query: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None = None
    gallery_labels: np.ndarray | None = None

    @property
    def candidates(self) -> int:
        """How many items a query can retrieve (the Ks above it are left out)."""
        return len(self.gallery) if self.gallery is not None else len(self.query) - 1

    def metrics(self, ks: list[int], full: bool = False, device=None, nmi: bool = True) -> dict[str, float]:
        """Recall@K for the Ks that fit; with `full`, also MAP@R (one search for both) and, unless `nmi` is
        False, NMI. On a GPU
        `device` (a torch.device) the neighbours are searched there (mdr.metrics, backend "torch"); on the
        CPU or None, by faiss-cpu."""
        from mdr import metrics

        ks = [k for k in ks if k <= self.candidates]
        query, gallery = self.query, self.gallery
        if device is not None and device.type != "cpu":
            import torch

            query = torch.from_numpy(query).to(device)
            gallery = None if gallery is None else torch.from_numpy(gallery).to(device)
        kwargs = {}
        if gallery is not None:
            kwargs = {"gallery": gallery, "gallery_labels": self.gallery_labels}
        if full:
            return metrics.evaluate_retrieval(query, self.query_labels, ks, compute_nmi=nmi, **kwargs)
        return {f"recall_at_{k}": v for k, v in metrics.recall_at_k(query, self.query_labels, ks, **kwargs).items()}

    def save(self, path: str | os.PathLike, *, epoch: int, fingerprint: str) -> None:
        """Write atomically, with the epoch (1-based) and the config fingerprint they belong to."""
        arrays = {"query": self.query, "query_labels": self.query_labels,
                  "epoch": np.array(epoch), "fingerprint": np.array(fingerprint)}
        if self.gallery is not None:
            arrays.update(gallery=self.gallery, gallery_labels=self.gallery_labels)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: given a name, savez would append ".npz"
                np.savez(f, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, *, epoch: int, fingerprint: str) -> "Embeddings | None":
        """The embeddings in `path` when they belong to this epoch and config; None when the file is
        missing, unreadable or of another epoch or config (the caller embeds afresh)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if int(f["epoch"]) != epoch or str(f["fingerprint"]) != fingerprint:
                    return None
                gallery = f["gallery"] if "gallery" in f else None
                return cls(f["query"], f["query_labels"], gallery, f["gallery_labels"] if gallery is not None else None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
