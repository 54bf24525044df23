"""One probe round over a frozen snapshot, and the state that carries across rounds (docs/model.md
§6).

The trainer calls ``due(n, td_loss_history)`` after its update of iteration n and, when a
reason comes back, ``run(n, params, delta, td_loss, reason)`` with the parameters frozen
at the end of the iteration. Probes draw only from their own streams
(:mod:`tdlens.probes.common`) and never write to ``params`` or ``delta``, so the learning
curves are bit-identical with probes on or off.

Everything about the probes themselves comes from :mod:`tdlens.probes.registry`: a round
rolls out, in ONE call, every chain the enabled probes declare (deduplicated: stability
batch 0 may be the fixed-point chain), then calls each enabled probe's ``run`` (a function
shared by two probes once) in two lanes (:func:`tdlens.threads.beside`): the probes
registered ``beside`` (distribution, q_kernel, rho_audit: they need nothing the others
compute) in turn on a thread of their own, the others in registry order on the calling
thread with its pool, so that the first fill the stretches where the critic probes leave
a core idle. With one thread the lanes run one after the other. Each call writes into an
output of its own, merged in registry order, so rows, arrays and timings come out in the
same order and with the same bits either way (every BLAS call of the round on one
thread, each probe drawing from its own streams). Disabled probes are skipped and their
summary columns are absent. Timings are wall seconds per probe section (dotted keys
break a probe down; "rollout" is the shared rollout; "total" the whole round): a section
of the ``beside`` lane overlaps the other lane's sections at threads >= 2 (it shares the
cores with them), so the sections can add up to more than "total".

State across rounds: the schedule's counters and the probes' own ``state`` (the previous
w# for w_sharp_drift, and its two half-batch w# for w_sharp_drift_noise), saved in
checkpoints by :meth:`ProbeManager.state_dict`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tdlens.config import RunConfig
from tdlens.features import (
    FeatureMaps,
    Workspace,
    large_arrays_unmapped_when_freed,
    trim_heaps,
)
from tdlens.learner import Params
from tdlens.probes import registry
from tdlens.probes.common import NoiseStore, roll_chains
from tdlens.probes.registry import RoundContext
from tdlens.probes.schedule import ProbeSchedule
from tdlens.threads import beside


@dataclass
class ProbeRound:
    """Everything one round produced; the run layer writes it (probes/ relative names)."""

    n: int
    reason: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class ProbeManager:
    """Schedules and runs probe rounds; its state_dict makes a resumed run identical."""

    def __init__(self, cfg: RunConfig, maps: FeatureMaps) -> None:
        self.cfg = cfg
        self.maps = maps
        self.schedule = ProbeSchedule(cfg)
        self.probes = registry.enabled(cfg)
        self.state: dict[str, np.ndarray | None] = {
            "w_sharp_prev": None,
            "w_sharp_split_prev": None,
        }
        self._workspace = Workspace()
        self._noise = NoiseStore(cfg)
        # the `beside` probes run in turn on one thread of their own, not on a pool beside
        # the critic's lanes (3 threads on 2 cores); their numbers do not depend on threads
        self._maps_beside = replace(maps, threads=1)

    @property
    def w_sharp_prev(self) -> np.ndarray | None:
        return self.state.get("w_sharp_prev")

    def due(self, n: int, td_loss_history: Sequence[float]) -> str | None:
        """Reason a round is due after iteration n ("last", "every", "plateau") or None."""
        return self.schedule.due(n, td_loss_history)

    def run(
        self, n: int, params: Params, delta: np.ndarray, td_loss: float, reason: str
    ) -> ProbeRound:
        """Run every enabled probe on the frozen snapshot of iteration n."""
        with large_arrays_unmapped_when_freed():
            return self._run(n, params, delta, td_loss, reason)

    def _run(
        self, n: int, params: Params, delta: np.ndarray, td_loss: float, reason: str
    ) -> ProbeRound:
        start = time.perf_counter()
        out = ProbeRound(n=n, reason=reason)
        chains = list(dict.fromkeys(c for p in self.probes for c in p.chain_specs(self.cfg)))
        rolled = None
        if chains:
            rolled = roll_chains(self.cfg, self.maps, params, chains, n, self._noise)
            out.timings["rollout"] = time.perf_counter() - start
        ctx = RoundContext(
            self.cfg, self.maps, params, n, delta, td_loss, rolled, self.state, self._workspace, out
        )
        calls = self._calls()
        main = [(spec, fn) for spec, fn in calls if not spec.beside]
        other = [(spec, fn) for spec, fn in calls if spec.beside]
        ctx_beside = replace(ctx, maps=self._maps_beside)

        def beside_lane() -> list[tuple[ProbeRound, float]]:
            parts = [_call(fn, ctx_beside) for _, fn in other]
            # what its thread's heap freed goes back now, not at the round's end: it would
            # otherwise stay resident through the critic's peak (the solves)
            trim_heaps()
            return parts

        done_main, done_other = beside(
            lambda: [_call(fn, ctx) for _, fn in main], beside_lane, self.maps.threads
        )
        parts = dict(zip([fn for _, fn in main + other], done_main + done_other, strict=True))
        for spec, fn in calls:  # registry order, as if they had run in turn
            part, seconds = parts[fn]
            out.rows.update(part.rows)
            out.arrays.update(part.arrays)
            out.timings.update(part.timings)
            if spec.section not in out.timings:
                out.timings[spec.section] = seconds
        for name, row in out.rows.items():
            out.rows[name] = {"iter": float(n), **row}
        out.summary = summary_columns(out.rows)
        out.timings["total"] = time.perf_counter() - start
        self.schedule.record(n, reason)
        return out

    def _calls(self) -> list[tuple[registry.ProbeSpec, Callable[[RoundContext], None]]]:
        """(spec, run function) of each enabled probe in registry order, a function shared
        by two probes once (with the first of them)."""
        calls, seen = [], set()
        for spec in self.probes:
            fn = spec.run_fn()
            if fn not in seen:
                seen.add(fn)
                calls.append((spec, fn))
        return calls

    def state_dict(self) -> dict[str, float | int | str | np.ndarray | None]:
        """npz-safe state: schedule counters (-1 = none) and each probe state entry as an
        array (empty when undefined) with ``<key>_defined``."""
        out: dict[str, float | int | str | np.ndarray | None] = {
            f"schedule_{k}": v for k, v in self.schedule.state_dict().items()
        }
        for key, value in self.state.items():
            out[key] = np.zeros(0) if value is None else np.array(value, copy=True)
            out[f"{key}_defined"] = int(value is not None)
        return out

    def load_state_dict(self, d: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict` (values may be 0-d arrays, as read from npz)."""
        prefix = "schedule_"
        self.schedule.load_state_dict(
            {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}
        )
        for key in [k for k in d if f"{k}_defined" in d]:
            defined = bool(int(np.asarray(d[f"{key}_defined"])))
            self.state[key] = np.array(d[key], dtype=np.float64) if defined else None


def _call(fn: Callable[[RoundContext], None], ctx: RoundContext) -> tuple[ProbeRound, float]:
    """Run one probe function on `ctx` with an output of its own (merged by the manager in
    registry order); returns it with the function's wall seconds."""
    part = ProbeRound(n=ctx.n, reason=ctx.out.reason)
    start = time.perf_counter()
    fn(replace(ctx, out=part))
    return part, time.perf_counter() - start


def summary_columns(rows: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The learning-curve probe columns of one round (each probe's registry ``summary``)."""
    return {
        column: float(rows[spec.name][source])
        for spec in registry.specs()
        if spec.name in rows
        for column, source in spec.summary.items()
    }
