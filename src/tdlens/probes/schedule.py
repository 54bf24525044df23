"""When to run a probe round (docs/model.md §6, schedule).

A round is due at iteration n (0-based), checked in this order:
- "last": ``n == outer_iters - 1`` (always, whenever probes are enabled);
- "every": ``every > 0`` and ``(n + 1) % every == 0``;
- "plateau": the TD loss has stopped moving. Over the last ``window`` values
  ``y_0..y_{W-1}`` of td_loss (x = 0..W-1) the least-squares slope
  ``beta = S_xy / S_xx`` lies within ``tol`` standard errors of zero,
  ``|beta| <= tol * se``, ``se = sqrt(RSS / (W - 2) / S_xx)`` (scale-free: multiplying
  td_loss by any constant changes nothing). It fires only when ``n >= min_iter``, and not
  when any probe round ran at an iteration ``m`` with ``n - m < cooldown`` (so at most
  once per cooldown iterations, and never on top of a recent scheduled round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tdlens.config import RunConfig

NONE = -1
"""Stands for "no such iteration" in state dicts (npz-safe)."""


def plateau_statistic(y: Sequence[float]) -> tuple[float, float]:
    """``(slope, standard error)`` of the least-squares line through ``(i, y_i)``."""
    y = np.asarray(y, dtype=np.float64)
    W = y.size
    x = np.arange(W) - (W - 1) / 2.0
    s_xx = float(np.sum(x**2))
    slope = float(np.sum(x * (y - y.mean())) / s_xx)
    rss = float(np.sum((y - y.mean() - slope * x) ** 2))
    return slope, math.sqrt(max(rss, 0.0) / (W - 2) / s_xx)


def is_plateau(y: Sequence[float], tol: float) -> bool:
    """True when the slope of `y` is within ``tol`` standard errors of zero (finite y)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 3 or not np.all(np.isfinite(y)):
        return False
    slope, se = plateau_statistic(y)
    return abs(slope) <= tol * se


class ProbeSchedule:
    """Decides which iterations get a probe round; `record` each round that ran."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.last_round = NONE
        self.last_plateau = NONE
        self.rounds = 0

    def due(self, n: int, td_loss_history: Sequence[float]) -> str | None:
        """The reason a round is due at iteration n ("last", "every", "plateau") or None.

        `td_loss_history` holds td_loss of iterations 0..n (only its tail is used).
        """
        probes = self.cfg.probes
        if not probes.enabled:
            return None
        if n == self.cfg.outer_iters - 1:
            return "last"
        if probes.every > 0 and (n + 1) % probes.every == 0:
            return "every"
        if self._plateau_due(n, td_loss_history):
            return "plateau"
        return None

    def _plateau_due(self, n: int, history: Sequence[float]) -> bool:
        plateau = self.cfg.probes.plateau
        if not plateau.enabled or n < plateau.min_iter or len(history) < plateau.window:
            return False
        if self.last_round != NONE and n - self.last_round < plateau.cooldown:
            return False
        return is_plateau(list(history)[-plateau.window :], plateau.tol)

    def record(self, n: int, reason: str) -> None:
        """Note that a round ran at iteration n for `reason`."""
        self.last_round = n
        self.rounds += 1
        if reason == "plateau":
            self.last_plateau = n

    def state_dict(self) -> dict[str, int]:
        return {
            "last_round": self.last_round,
            "last_plateau": self.last_plateau,
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.last_round = _as_int(state["last_round"])
        self.last_plateau = _as_int(state["last_plateau"])
        self.rounds = _as_int(state["rounds"])


def _as_int(value: object) -> int:
    """An int from an int, a 0-d array (npz) or None (meaning NONE)."""
    return NONE if value is None else int(np.asarray(value))
