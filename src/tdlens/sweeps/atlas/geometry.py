"""The atlas's geometry: where eig_min_real changes sign across the mismatch axis,
the closed-form boundary, which axes move the label, and a representative run
per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tdlens.sweeps.atlas.data import AtlasPoint, AtlasSweep, _param


def eig_zero_crossing(points: Sequence[AtlasPoint], field_name: str = "eig_min_real") -> float:
    """Mismatch where the median of ``field_name`` (eig_min_real, eig_lo or eig_hi) per
    mismatch value first changes sign from positive to non-positive (linear
    interpolation), NaN when it never does."""
    values = sorted({p.mismatch for p in points})
    med = []
    for v in values:
        e = [getattr(p, field_name) for p in points if p.mismatch == v]
        e = [x for x in e if math.isfinite(x)]
        med.append(float(np.median(e)) if e else math.nan)
    for i in range(len(values) - 1):
        (v0, e0), (v1, e1) = (values[i], med[i]), (values[i + 1], med[i + 1])
        if math.isfinite(e0) and math.isfinite(e1) and e0 > 0 >= e1:
            return v0 + (v1 - v0) * e0 / (e0 - e1)
    return math.nan


def crossing_interval(points: Sequence[AtlasPoint]) -> tuple[float, float, float]:
    """``(crossing, lo, hi)``: the eig_min_real = 0 crossing of the medians and its band,
    from where the medians of eig_min_real_hi and eig_min_real_lo change sign (sorted;
    NaN where that median never changes sign inside the grid)."""
    mid = eig_zero_crossing(points)
    ends = sorted(eig_zero_crossing(points, f) for f in ("eig_lo", "eig_hi"))
    return mid, ends[0], ends[1]


def _representatives(points: Sequence[AtlasPoint]) -> dict[str, AtlasPoint]:
    """Per label, the run nearest the middle of that label's runs in log step ratio."""
    by_label: dict[str, list[AtlasPoint]] = {}
    for p in points:
        by_label.setdefault(p.record.regime, []).append(p)
    out = {}
    for label, pts in sorted(by_label.items()):
        logs = np.log([p.step_ratio if p.step_ratio > 0 else 1.0 for p in pts])
        out[label] = pts[int(np.argmin(np.abs(logs - np.median(logs))))]
    return out


def axis_effect(points: Sequence[AtlasPoint], field_name: str) -> tuple[int, int]:
    """``(slices whose labels differ along the axis, slices)``: a slice fixes every other
    drawn axis (alpha_w, beta, mismatch); labels are each run's (seeds kept apart)."""
    keys = [k for k in ("alpha_w", "beta", "mismatch") if k != field_name]
    slices: dict[tuple[float, ...], set[str]] = {}
    for p in points:
        slices.setdefault(tuple(getattr(p, k) for k in keys), set()).add(p.record.regime)
    return sum(len(labels) > 1 for labels in slices.values()), len(slices)


def closed_form_boundary(sweep: AtlasSweep) -> float:
    """``sqrt(2 / gamma)`` when the mismatch is sigma_pi / sigma_mu and gamma is one value
    (docs/triad.md), else NaN."""
    if sweep.mkey != "sigma_pi":
        return math.nan
    base = sweep.plan.get("base_config") or {}
    gammas = {_param(p.record, base, "gamma") for p in sweep.points}
    (gamma,) = gammas if len(gammas) == 1 else (math.nan,)
    return math.sqrt(2.0 / gamma) if gamma > 0 else math.nan
