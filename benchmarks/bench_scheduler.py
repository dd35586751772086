"""Snakemake's own CPU on a long DAG, by `--max-jobs-per-timespan` (docs/costs.md, "Snakemake's own share").

    python -m benchmarks.bench_scheduler [--jobs 200] [--seconds 0.5] [--cores 2] [--limits 100/1s,1000/10s]
                                         [--repeats 2]

A synthetic workflow of `--jobs` independent jobs that each sleep `--seconds` runs on `--cores`, so most jobs
wait for a core: the situation of `make reproduce`, where Snakemake 9's scheduler starts one re-evaluation timer
per scheduling round under the job rate limit, and every finished job adds a round. The Snakemake process's own
CPU (user + system, read from /proc until it exits; its jobs' sleeps cost nothing) and its peak thread count are
printed per limit, pair by pair in alternating order, with the wall time (which includes the exit delay: the
timers are not daemon threads, so Snakemake may wait up to one timespan before it exits).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule job:
    output: "out/{{i}}.txt"
    shell: "sleep {seconds} && touch {{output}}"
"""
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_and_threads(pid: int) -> tuple[float, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3, utime 14, stime 15, num_threads 20 (1-based, proc(5))
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[17])


def run_once(folder: Path, limit: str, cores: int) -> dict[str, float]:
    """One full run in `folder`, its outputs removed first: Snakemake's CPU seconds, peak threads and wall seconds."""
    for old in (folder / "out").glob("*"):
        old.unlink()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", str(cores), "--quiet", "all",
                             "--max-jobs-per-timespan", limit], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu, threads = 0.0, 0
    while proc.poll() is None:
        reading = _cpu_and_threads(proc.pid)
        if reading is not None:
            cpu, threads = reading[0], max(threads, reading[1])
        time.sleep(0.1)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench_scheduler: snakemake with --max-jobs-per-timespan {limit} failed (exit {proc.returncode}):\n"
                 f"{proc.stderr.read()[-2000:]}")
    return {"cpu_s": cpu, "threads": threads, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scheduler", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="independent jobs in the DAG (default 200)")
    parser.add_argument("--seconds", type=float, default=0.5, help="each job's sleep (default 0.5)")
    parser.add_argument("--cores", type=int, default=2, help="--cores given to Snakemake (default 2)")
    parser.add_argument("--limits", default="100/1s,1000/10s",
                        help="comma-separated --max-jobs-per-timespan values; the first is Snakemake's default")
    parser.add_argument("--repeats", type=int, default=2, help="pairs (default 2)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.cores < 1 or args.repeats < 1 or args.seconds < 0:
        parser.error("--jobs, --cores and --repeats must be at least 1, --seconds at least 0")
    limits = [s.strip() for s in args.limits.split(",") if s.strip()]
    results: dict[str, list[dict[str, float]]] = {limit: [] for limit in limits}
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        folder = Path(tmp)
        (folder / "Snakefile").write_text(SNAKEFILE.format(jobs=args.jobs, seconds=args.seconds))
        (folder / "out").mkdir()
        for r in range(args.repeats):
            for limit in (limits if r % 2 == 0 else limits[::-1]):
                results[limit].append(run_once(folder, limit, args.cores))
                print(f"  pair {r + 1}: {limit:>9}  Snakemake CPU {results[limit][-1]['cpu_s']:6.2f} s  "
                      f"wall {results[limit][-1]['wall_s']:6.1f} s", file=sys.stderr)
    print(f"{args.jobs} jobs of {args.seconds} s on {args.cores} cores, {args.repeats} pairs (median, min-max)")
    print(f"{'--max-jobs-per-timespan':>24} | {'Snakemake CPU s':>17} | {'peak threads':>12} | {'wall s':>15}")
    for limit, rows in results.items():
        def span(key: str, fmt: str) -> str:
            values = [row[key] for row in rows]
            return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
        print(f"{limit:>24} | {span('cpu_s', '.1f'):>17} | {span('threads', '.0f'):>12} | {span('wall_s', '.1f'):>15}")


if __name__ == "__main__":
    main()
