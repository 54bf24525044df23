"""The seed run end to end (docs/model.md §14 target: <= 60 s, peak memory <= 1 GiB).

Usage: python benchmarks/bench_seed_run.py [--repeats 3] [--set key=value ...]

Runs ``tdlens run seed_plateau`` (80 iterations, probes every 5, plateau trigger on, the
run report at the end) as a child process `repeats` times, each into a fresh temporary
run directory, and prints the wall time of each (process start to exit), their median
and spread, the peak RSS of the children (``getrusage(RUSAGE_CHILDREN)``), and a
breakdown of the last run from its own files: iterations (``iter_time_s``), probe rounds
(``probes/rounds.csv``) and the rest (start-up, checkpoints, report).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import children_peak_rss_mib, machine_info, run_command, spread, tdlens_command


def breakdown(run_dir: Path, wall: float) -> str:
    from tdlens.rundir.read import read_table

    iters = [float(x) for x in read_table(run_dir / "learning_curves.csv").values("iter_time_s")]
    table = read_table(run_dir / "probes" / "rounds.csv")
    rounds = [
        (str(r), float(t))
        for r, t in zip(table.texts("reason"), table.values("total_s"), strict=True)
    ]
    t_iter, t_probe = sum(iters), sum(t for _, t in rounds)
    reasons = {reason: sum(1 for r, _ in rounds if r == reason) for reason, _ in rounds}
    return (
        f"  last run: {len(iters)} iterations {t_iter:.1f} s "
        f"(median {sorted(iters)[len(iters) // 2] * 1e3:.1f} ms); {len(rounds)} probe rounds "
        f"{t_probe:.1f} s ({', '.join(f'{k} {v}' for k, v in reasons.items())}; "
        f"median {sorted(t for _, t in rounds)[len(rounds) // 2]:.2f} s); "
        f"start-up, checkpoints and report {wall - t_iter - t_probe:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(machine_info())
    sets = [x for o in args.overrides for x in ("--set", o)]
    print(f"command: tdlens run seed_plateau --run-dir <tmp> {' '.join(sets)}")
    walls = []
    with tempfile.TemporaryDirectory(prefix="bench_seed_run_") as tmp:
        for k in range(args.repeats):
            run_dir = Path(tmp) / f"run{k}"
            cmd = [*tdlens_command(), "run", "seed_plateau", "--run-dir", str(run_dir), *sets]
            walls.append(run_command(cmd))
            print(f"run {k}: {walls[-1]:.1f} s wall")
        print(f"seed run end to end: {spread(walls, digits=1)}  [target <= 60 s]")
        print(f"peak RSS of the runs: {children_peak_rss_mib():.0f} MiB  [target <= 1024 MiB]")
        print(breakdown(run_dir, walls[-1]))


if __name__ == "__main__":
    main()
