"""Time and peak memory of one probe round and one training iteration vs batch size and
feature dimension, with the memory budget estimate beside the measured peak.

Usage: python benchmarks/bench_scaling.py [--rounds 2] [--batches 1024,2048,4096,8192]
                                          [--dims 512,1024,2048,3072,4096,8192]
                                          [--iterations 3] [--plot PNG]

Each point runs in its own child process (so its peak RSS is its own) at the
seed_plateau settings with one thread (``threads=1``, BLAS held to one thread): one
training iteration for a realistic snapshot, then `rounds` probe rounds. The batch size
sets every probe batch (fixed point, stability, distribution, rho audit); the feature
dimension sets D (the actor keeps N = 512). Prints one row per point: median round time,
the A accumulation (fixed_point.moments) and the MMD/distribution probe with their time
per sample, the median training iteration (`iterations` more after the probe rounds),
the child's peak RSS, and the memory estimate of :mod:`tdlens.runs.budget` for the
child's config with its ratio to the peak (the estimate also counts the run's report and
its files, which a child does not write; D = 8192 takes minutes and ~4 GiB). A
accumulation is O(n D^2) and the MMD kernel sums O(n^2) in time but O(block n) in
memory; the other memory is O(D^2 + n D). With --plot
it also draws round time and peak RSS against batch size (D = 2048) and against D
(batch 4096) into one PNG (BENCHMARKS.md shows benchmarks/scaling.png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import SEED_PLATEAU
from common import machine_info, peak_rss_mib

BATCH_KEYS = (
    "probes.fixed_point.batch_size",
    "probes.stability.batch_size",
    "probes.distribution.num_samples",
    "probes.rho_audit.batch_size",
)


def point(batch: int, dim: int, rounds: int, iterations: int) -> dict[str, float]:
    """One measurement, in this process (the child)."""
    import time

    from tdlens.config import load_config
    from tdlens.features import Workspace, make_feature_maps
    from tdlens.learner import init_params, outer_iteration
    from tdlens.probes.manager import ProbeManager
    from tdlens.runs.budget import estimate

    overrides = [*SEED_PLATEAU, "threads=1", f"env.feature_dim={dim}"]
    overrides += [f"{key}={batch}" for key in BATCH_KEYS]
    cfg = load_config(None, overrides)
    maps = make_feature_maps(cfg)
    workspace = Workspace()
    result = outer_iteration(cfg, maps, init_params(cfg, maps), 0, workspace)
    manager = ProbeManager(cfg, maps)
    timings: dict[str, list[float]] = {}
    for n in range(rounds):
        out = manager.run(n, result.params, result.delta, result.metrics["td_loss"], "every")
        for key, value in out.timings.items():
            timings.setdefault(key, []).append(value)
    row = {key: statistics.median(values) for key, values in timings.items()}
    iteration_s = []
    for n in range(1, iterations + 1):
        start = time.perf_counter()
        outer_iteration(cfg, maps, result.params, n, workspace)
        iteration_s.append(time.perf_counter() - start)
    row["iteration"] = statistics.median(iteration_s) if iteration_s else float("nan")
    row["peak_rss_mib"] = peak_rss_mib()
    row["estimate_mib"] = estimate(cfg).peak_bytes / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", default="1024,2048,4096,8192")
    parser.add_argument("--dims", default="512,1024,2048,3072,4096,8192")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=None, help="write the figure to this PNG")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, dim = (int(x) for x in args.child.split(","))
        print(json.dumps(point(batch, dim, args.rounds, args.iterations)))
        return
    print(machine_info())
    print("settings: seed_plateau, threads=1, BLAS 1 thread; batch = every probe batch size")
    grid = [(int(b), 2048) for b in args.batches.split(",")]
    grid += [(4096, int(d)) for d in args.dims.split(",") if int(d) != 2048]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    print(
        f"{'batch':>6} {'D':>5} {'round s':>8} {'A accum s':>10} {'us/sample':>10} "
        f"{'distribution s':>15} {'us/sample':>10} {'iteration s':>12} {'peak MiB':>9} "
        f"{'estimate MiB':>13} {'est/peak':>9}"
    )
    rows = {}
    for batch, dim in grid:
        cmd = [sys.executable, __file__, "--child", f"{batch},{dim}", "--rounds", str(args.rounds)]
        cmd += ["--iterations", str(args.iterations)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        row = rows[batch, dim] = json.loads(done.stdout.strip().splitlines()[-1])
        moments, dist = row.get("fixed_point.moments", 0.0), row.get("distribution", 0.0)
        print(
            f"{batch:>6} {dim:>5} {row['total']:>8.2f} {moments:>10.3f} "
            f"{moments / batch * 1e6:>10.1f} {dist:>15.3f} {dist / batch * 1e6:>10.1f} "
            f"{row['iteration']:>12.3f} {row['peak_rss_mib']:>9.0f} "
            f"{row['estimate_mib']:>13.0f} {row['estimate_mib'] / row['peak_rss_mib']:>9.2f}",
            flush=True,
        )
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"figure: {args.plot}")


def plot(rows: dict[tuple[int, int], dict[str, float]], path: Path) -> None:
    """Round time (total and its A accumulation) and peak RSS against batch size at
    D = 2048 (left) and against D at batch 4096 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, (label, pick, x_of) in zip(
        axes,
        (
            ("probe batch size (D = 2048)", lambda b, d: d == 2048, lambda b, d: b),
            ("feature dimension D (batch 4096)", lambda b, d: b == 4096, lambda b, d: d),
        ),
        strict=True,
    ):
        keys = sorted((k for k in rows if pick(*k)), key=lambda k: x_of(*k))
        x = [x_of(*k) for k in keys]
        ax.plot(x, [rows[k]["total"] for k in keys], "o-", label="probe round (s)")
        moments = [rows[k].get("fixed_point.moments", 0.0) for k in keys]
        ax.plot(x, moments, "s--", label="A accumulation (s)")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (1 thread)")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(x, [rows[k]["peak_rss_mib"] for k in keys], "^:", color="C3", label="peak RSS")
        twin.set_ylabel("peak RSS (MiB)", color="C3")
        twin.set_ylim(bottom=0)
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    fig.suptitle("Probe round: time and peak memory vs batch size and feature dimension")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
