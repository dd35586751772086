"""Retrieval and clustering metrics for deep metric learning evaluation.

Public API
----------
``recall_at_k(embeddings, labels, ks, *, gallery=None, gallery_labels=None,
block_size=4096, threads=None, backend=None) -> dict[int, float]``
    Recall@K for every K in ``ks``.
``precision_at_1(embeddings, labels, **kwargs) -> float``
    ``recall_at_k(embeddings, labels, [1], **kwargs)[1]``.
``map_at_r(embeddings, labels, *, gallery=None, gallery_labels=None,
block_size=4096, threads=None, backend=None) -> float``
    MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check").
``nmi(embeddings, labels, *, seed=0, niter=100, threads=None) -> float``
    NMI between the labels and a faiss k-means clustering (k = number of classes).
``evaluate_retrieval(embeddings, labels, ks, *, gallery=None, gallery_labels=None, ...)
-> dict[str, float]``
    ``recall_at_{k}`` for each k, ``map_at_r`` and ``nmi`` in one call; Recall@K and MAP@R
    from one search of depth max(max K, max R).

Conventions
-----------
* Inputs are numpy arrays or anything with ``.detach().cpu().numpy()`` (torch tensors);
  torch is imported only by the torch search. Embeddings are ``(N, D)`` floats, labels
  ``(N,)`` (``(N, 1)`` is accepted). Embeddings are cast to contiguous float32.
* ``backend``: how the exact nearest neighbours are found. ``None`` (default): ``"torch"``
  when the embeddings are a torch tensor on a GPU (or any non-CPU device), ``"faiss"``
  otherwise. ``"faiss"``: faiss-cpu ``IndexFlatL2`` on a float32 numpy copy. ``"torch"``:
  on the embeddings' device, per block of queries one matrix product ``|g|^2 - 2 q.g``
  against the whole gallery (exact float32: TF32 and autocast are switched off for the
  call) and ``torch.topk``; only the block's same-label booleans come back to the CPU.
  Why torch on a GPU and not a faiss GPU wheel: faiss-gpu caps k at 2048 (Recall@K and
  MAP@R need max(K, R) + 1), its wheels bring their own CUDA runtime beside torch's, and a
  flat search is a matrix product plus top-k, which torch does on the run's GPU already.
  Both backends give the same Recall@K and MAP@R up to float32 near-ties (tested).
* Distance: squared Euclidean on the raw embeddings (``faiss.IndexFlatL2``), no
  normalisation. Normalise beforehand if the model's embeddings are meant to be compared
  by cosine.
* Leave-one-out (no ``gallery``): every row is a query against all *other* rows. The query
  is removed from its own neighbour list by index, not by distance: kmax+1 neighbours are
  searched and the entry equal to the query's own index is dropped (if it is not in the
  list -- possible only when more than kmax other rows lie at the same distance as the
  query itself, e.g. exact duplicates -- the last entry is dropped instead). Exact
  duplicates of the query therefore count as ordinary neighbours.
* Query/gallery (``gallery`` given): ``embeddings`` are the queries and nothing is excluded.
* Recall@K is the fraction of *all* queries having at least one same-label item among
  their K nearest neighbours. A query without any same-label candidate counts as a miss
  (pytorch-metric-learning's ``precision_at_1`` instead drops such "lone" queries; on the
  standard benchmarks every query has a positive, so the two agree there).
* MAP@R skips queries with R = 0; it returns ``nan`` if every query has R = 0.
* Ties: neighbours are ranked as faiss's ``IndexFlatL2`` (or ``torch.topk``) returns them. Among candidates at
  exactly the same distance the order is faiss's (on faiss-cpu 1.15 it was observed to be
  by increasing index, but faiss does not guarantee this), so when several candidates tie
  at the K-th distance, which of them fall inside the top K is decided by faiss. faiss
  computes distances in float32 as ``|q|^2 + |g|^2 - 2 q.g`` for larger batches, so
  distances equal up to float32 rounding can also be ordered either way. Continuous
  embeddings essentially never tie; the result is deterministic for fixed inputs, thread
  count and block size.
* Memory: queries are searched in blocks of at most ``block_size`` rows; a block's result
  is ``block x (kmax + 1)`` float32 distances and int64 indices (block size is further
  reduced so that one block never holds more than ``_MAX_BLOCK_ENTRIES`` results). The
  flat index holds one float32 copy of the gallery (or of the embeddings). The torch
  search holds ``block x gallery`` float32 distances, at most ``_MAX_DISTANCE_ENTRIES``.
* ``threads`` sets faiss's OpenMP thread count (``faiss.omp_set_num_threads``) for the
  duration of the call and restores the previous value afterwards (torch's threads are the
  process's, ``mdr.runtime.set_threads``).
* Nothing in this module forks a process (a fork after faiss has run can make faiss hang
  in the child, see the project's tooling notes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

__all__ = [
    "evaluate_retrieval",
    "map_at_r",
    "nmi",
    "precision_at_1",
    "recall_at_k",
]

# Upper bound on block_rows * (kmax + 1): 2**24 entries = 64 MiB of distances + 128 MiB of
# indices per block.
_MAX_BLOCK_ENTRIES = 1 << 24
# Upper bound on block_rows * gallery size of the torch search's distance block: 2**27 float32 = 512 MiB.
_MAX_DISTANCE_ENTRIES = 1 << 27


# --------------------------------------------------------------------------- helpers
def _to_numpy(x, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} must not be None")
    if hasattr(x, "detach"):  # torch tensor, duck-typed so torch is not imported here
        x = x.detach()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x)


def _check_shape(shape, name: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(shape)}")


def _as_embeddings(x, name: str) -> np.ndarray:
    """Contiguous float32 numpy (CPU) copy of embeddings, for faiss."""
    arr = _to_numpy(x, name)
    _check_shape(arr.shape, name)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values (after casting to float32)")
    return arr


def _as_tensor_embeddings(x, name: str, device=None):
    """float32 torch tensor of embeddings, left on its device (moved to `device` when given), for the
    torch search; the same checks as `_as_embeddings`."""
    import torch

    if x is None:
        raise ValueError(f"{name} must not be None")
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    _check_shape(t.shape, name)
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values (after casting to float32)")
    return t


def _as_labels(y, n: int, name: str, emb_name: str) -> np.ndarray:
    arr = _to_numpy(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (N,), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but {emb_name} has {n} rows; "
            "they must have the same length"
        )
    return arr


def _prepare(embeddings, labels, gallery, gallery_labels, backend: str = "faiss"):
    """Validate inputs; return (queries, query_labels, gallery, gallery_labels, loo). Labels are numpy
    arrays; embeddings float32 numpy for faiss, float32 tensors on the queries' device for torch."""
    if backend == "torch":
        q = _as_tensor_embeddings(embeddings, "embeddings")
        as_gallery = lambda x: _as_tensor_embeddings(x, "gallery", q.device)  # noqa: E731
    else:
        q = _as_embeddings(embeddings, "embeddings")
        as_gallery = lambda x: _as_embeddings(x, "gallery")  # noqa: E731
    ql = _as_labels(labels, q.shape[0], "labels", "embeddings")
    if gallery is None and gallery_labels is None:
        return q, ql, q, ql, True
    if gallery is None or gallery_labels is None:
        raise ValueError("gallery and gallery_labels must be given together")
    g = as_gallery(gallery)
    gl = _as_labels(gallery_labels, g.shape[0], "gallery_labels", "gallery")
    if g.shape[1] != q.shape[1]:
        raise ValueError(
            f"embeddings have dimension {q.shape[1]} but gallery has dimension {g.shape[1]}"
        )
    return q, ql, g, gl, False


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    return int(block_size)


