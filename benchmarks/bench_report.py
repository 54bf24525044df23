"""``tdlens report`` on a finished seed run (markdown, JSON and HTML with its plots).

Usage: python benchmarks/bench_report.py [--repeats 5] [--run-dir DIR]

Without --run-dir, first makes a seed run (``tdlens run seed_plateau``, about half a
minute) in a temporary directory. Then regenerates its report `repeats` times, each as a
child process (``tdlens report DIR``: interpreter start-up and imports included, as a
user sees it), and prints the median and spread of the wall time and the children's
peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, run_command, spread, tdlens_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run-dir", type=Path, default=None)
    args = parser.parse_args()
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        run_dir = args.run_dir
        if run_dir is None:
            run_dir = Path(tmp) / "seed"
            seconds = run_command(
                [*tdlens_command(), "run", "seed_plateau", "--run-dir", str(run_dir)]
            )
            print(f"seed run made in {seconds:.1f} s: {run_dir}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        walls = [
            run_command([*tdlens_command(), "report", str(run_dir)]) for _ in range(args.repeats)
        ]
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"command: tdlens report {run_dir}")
        print(f"report: {spread(walls, digits=2)}")
        note = "" if peak > before else " (at most the seed run's; not separated)"
        print(f"peak RSS of the children: {peak / 1024:.0f} MiB{note}")


if __name__ == "__main__":
    main()
