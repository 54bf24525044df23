"""Is moving-target ever the cause? A small search (issue 23 item 6, docs/atlas.md).

For each (gamma, alpha_w) the policies-frozen twin (alpha_pi = beta = 0) is one run; each
moving run (alpha_pi, beta) shares its seed and so its random streams. A moving-target
config is one whose frozen twin ends at <= 0.8 x the moving run's final value_gap (the
final value_gap: tdlens.sweeps.explain.final_value_gap, the line through the last probe
rounds' ln value_gap at the last round). Runs one at a time (the machine is shared):

    PYTHONPATH=src nice python benchmarks/moving_target_search.py OUT_DIR
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

from tdlens.config import load_config
from tdlens.runs.runner import Runner
from tdlens.sweeps.explain import final_value_gap

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "atlas_tracking.yaml"
"""The former configs/regime_moving_target.yaml (removed; identical but for its name)."""
BASE = (
    "env.feature_dim=64",
    "env.actor_feature_dim=32",
    "probes.distribution.enabled=false",
    "probes.q_kernel.enabled=false",
    "probes.rho_audit.enabled=false",
    "probes.stability.enabled=false",
)
GAMMA_ALPHA_W = ((0.9, 30.0), (0.9, 300.0), (0.99, 30.0), (0.99, 300.0))
ALPHA_PI = (20.0, 200.0, 2000.0)
BETA = (0.2, 1.0)
RATIO = 0.8


def run(out: Path, name: str, sets: dict[str, float]) -> dict[str, float]:
    cfg = load_config(str(CONFIG), [*BASE, *(f"{k}={v}" for k, v in sets.items())])
    run_dir = out / name
    t = time.time()
    Runner(cfg, run_dir, handle_signals=False).run()
    final = final_value_gap(run_dir, 0, cfg.outer_iters)
    return {**sets, "value_gap": final.value_gap, "se": final.se, "seconds": time.time() - t}


def main(out: Path) -> None:
    rows = []
    for gamma, alpha_w in GAMMA_ALPHA_W:
        base = {"gamma": gamma, "alpha_w": alpha_w}
        frozen = run(out, f"g{gamma}_a{alpha_w}_frozen", {**base, "alpha_pi": 0.0, "beta": 0.0})
        print(json.dumps(frozen), flush=True)
        for alpha_pi, beta in itertools.product(ALPHA_PI, BETA):
            sets = {**base, "alpha_pi": alpha_pi, "beta": beta}
            moving = run(out, f"g{gamma}_a{alpha_w}_pi{alpha_pi}_b{beta}", sets)
            moving["frozen_value_gap"] = frozen["value_gap"]
            moving["frozen_over_moving"] = frozen["value_gap"] / moving["value_gap"]
            moving["moving_target"] = moving["frozen_over_moving"] <= RATIO
            rows.append(moving)
            print(json.dumps(moving), flush=True)
    (out / "search.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