@contextlib.contextmanager
def _faiss_threads(threads) -> Iterator[None]:
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _drop_self(idx, self_ids):
    """Remove each row's own index from its neighbour list (leave-one-out); where it is missing (more than
    k others at the query's own distance, e.g. duplicates) the last entry goes instead."""
    is_self = idx == self_ids[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(idx.shape[0], idx.shape[1] - 1)


def _faiss_matches(q, ql, g, gl, depth: int, loo: bool, block_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start, stop, match): match[i, j] is True when the j-th nearest neighbour of query start+i
    (self excluded when loo) has its label; (stop - start, depth) booleans, nearest first."""
    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)
    k_search = depth + 1 if loo else depth
    rows = max(1, min(block_size, _MAX_BLOCK_ENTRIES // k_search))
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        _, idx = index.search(q[start:stop], k_search)
        if loo:
            idx = _drop_self(idx, np.arange(start, stop, dtype=idx.dtype))
        yield start, stop, gl[idx] == ql[start:stop, None]


def _torch_matches(q, ql, g, gl, depth: int, loo: bool, block_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """As `_faiss_matches`, by an exact search in torch on the embeddings' device: a block of queries times
    the gallery in one matrix product, then top-k. Only the (block, depth) booleans leave the device."""
    import torch

    codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)[1].reshape(-1)
    qc = torch.from_numpy(codes[: len(ql)]).to(q.device)
    gc = torch.from_numpy(codes[len(ql):]).to(q.device)
    rows = max(1, min(block_size, _MAX_DISTANCE_ENTRIES // g.shape[0]))
    previous = torch.get_float32_matmul_precision()
    # Exact float32 whatever the run's precision: TF32 or bf16 would reorder neighbours far beyond ties.
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
            g_sq = (g * g).sum(dim=1)
            for start in range(0, q.shape[0], rows):
                stop = min(start + rows, q.shape[0])
                # |g|^2 - 2 q.g: the |q|^2 of squared L2 is the same along a row, so it cannot change the order.
                d = torch.addmm(g_sq[None, :], q[start:stop], g.T, alpha=-2.0)
                if loo:  # self excluded by index, before the top-k
                    own = torch.arange(stop - start, device=d.device)
                    d[own, own + start] = float("inf")
                idx = torch.topk(d, depth, dim=1, largest=False, sorted=True).indices
                yield start, stop, (gc[idx] == qc[start:stop, None]).cpu().numpy()
    finally:
        torch.set_float32_matmul_precision(previous)


# How the nearest neighbours are found: faiss-cpu on CPU; torch on a GPU (see the module docstring).
_MATCHERS = {"faiss": _faiss_matches, "torch": _torch_matches}


def _choose_backend(backend, embeddings) -> str:
    if backend is None:  # numpy arrays have device "cpu" (a str), torch tensors a torch.device
        device = getattr(embeddings, "device", "cpu")
        return "torch" if getattr(device, "type", "cpu") != "cpu" else "faiss"
    if backend not in _MATCHERS:
        raise ValueError(f"backend must be one of {sorted(_MATCHERS)} or None (automatic), got {backend!r}")
    return backend


def _validate_ks(ks, n_candidates: int, loo: bool) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = [ks]
    ks = list(ks) if isinstance(ks, Iterable) else None
    if not ks:
        raise ValueError("ks must be a non-empty sequence of positive integers")
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
        if k > n_candidates:
            what = (
                "other items per query (leave-one-out: N - 1)"
                if loo
                else "gallery items"
            )
            raise ValueError(
                f"k={int(k)} is larger than the number of candidates: "
                f"{n_candidates} {what}"
            )
        out.append(int(k))
    return out


def _relevant_counts(ql: np.ndarray, gl: np.ndarray, loo: bool) -> np.ndarray:
    """R of every query: the candidates with its label (the query itself not counted when loo)."""
    uniq, counts = np.unique(gl, return_counts=True)
    pos = np.searchsorted(uniq, ql)
    pos_clipped = np.minimum(pos, len(uniq) - 1)
    found = (pos < len(uniq)) & (uniq[pos_clipped] == ql)
    r = np.where(found, counts[pos_clipped], 0).astype(np.int64)
    return r - 1 if loo else r


def _average_precision_at_r(match: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R of each row: (1/R) sum_{i<=R} P(i) rel(i) over the first R columns of `match` (0 where R = 0)."""
    depth = int(r.max(initial=0))
    if depth == 0:
        return np.zeros(len(r))
    ranks = np.arange(1, depth + 1)
    rel = match[:, :depth] & (ranks[None, :] <= r[:, None])
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    return (precision * rel).sum(axis=1) / np.maximum(r, 1)


def _retrieve(embeddings, labels, gallery, gallery_labels, ks, want_map: bool, block_size, threads,
              backend) -> tuple[dict[int, float], float]:
    """Recall@K for `ks` (None: none) and, with `want_map`, MAP@R, from ONE search of depth
    max(max K, max R), blocked over queries."""
    backend = _choose_backend(backend, embeddings)
    q, ql, g, gl, loo = _prepare(embeddings, labels, gallery, gallery_labels, backend)
    block_size = _check_block_size(block_size)
    ks = [] if ks is None else _validate_ks(ks, g.shape[0] - 1 if loo else g.shape[0], loo)
    r = _relevant_counts(ql, gl, loo) if want_map else np.zeros(len(ql), dtype=np.int64)
    depth = max(ks + [int(r.max(initial=0))])
    nq = q.shape[0]
    first_hit = np.full(nq, depth, dtype=np.int64)  # 0-based rank of the first same-label neighbour
    ap = np.zeros(nq)
    if depth > 0:  # 0 only when MAP@R alone is asked and no query has R > 0
        with _faiss_threads(threads):
            for start, stop, match in _MATCHERS[backend](q, ql, g, gl, depth, loo, block_size):
                first_hit[start:stop] = np.where(match.any(axis=1), match.argmax(axis=1), depth)
                if want_map:
                    ap[start:stop] = _average_precision_at_r(match, r[start:stop])
    recall = {k: float(np.count_nonzero(first_hit < k)) / nq for k in ks}
    valid = r > 0
    return recall, float(ap[valid].mean()) if valid.any() else float("nan")


# --------------------------------------------------------------------------- metrics
def recall_at_k(
    embeddings,
    labels,
    ks,
    *,
    gallery=None,
    gallery_labels=None,
    block_size: int = 4096,
    threads: int | None = None,
    backend: str | None = None,
) -> dict[int, float]:
    """Recall@K: fraction of queries with at least one same-label item among their K
    nearest neighbours (squared L2). See the module docstring for leave-one-out, ties,
    queries without positives (they count as misses) and ``backend``.

    Returns ``{k: recall}`` with recall in [0, 1], in the order of ``ks``.
    Raises ValueError if a k exceeds the number of candidates (N - 1 leave-one-out,
    the gallery size otherwise) or if inputs are inconsistent.
    """
    return _retrieve(embeddings, labels, gallery, gallery_labels, ks, False, block_size, threads, backend)[0]


def precision_at_1(embeddings, labels, **kwargs) -> float:
    """Precision@1 == Recall@1 (``recall_at_k(embeddings, labels, [1], **kwargs)[1]``)."""
    return recall_at_k(embeddings, labels, [1], **kwargs)[1]


def map_at_r(
    embeddings,
    labels,
    *,
    gallery=None,
    gallery_labels=None,
    block_size: int = 4096,
    threads: int | None = None,
    backend: str | None = None,
) -> float:
    """MAP@R (Musgrave, Belongie & Lim 2020).

    For each query, R is the number of other items with its label (leave-one-out) or
    the number of same-label gallery items. With the R nearest neighbours retrieved,
    AP@R = (1/R) * sum_{i=1..R} P(i) * rel(i), where P(i) is the precision of the first
    i neighbours and rel(i) is 1 if the i-th neighbour has the query's label. The result
    is the mean over queries with R > 0 (``nan`` if there are none). The search depth is
    the largest R.
    """
    return _retrieve(embeddings, labels, gallery, gallery_labels, None, True, block_size, threads, backend)[1]


def nmi(
    embeddings,
    labels,
    *,
    seed: int = 0,
    niter: int = 100,
    threads: int | None = None,
) -> float:
    """Normalized mutual information between ``labels`` and a k-means clustering of the
    embeddings (faiss.Kmeans, k = number of distinct labels, ``niter`` iterations,
    ``seed``), scored as sklearn's ``normalized_mutual_info_score`` (arithmetic mean; see
    ``normalized_mutual_information``). Squared-L2 k-means on the raw embeddings, like the retrieval metrics.
    """
    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, x.shape[0], "labels", "embeddings")
    n_clusters = int(np.unique(y).size)
    with _faiss_threads(threads):
        if n_clusters == 1:
            assign = np.zeros(x.shape[0], dtype=np.int64)
        else:
            km = faiss.Kmeans(
                x.shape[1],
                n_clusters,
                niter=int(niter),
                seed=int(seed),
                verbose=False,
                min_points_per_centroid=1,  # silence faiss's "too few points" warning
            )
            km.train(x)
            _, assign = km.index.search(x, 1)
            assign = assign[:, 0]
    return normalized_mutual_information(y, assign)


