"""``tdlens sanity``: the behavioural sanity suite and the base-check matrix (target < 2 min).

Usage: python benchmarks/bench_sanity.py [--repeats 1]

Runs ``tdlens sanity --out <tmp>`` as a child process `repeats` times and prints the wall
time of each run, their median and spread, the children's peak RSS, and each check's
own time from the suite's output lines (``PASS name (12.3s): ...``) of the last run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import children_peak_rss_mib, machine_info, spread, tdlens_command

CHECK_LINE = re.compile(r"^(PASS|FAIL) (\S+) \(([\d.]+)s\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(machine_info())
    print("command: tdlens sanity --out <tmp>")
    walls, lines = [], []
    with tempfile.TemporaryDirectory(prefix="bench_sanity_") as tmp:
        for k in range(args.repeats):
            start = time.perf_counter()
            done = subprocess.run(
                [*tdlens_command(), "sanity", "--out", str(Path(tmp) / f"s{k}")],
                capture_output=True,
                text=True,
                env={**os.environ, "COLUMNS": "200"},
            )
            walls.append(time.perf_counter() - start)
            lines = [m for line in done.stdout.splitlines() if (m := CHECK_LINE.match(line))]
            print(f"run {k}: {walls[-1]:.1f} s wall, exit {done.returncode}")
    print(f"sanity suite: {spread(walls, digits=1)}  [target < 120 s]")
    print(f"peak RSS of the runs: {children_peak_rss_mib():.0f} MiB")
    for m in sorted(lines, key=lambda m: -float(m.group(3))):
        print(f"  {m.group(1)} {m.group(2)}: {float(m.group(3)):.1f} s")


if __name__ == "__main__":
    main()
