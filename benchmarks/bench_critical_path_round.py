"""How much of a probe round is serial, from thread CPU times (readable on a busy machine).

    python benchmarks/bench_critical_path_round.py [--rounds 5] [--set key=value ...]

Runs probe rounds at the seed_plateau settings (as ``bench_probes.py``) and counts, per
round, the CPU seconds of the main thread and of every worker of each thread pool (the
project's ``parallel_map`` and the critic's matrix-free pool). Another process on the
machine lengthens wall times but hardly a thread's own CPU time, so

    critical = main-thread CPU + sum over pools of the busiest worker's CPU

estimates the round's wall time on a quiet machine with a core per thread, and
``idle = threads * critical - process CPU`` the core-seconds a core waited (the serial
stretches; the moments' BLAS threads count as busy beside the main thread). Not seen:
waits for the GIL and for memory bandwidth (a GIL-bound stretch, such as the probe
rollout's per-step Python, counts as parallel). Round 0 (the counterfactuals) is left
out of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import SEED_PLATEAU
from common import load_average, machine_info

from tdlens.config import load_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes.manager import ProbeManager


class PoolCPU:
    """Adds up, per pool, the CPU seconds each worker thread spent in its tasks; a pool's
    busiest worker goes to ``critical`` when the pool shuts down."""

    def __init__(self) -> None:
        self.critical = 0.0
        self._lock = threading.Lock()
        self._busy: dict[int, dict[int, float]] = {}

    def install(self) -> None:
        submit, shutdown = ThreadPoolExecutor.submit, ThreadPoolExecutor.shutdown
        pools = self

        def timed_submit(pool, fn, /, *args, **kwargs):
            def task():
                start = time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    with pools._lock:
                        busy = pools._busy.setdefault(id(pool), {})
                        tid = threading.get_ident()
                        busy[tid] = busy.get(tid, 0.0) + time.thread_time() - start

            return submit(pool, task)

        def timed_shutdown(pool, *args, **kwargs):
            shutdown(pool, *args, **kwargs)
            with pools._lock:
                busy = pools._busy.pop(id(pool), {})
            pools.critical += max(busy.values(), default=0.0)

        ThreadPoolExecutor.submit = timed_submit
        ThreadPoolExecutor.shutdown = timed_shutdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, SEED_PLATEAU + args.overrides)
    print(machine_info())
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    result = outer_iteration(cfg, maps, params, 0, Workspace())
    manager = ProbeManager(cfg, maps)
    pools = PoolCPU()
    pools.install()
    rows = []
    for n in range(args.rounds):
        pools.critical = 0.0
        wall, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        manager.run(n, result.params, result.delta, result.metrics["td_loss"], "every")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        critical = time.thread_time() - main_cpu + pools.critical
        idle = maps.threads * critical - cpu
        rows.append((wall, cpu, critical, idle))
        print(
            f"round {n}: wall {wall:.3f} s, CPU {cpu:.3f} s, critical {critical:.3f} s, "
            f"idle {idle:.3f} core-s ({load_average()})"
        )
    later = rows[1:] or rows
    names = ("wall", "CPU", "critical", "idle")
    medians = ", ".join(
        f"{k} {statistics.median(r[i] for r in later):.3f}" for i, k in enumerate(names)
    )
    print(f"median of rounds 1-{len(rows) - 1} ({maps.threads} threads): {medians} s")


if __name__ == "__main__":
    main()
