"""A probe round inside the seed run against the same round replayed warm, in one process.

Usage: python benchmarks/bench_inrun_round.py [--cpu-split] [--set key=value ...]

Runs the seed run (``seed_plateau``, 80 iterations, a round every 5) in-process through
:class:`tdlens.runs.runner.Runner`, with the start-up's objects frozen as ``tdlens run``
does, and wraps ``ProbeManager.run``: each round of the run (after 5 training
iterations) is followed at once by two replays on a second manager, loaded with the
round's starting state:

- ``replay``: the same snapshot (the same work, on warm caches, thread pools and pages,
  as bench_probes' back-to-back rounds);
- ``first``: the run's first snapshot (iteration 4), as bench_probes probes one early
  snapshot in every round.

For each it prints wall and CPU seconds (``getrusage``, all threads), minor page faults
and the cyclic collector's time and passes, then the medians over rounds 1.. (round 0
also runs the counterfactuals) and the mean paired difference (in-run minus replay) with
its standard error; ``--cpu-split`` also the median CPU seconds of bench_probes' stages
for each. The replays write no files and do not touch the run's manager; each
round of the run follows the previous round's replays and 5 training iterations, which
leave no probe data in the caches (an iteration's features alone are 52 MB).
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import SEED_PLATEAU, wrap_cpu_stages
from common import load_average, machine_info, peak_rss_mib

from tdlens.config import load_config
from tdlens.probes import manager as manager_module
from tdlens.runs import runner as runner_module

KINDS = ("run", "replay", "first")


class GcClock:
    """The cyclic collector's seconds and passes per generation since :meth:`reset`."""

    def __init__(self) -> None:
        self.seconds, self.passes, self._start = 0.0, [0, 0, 0], 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.seconds, self.passes = 0.0, [0, 0, 0]

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.passes[info["generation"]] += 1


STAGES: dict[str, float] = {}
"""CPU seconds per stage of the call being measured (``--cpu-split``; bench_probes' stages)."""


def measured(fn, clock: GcClock) -> dict[str, Any]:
    """Wall and CPU seconds, minor faults, collector time and stage CPU of ``fn()``."""
    clock.reset()
    STAGES.clear()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "wall": wall,
        "cpu": cpu,
        "minflt": after.ru_minflt - before.ru_minflt,
        "gc_ms": clock.seconds * 1e3,
        "gc_full": clock.passes[2],
        "stages": dict(STAGES),
    }


def instrument(records: list[dict[str, Any]], clock: GcClock) -> None:
    """Wrap ProbeManager.run: the real round, then its two replays (see the docstring)."""
    real = manager_module.ProbeManager.run
    first: dict[str, Any] = {}

    def run(self, n, params, delta, td_loss, reason):
        state = self.state_dict()
        out: list[Any] = []
        record: dict[str, Any] = {"n": n}
        record["run"] = measured(
            lambda: out.append(real(self, n, params, delta, td_loss, reason)), clock
        )
        first.setdefault("snapshot", (params, delta, td_loss))
        if "twin" not in first:
            first["twin"] = manager_module.ProbeManager(self.cfg, self.maps)
        twin = first["twin"]
        for kind, snapshot in (("replay", (params, delta, td_loss)), ("first", first["snapshot"])):
            twin.load_state_dict(state)
            record[kind] = measured(lambda s=snapshot: real(twin, n, *s, reason), clock)
        records.append(record)
        return out[0]

    manager_module.ProbeManager.run = run


def report(records: list[dict[str, Any]], cpu_split: bool) -> None:
    for r in records:
        print(
            f"round {r['n']:2d}: "
            + " | ".join(
                f"{k} {r[k]['wall']:.3f} s, {r[k]['cpu']:.3f} CPU-s, {r[k]['minflt']} flt, "
                f"gc {r[k]['gc_ms']:.1f} ms"
                for k in KINDS
            )
        )
    warm = records[1:]
    for kind in KINDS:
        stats = {
            key: statistics.median(r[kind][key] for r in warm)
            for key in ("wall", "cpu", "minflt", "gc_ms")
        }
        print(
            f"{kind:>6} (rounds 1..{len(warm)}): median {stats['wall']:.3f} s wall, "
            f"{stats['cpu']:.3f} CPU-s, {stats['minflt']:.0f} minor faults, "
            f"gc {stats['gc_ms']:.1f} ms"
        )
    if cpu_split:
        names = sorted({name for r in warm for k in KINDS for name in r[k]["stages"]})
        for kind in KINDS:
            medians = {
                name: statistics.median(r[kind]["stages"].get(name, 0.0) for r in warm)
                for name in names
            }
            print(f"{kind:>6} CPU-s: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    for key in ("wall", "cpu"):
        diffs = [r["run"][key] - r["replay"][key] for r in warm]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        print(f"in-run minus replay, {key}: mean {statistics.mean(diffs):+.3f} s (SE {se:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--cpu-split", action="store_true", help="median CPU s per stage")
    args = parser.parse_args()
    print(machine_info())
    print(f"start: {load_average()}")
    cfg = load_config(None, SEED_PLATEAU + args.overrides)
    records: list[dict[str, Any]] = []
    if args.cpu_split:
        wrap_cpu_stages(STAGES)
    instrument(records, GcClock())
    runner_module.ProbeManager = manager_module.ProbeManager
    with tempfile.TemporaryDirectory(prefix="bench_inrun_") as tmp:
        runner = runner_module.Runner(
            cfg, Path(tmp) / "run", handle_signals=False, write_report=lambda d: []
        )
        gc.freeze()
        start = time.perf_counter()
        result = runner.run()
        wall = time.perf_counter() - start
    if result.status != "complete":
        raise SystemExit(f"the run ended {result.status}: {result.reason}")
    report(records, args.cpu_split)
    print(
        f"run (with the replays) {wall:.1f} s wall, peak RSS {peak_rss_mib():.0f} MiB; "
        f"end: {load_average()}"
    )


if __name__ == "__main__":
    main()
