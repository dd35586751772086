"""Where and on how many threads a stage computes (kept apart from the engine, so stages that only
read results do not import the training stack)."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Torch and faiss each bring an OpenMP pool; set both (Snakemake does not for every job kind)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
