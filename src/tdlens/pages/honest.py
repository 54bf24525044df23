"""Honest axes: how much a plotted series really changed, and a y range that shows it.

For a series ``y_i`` (finite points only, ``n`` of them) with ``k = max(1, n // 4)``:

- ``trend = mean(y[-k:]) - mean(y[:k])`` (last quarter against first quarter);
- its standard error from the point-to-point noise, ``sigma = std(diff y) / sqrt(2)``
  (successive differences, so a steady trend does not inflate it) and
  ``se = sigma sqrt(2 / k)``;
- ``level = max |y|``; ``span = max y - min y``.

The series shows **no change beyond noise** when ``|trend| <= NOISE_SE se`` or
``span <= FLAT_REL level``. Every y axis spans at least ``MIN_REL_SPAN level`` around the
data, so a change of 1e-4 of a series' level is drawn flat instead of as a cliff (an
autoscaled axis stretches any change, however small, to the full height).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tdlens.scores import quarter_trend

NOISE_SE = 2.0
"""A trend within this many standard errors of zero is noise."""
FLAT_REL = 1e-6
"""A series whose range is below this fraction of its level did not change."""
MIN_REL_SPAN = 0.1
"""Every y axis spans at least this fraction of the series' level."""
PAD = 0.05
"""Fraction of the data's span added above and below it."""
FLAT_NOTE = "no change beyond noise"


@dataclass(frozen=True)
class Change:
    """How a series moved (module docstring); ``flat`` = no change beyond noise."""

    n: int
    trend: float
    se: float
    level: float
    span: float
    flat: bool

    @property
    def note(self) -> str:
        """``"no change beyond noise"`` for a flat series, else ''."""
        return FLAT_NOTE if self.flat else ""


def change_of(y: np.ndarray) -> Change:
    """The :class:`Change` of ``y`` (non-finite points dropped)."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    n = len(y)
    if n == 0:
        return Change(0, math.nan, math.nan, math.nan, math.nan, False)
    level = float(np.max(np.abs(y)))
    span = float(y.max() - y.min())
    q = quarter_trend(y)
    trend, se = q.last - q.first, q.se
    flat = n >= 2 and (abs(trend) <= NOISE_SE * se or span <= FLAT_REL * level)
    return Change(n, trend, se, level, span, bool(flat))


def y_range(y: np.ndarray) -> tuple[float, float] | None:
    """``(lo, hi)`` of a linear y axis for ``y``: the data padded by PAD of its span, and at
    least ``MIN_REL_SPAN level`` wide, centred on the data; None without finite points."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    if not len(y):
        return None
    lo, hi = float(y.min()), float(y.max())
    level = float(np.max(np.abs(y)))
    half = max((hi - lo) * (0.5 + PAD), 0.5 * MIN_REL_SPAN * level)
    if half == 0.0:
        half = 1.0
    mid = 0.5 * (lo + hi)
    return mid - half, mid + half
