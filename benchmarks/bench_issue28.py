"""Issue 28's table, measured from the runs' own files, for one code or two alternated.

Usage: python benchmarks/bench_issue28.py [--src SRC ...] [--alternations 2] [--sweep]
                                          [--set key=value ...]

For each code (a ``src`` directory put first on ``PYTHONPATH``; none given: the installed
tdlens), alternating the codes `alternations` times back to back:

- the seed run, ``tdlens run seed_plateau`` on 2 threads: wall time from process start to
  exit, peak RSS of that process (``os.wait4``), the median ``iter_time_s`` of its
  learning curves and the median ``total_s`` of its ``probes/rounds.csv``;
- two seed runs side by side, each on one thread (``--set threads=1`` and
  ``OPENBLAS_NUM_THREADS=1``: what a sweep worker sees while a second one works): the
  same two medians, over both runs;
- with ``--sweep``, ``benchmarks/bench_sweep.py --no-ray --runs 4 --jobs 2`` (Step-C
  runs of 200 iterations, probes every 10): runs per hour.

Each row prints the load average before it. The first round of a run (its counterfactuals
and page faults) is inside the median's sample but does not move it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, machine_info

from tdlens.rundir.read import read_table

HERE = Path(__file__).parent


def environment(src: str | None, one_thread: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    if one_thread:
        env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def seed_runs(
    src: str | None, tmp: Path, count: int, one_thread: bool, overrides: list[str]
) -> list[dict]:
    """`count` seed runs started together; per run its wall, peak RSS and medians."""
    sets = [x for o in overrides for x in ("--set", o)]
    sets += ["--set", "threads=1"] if one_thread else []
    started = []
    for k in range(count):
        run_dir = tmp / f"run{time.monotonic_ns()}_{k}"
        cmd = [sys.executable, "-m", "tdlens.cli", "run", "seed_plateau", "--run-dir", str(run_dir)]
        proc = subprocess.Popen(
            [*cmd, *sets],
            env=environment(src, one_thread),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append((proc, run_dir, time.perf_counter()))
    results = []
    for proc, run_dir, start in started:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"seed run failed ({proc.returncode}): {run_dir}")
        iters = read_table(run_dir / "learning_curves.csv").values("iter_time_s")
        rounds = read_table(run_dir / "probes" / "rounds.csv").values("total_s")
        results.append(
            {
                "wall": wall,
                "rss": usage.ru_maxrss / 1024.0,
                "iters": [float(x) for x in iters],
                "rounds": [float(x) for x in rounds],
            }
        )
    return results


def sweep_script(src: str | None) -> Path:
    """The code's own ``benchmarks/bench_sweep.py`` beside its ``src`` (an older tdlens
    reads its run tables with other helpers), else this one's."""
    own = Path(src).resolve().parent / "benchmarks" / "bench_sweep.py" if src else None
    return own if own is not None and own.is_file() else HERE / "bench_sweep.py"


def sweep_rate(src: str | None) -> float:
    out = subprocess.run(
        [sys.executable, str(sweep_script(src)), "--no-ray", "--runs", "4", "--jobs", "2"],
        env=environment(src),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"measured: (\d+) runs/h", out).group(1))


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=[], help="src directory of a code")
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also the Step-C sweep rate")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    codes = args.src or [None]
    print(machine_info())
    rows: list[dict[str, list[float]]] = [{} for _ in codes]
    with tempfile.TemporaryDirectory(prefix="bench_issue28_") as tmp:
        for a in range(args.alternations):
            for code, got in zip(codes, rows, strict=True):
                print(f"[{a}] {code}: {load_average()}", flush=True)
                (two,) = seed_runs(code, Path(tmp), 1, False, args.overrides)
                got.setdefault("seed run wall (s)", []).append(two["wall"])
                got.setdefault("seed run peak RSS (MiB)", []).append(two["rss"])
                got.setdefault("iteration, 2 threads (s)", []).append(median(two["iters"]))
                got.setdefault("probe round, 2 threads (s)", []).append(median(two["rounds"]))
                pair = seed_runs(code, Path(tmp), 2, True, args.overrides)
                iters = [x for run in pair for x in run["iters"]]
                rounds = [x for run in pair for x in run["rounds"]]
                got.setdefault("iteration, 1 thread beside a second run (s)", []).append(
                    median(iters)
                )
                got.setdefault("probe round, 1 thread beside a second run (s)", []).append(
                    median(rounds)
                )
                if args.sweep:
                    got.setdefault("Step-C sweep, 2 workers (runs/h)", []).append(sweep_rate(code))
                print(
                    "  " + "; ".join(f"{k} {v[-1]:.3f}" for k, v in got.items()),
                    flush=True,
                )
    print(f"end: {load_average()}")
    print("| what | " + " | ".join(str(c) for c in codes) + " |")
    print("| --- |" + " --- |" * len(codes))
    for key in rows[0]:
        cells = [", ".join(f"{x:.3g}" for x in got[key]) for got in rows]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
