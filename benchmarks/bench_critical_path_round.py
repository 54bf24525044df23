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
from collections.abc import Iterable
from concurrent.futures import ALL_COMPLETED, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import SEED_PLATEAU
from common import load_average, machine_info

import tdlens.threads as tdlens_threads
from tdlens.config import load_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes.manager import ProbeManager


class PoolCPU:
    """Adds up the CPU seconds each worker thread spent in its tasks and, per parallel
    stage, the busiest worker's to ``critical``: a stage is one wait for all of a
    ``parallel_map`` call's futures on the process's kept pool (``tdlens.threads.wait``),
    or the life of a pool that shuts down (the nested calls' pools, the critic's
    matrix-free pool)."""

    def __init__(self) -> None:
        self.critical = 0.0
        self._lock = threading.Lock()
        self._cpu: dict[int, tuple[int, int, float]] = {}
        """id(future) -> (id(pool), worker thread, CPU seconds of its task)"""

    def _makespan(self, futures: Iterable[int] | None, pool: int | None = None) -> None:
        """Take the tasks of `futures` (ids; None: every task of `pool`) out of the record
        and add their busiest worker's CPU to ``critical``."""
        with self._lock:
            if futures is None:
                futures = [k for k, (p, _, _) in self._cpu.items() if p == pool]
            busy: dict[int, float] = {}
            for key in futures:
                record = self._cpu.pop(key, None)
                if record is not None:
                    busy[record[1]] = busy.get(record[1], 0.0) + record[2]
            self.critical += max(busy.values(), default=0.0)

    def install(self) -> None:
        submit, shutdown = ThreadPoolExecutor.submit, ThreadPoolExecutor.shutdown
        real_wait = tdlens_threads.wait
        pools = self

        def timed_submit(pool, fn, /, *args, **kwargs):
            key: list[int] = []

            def task():
                start = time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    cpu = time.thread_time() - start
                    with pools._lock:
                        pools._cpu[key[0]] = (id(pool), threading.get_ident(), cpu)

            with pools._lock:  # the key is known before the task can finish
                future = submit(pool, task)
                key.append(id(future))
            return future

        def timed_shutdown(pool, *args, **kwargs):
            shutdown(pool, *args, **kwargs)
            pools._makespan(None, id(pool))

        def timed_wait(fs, timeout=None, return_when=ALL_COMPLETED):
            result = real_wait(fs, timeout, return_when)
            if return_when == ALL_COMPLETED:
                pools._makespan([id(f) for f in fs])
            return result

        ThreadPoolExecutor.submit = timed_submit
        ThreadPoolExecutor.shutdown = timed_shutdown
        tdlens_threads.wait = timed_wait


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
