"""Retrieval and clustering metrics for deep metric learning evaluation.

Public API
----------
``recall_at_k(embeddings, labels, ks, *, gallery=None, gallery_labels=None,
block_size=4096, threads=None) -> dict[int, float]``
    Recall@K for every K in ``ks``.
``precision_at_1(embeddings, labels, **kwargs) -> float``
    ``recall_at_k(embeddings, labels, [1], **kwargs)[1]``.
``map_at_r(embeddings, labels, *, gallery=None, gallery_labels=None,
block_size=4096, threads=None) -> float``
    MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check").
``nmi(embeddings, labels, *, seed=0, niter=100, threads=None) -> float``
    NMI between the labels and a faiss k-means clustering (k = number of classes).
``evaluate_retrieval(embeddings, labels, ks, *, gallery=None, gallery_labels=None, ...)
-> dict[str, float]``
    ``recall_at_{k}`` for each k, ``map_at_r`` and ``nmi`` in one call.

Conventions
-----------
* Inputs are numpy arrays or anything with ``.detach().cpu().numpy()`` (torch tensors);
  torch is never imported here. Embeddings are ``(N, D)`` floats, labels ``(N,)``
  (``(N, 1)`` is accepted). Embeddings are cast to contiguous float32 for faiss.
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
* Ties: neighbours are ranked as faiss's ``IndexFlatL2`` returns them. Among candidates at
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
  flat index holds one float32 copy of the gallery (or of the embeddings).
* ``threads`` sets faiss's OpenMP thread count (``faiss.omp_set_num_threads``) for the
  duration of the call and restores the previous value afterwards.
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


def _as_embeddings(x, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values (after casting to float32)")
    return arr


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


def _prepare(embeddings, labels, gallery, gallery_labels):
    """Validate inputs; return (queries, query_labels, gallery, gallery_labels, loo)."""
    q = _as_embeddings(embeddings, "embeddings")
    ql = _as_labels(labels, q.shape[0], "labels", "embeddings")
    if gallery is None and gallery_labels is None:
        return q, ql, q, ql, True
    if gallery is None or gallery_labels is None:
        raise ValueError("gallery and gallery_labels must be given together")
    g = _as_embeddings(gallery, "gallery")
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


def _neighbour_blocks(
    queries: np.ndarray,
    gallery: np.ndarray,
    kmax: int,
    loo: bool,
    block_size: int,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start, stop, I) with I the (stop-start, kmax) gallery indices of the kmax
    nearest neighbours of queries[start:stop], nearest first, self excluded when loo."""
    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(gallery)
    k_search = kmax + 1 if loo else kmax
    rows = max(1, min(block_size, _MAX_BLOCK_ENTRIES // max(k_search, 1)))
    nq = queries.shape[0]
    for start in range(0, nq, rows):
        stop = min(start + rows, nq)
        _, idx = index.search(queries[start:stop], k_search)
        if loo:
            is_self = idx == np.arange(start, stop, dtype=idx.dtype)[:, None]
            no_self = ~is_self.any(axis=1)
            is_self[no_self, -1] = True
            idx = idx[~is_self].reshape(stop - start, kmax)
        yield start, stop, idx


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
) -> dict[int, float]:
    """Recall@K: fraction of queries with at least one same-label item among their K
    nearest neighbours (squared L2). See the module docstring for leave-one-out, ties,
    and queries without positives (they count as misses).

    Returns ``{k: recall}`` with recall in [0, 1], in the order of ``ks``.
    Raises ValueError if a k exceeds the number of candidates (N - 1 leave-one-out,
    the gallery size otherwise) or if inputs are inconsistent.
    """
    q, ql, g, gl, loo = _prepare(embeddings, labels, gallery, gallery_labels)
    block_size = _check_block_size(block_size)
    n_candidates = g.shape[0] - 1 if loo else g.shape[0]
    ks = _validate_ks(ks, n_candidates, loo)
    kmax = max(ks)

    nq = q.shape[0]
    # rank (0-based) of the first same-label neighbour; kmax if none within kmax
    first_hit = np.full(nq, kmax, dtype=np.int64)
    with _faiss_threads(threads):
        for start, stop, idx in _neighbour_blocks(q, g, kmax, loo, block_size):
            match = gl[idx] == ql[start:stop, None]
            has = match.any(axis=1)
            first_hit[start:stop] = np.where(has, match.argmax(axis=1), kmax)
    return {k: float(np.count_nonzero(first_hit < k)) / nq for k in ks}


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
) -> float:
    """MAP@R (Musgrave, Belongie & Lim 2020).

    For each query, R is the number of other items with its label (leave-one-out) or
    the number of same-label gallery items. With the R nearest neighbours retrieved,
    AP@R = (1/R) * sum_{i=1..R} P(i) * rel(i), where P(i) is the precision of the first
    i neighbours and rel(i) is 1 if the i-th neighbour has the query's label. The result
    is the mean over queries with R > 0 (``nan`` if there are none). The search uses
    kmax = max R (per block of queries).
    """
    q, ql, g, gl, loo = _prepare(embeddings, labels, gallery, gallery_labels)
    block_size = _check_block_size(block_size)

    uniq, counts = np.unique(gl, return_counts=True)
    pos = np.searchsorted(uniq, ql)
    pos_clipped = np.minimum(pos, len(uniq) - 1)
    found = (pos < len(uniq)) & (uniq[pos_clipped] == ql)
    r = np.where(found, counts[pos_clipped], 0).astype(np.int64)
    if loo:
        r -= 1  # the query itself
    valid = r > 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return float("nan")

    # Queries with R > 0, sorted by R so that each block searches only as deep as it needs.
    # Rows are gathered block by block (no full copy of the queries).
    rows_valid = np.flatnonzero(valid)
    order = np.argsort(r[rows_valid], kind="stable")
    orig_rows = rows_valid[order]  # index of each sorted query in the full query set
    qlv, rv = ql[orig_rows], r[orig_rows]

    total = 0.0
    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)
    with _faiss_threads(threads):
        start = 0
        while start < n_valid:
            # Block: at most block_size rows and at most _MAX_BLOCK_ENTRIES results.
            stop = min(start + block_size, n_valid)
            kmax = int(rv[stop - 1])
            k_search = kmax + 1 if loo else kmax
            rows = max(1, min(block_size, _MAX_BLOCK_ENTRIES // k_search))
            if rows < stop - start:
                stop = start + rows
            _, idx = index.search(q[orig_rows[start:stop]], k_search)
            if loo:
                self_ids = orig_rows[start:stop]
                is_self = idx == self_ids[:, None]
                no_self = ~is_self.any(axis=1)
                is_self[no_self, -1] = True
                idx = idx[~is_self].reshape(stop - start, kmax)
            rb = rv[start:stop]
            cols = np.arange(kmax)
            rel = (gl[idx] == qlv[start:stop, None]) & (cols[None, :] < rb[:, None])
            hits = np.cumsum(rel, axis=1)
            prec = hits / (cols + 1)[None, :]
            ap = (prec * rel).sum(axis=1) / rb
            total += float(ap.sum())
            start = stop
    return total / n_valid


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
) -> dict[str, float]:
    """All retrieval metrics in one dict: ``recall_at_{k}`` for each k in ``ks`` (in
    [0, 1]), ``map_at_r`` and, if ``compute_nmi``, ``nmi`` (computed on ``embeddings``,
    i.e. on the query set when a gallery is given)."""
    common = dict(
        gallery=gallery, gallery_labels=gallery_labels, block_size=block_size, threads=threads
    )
    out: dict[str, float] = {}
    for k, v in recall_at_k(embeddings, labels, ks, **common).items():
        out[f"recall_at_{k}"] = v
    out["map_at_r"] = map_at_r(embeddings, labels, **common)
    if compute_nmi:
        out["nmi"] = nmi(embeddings, labels, seed=nmi_seed, threads=threads)
    return out
