"""Check tdlens's float32 cosine against NumPy's ``np.cos`` on every float32 bit pattern.

Usage: python benchmarks/check_cosine.py [--chunk-bits 24] [--stride 1]

Compares :func:`tdlens.kernels.cosines` (:func:`tdlens.kernels.cos32`) with ``np.cos`` bit
for bit (NaN payloads and signed zeros included) over all 2^32 float32 inputs, in chunks of
2^chunk-bits consecutive bit patterns (``--stride S``: every S-th pattern, for a quick
look), and prints the machine, NumPy's SIMD targets, the mismatches (at most 10 shown)
and the time taken. Exit status 1 when any input differs. The feature kernels' cosine
(docs/model.md §2) is NumPy's only where this check passes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info

from tdlens.kernels import cosines


def simd_targets() -> str:
    """NumPy's CPU features found on this machine (its dispatch picks among them)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return " ".join(name for name, found in __cpu_features__.items() if found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk-bits", type=int, default=24)
    parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    print(machine_info())
    print(f"numpy CPU features: {simd_targets()}")
    chunk = 1 << args.chunk_bits
    bad, shown, checked = 0, 0, 0
    start = time.perf_counter()
    t_numpy = t_ours = 0.0
    for lo in range(0, 1 << 32, chunk):
        bits = np.arange(lo, lo + chunk, args.stride, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        t0 = time.process_time()
        with np.errstate(invalid="ignore"):
            ref = np.cos(x)
        t1 = time.process_time()
        got = np.empty_like(x)
        cosines(x, got)
        t2 = time.process_time()
        t_numpy, t_ours = t_numpy + t1 - t0, t_ours + t2 - t1
        diff = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
        bad += diff.size
        checked += x.size
        for i in diff[: max(0, 10 - shown)]:
            print(
                f"MISMATCH x={x[i]!r} (0x{bits[i]:08x}): np.cos 0x{ref.view(np.uint32)[i]:08x}"
                f" cos32 0x{got.view(np.uint32)[i]:08x}"
            )
            shown += 1
    elapsed = time.perf_counter() - start
    print(
        f"checked {checked} float32 inputs in {elapsed:.1f} s (CPU: np.cos {t_numpy:.1f} s, "
        f"cos32 {t_ours:.1f} s): {bad} differ"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
