"""One-off cost of the compiled kernels: numba compile (cold cache) and load (warm cache).

Usage: python benchmarks/bench_jit.py [--repeats 3]

Runs a child process `repeats` times against one fresh, empty numba cache directory
(``NUMBA_CACHE_DIR``): the first child compiles every kernel a small run uses (rollout,
features, policy, TD batch, a probe round) and writes the cache, the later ones load it.
Each child reports the wall time of importing tdlens, of its first iteration plus probe
round (compile or load included) and of the second one (steady state); the kernel cost
is the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info

SMALL = [
    "env.feature_dim=256",
    "env.actor_feature_dim=64",
    "trajectories=4",
    "horizon=50",
    "outer_iters=4",
    "probes.fixed_point.batch_size=512",
    "probes.stability.batch_size=512",
    "probes.stability.k_mc=2",
    "probes.distribution.num_samples=256",
    "probes.rho_audit.batch_size=256",
]


def child() -> dict[str, float]:
    start = time.perf_counter()
    from tdlens.config import load_config
    from tdlens.features import Workspace, make_feature_maps
    from tdlens.learner import init_params, outer_iteration
    from tdlens.probes.manager import ProbeManager

    imported = time.perf_counter() - start
    cfg = load_config(None, SMALL)
    maps = make_feature_maps(cfg)
    params, ws, manager = init_params(cfg, maps), Workspace(), ProbeManager(cfg, maps)
    laps = []
    for n in range(2):
        start = time.perf_counter()
        res = outer_iteration(cfg, maps, params, n, ws)
        manager.run(n, res.params, res.delta, res.metrics["td_loss"], "every")
        params = res.params
        laps.append(time.perf_counter() - start)
    return {"import": imported, "first": laps[0], "second": laps[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="bench_jit_") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for k in range(args.repeats):
            done = subprocess.run(
                [sys.executable, __file__, "--child"],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            label = "cold cache (compile)" if k == 0 else "warm cache (load)   "
            print(
                f"{label}: import tdlens {r['import']:.2f} s; first iteration + probe round "
                f"{r['first']:.2f} s, second {r['second']:.2f} s -> kernels "
                f"{r['first'] - r['second']:.2f} s"
            )


if __name__ == "__main__":
    main()
