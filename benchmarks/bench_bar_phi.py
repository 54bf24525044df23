"""Closed-form bar_phi (``bar_phi: exact``) against Monte Carlo (``mc``, K_mc draws).

Usage: python benchmarks/bench_bar_phi.py [--repeats 20] [--set key=value ...]

At the seed settings (docs/model.md §2): the time of one training iteration with each estimator,
and, on the SAME rolled-out states (the rollout does not depend on the estimator), the TD
targets ``y_t = r_t + gamma Q_w(bar_phi_{t+1})`` of both. Without clipping or squashing
the Monte Carlo estimate is unbiased for the exact one, so ``mean (y_mc - y_exact)^2`` is
the variance the K_mc draws add to every TD target; it is compared with the variance of
the targets across samples and with td_loss, for K_mc = 1, 4 (the seed's) and 16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import SEED_SETTINGS, machine_info, summary, time_it

from tdlens.config import load_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import critic_values, init_params, outer_iteration
from tdlens.rollout import draw_noise, roll_out, td_batch
from tdlens.seeding import stream


def iteration_times(overrides: list[str], repeats: int) -> list[float]:
    cfg = load_config(None, overrides)
    maps = make_feature_maps(cfg)
    state = {"n": 0, "params": init_params(cfg, maps)}
    ws = Workspace()

    def one() -> None:
        res = outer_iteration(cfg, maps, state["params"], state["n"], ws)
        state["params"], state["n"] = res.params, state["n"] + 1

    return time_it(one, repeats, warmup=3)


def targets(overrides: list[str], n: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TD targets and TD errors ``[B, T]`` of iteration n's states under `overrides`."""
    cfg = load_config(None, overrides)
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", n, b) for b in range(cfg.trajectories)]
    noise = draw_noise(rngs, cfg.horizon, cfg)
    sigma_mu = np.full(cfg.trajectories, cfg.sigma_mu)
    paths = roll_out(cfg, maps, params.theta_mu, sigma_mu, noise)
    batch = td_batch(cfg, maps, paths, noise, params.theta_pi, sigma_mu)
    q_t, q_tp1 = critic_values(batch, params.w)
    y = batch.r + cfg.gamma * q_tp1
    return y, y - q_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = [*SEED_SETTINGS, *args.overrides]
    print(machine_info())
    print(f"settings: {' '.join(base)}")
    for label, extra in (("mc, K_mc=4", ["bar_phi=mc"]), ("exact", ["bar_phi=exact"])):
        print(summary(f"iteration, bar_phi {label}", iteration_times(base + extra, args.repeats)))
    y_exact, d_exact = targets([*base, "bar_phi=exact"])
    print(f"exact: Var(y) across samples {np.var(y_exact):.4g}, td_loss {np.mean(d_exact**2):.4g}")
    for K in (1, 4, 16):
        y_mc, d_mc = targets([*base, "bar_phi=mc", f"K_mc={K}"])
        extra = np.mean((y_mc - y_exact) ** 2)
        print(
            f"mc K_mc={K:>2}: mean (y_mc - y_exact)^2 = {extra:.4g} "
            f"({extra / np.var(y_exact):.3%} of Var(y), {extra / np.mean(d_exact**2):.3%} of "
            f"td_loss); mean y_mc - y_exact = {np.mean(y_mc - y_exact):.3g}; "
            f"td_loss {np.mean(d_mc**2):.4g}"
        )


if __name__ == "__main__":
    main()
