"""Tests for mdr.metrics: hand-computed examples, agreement with pytorch-metric-learning's
AccuracyCalculator and with a brute-force numpy implementation, blocking invariance, errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import normalized_mutual_info_score

from mdr.metrics import evaluate_retrieval, map_at_r, nmi, precision_at_1, recall_at_k

# --------------------------------------------------------------------------- tiny examples
# Six gallery points on a line (1-D embeddings), chosen so that no query has two
# candidates at the same distance:
#   A=0 (a)  B=1 (b)  C=3 (a)  D=7 (b)  E=12 (b)  F=20 (a)
LINE_X = np.array([[0.0], [1.0], [3.0], [7.0], [12.0], [20.0]], dtype=np.float32)
LINE_Y = np.array([0, 1, 0, 1, 1, 0])  # a=0, b=1
BACKENDS = ["faiss", "torch"]  # the torch search runs here on CPU tensors; on a GPU in the runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_one_out_hand_computed(backend):
    # Neighbours of each point (others only), nearest first, |distance| in brackets:
    #   A(a): B1 C3 D7 E12 F20  -> labels b a b b a
    #   B(b): A1 C2 D6 E11 F19  -> labels a a b b a
    #   C(a): B2 A3 D4 E9  F17  -> labels b a b b a
    #   D(b): C4 E5 B6 A7  F13  -> labels a b b a a
    #   E(b): D5 F8 C9 B11 A12  -> labels b a a b a
    #   F(a): E8 D13 C17 B19 A20 -> labels b b a b a
    # First same-label rank (1-based): A2 B3 C2 D2 E1 F3
    # Recall@1 = 1/6 (E), Recall@2 = 4/6 (A, C, D, E), Recall@3 = 6/6.
    r = recall_at_k(LINE_X, LINE_Y, [1, 2, 3, 5], backend=backend)
    assert r == pytest.approx({1: 1 / 6, 2: 4 / 6, 3: 1.0, 5: 1.0})
    assert list(r) == [1, 2, 3, 5]
    assert precision_at_1(LINE_X, LINE_Y, backend=backend) == pytest.approx(1 / 6)
    # MAP@R: each class has 3 members, so R = 2 for every query.
    #   A: rel [0,1] -> (1/2)(1/2) = 1/4      B: rel [0,0] -> 0
    #   C: rel [0,1] -> 1/4                    D: rel [0,1] -> 1/4
    #   E: rel [1,0] -> (1/2)(1/1) = 1/2       F: rel [0,0] -> 0
    #   MAP@R = (1/4 + 0 + 1/4 + 1/4 + 1/2 + 0) / 6 = 1.25 / 6
    assert map_at_r(LINE_X, LINE_Y, backend=backend) == pytest.approx(1.25 / 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_gallery_hand_computed(backend):
    # Queries against the six line points (nothing excluded):
    #   q1=2.2 (a):  C0.8 B1.2 A2.2 D4.8 ...  -> labels a b a  (first hit rank 1)
    #   q2=9.8 (b):  E2.2 D2.8 C6.8 B8.8 ...  -> labels b b a  (first hit rank 1)
    #   q3=16.5 (b): F3.5 E4.5 D9.5 C13.5 ... -> labels a b b  (first hit rank 2)
    # Recall@1 = 2/3, Recall@2 = 3/3.
    q = np.array([[2.2], [9.8], [16.5]], dtype=np.float32)
    ql = np.array([0, 1, 1])
    r = recall_at_k(q, ql, [1, 2, 6], gallery=LINE_X, gallery_labels=LINE_Y, backend=backend)
    assert r == pytest.approx({1: 2 / 3, 2: 1.0, 6: 1.0})
    # MAP@R: 3 gallery items per class, R = 3.
    #   q1 rel [1,0,1]: (1 + 2/3) / 3 = 5/9
    #   q2 rel [1,1,0]: (1 + 1) / 3   = 2/3
    #   q3 rel [0,1,1]: (1/2 + 2/3)/3 = 7/18
    #   MAP@R = (5/9 + 2/3 + 7/18) / 3 = 29/54
    m = map_at_r(q, ql, gallery=LINE_X, gallery_labels=LINE_Y, backend=backend)
    assert m == pytest.approx(29 / 54)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_are_neighbours_self_excluded_by_index(backend):
    # Points 0 and 1 are identical: each is the other's nearest neighbour (distance 0),
    # which must count. Point 2 (at 4, label 8): neighbours 0,1 (16, label 7), 3 (25, label 8).
    x = np.array([[0.0], [0.0], [4.0], [9.0]], dtype=np.float32)
    y = np.array([7, 7, 8, 8])
    assert recall_at_k(x, y, [1, 2, 3], backend=backend) == pytest.approx({1: 0.75, 2: 0.75, 3: 1.0})
    # MAP@R: R=1 for everyone; hits at rank 1 for points 0, 1, 3 -> 3/4
    assert map_at_r(x, y, backend=backend) == pytest.approx(0.75)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_identical_points_self_not_in_searched_row(backend):
    # With k=1 faiss returns 2 of 5 zero-distance points; for most queries the query itself
    # is not among them, so the last entry is dropped instead. All labels equal -> 1.0.
    x = np.zeros((5, 3), dtype=np.float32)
    y = np.full(5, 3)
    assert recall_at_k(x, y, [1, 4], backend=backend) == {1: 1.0, 4: 1.0}
    assert map_at_r(x, y, backend=backend) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_without_positive_counts_as_miss_and_is_skipped_by_map(backend):
    q = np.array([[2.2], [9.8]], dtype=np.float32)
    ql = np.array([0, 5])  # label 5 does not occur in the gallery
    r = recall_at_k(q, ql, [1, 6], gallery=LINE_X, gallery_labels=LINE_Y, backend=backend)
    assert r == pytest.approx({1: 0.5, 6: 0.5})
    # Only q1 has R > 0: its AP@R is 5/9 (see above).
    assert map_at_r(q, ql, gallery=LINE_X, gallery_labels=LINE_Y, backend=backend) == pytest.approx(5 / 9)
    # Leave-one-out singleton classes: skipped by MAP@R; nan if nothing remains.
    assert np.isnan(map_at_r(LINE_X[:2], np.array([0, 1]), backend=backend))


def test_accepts_torch_and_float64_and_column_labels():
    x = torch.from_numpy(LINE_X.astype(np.float64)).requires_grad_(True)
    y = torch.from_numpy(LINE_Y).reshape(-1, 1)
    assert recall_at_k(x, y, [2]) == pytest.approx({2: 4 / 6})
    assert map_at_r(x, y) == pytest.approx(1.25 / 6)


# --------------------------------------------------------------------------- random data
def clustered(n_classes, per_class, dim, noise, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] + noise * rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


@pytest.fixture(scope="module")
def data():
    # 600 x 32, 30 classes; noise chosen so that Recall@1 is ~0.7 (not saturated)
    return clustered(30, 20, 32, 1.3, seed=0)


def pml_calc(k="max_bin_count"):
    return AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "NMI"),
        k=k,
        device=torch.device("cpu"),
    )


def brute_force_first_hit(q, ql, g, gl, loo):
    d = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    if loo:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    if loo:
        order = order[:, :-1]  # drop self (sorted last, at +inf)
    match = gl[order] == ql[:, None]
    return np.where(match.any(1), match.argmax(1), order.shape[1])


def brute_force_map_at_r(q, ql, g, gl, loo):
    d = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    if loo:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    aps = []
    for i in range(len(q)):
        r = int((gl == ql[i]).sum()) - int(loo)
        if r == 0:
            continue
        rel = gl[order[i, :r]] == ql[i]
        prec = np.cumsum(rel) / np.arange(1, r + 1)
        aps.append((prec * rel).sum() / r)
    return float(np.mean(aps))


def near_tie_ranks(q, ql, g, gl, loo):
    """Per query: the first rank whose order against a neighbour of the other label float32 cannot settle
    (inf where none), its first-hit rank h and its R.

    faiss computes squared distances in float32; each errs by at most 2 (D + 2) u (|q|^2 + |g|^2) (both the
    |q|^2 + |g|^2 - 2 q.g form and the direct sum of squares). Two neighbours whose float64 distances are
    closer than their two bounds may come back in either order on another machine or block size, so a
    metric may differ by one such query each: the tolerances below count them, they are not guessed."""
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    d = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    bound = 2 * (q.shape[1] + 2) * 2.0**-24 * ((q64**2).sum(1)[:, None] + (g64**2).sum(1)[None, :])
    if loo:
        np.fill_diagonal(d, np.inf)
    first, hits, rs = [], [], []
    for i in range(len(q)):
        order = np.argsort(d[i], kind="stable")[: len(g) - int(loo)]
        dist, err, pos = d[i][order], bound[i][order], gl[order] == ql[i]
        close = np.diff(dist) <= err[:-1] + err[1:]
        mixed = np.flatnonzero(close & (pos[:-1] != pos[1:]))  # chains of near-ties: adjacent pairs suffice
        first.append(mixed[0] if mixed.size else np.inf)
        hits.append(int(pos.argmax()) if pos.any() else len(pos))
        rs.append(int(pos.sum()))
    return np.array(first), np.array(hits), np.array(rs)


def tolerance(ambiguous):
    """A mean over queries of a per-query value in [0, 1] moves by at most 1/n per ambiguous query."""
    return float(np.sum(ambiguous)) / len(ambiguous) + 1e-12


def test_leave_one_out_agrees_with_pml(data):
    x, y = data
    ref = pml_calc().get_accuracy(x, y, x, y, ref_includes_query=True)
    assert 0.3 < ref["precision_at_1"] < 0.95  # sanity: a non-trivial case
    first, _, r = near_tie_ranks(x, y, x, y, loo=True)
    assert precision_at_1(x, y) == pytest.approx(ref["precision_at_1"], abs=tolerance(first == 0))
    assert map_at_r(x, y) == pytest.approx(ref["mean_average_precision_at_r"], abs=tolerance(first <= r - 1))
    # Same faiss k-means call as PML (seed 1234, 20 iterations) -> identical NMI.
    assert nmi(x, y, seed=1234, niter=20) == pytest.approx(ref["NMI"], abs=1e-9)


def test_query_gallery_agrees_with_pml(data):
    x, y = data
    q, ql, g, gl = x[:200], y[:200], x[200:], y[200:]
    assert np.isin(ql, gl).all()  # no lone queries (PML would skip them)
    ref = pml_calc().get_accuracy(q, ql, g, gl, ref_includes_query=False)
    got = evaluate_retrieval(q, ql, [1, 4], gallery=g, gallery_labels=gl)
    first, _, r = near_tie_ranks(q, ql, g, gl, loo=False)
    assert got["recall_at_1"] == pytest.approx(ref["precision_at_1"], abs=tolerance(first == 0))
    assert got["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=tolerance(first <= r - 1))
    assert 0.0 <= got["nmi"] <= 1.0
    assert set(got) == {"recall_at_1", "recall_at_4", "map_at_r", "nmi"}


@pytest.mark.parametrize("loo", [True, False])
def test_recall_at_k_and_map_agree_with_brute_force(data, loo):
    x, y = data
    if loo:
        q, ql, g, gl = x, y, x, y
        kw = {}
    else:
        q, ql, g, gl = x[:250], y[:250], x[250:], y[250:]
        kw = dict(gallery=g, gallery_labels=gl)
    ks = [1, 2, 4, 8, 16, 32, 100]
    first = brute_force_first_hit(q, ql, g, gl, loo)
    expected = {k: float(np.mean(first < k)) for k in ks}
    tie, hit, r = near_tie_ranks(q, ql, g, gl, loo)
    got = recall_at_k(q, ql, ks, **kw)
    for k in ks:  # the first hit can move only across a near-tie at or before it
        assert got[k] == pytest.approx(expected[k], abs=tolerance(tie <= hit)), k
    assert map_at_r(q, ql, **kw) == pytest.approx(brute_force_map_at_r(q, ql, g, gl, loo), abs=tolerance(tie <= r - 1))


# --------------------------------------------------------------------------- torch search, one search
def split(data, loo):
    x, y = data
    if loo:
        return x, y, x, y, {}
    return x[:250], y[:250], x[250:], y[250:], dict(gallery=torch.from_numpy(x[250:]), gallery_labels=y[250:])


@pytest.mark.parametrize("loo", [True, False])
def test_torch_search_agrees_with_faiss_and_brute_force(data, loo):
    q, ql, g, gl, kw = split(data, loo)
    ks = [1, 2, 4, 8, 16, 32, 100]
    faiss_kw = {k: (v.numpy() if k == "gallery" else v) for k, v in kw.items()}
    via_faiss = evaluate_retrieval(q, ql, ks, backend="faiss", compute_nmi=False, **faiss_kw)
    via_torch = evaluate_retrieval(torch.from_numpy(q), ql, ks, backend="torch", compute_nmi=False, **kw)
    first = brute_force_first_hit(q, ql, g, gl, loo)
    tie, hit, r = near_tie_ranks(q, ql, g, gl, loo)
    assert 0.3 < via_torch["recall_at_1"] < 0.95  # not a saturated case
    for k in ks:  # each differs from the exact order only at near-ties, so from each other by as many
        assert via_torch[f"recall_at_{k}"] == pytest.approx(via_faiss[f"recall_at_{k}"], abs=tolerance(tie <= hit))
        assert via_torch[f"recall_at_{k}"] == pytest.approx(np.mean(first < k), abs=tolerance(tie <= hit))
    assert via_torch["map_at_r"] == pytest.approx(via_faiss["map_at_r"], abs=tolerance(tie <= r - 1))
    assert via_torch["map_at_r"] == pytest.approx(brute_force_map_at_r(q, ql, g, gl, loo), abs=tolerance(tie <= r - 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU-tensor tests above cover the code)")
@pytest.mark.parametrize("loo", [True, False])
def test_search_on_the_gpu_is_chosen_and_agrees_with_faiss(data, loo):
    q, ql, g, gl, kw = split(data, loo)
    faiss_kw = {k: (v.numpy() if k == "gallery" else v) for k, v in kw.items()}
    gpu_kw = {k: (v.cuda() if k == "gallery" else v) for k, v in kw.items()}
    via_faiss = evaluate_retrieval(q, ql, [1, 8], backend="faiss", compute_nmi=False, **faiss_kw)
    via_gpu = evaluate_retrieval(torch.from_numpy(q).cuda(), ql, [1, 8], compute_nmi=False, **gpu_kw)  # auto
    tie, hit, r = near_tie_ranks(q, ql, g, gl, loo)
    for k in (1, 8):
        assert via_gpu[f"recall_at_{k}"] == pytest.approx(via_faiss[f"recall_at_{k}"], abs=tolerance(tie <= hit))
    assert via_gpu["map_at_r"] == pytest.approx(via_faiss["map_at_r"], abs=tolerance(tie <= r - 1))


def test_torch_search_block_size_and_precision_settings_do_not_change_results(data):
    x, y = data
    tie, hit, r = near_tie_ranks(x, y, x, y, True)
    t = torch.from_numpy(x)
    full = evaluate_retrieval(t, y, [1, 10], backend="torch", compute_nmi=False)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:  # a bf16 autocast region (item 3's training precision) must not leak into the search
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = evaluate_retrieval(t, y, [1, 10], backend="torch", block_size=7, compute_nmi=False)
        assert torch.get_float32_matmul_precision() == "medium"  # restored after the call
    finally:
        torch.set_float32_matmul_precision(previous)
    for k in (1, 10):
        assert got[f"recall_at_{k}"] == pytest.approx(full[f"recall_at_{k}"], abs=tolerance(tie <= hit))
    assert got["map_at_r"] == pytest.approx(full["map_at_r"], abs=tolerance(tie <= r - 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_retrieval_searches_once_to_max_k_and_r(data, backend, monkeypatch):
    from mdr import metrics

    x, y = data  # 20 per class: R = 19 leave-one-out, deeper than max K = 4
    calls = []
    search = metrics._MATCHERS[backend]

    def counting(q, ql, g, gl, depth, loo, block_size):
        calls.append(depth)
        yield from search(q, ql, g, gl, depth, loo, block_size)

    monkeypatch.setitem(metrics._MATCHERS, backend, counting)
    got = evaluate_retrieval(torch.from_numpy(x), y, [1, 4], backend=backend, compute_nmi=False)
    assert calls == [19]
    evaluate_retrieval(x, y, [1, 100], backend=backend, compute_nmi=False)
    assert calls == [19, 100]
    # The same values as the separate functions (which search as deep as each needs: max K, max R).
    tie, hit, r = near_tie_ranks(x, y, x, y, True)
    assert got["recall_at_4"] == pytest.approx(recall_at_k(x, y, [4], backend=backend)[4], abs=tolerance(tie <= hit))
    assert got["map_at_r"] == pytest.approx(map_at_r(x, y, backend=backend), abs=tolerance(tie <= r - 1))
    assert calls == [19, 100, 4, 19]


def test_backend_is_chosen_by_the_embeddings_device():
    from mdr.metrics import _choose_backend

    class OnGpu:  # what a CUDA tensor looks like to the chooser, without a GPU
        device = torch.device("cuda", 0)

    assert _choose_backend(None, OnGpu()) == "torch"
    assert _choose_backend(None, torch.zeros(2, 2)) == "faiss"  # CPU tensors: faiss-cpu
    assert _choose_backend(None, np.zeros((2, 2))) == "faiss"
    assert _choose_backend("torch", np.zeros((2, 2))) == "torch"
    with pytest.raises(ValueError, match=r"backend must be one of \['faiss', 'torch'\].*got 'cuda'"):
        recall_at_k(LINE_X, LINE_Y, [1], backend="cuda")


def test_torch_search_takes_any_numpy_layout():
    # reversed rows (negative strides, which torch.from_numpy refuses) and float64: the same ranks
    assert LINE_X[::-1].strides[0] < 0
    assert recall_at_k(LINE_X[::-1], LINE_Y[::-1], [1, 2, 3], backend="torch") == pytest.approx({1: 1 / 6, 2: 4 / 6, 3: 1.0})
    r = recall_at_k(LINE_X.astype(np.float64), LINE_Y, [1, 2, 3], backend="torch")
    assert r == pytest.approx({1: 1 / 6, 2: 4 / 6, 3: 1.0})


def test_torch_search_rejects_what_faiss_rejects():
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        recall_at_k(torch.full((6, 1), float("nan")), LINE_Y, [1], backend="torch")
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(torch.zeros(6), LINE_Y, [1], backend="torch")
    with pytest.raises(ValueError, match="real-valued"):
        recall_at_k(torch.zeros(6, 1, dtype=torch.bool), LINE_Y, [1], backend="torch")
    with pytest.raises(ValueError, match="dimension"):
        recall_at_k(LINE_X, LINE_Y, [1], gallery=np.zeros((6, 2)), gallery_labels=LINE_Y, backend="torch")


def test_kept_embeddings_metrics_on_a_device_equal_the_cpu_ones(data):
    from mdr.retrieval import Embeddings

    x, y = data
    emb = Embeddings(x[:200], y[:200], x[200:], y[200:])
    # On the CPU device the search is faiss's; on a GPU device it is the torch backend, tested above on
    # CPU tensors (no test depends on a GPU).
    assert emb.metrics([1, 4], full=True, device=torch.device("cpu")) == emb.metrics([1, 4], full=True)


def test_nmi_matches_sklearn_and_is_high_on_separated_clusters():
    x, y = clustered(5, 40, 8, 0.05, seed=1)
    assert nmi(x, y) >= 0.99
    # Same computation spelled out: faiss k-means labels scored by sklearn.
    km = faiss.Kmeans(8, 5, niter=100, seed=0, verbose=False, min_points_per_centroid=1)
    km.train(x)
    assign = km.index.search(x, 1)[1][:, 0]
    assert nmi(x, y) == pytest.approx(normalized_mutual_info_score(y, assign))


@pytest.mark.parametrize("seed", range(6))
def test_normalized_mutual_information_equals_sklearn(seed):
    from mdr.metrics import normalized_mutual_information

    rng = np.random.default_rng(seed)
    n, ka, kb = [(50, 5, 5), (200, 20, 7), (30, 1, 4), (40, 3, 1), (25, 1, 1), (300, 50, 50)][seed]
    a = rng.integers(0, ka, n) * 7 + 3  # arbitrary label values, not 0..k-1
    b = rng.integers(0, kb, n)
    assert normalized_mutual_information(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert normalized_mutual_information(a, a) == pytest.approx(normalized_mutual_info_score(a, a), abs=1e-12)


# --------------------------------------------------------------------------- blocking, threads
@pytest.mark.parametrize("loo", [True, False])
def test_block_size_does_not_change_results(data, loo):
    x, y = data
    kw = {} if loo else dict(gallery=x[300:], gallery_labels=y[300:])
    q, ql = (x, y) if loo else (x[:300], y[:300])
    ks = [1, 3, 10, 50]
    full = recall_at_k(q, ql, ks, block_size=4096, **kw)
    full_map = map_at_r(q, ql, block_size=4096, **kw)
    g, gl = kw.get("gallery", x), kw.get("gallery_labels", y)
    tie, hit, r = near_tie_ranks(q, ql, g, gl, loo)
    for bs in (1, 7, 64, 299):  # blocks of queries may take other float32 kernels: near-ties may turn
        got = recall_at_k(q, ql, ks, block_size=bs, **kw)
        for k in ks:
            assert got[k] == pytest.approx(full[k], abs=tolerance(tie <= hit))
        assert map_at_r(q, ql, block_size=bs, **kw) == pytest.approx(full_map, abs=tolerance(tie <= r - 1))


def test_threads_are_restored(data):
    x, y = data
    before = faiss.omp_get_max_threads()
    a = recall_at_k(x, y, [1, 5], threads=1)
    assert faiss.omp_get_max_threads() == before
    # one thread against the process's count: the float32 distance kernels may round otherwise, so only the
    # queries whose order float32 cannot settle may differ (bit-equality is not promised across thread counts)
    tie, hit, _ = near_tie_ranks(x, y, x, y, True)
    b = recall_at_k(x, y, [1, 5])
    assert a == pytest.approx(b, abs=tolerance(tie <= hit))


# --------------------------------------------------------------------------- errors
def test_k_too_large_raises():
    with pytest.raises(ValueError, match=r"k=6 .*5"):
        recall_at_k(LINE_X, LINE_Y, [1, 6])  # leave-one-out: 5 candidates
    with pytest.raises(ValueError, match=r"k=7 .*6"):
        recall_at_k(LINE_X[:2], LINE_Y[:2], [7], gallery=LINE_X, gallery_labels=LINE_Y)
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k(LINE_X, LINE_Y, [0])
    with pytest.raises(ValueError, match="non-empty"):
        recall_at_k(LINE_X, LINE_Y, [])


def test_length_and_shape_mismatches_raise():
    with pytest.raises(ValueError, match="labels has 5 entries but embeddings has 6 rows"):
        recall_at_k(LINE_X, LINE_Y[:5], [1])
    with pytest.raises(ValueError, match="labels has 5 entries but embeddings has 6 rows"):
        map_at_r(LINE_X, LINE_Y[:5])
    with pytest.raises(ValueError, match="labels has 5 entries"):
        nmi(LINE_X, LINE_Y[:5])
    with pytest.raises(ValueError, match="gallery_labels has 2 entries but gallery has 6"):
        recall_at_k(LINE_X, LINE_Y, [1], gallery=LINE_X, gallery_labels=LINE_Y[:2])
    with pytest.raises(ValueError, match="together"):
        recall_at_k(LINE_X, LINE_Y, [1], gallery=LINE_X)
    with pytest.raises(ValueError, match="dimension"):
        recall_at_k(LINE_X, LINE_Y, [1], gallery=np.zeros((6, 2)), gallery_labels=LINE_Y)
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(LINE_X[:, 0], LINE_Y, [1])
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.full((6, 1), np.nan), LINE_Y, [1])
