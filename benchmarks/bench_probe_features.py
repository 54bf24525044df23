"""CPU seconds of the probe chains' features at the seed settings (issue 28, session 9).

    python benchmarks/bench_probe_features.py [--reps 6] [--threads 2] [--set key=value ...]

Per repetition, as a probe round does them (large arrays mapped and unmapped as in a
round, the feature buffers released at its end): the round's chains rolled out (``rollout``,
CPU and wall; with the manager's noise store where the code has one), the fixed-point
and stability batches' ``phi, dphi`` in the critic probes' groups (``features``: the
batches and their batch views, so the ``dphi`` pass of the code before session 9 is
counted), and the trainer's Monte Carlo TD errors of the fixed-point batch
(``trainer``). Prints the minimum and median over the repetitions. Runs against the
code before session 9 too (``PYTHONPATH=<its src>``), for A/B measurements.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import SEED_PLATEAU
from common import load_average, machine_info

from tdlens.config import load_config
from tdlens.features import Workspace, large_arrays_unmapped_when_freed, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes import common as probe_common
from tdlens.probes import critic
from tdlens.probes.common import batch_slices, plan_chains, roll_chains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, [*SEED_PLATEAU, f"threads={args.threads}", *args.overrides])
    print(machine_info())
    maps = make_feature_maps(cfg)
    params = outer_iteration(cfg, maps, init_params(cfg, maps), 0, Workspace()).params
    plan = plan_chains(cfg)
    probe_cfg = critic.probe_config(cfg)
    chains = list(dict.fromkeys(c for c in (plan.fixed, *plan.stability) if c is not None))
    groups = [[chains[0]], *critic.feature_groups(chains[1:], max(1, maps.threads))]
    store = probe_common.NoiseStore(cfg) if hasattr(probe_common, "NoiseStore") else None
    takes_r = "r_t" in inspect.signature(critic.trainer_td_errors).parameters
    capacity = max(sum(s.columns for s in g) for g in groups)
    ws = Workspace()
    times: dict[str, list[float]] = {"rollout": [], "rollout_wall": [], "features": []}
    times["trainer"] = []

    def features_of(rolled, group):
        """The group's batch as the critic probes make it (this code's or the older)."""
        if not hasattr(rolled, "difference_batch"):
            return rolled.td_batch(probe_cfg, maps, group, params.theta_pi, workspace=ws)
        sized = "capacity" in inspect.signature(rolled.difference_batch).parameters
        extra = [capacity] if sized else []
        return rolled.difference_batch(probe_cfg, maps, group, params.theta_pi, ws, *extra)

    def one_round(rep: int) -> None:
        """The stages of a round; the features released at its end, as the critic
        probes do (so a round faults its feature buffers in afresh, as in a run)."""
        cpu, wall = time.process_time(), time.perf_counter()
        extra = [store] if store is not None else []
        rolled = roll_chains(cfg, maps, params, plan.specs(), 5 * rep, *extra)
        times["rollout"].append(time.process_time() - cpu)
        times["rollout_wall"].append(time.perf_counter() - wall)
        features = trainer = 0.0
        for group in groups:
            cpu = time.process_time()
            batch = features_of(rolled, group)
            slices = zip(batch_slices(group), group, strict=True)
            views = [critic.batch_view(cfg, batch, cols, spec) for cols, spec in slices]
            features += time.process_time() - cpu
            if group[0] == plan.fixed:
                cpu = time.process_time()
                r_t = [views[0].r_t] if takes_r else []
                fixed, theta_pi = plan.fixed, params.theta_pi
                critic.trainer_td_errors(cfg, maps, rolled, fixed, theta_pi, params.w, *r_t)
                trainer += time.process_time() - cpu
            del batch, views
        cpu = time.process_time()
        ws.release(*critic.FEATURE_BUFFERS)
        times["features"].append(features + time.process_time() - cpu)
        times["trainer"].append(trainer)

    for rep in range(args.reps):
        with large_arrays_unmapped_when_freed():  # as in a probe round (ProbeManager.run)
            one_round(rep)
    print(f"threads {args.threads}, {args.reps} repetitions, {load_average()}")
    for key, values in times.items():
        print(f"  {key:>12}: min {min(values):.3f} s, median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
