"""The two-core critical path of a training iteration from CPU times (issue 28, session 10).

Usage: python benchmarks/bench_critical_path_iteration.py [--repeats 40] [--set key=value ...]

On a machine shared with other work the wall time of a two-thread iteration measures the
other work as much as the iteration. This bench times what does not depend on it: the
calling thread's CPU seconds (the serial stretches; it only waits while
``tdlens.threads.parallel_map`` runs items) plus, for every ``parallel_map`` call, the
makespan of its items' thread CPU seconds handed in order to the first free of
``threads`` workers (as the pool hands them out). The sum is the wall time the iteration
would take on idle cores with no thread start-up or GIL waits: a lower bound, and
comparable between codes measured under different loads. Prints it, the serial part and
the process CPU (all threads), medians over `repeats` iterations after 5 uncounted. With
``--set threads=1`` all three are the iteration's CPU. (A call nested in another's item
would be counted twice; the iteration makes none.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SEED_SETTINGS, machine_info

import tdlens.threads

_parallel_map = tdlens.threads.parallel_map
makespans: list[float] = []


def timed_parallel_map(fn, items, threads, user_api="blas"):
    """``parallel_map`` that records the makespan of its items' CPU seconds."""
    items = list(items)
    cpu = [0.0] * len(items)

    def one(pair):
        k, item = pair
        start = time.thread_time()
        result = fn(item)
        cpu[k] = time.thread_time() - start
        return result

    out = _parallel_map(one, list(enumerate(items)), threads, user_api)
    if threads > 1 and len(items) > 1:  # else the items ran in the calling thread
        free = [0.0] * min(threads, len(items))
        for c in cpu:
            free[free.index(min(free))] += c
        makespans.append(max(free))
    return out


# before the modules that import the name are loaded
tdlens.threads.parallel_map = timed_parallel_map

from tdlens.config import load_config  # noqa: E402
from tdlens.features import Workspace, make_feature_maps  # noqa: E402
from tdlens.learner import init_params, outer_iteration  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, [*SEED_SETTINGS, *args.overrides])
    print(machine_info())
    print(f"config: seed settings, threads={cfg.threads or 'all'}")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    workspace = Workspace()
    path, serial, process = [], [], []
    for n in range(args.repeats + 5):
        makespans.clear()
        thread0, process0 = time.thread_time(), time.process_time()
        result = outer_iteration(cfg, maps, params, n, workspace, keep_bar_phi=False)
        main_cpu = time.thread_time() - thread0
        process_cpu = time.process_time() - process0
        params = result.params
        if n >= 5:
            path.append((main_cpu + sum(makespans)) * 1e3)
            serial.append(main_cpu * 1e3)
            process.append(process_cpu * 1e3)
    print(
        f"critical path: median {statistics.median(path):.2f} ms (min {min(path):.2f}); "
        f"serial (calling thread) {statistics.median(serial):.2f} ms; "
        f"process CPU {statistics.median(process):.2f} ms; n={len(path)}"
    )


if __name__ == "__main__":
    main()