def normalized_mutual_information(a, b) -> float:
    """NMI of two labelings with the arithmetic-mean normaliser: I(A;B) / ((H(A) + H(B)) / 2), natural
    logs, the conventions of sklearn's ``normalized_mutual_info_score`` (1.0 when both labelings are a
    single cluster, 0.0 when they share no information). Computed here from the contingency table
    because importing sklearn.metrics costs each evaluation job ~0.8 s; the tests check it against sklearn.
    """
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    na, nb = int(a.max(initial=-1)) + 1, int(b.max(initial=-1)) + 1
    if na == nb and na <= 1:
        return 1.0
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
    n = joint.sum()
    pa, pb = joint.sum(axis=1) / n, joint.sum(axis=0) / n
    nz = joint > 0
    pij = joint[nz] / n
    mi = float(np.sum(pij * (np.log(pij) - np.log(np.outer(pa, pb)[nz]))))
    if mi <= 0:
        return 0.0
    entropy = lambda p: float(-np.sum(p[p > 0] * np.log(p[p > 0])))  # noqa: E731
    return mi / max((entropy(pa) + entropy(pb)) / 2, np.finfo(np.float64).eps)


def evaluate_retrieval(
    embeddings,
    labels,
    ks,
    *,
    gallery=None,
    gallery_labels=None,
    block_size: int = 4096,
    threads: int | None = None,
    nmi_seed: int = 0,
    compute_nmi: bool = True,
    backend: str | None = None,
) -> dict[str, float]:
    """All retrieval metrics in one dict: ``recall_at_{k}`` for each k in ``ks`` (in
    [0, 1]), ``map_at_r`` and, if ``compute_nmi``, ``nmi`` (computed on ``embeddings``,
    i.e. on the query set when a gallery is given). Recall@K and MAP@R come from one
    search of depth max(max K, max R); NMI's k-means always runs on faiss-cpu."""
    recall, map_r = _retrieve(embeddings, labels, gallery, gallery_labels, ks, True, block_size, threads, backend)
    out: dict[str, float] = {f"recall_at_{k}": v for k, v in recall.items()}
    out["map_at_r"] = map_r
    if compute_nmi:
        out["nmi"] = nmi(embeddings, labels, seed=nmi_seed, threads=threads)
    return out
