"""Benchmark mdr.metrics.recall_at_k / map_at_r against pytorch-metric-learning's
AccuracyCalculator on SOP-sized synthetic embeddings.

    python -m benchmarks.bench_recall [--n 60000 --dim 512 --classes 11000 --kmax 1000 --threads 2]

Data: ``--classes`` classes with at least 2 items each (the rest spread uniformly at random,
like SOP's test set: 60,502 images, 11,316 classes, mostly 2-12 per class), float32 class
centres N(0, I) plus N(0, noise^2 I) per item. Generated once by this (parent) process with
numpy only and written to a temporary directory as .npy files.

Measurement: every method runs in its own fresh Python subprocess (the parent never imports
faiss or torch, so nothing forks after faiss has run). The child loads the .npy files,
imports its libraries, sets faiss/torch/OpenMP threads to ``--threads``, then:

* wall time: ``time.perf_counter()`` around the metric call only (no imports, no loading),
  and CPU time (``time.process_time()``, summed over threads); with ``--repeat N`` the call
  runs N times in the same process and the minimum is reported (the machine may be shared:
  CPU time is the steadier figure when other jobs compete for the cores);
* peak RSS increase: the child resets the kernel's peak-RSS counter (writes ``5`` to
  ``/proc/self/clear_refs``, which resets VmHWM) right before the call and reports
  ``VmHWM after - VmRSS before`` (peak over all repeats). If that reset is not available
  it falls back to a psutil thread sampling RSS every 5 ms (which can miss short spikes).

Methods:

* ``mdr recall_at_k``: ks = [1, 10, 100, kmax], leave-one-out, blocked faiss search.
* ``mdr map_at_r``: MAP@R, leave-one-out.
* ``faiss bare``: one ``IndexFlatL2.search`` of all rows with k = kmax + 1 (index built
  inside the timed call, as ours does): the floor that our evaluation is measured against.
* ``mdr evaluate``: ``evaluate_retrieval(..., compute_nmi=False)``: Recall@K for ks and
  MAP@R from one blocked search of depth max(kmax, max R) + 1 -- what a run's evaluation
  computes. ``mdr evaluate torch``: the same with ``backend="torch"`` on the GPU when there
  is one (on the CPU otherwise).
* ``PML k=<k>``: ``AccuracyCalculator(include=("precision_at_1",
  "mean_average_precision_at_r"), k=<k>)`` with ``get_accuracy(x, y, x, y,
  ref_includes_query=True)``. ``k="max_bin_count"`` (the setting MAP@R needs; search depth
  = largest class - 1) and ``k=kmax`` (same search depth as ours). PML has no Recall@K for
  K > 1 (its precision_at_1 is Recall@1), and searches all queries in one call. Its peak
  memory is dominated not by the search but by ``get_label_match_counts``, which builds a
  (number of classes x N) boolean comparison and sums it as int64 (~6 GiB for 11,000 x
  60,000), whatever k is.

NMI is not benchmarked: k-means with ~11,000 centroids on 60,000 x 512 is a different cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MARK = "BENCH_RESULT "


# --------------------------------------------------------------------------- data
def make_data(n: int, dim: int, n_classes: int, noise: float, seed: int):
    import numpy as np

    if n < 2 * n_classes:
        raise SystemExit(f"--n ({n}) must be at least 2 * --classes ({2 * n_classes})")
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.multinomial(n - 2 * n_classes, np.full(n_classes, 1.0 / n_classes))
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), sizes)
    rng.shuffle(labels)
    centers = rng.standard_normal((n_classes, dim), dtype=np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= np.float32(noise)
    x += centers[labels]
    return x, labels, int(sizes.max())


# --------------------------------------------------------------------------- child side
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak RSS increase over the with-block, in MiB (see module docstring)."""

    def __enter__(self):
        import gc

        gc.collect()
        self.base_kib = _status_kib("VmRSS")
        self.method = "VmHWM reset via /proc/self/clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if self.base_kib is None or _status_kib("VmHWM") is None:
                raise OSError
            self._thread = None
        except OSError:
            import psutil

            self.method = "psutil RSS sampling every 5 ms"
            proc = psutil.Process()
            self.base_kib = proc.memory_info().rss // 1024
            self._peak = self.base_kib
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss // 1024)
                    self._stop.wait(0.005)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            peak = _status_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            import psutil

            peak = max(self._peak, psutil.Process().memory_info().rss // 1024)
        self.increase_mib = (peak - self.base_kib) / 1024.0
        self.base_mib = self.base_kib / 1024.0
        return False


def run_worker(args) -> None:
    import numpy as np

    x = np.load(Path(args.data) / "x.npy")
    y = np.load(Path(args.data) / "y.npy")
    import faiss

    faiss.omp_set_num_threads(args.threads)
    ks = sorted({1, 10, 100, args.kmax})
    result: dict = {"worker": args.worker}

    if args.worker == "faiss_bare":
        def call():
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(x)
            index.search(x, args.kmax + 1)
            return {}

        result["search_k"] = args.kmax + 1
    elif args.worker in ("mdr_eval", "mdr_eval_torch"):
        from mdr.metrics import evaluate_retrieval

        data, backend = x, "faiss"
        if args.worker == "mdr_eval_torch":
            import torch

            torch.set_num_threads(args.threads)
            data, backend = torch.from_numpy(x).to("cuda" if torch.cuda.is_available() else "cpu"), "torch"
            result["device"] = str(data.device)

        def call():
            out = evaluate_retrieval(data, y, ks, threads=args.threads, compute_nmi=False, backend=backend)
            if backend == "torch" and data.is_cuda:
                torch.cuda.synchronize()
            return out

        result["search_k"] = f"max({args.kmax}, max R) + 1"
    elif args.worker in ("mdr_recall", "mdr_map"):
        from mdr.metrics import map_at_r, recall_at_k

        def call():
            if args.worker == "mdr_recall":
                r = recall_at_k(x, y, ks, threads=args.threads)
                return {f"recall_at_{k}": v for k, v in r.items()}
            return {"map_at_r": map_at_r(x, y, threads=args.threads)}

        result["search_k"] = args.kmax + 1 if args.worker == "mdr_recall" else "max R + 1 (per block)"
    elif args.worker.startswith("pml:"):
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        torch.set_num_threads(args.threads)
        k_arg = args.worker.split(":", 1)[1]
        k = k_arg if k_arg == "max_bin_count" else int(k_arg)
        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r"),
            k=k,
            device=torch.device("cpu"),
        )
        def call():
            acc = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
            return {"recall_at_1": acc["precision_at_1"], "map_at_r": acc["mean_average_precision_at_r"]}

        result["search_k"] = (
            f"{int(np.bincount(y).max())} (max bin count)" if k == "max_bin_count" else k + 1
        )
    else:
        raise SystemExit(f"unknown worker {args.worker}")

    walls, cpus = [], []
    with PeakRSS() as mem:  # peak over all repeats
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            result.update(call())
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    result.update(
        wall_s=min(walls),
        walls_s=walls,
        cpu_s=min(cpus),
        peak_rss_increase_mib=mem.increase_mib,
        rss_before_mib=mem.base_mib,
        rss_method=mem.method,
    )
    print(MARK + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side
def spawn(worker: str, data_dir: str, args) -> dict:
    cmd = [
        sys.executable, "-m", "benchmarks.bench_recall", "--worker", worker,
        "--data", data_dir, "--kmax", str(args.kmax), "--threads", str(args.threads),
        "--repeat", str(args.repeat),
    ]  # fmt: skip
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"worker": worker, "error": f"timed out after {args.timeout} s (--timeout)"}
    total = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            res["process_s"] = total
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"worker": worker, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def fmt(v, spec=".4f"):
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def print_bare_ratios(results: list[dict]) -> None:
    """Our evaluation against the bare faiss search: best wall and CPU time of each over the rounds."""
    ok = [r for r in results if "error" not in r]
    best = lambda w, key: min((r[key] for r in ok if r["worker"] == w), default=None)  # noqa: E731
    peak = lambda w: max((r["peak_rss_increase_mib"] for r in ok if r["worker"] == w), default=None)  # noqa: E731
    bare_wall, bare_cpu = best("faiss_bare", "wall_s"), best("faiss_bare", "cpu_s")
    for w in ("mdr_eval", "mdr_eval_torch"):
        wall, cpu = best(w, "wall_s"), best(w, "cpu_s")
        if None in (wall, bare_wall):
            continue
        print(f"{w} / faiss bare: wall {wall / bare_wall:.3f}x, CPU {cpu / bare_cpu:.3f}x; peak RSS "
              f"+{peak(w):.0f} MiB vs +{peak('faiss_bare'):.0f} MiB (goal: within 1.1x, <= 2048 MiB)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=11000)
    p.add_argument("--kmax", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--noise", type=float, default=2.2,
                   help="per-dimension noise std relative to unit-variance class centres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pml-k", default="max_bin_count,kmax",
                   help="comma list of PML k settings: max_bin_count, kmax, an int; '' to skip PML")
    p.add_argument("--skip-map", action="store_true", help="do not time mdr map_at_r")
    p.add_argument("--bare", type=int, default=0, metavar="ROUNDS",
                   help="instead of the methods above: ROUNDS alternations of 'faiss bare' and 'mdr evaluate' "
                        "(each in a fresh subprocess) and their time and memory ratios")
    p.add_argument("--torch", action="store_true", help="with --bare: also 'mdr evaluate torch' each round")
    p.add_argument("--repeat", type=int, default=1,
                   help="calls per method (same subprocess); wall/CPU reported as the minimum")
    p.add_argument("--timeout", type=float, default=3600.0, help="per-method limit in seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        run_worker(args)
        return

    t0 = time.perf_counter()
    x, y, max_bin = make_data(args.n, args.dim, args.classes, args.noise, args.seed)
    gen_s = time.perf_counter() - t0
    print(
        f"data: {x.shape[0]} x {x.shape[1]} float32 ({x.nbytes / 2**20:.0f} MiB), "
        f"{args.classes} classes, class size 2..{max_bin}, noise {args.noise}, seed {args.seed} "
        f"(generated in {gen_s:.1f} s)"
    )
    print(f"threads: {args.threads} (faiss, torch, OMP/MKL/OpenBLAS); cpu count {os.cpu_count()}")

    workers = ["mdr_recall"] + ([] if args.skip_map else ["mdr_map"])
    for k in filter(None, (s.strip() for s in args.pml_k.split(","))):
        workers.append("pml:" + (str(args.kmax) if k == "kmax" else k))
    if args.bare:  # alternated, so that a change of load on a shared machine falls on both
        workers = (["faiss_bare", "mdr_eval"] + (["mdr_eval_torch"] if args.torch else [])) * args.bare

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_recall_") as tmp:
        import numpy as np

        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "y.npy", y)
        del x
        for w in workers:
            print(f"running {w} ...", flush=True)
            res = spawn(w, tmp, args)
            if "error" in res:
                print(f"  {w}: {res['error']}", flush=True)
            else:
                walls = ", ".join(f"{v:.1f}" for v in res["walls_s"])
                print(f"  {w}: wall {walls} s, CPU {res['cpu_s']:.1f} s, "
                      f"peak RSS +{res['peak_rss_increase_mib']:.0f} MiB", flush=True)
            results.append(res)

    names = {"mdr_recall": "mdr recall_at_k", "mdr_map": "mdr map_at_r", "faiss_bare": "faiss bare",
             "mdr_eval": "mdr evaluate", "mdr_eval_torch": "mdr evaluate torch"}
    ks = sorted({1, 10, 100, args.kmax})
    header = ["method", "search k", "wall s", "CPU s", "peak RSS +MiB"] + [f"R@{k}" for k in ks] + ["MAP@R"]
    rows = []
    for r in results:
        name = names.get(r["worker"], "PML k=" + r["worker"].split(":", 1)[-1])
        name += f" ({r['device']})" if "device" in r else ""
        if "error" in r:
            rows.append([name, "-", r["error"]] + [""] * (len(header) - 3))
            continue
        rows.append(
            [name, str(r["search_k"]), f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
             f"{r['peak_rss_increase_mib']:.0f}"]
            + [fmt(r.get(f"recall_at_{k}")) for k in ks]
            + [fmt(r.get("map_at_r"))]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print()
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    methods = {r.get("rss_method") for r in results if "rss_method" in r}
    print(f"\nwall s / CPU s: metric call only (perf_counter / process_time, all threads), minimum "
          f"of {args.repeat} call(s); peak RSS: {', '.join(sorted(methods))}, over all calls; "
          "each method in a fresh subprocess.")
    print("PML has no Recall@K for K > 1 (its precision_at_1 = R@1); PML skips queries without "
          "positives (none here).")

    if args.bare:
        print_bare_ratios(results)

    # Agreement between implementations.
    ours = {r["worker"]: r for r in results if "error" not in r}
    for w, r in ours.items():
        if not w.startswith("pml:"):
            continue
        msgs = []
        if "mdr_recall" in ours:
            msgs.append(f"|dR@1| = {abs(r['recall_at_1'] - ours['mdr_recall']['recall_at_1']):.2e}")
        if "mdr_map" in ours:
            msgs.append(f"|dMAP@R| = {abs(r['map_at_r'] - ours['mdr_map']['map_at_r']):.2e}")
        if msgs:
            print(f"agreement mdr vs {w}: " + ", ".join(msgs))


if __name__ == "__main__":
    main()
