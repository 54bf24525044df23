"""Sweep throughput at the Step-C settings (docs/model.md §14 target: 1000 runs x 200 iterations,
probes every 10, in <= 8.5 h on 2 cores), and Ray scaling from 1 to 2 workers.

Usage: python benchmarks/bench_sweep.py [--runs 4] [--jobs 2] [--iters 200] [--ray-iters 200]
                                        [--no-ray] [--cluster] [--cluster-iters 40]

Runs `--runs` points of the Step-C grid (plateau config: D=2048, N=512, B=16, T=200, every
probe every 10 iterations) on the local backend with `--jobs` workers. By default they are
whole 200-iteration runs and the figure is measured: runs per hour = runs * 3600 / wall
time, process pool start-up included. With `--iters` below 200 the runs are capped and the
figure is extrapolated from the runs' own files:

    t_run(200) = t_fixed + 200 t_iter + 20 t_probe

with t_iter the mean iter_time_s, t_probe the mean probe round (probes/rounds.csv total_s),
both measured while the workers run side by side, and t_fixed the rest of a run's wall time
(process start, feature maps, report). Runs per hour on J workers = J * 3600 / t_run(200).
Then 2 runs of `--ray-iters` iterations on Ray with 1 and with 2 workers (a local Ray
started per measurement, start-up excluded from the timing).

`--cluster` measures a real cluster instead (and skips the rest): `--runs` runs of
`--cluster-iters` iterations driven by `tdlens sweep --backend ray --address`, on `ray
start` nodes of 1 CPU each, first 1 node (the head), then 2 (head + worker node), then 1
node with 2 CPUs for comparison. The nodes run on this machine in a private network
namespace holding only loopback (tests/sweeps/loopback_cluster.py; needs root or user
namespaces, and util-linux). Runs per hour = runs * 3600 / the sweep's wall time in
sweep.json (from the first task submitted to the last run written; joining excluded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info

from tdlens.config import shipped_configs
from tdlens.rundir.read import read_table
from tdlens.sweeps.plan import run_dir
from tdlens.sweeps.spec import load_spec
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

FULL_ITERS = 200
PROBE_EVERY = 10


def bench_spec(folder: Path, runs: int, iters: int) -> Path:
    """A spec of `runs` Step-C points capped at `iters`: alpha_w evenly over its axis from
    0.02 to 0.24 (both ends included), beta at both ends, theta_mu_offset_scale 0.25."""
    stepc = load_spec(shipped_configs() / "sweeps" / "stepC.yaml")
    axes = {a.key: list(a.values) for a in stepc.axes}
    n_alpha = max(1, runs // 2)
    picks = sorted({round(x) for x in np.linspace(0, len(axes["alpha_w"]) - 1, n_alpha)})
    spec = {
        "name": f"bench{iters}",
        "base": "plateau",
        "grid": {
            "alpha_w": [axes["alpha_w"][i] for i in picks],
            "beta": [axes["beta"][0], axes["beta"][-1]][: max(1, runs // n_alpha)],
        },
        "overrides": {"outer_iters": iters, "theta_mu_offset_scale": 0.25},
    }
    path = folder / f"bench{iters}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_timings(sweep_dir: Path, run_ids: list[str]) -> tuple[list[float], list[float]]:
    """Per-iteration and per-probe-round seconds over every run of a sweep."""
    iters, probes = [], []
    for rid in run_ids:
        rd = run_dir(sweep_dir, rid)
        # a finished sweep run's tables are compressed (learning_curves.csv.gz): read_table
        iters += list(read_table(rd / "learning_curves.csv").values("iter_time_s"))
        probes += list(read_table(rd / "probes" / "rounds.csv").values("total_s"))
    return iters, probes


def local_throughput(folder: Path, runs: int, jobs: int, iters: int) -> None:
    prepared = prepare_sweep(bench_spec(folder, runs, iters), folder / "out")
    t0 = time.perf_counter()
    res = execute_sweep(prepared, backend="local", jobs=jobs, catalog=folder / "c.sqlite")
    wall = time.perf_counter() - t0
    ids = [r.run_id for r in prepared.runs]
    assert res.counts == {"complete": len(ids)}, res.counts
    per_run = [o.seconds for o in res.outcomes.values()]
    t_iter_all, t_probe_all = run_timings(res.sweep_dir, ids)
    t_iter, t_probe = statistics.mean(t_iter_all), statistics.mean(t_probe_all)
    rounds = len(t_probe_all) / len(ids)
    t_fixed = statistics.mean(per_run) - iters * t_iter - rounds * t_probe
    t_full = t_fixed + FULL_ITERS * t_iter + FULL_ITERS / PROBE_EVERY * t_probe
    rate = jobs * 3600.0 / t_full
    print(f"local backend, {len(ids)} runs x {iters} iterations, --jobs {jobs}:")
    print(f"  wall {wall:.1f} s ({len(ids) * 3600 / wall:.0f} runs/h at {iters} iterations)")
    print(
        f"  per run: {statistics.mean(per_run):.1f} s; iteration {t_iter:.3f} s "
        f"(median {statistics.median(t_iter_all):.3f}); probe round {t_probe:.2f} s; "
        f"fixed {t_fixed:.1f} s"
    )
    if iters >= FULL_ITERS:
        measured = len(ids) * 3600 / wall
        print(
            f"  measured: {measured:.0f} runs/h on {jobs} workers; "
            f"Step-C (1000 runs): {1000 / measured:.1f} h (target >= 120 runs/h, <= 8.5 h)"
        )
        return
    print(
        f"  extrapolated to {FULL_ITERS} iterations ({FULL_ITERS // PROBE_EVERY} probe rounds): "
        f"{t_full:.0f} s per run -> {rate:.0f} runs/h on {jobs} workers; "
        f"Step-C (1000 runs): {1000 / rate:.1f} h (target <= 8.5 h)"
    )


def ray_scaling(folder: Path, iters: int) -> None:
    from tdlens.sweeps.ray_backend import ray_session

    walls = {}
    for jobs in (1, 2):
        prepared = prepare_sweep(bench_spec(folder, 2, iters), folder / f"ray{jobs}")
        with ray_session(jobs):  # a local Ray on loopback, started outside the timing
            t0 = time.perf_counter()
            res = execute_sweep(prepared, backend="ray", jobs=jobs, catalog=folder / "c.sqlite")
            walls[jobs] = time.perf_counter() - t0
        assert res.counts == {"complete": 2}, res.counts
    print(f"ray backend, 2 runs x {iters} iterations:")
    print(
        f"  1 worker {walls[1]:.1f} s, 2 workers {walls[2]:.1f} s: "
        f"speed-up {walls[1] / walls[2]:.2f}x (ideal 2x on 2 cores)"
    )


def cluster_throughput(folder: Path, runs: int, iters: int) -> None:
    """Runs per hour of a sweep driven through --address on 1 and 2 `ray start` nodes."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sweeps"))
    from loopback_cluster import LoopbackCluster

    spec = bench_spec(folder, runs, iters)
    tdlens = str(Path(sys.executable).with_name("tdlens"))
    print(f"cluster (ray start nodes on loopback), {runs} runs x {iters} iterations:")
    for label, cpus in (
        ("1 node x 1 CPU", [1]),
        ("2 nodes x 1 CPU", [1, 1]),
        ("1 node x 2 CPUs", [2]),
    ):
        cluster = LoopbackCluster()
        try:
            cluster.open()
            cluster.use_token()
            cluster.start_head(num_cpus=cpus[0])
            for k, n in enumerate(cpus[1:]):
                cluster.start_worker(f"w{k + 1}", num_cpus=n)
            out = folder / f"cluster_{len(cpus)}_{sum(cpus)}"
            args = [tdlens, "sweep", str(spec), "--backend", "ray", "--address"]
            args += [cluster.address, "--output-dir", str(out), "--catalog", str(folder / "c")]
            t0 = time.perf_counter()
            res = cluster.run(args, timeout=3600)
            total = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(f"{label}: tdlens sweep failed:\n{res.stdout}\n{res.stderr}")
            state = json.loads(next(out.glob("*/sweep.json")).read_text())
            wall = state["wall_seconds"]
            print(
                f"  {label}: sweep {wall:.1f} s -> {runs * 3600 / wall:.0f} runs/h "
                f"(command {total:.1f} s with joining and the summary; load average "
                f"{os.getloadavg()[0]:.2f})"
            )
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=FULL_ITERS)
    parser.add_argument("--ray-iters", type=int, default=FULL_ITERS)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--cluster", action="store_true", help="1 vs 2 ray start nodes")
    parser.add_argument("--cluster-iters", type=int, default=40)
    args = parser.parse_args()
    print(machine_info())
    print("settings: plateau config (D=2048, N=512, B=16, T=200), all probes every 10")
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        if args.cluster:
            cluster_throughput(Path(tmp), args.runs, args.cluster_iters)
            return
        local_throughput(Path(tmp), args.runs, args.jobs, args.iters)
        if not args.no_ray:
            ray_scaling(Path(tmp), args.ray_iters)


if __name__ == "__main__":
    main()
