"""Benchmark one probe round at the seed_plateau settings (docs/model.md §14: <= 2.5 s, <= 1 GiB).

    python benchmarks/bench_probes.py [--rounds 5] [--cpu-split] [--set key=value ...]

Builds the seed_plateau probe settings with ``load_config(None, overrides)``, runs one
learner iteration for a realistic snapshot (parameters, TD errors), then `rounds` probe
rounds at successive iterations; prints machine info, the median and spread of the round
time and of each probe's share, and the peak RSS of the process. ``--cpu-split`` also
prints each round's CPU seconds (all threads of the process, ``time.process_time``) per
stage of the fixed-point and stability probes: on a shared machine CPU time compares
two codes where wall time does not.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, machine_info, peak_rss_mib

from tdlens.config import load_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes.manager import ProbeManager

SEED_PLATEAU = [
    "outer_iters=80",
    "trajectories=16",
    "horizon=200",
    "gamma=0.99",
    "alpha_w=0.08",
    "alpha_pi=0.06",
    "beta=0.05",
    "sigma_mu=0.35",
    "sigma_pi=0.30",
    "K_mc=4",
    "theta_radius=6",
    "theta_init_scale=0.1",
    "w_init_scale=0.1",
    "rho_clip=10",
    "step_normalization=mean",
    "env.feature_dim=2048",
    "env.actor_feature_dim=512",
    "env.p_mix=0.05",
    "probes.every=5",
    "probes.fixed_point.batch_size=4096",
    "probes.fixed_point.solver=direct",
    "probes.stability.batch_size=4096",
    "probes.stability.k_mc=8",
    "probes.stability.power_iters=20",
    "probes.distribution.num_samples=4096",
    "probes.distribution.action_samples=64",
    "probes.q_kernel.cache_batch_size=8",
    "probes.q_kernel.max_horizon=200",
    "probes.rho_audit.batch_size=4096",
]


TOP_LEVEL = ("rollout", "fixed_point", "stability", "distribution", "q_kernel", "rho_audit")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CPU_STAGES = {
    # module attribute -> stage (the critic module's names, so they wrap its calls)
    ("tdlens.probes.critic", "fp.td_moments"): "moments",
    ("tdlens.probes.critic", "spectrum_of"): "spectrum",
    ("tdlens.probes.critic", "solve_fixed_point"): "solves",
    ("tdlens.probes.critic", "measure_fixed_point"): "measure",
    ("tdlens.probes.critic", "predict_dynamics"): "prediction",
    ("tdlens.probes.critic", "cf.counterfactuals"): "counterfactuals",
    ("tdlens.probes.critic", "spectral_intervals"): "spectral_ci",
    ("tdlens.probes.critic", "_matrix_free_chains"): "power_matrix_free",
    # phi and dphi of the critic chains (before session 9: td_batch, whose bar_phi
    # batch_view then turned into dphi outside any stage)
    ("tdlens.probes.common", "RolledChains.difference_batch"): "critic_features",
    # the trainer's Monte Carlo TD errors of the fixed-point batch for U (probes.bar_phi)
    ("tdlens.probes.critic", "trainer_td_errors"): "trainer_td_errors",
    ("tdlens.probes.distribution", "run_round"): "distribution",
}


def wrap_cpu_stages(acc: dict[str, float]) -> None:
    """Wrap the functions of CPU_STAGES so that each adds its CPU seconds to ``acc``
    (nested stages count in both). Each is called from the main thread while no other
    stage runs, so the process's CPU time over the call is the stage's."""
    import functools
    import importlib

    for (module, dotted), stage in CPU_STAGES.items():
        owner = importlib.import_module(module)
        *path, name = dotted.split(".")
        for part in path:
            owner = getattr(owner, part)
        func = getattr(owner, name)

        @functools.wraps(func)
        def timed(*args, _func=func, _stage=stage, **kwargs):
            start = time.process_time()
            try:
                return _func(*args, **kwargs)
            finally:
                acc[_stage] = acc.get(_stage, 0.0) + time.process_time() - start

        setattr(owner, name, timed)


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"median {med:.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-split", action="store_true", help="CPU seconds per stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    stages: dict[str, float] = {}
    if args.cpu_split:
        wrap_cpu_stages(stages)
    cfg = load_config(None, SEED_PLATEAU + args.overrides)
    print(machine_info())
    print(f"start: {load_average()}")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    result = outer_iteration(cfg, maps, params, 0, Workspace())
    print(f"after setup + 1 iteration: peak RSS {peak_rss_mib():.0f} MiB")
    manager = ProbeManager(cfg, maps)
    totals: list[float] = []
    parts: dict[str, list[float]] = {}
    for n in range(args.rounds):
        start, cpu = time.perf_counter(), cpu_seconds()
        out = manager.run(n, result.params, result.delta, result.metrics["td_loss"], "every")
        totals.append(time.perf_counter() - start)
        for key, value in out.timings.items():
            parts.setdefault(key, []).append(value)
        print(f"round {n}: {totals[-1]:.3f} s wall, {cpu_seconds() - cpu:.3f} s CPU")
        if args.cpu_split:
            print("  CPU s: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stages.items())))
            stages.clear()
    print(f"probe round ({args.rounds} rounds): {spread(totals)}  [target <= 2.5 s]")
    for key in sorted(parts, key=lambda k: (k.split(".")[0], k)):
        if key != "total":
            print(f"  {key:>24}: {spread(parts[key])}")
    floor = sum(min(v) for k, v in parts.items() if k in TOP_LEVEL)
    print(f"sum of per-probe minima: {floor:.3f} s (a quiet-machine estimate)")
    print(f"end: {load_average()}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB  [target <= 1024 MiB]")
    stab = out.rows.get("stability_probe", {})
    fixed = out.rows.get("fixed_point_probe", {})
    print(
        "last round: "
        f"eig_max_real {stab.get('eig_max_real', float('nan')):.4g}, "
        f"fastest_timescale {stab.get('fastest_timescale', float('nan')):.4g}, "
        f"spectral_noise {stab.get('spectral_noise', float('nan')):.4g}, "
        f"w_gap {fixed.get('w_gap', float('nan')):.4g}, "
        f"residual {fixed.get('residual', float('nan')):.3g}, "
        f"modes_below_lam {fixed.get('modes_below_lam', float('nan')):.4g}"
    )


if __name__ == "__main__":
    main()
