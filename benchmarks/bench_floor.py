"""The dense linear algebra a probe round cannot skip, timed alone on one BLAS thread.

Usage: python benchmarks/bench_floor.py [--repeats 7] [--round-cpu S] [--target S]

At the seed settings (D = 2048, fixed-point batch n = 4096) a probe round forms
``A = (1/n) sum_t rho_t phi_t dphi_t^T / sqrt(D)`` from its two halves (two float32
products ``[D, n/2] @ [n/2, D]``, 2 D^2 n flops, docs/model.md §6.1) and factors three
float32 ``[D, D]`` matrices (the full batch and the two halves of the noise floor,
2/3 D^3 flops each). This prints the CPU seconds of each (median of `repeats`, one BLAS
thread: a sweep worker's setting), their rate in GFLOP/s beside that of a square
float32 product of 2D (this BLAS's best on this core), and NumPy's float32 cosine in ns per
element. With ``--round-cpu`` (a one-thread round's CPU seconds, e.g. from
``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_probes.py --cpu-split --set
threads=1``) and ``--target`` it prints what the target leaves for everything else.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg as sla

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, machine_info, time_it

from tdlens.threads import limit_threads


def cpu_median(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds (``time.process_time``) of `repeats` calls after one warm-up."""
    return statistics.median(time_it(fn, repeats, clock=time.process_time))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dim", type=int, default=2048, help="D")
    parser.add_argument("--batch", type=int, default=4096, help="fixed-point batch n")
    parser.add_argument("--round-cpu", type=float, help="a one-thread round's CPU seconds")
    parser.add_argument("--target", type=float, help="the round's target, seconds")
    args = parser.parse_args()
    D, n = args.dim, args.batch
    rng = np.random.default_rng(0)
    phi = rng.uniform(-0.03, 0.03, (n, D)).astype(np.float32)
    dphi = rng.uniform(-0.03, 0.03, (n, D)).astype(np.float32)
    half = n // 2
    product = np.empty((D, D), np.float32)
    S = 2 * D
    square = rng.standard_normal((S, S)).astype(np.float32)
    M = rng.standard_normal((D, D)) + D**0.5 * np.eye(D)
    factor = np.empty((D, D), np.float32)
    args_block = rng.uniform(-40, 40, (n, D)).astype(np.float32)
    cos_out = np.empty_like(args_block)

    def moments() -> None:
        for rows in (slice(0, half), slice(half, n)):
            np.matmul(phi[rows].T, dphi[rows], out=product)

    def lu() -> None:
        np.copyto(factor, M, casting="same_kind")  # C order: its transpose is Fortran's
        sla.lu_factor(factor.T, overwrite_a=True, check_finite=False)

    print(machine_info())
    with limit_threads(1, "blas"):
        t_moments = cpu_median(moments, args.repeats)
        t_lu = cpu_median(lu, args.repeats)
        t_square = cpu_median(lambda: square @ square, max(3, args.repeats // 2))
    t_cos = cpu_median(lambda: np.cos(args_block, out=cos_out), args.repeats)
    rate = lambda flops, seconds: flops / seconds / 1e9  # noqa: E731
    print(f"D = {D}, n = {n}, one BLAS thread, median CPU of {args.repeats}:")
    print(f"  square float32 product {S}^3: {rate(2 * S**3, t_square):.0f} GFLOP/s")
    print(
        f"  moments, two [D, n/2] @ [n/2, D] float32: {t_moments:.3f} s "
        f"({rate(2 * D * D * n, t_moments):.0f} GFLOP/s)"
    )
    print(f"  one float32 LU of [D, D]: {t_lu:.3f} s ({rate(2 * D**3 / 3, t_lu):.0f} GFLOP/s)")
    floor = t_moments + 3 * t_lu
    print(f"  moments + three LUs: {floor:.3f} s")
    print(f"  NumPy float32 cosine: {t_cos / args_block.size * 1e9:.2f} ns an element")
    if args.round_cpu is not None:
        rest = args.round_cpu - floor
        print(f"  the round's other work: {rest:.3f} s of {args.round_cpu:.3f} s")
        if args.target is not None:
            left = args.target - floor
            print(
                f"  target {args.target:.3f} s leaves {left:.3f} s for it "
                f"({100 * left / rest:.0f}% of today's)"
            )
    print(load_average())


if __name__ == "__main__":
    main()
