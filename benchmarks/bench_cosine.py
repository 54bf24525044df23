"""The float32 cosine alone and one chain's critic features, fused against three calls.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/bench_cosine.py [--repeats 200]

Prints, in CPU nanoseconds per cosine (median of `repeats` calls, one thread, the two
sides alternated call by call):
- the cosine alone over a cache-resident buffer of the features' sizes (the three-call
  path's 1 MiB argument block, 25 rows x 5 actions x D' = 2044): ``np.cos`` against
  :func:`tdlens.kernels.cosines`, both into a second buffer (in place, ``cosines`` runs
  scalar: LLVM's overlap check sends it to its unvectorised loop);
- one chain's critic features at the seed settings (T = 200 rows, K_mc = 4, D = 2048):
  ``chain_features`` (fused: :func:`tdlens.kernels.block_cos_features`) against the same
  call with the fused kernel refused (``block_arguments``, ``np.cos``,
  ``block_features``), and the probes' ``chain_differences`` likewise, also with the
  closed-form bar_phi (one next action: the probes' own batches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import SEED_SETTINGS, machine_info

import tdlens.features as features
import tdlens.probes.td_features as td_features
from tdlens.config import load_config
from tdlens.features import NextActions, chain_features, make_feature_maps
from tdlens.kernels import cosines
from tdlens.probes.td_features import chain_differences


def alternate(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """CPU seconds of each side's call, the sides called in turn `repeats` times (after
    one uncounted round)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(repeats + 1):
        for name, fn in sides.items():
            start = time.thread_time()
            fn()
            if rep:
                times[name].append(time.thread_time() - start)
    return times


def report(title: str, times: dict[str, list[float]], count: int) -> None:
    print(title)
    for name, values in times.items():
        med, low = statistics.median(values), min(values)
        print(
            f"  {name:34s} median {med * 1e3:8.3f} ms  min {low * 1e3:8.3f} ms  "
            f"= {med / count * 1e9:.3f} ns per cosine"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(machine_info())
    rng = np.random.default_rng(0)

    x = rng.normal(0.0, 3.0, 25 * 5 * 2044).astype(np.float32)
    y = np.empty_like(x)
    times = alternate(
        {"np.cos": lambda: np.cos(x, out=y), "kernels.cosines": lambda: cosines(x, y)},
        args.repeats,
    )
    report(f"cosine alone, {x.size} float32 (1 MiB) into another buffer", times, x.size)

    cfg = load_config(None, [*SEED_SETTINGS, "threads=1"])
    maps = make_feature_maps(cfg)
    T, K, D = cfg.horizon, cfg.K_mc, maps.D
    o = rng.uniform(-1, 1, (T + 1, 18))
    o[:, 14:18] = rng.integers(0, 2, (T + 1, 4))
    a = rng.normal(0, 0.4, (T, 2))
    nxt = NextActions(draws=rng.normal(0, 0.4, (T, K, 2)))
    phi, bar = np.empty((T, D), np.float32), np.empty((T, D), np.float32)
    scratch: dict[str, np.ndarray] = {}
    fused_kernel = features.block_cos_features
    fused_diff = td_features.block_cos_differences

    def chain(fused: bool) -> None:
        features.block_cos_features = fused_kernel if fused else (lambda *a: False)
        chain_features(maps, o, a, nxt, phi, bar, scratch)

    def differences(fused: bool, nexts: NextActions) -> None:
        td_features.block_cos_differences = fused_diff if fused else (lambda *a: False)
        chain_differences(maps, o, a, nexts, cfg.gamma, phi, bar, scratch)

    count = T * (K + 1) * (D - 4)
    times = alternate(
        {"three calls": lambda: chain(False), "fused (block_cos_features)": lambda: chain(True)},
        args.repeats // 4,
    )
    report(f"chain_features, one chain of T={T}, K_mc={K}, D={D}", times, count)
    exact = NextActions(mean=nxt.draws[:, 0], sigma=cfg.sigma_pi)
    for nexts, title, n in (
        (nxt, "chain_differences (probes), the same chain", count),
        (exact, "chain_differences, bar_phi exact (the probes' batches)", T * 2 * (D - 4)),
    ):
        times = alternate(
            {
                "three calls": lambda nexts=nexts: differences(False, nexts),
                "fused (block_cos_differences)": lambda nexts=nexts: differences(True, nexts),
            },
            args.repeats // 4,
        )
        report(title, times, n)
    features.block_cos_features, td_features.block_cos_differences = fused_kernel, fused_diff


if __name__ == "__main__":
    main()
