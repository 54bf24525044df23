"""One probe round over a frozen snapshot, and the state that carries across rounds (docs/model.md
§6).

The trainer calls ``due(n, td_loss_history)`` after its update of iteration n and, when a
reason comes back, ``run(n, params, delta, td_loss, reason)`` with the parameters frozen
at the end of the iteration. Probes draw only from their own streams
(:mod:`tdlens.probes.common`) and never write to ``params`` or ``delta``, so the learning
curves are bit-identical with probes on or off.

Everything about the probes themselves comes from :mod:`tdlens.probes.registry`: a round
rolls out, in ONE call, every chain the enabled probes declare (deduplicated: stability
batch 0 may be the fixed-point chain), then calls each enabled probe's ``run`` in registry
order (a function shared by two probes once). Disabled probes are skipped and their
summary columns are absent. Timings are seconds per probe section (dotted keys break a
probe down; "rollout" is the shared rollout; "total" the whole round).

State across rounds: the schedule's counters and the probes' own ``state`` (the previous
w# for w_sharp_drift, and its two half-batch w# for w_sharp_drift_noise), saved in
checkpoints by :meth:`ProbeManager.state_dict`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tdlens.config import RunConfig
from tdlens.features import FeatureMaps, Workspace, large_arrays_unmapped_when_freed
from tdlens.learner import Params
from tdlens.probes import registry
from tdlens.probes.common import NoiseStore, roll_chains
from tdlens.probes.registry import RoundContext
from tdlens.probes.schedule import ProbeSchedule


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
        done = set()
        for probe in self.probes:
            fn = probe.run_fn()
            if fn in done:
                continue
            done.add(fn)
            t0 = time.perf_counter()
            fn(ctx)
            if probe.section not in out.timings:
                out.timings[probe.section] = time.perf_counter() - t0
        for name, row in out.rows.items():
            out.rows[name] = {"iter": float(n), **row}
        out.summary = summary_columns(out.rows)
        out.timings["total"] = time.perf_counter() - start
        self.schedule.record(n, reason)
        return out

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


def summary_columns(rows: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The learning-curve probe columns of one round (each probe's registry ``summary``)."""
    return {
        column: float(rows[spec.name][source])
        for spec in registry.specs()
        if spec.name in rows
        for column, source in spec.summary.items()
    }
