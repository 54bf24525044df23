"""Shared helpers for the benchmark scripts: machine info, timing, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import tdlens  # noqa: F401  (first: its BLAS thread policy must be set before NumPy loads)

import numpy as np  # isort: skip

SEED_SETTINGS = [
    "env.feature_dim=2048",
    "env.actor_feature_dim=512",
    "trajectories=16",
    "horizon=200",
    "K_mc=4",
]


def machine_info() -> str:
    """One paragraph naming the machine, Python, NumPy, SciPy, numba and the BLAS."""
    import scipy

    try:
        import numba

        numba_version = numba.__version__
    except ImportError:  # pragma: no cover
        numba_version = "absent"
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{i['internal_api']} {i.get('version', '')} ({i['num_threads']} threads)"
            for i in threadpool_info()
        )
    except ImportError:  # pragma: no cover
        blas = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {platform.platform()}; "
        f"python {sys.version.split()[0]}; numpy {np.__version__}; scipy {scipy.__version__}; "
        f"numba {numba_version}; BLAS {blas}; {load_average()}"
    )


def load_average() -> str:
    """1/5/15-minute load averages: other processes on a 2-core machine inflate timings."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def children_peak_rss_mib() -> float:
    """Largest peak RSS among the finished child processes waited for so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    """'median X (min A, max B, n=N)'."""
    return (
        f"median {statistics.median(values):.{digits}f} {unit} (min {min(values):.{digits}f}, "
        f"max {max(values):.{digits}f}, n={len(values)})"
    )


def run_command(args: list[str], env: dict[str, str] | None = None) -> float:
    """Run a command to completion (output discarded); its wall seconds. Raises on failure."""
    import subprocess

    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - start


def tdlens_command() -> list[str]:
    """The installed ``tdlens`` entry point run by this interpreter."""
    return [sys.executable, "-m", "tdlens.cli"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB), from getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_it(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds of `clock` (wall by default; ``time.process_time`` for CPU) of `repeats`
    calls after `warmup` uncounted ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def summary(label: str, times: list[float]) -> str:
    """'label: median X s (min A, max B, n=N)'."""
    return (
        f"{label}: median {statistics.median(times):.4f} s "
        f"(min {min(times):.4f}, max {max(times):.4f}, n={len(times)})"
    )
