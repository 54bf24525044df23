"""Summary statistics of a metric series (docs/model.md §8: Core Metrics and Probe Metrics tables).

For a series ``x_i`` at iterations ``t_i`` (NaN = no value):
- ``last``, ``min``, ``max`` over the non-NaN values (an infinity stays visible);
- ``mean_last_k`` = mean of the last ``k`` finite points;
- ``slope_last_k`` = least-squares slope of those points against ``t``:
  ``sum (t - t_bar)(x - x_bar) / sum (t - t_bar)^2`` (None with fewer than 2 iterations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K_LAST = 5
"""Number of trailing finite points for mean_last_k and slope_last_k (the seed's k)."""

STAT_COLUMNS: tuple[str, ...] = ("last", "min", "max", "mean_last_k", "slope_last_k")


@dataclass(frozen=True)
class Stats:
    """The five table columns of one metric; None where undefined (no values)."""

    last: float | None
    min: float | None
    max: float | None
    mean_last_k: float | None
    slope_last_k: float | None
    count: int

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in STAT_COLUMNS}


def ls_slope(t: np.ndarray, x: np.ndarray) -> float | None:
    """Least-squares slope of ``x`` against ``t``; None when ``t`` has no spread."""
    if len(t) < 2:
        return None
    dt = t - t.mean()
    denom = float(np.sum(dt * dt))
    if denom == 0.0:
        return None
    return float(np.sum(dt * (x - x.mean())) / denom)


def summarize(x: np.ndarray, t: np.ndarray | None = None, k: int = K_LAST) -> Stats:
    """The :class:`Stats` of series ``x`` (float, NaN = missing) at iterations ``t``."""
    x = np.asarray(x, dtype=np.float64)
    t = np.arange(len(x), dtype=np.float64) if t is None else np.asarray(t, dtype=np.float64)
    present = ~np.isnan(x)
    if not present.any():
        return Stats(None, None, None, None, None, 0)
    values = x[present]
    finite = np.isfinite(x) & np.isfinite(t)
    xs, ts = x[finite][-k:], t[finite][-k:]
    mean = float(xs.mean()) if len(xs) else None
    return Stats(
        last=float(values[-1]),
        min=float(values.min()),
        max=float(values.max()),
        mean_last_k=mean,
        slope_last_k=ls_slope(ts, xs),
        count=int(present.sum()),
    )


def nan_max(x: np.ndarray) -> float | None:
    """Largest non-NaN value (None when there is none), without numpy's warning."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.max()) if len(x) else None


def nan_mean(x: np.ndarray) -> float | None:
    """Mean of the finite values (None when there is none)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def nan_min(x: np.ndarray) -> float | None:
    """Smallest non-NaN value (None when there is none)."""
    largest = nan_max(-np.asarray(x, dtype=np.float64))
    return None if largest is None else -largest
