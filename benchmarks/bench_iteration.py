"""One training iteration at the seed_plateau settings (docs/model.md §14 target: <= 0.07 s).

Usage: python benchmarks/bench_iteration.py [--repeats 30] [--set key=value ...]
Prints the machine, the config, the median and spread of one outer iteration, and a
split into rollout (sequential in t), features and TD/gradients.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import SEED_SETTINGS, machine_info, peak_rss_mib, summary, time_it

from tdlens.config import load_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import gradients, init_params, outer_iteration, td_errors
from tdlens.rollout import draw_noise, roll_out, td_batch
from tdlens.seeding import stream
from tdlens.threads import limit_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, [*SEED_SETTINGS, *args.overrides])
    print(machine_info())
    print(
        f"config: D={cfg.env.feature_dim} N={cfg.env.actor_feature_dim} B={cfg.trajectories} "
        f"T={cfg.horizon} K_mc={cfg.K_mc} bar_phi={cfg.bar_phi} precision={cfg.precision} "
        f"threads={cfg.threads or 'all'}"
    )
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    ws = Workspace()
    state = {"n": 0, "params": params}
    # the runner's call: after issue 28's session 9 it keeps no bar_phi in the batch; an
    # older tdlens (measured for "before") has no such option
    lean = (
        {"keep_bar_phi": False}
        if "keep_bar_phi" in inspect.signature(outer_iteration).parameters
        else {}
    )

    def one() -> None:
        res = outer_iteration(cfg, maps, state["params"], state["n"], ws, **lean)
        state["params"] = res.params
        state["n"] += 1

    cpu: list[float] = []

    def one_cpu() -> None:
        start = time.process_time()
        one()
        cpu.append(time.process_time() - start)

    wall = time_it(one_cpu, args.repeats, warmup=3)
    print(summary("outer iteration", wall) + "  [target <= 0.07 s]")
    print(summary("  CPU s (all threads)", cpu[3:]))
    # after issue 28 td_batch takes the critic values as it makes the features; an older
    # tdlens (measured for "before") has no `w` and leaves them to td_errors
    with_w = "w" in inspect.signature(td_batch).parameters

    parts: dict[str, list[float]] = {"rollout": [], "features": [], "td+gradients": []}
    B = cfg.trajectories
    sigma_mu = np.full(B, cfg.sigma_mu)
    for n in range(max(5, args.repeats // 3)):
        rngs = [stream(cfg.seed, "rollout", n, b) for b in range(B)]
        with limit_threads(1, "blas"):  # as outer_iteration runs them
            t0 = time.perf_counter()
            noise = draw_noise(rngs, cfg.horizon, cfg)
            paths = roll_out(cfg, maps, params.theta_mu, sigma_mu, noise)
            t1 = time.perf_counter()
            extra = {"w": params.w, **lean} if with_w else {}
            batch = td_batch(
                cfg, maps, paths, noise, params.theta_pi, sigma_mu, workspace=ws, **extra
            )
            t2 = time.perf_counter()
            if with_w:
                delta = batch.r + cfg.gamma * batch.q_tp1 - batch.q_t
            else:
                delta = td_errors(batch, params.w, cfg.gamma)
            gradients(batch, delta, cfg.sigma_pi)
            t3 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[key].append(dt)
    for key, times in parts.items():
        ms = [t * 1e3 for t in times]
        print(f"  {key}: median {statistics.median(ms):.1f} ms (min {min(ms):.1f})")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB  [target <= 1024 MiB]")


if __name__ == "__main__":
    main()
