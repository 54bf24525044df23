"""Theory overlay (docs/model.md §10 "learning"): the measured value_gap against the expected
critic dynamics over the whole run, with the minibatch noise (:mod:`tdlens.probes.expected`).

Every fixed-point probe at iteration p writes ``probes/expected_dynamics_<p>.npz``: the
predicted value_gap ``value_gap_pred`` (the mean path ``J^j e_0``), its band
``value_gap_lo`` / ``value_gap_hi`` and ``iters`` = p..outer_iters-1. From these:

- the band: the FIRST probe's prediction over the whole run (``iters, lo, mid, hi``);
- per probe k: ``ratio_first[k] = value_gap[k] / mid_first(iter_k)`` and
  ``ratio_prev[k] = value_gap[k] / mid_prev(iter_k)`` (re-anchored: the prediction of the
  probe before k), and ``inside[k]``: value_gap inside the first probe's band;
- decay rates: ``fitted_rate`` = ``-slope`` of the least-squares line of ``ln value_gap``
  against iter over the probes (per iteration), ``predicted_rate`` the same fit of
  ``ln sqrt(mid^2 + s^2)`` (the band's centre: mean path plus noise) at the same
  iterations, so both describe the same quantity; ``floor`` the last probe's
  value_gap_floor (the trainer's stationary floor), ``probe_floor`` =
  ``sqrt(floor^2 + est^2)`` (the lowest value_gap a probe can measure, ``est`` the w#
  error) and ``iters_to_floor`` the iterations after the first probe at which mid first
  falls to probe_floor (inf when not within the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tdlens.rundir.read import RunData, array_files, load_array
from tdlens.scores import measured_floor

EXPECTED_DYNAMICS_PREFIX = "expected_dynamics"
BAND_KEYS = frozenset({"iters", "value_gap_pred", "value_gap_lo", "value_gap_hi"})


@dataclass(frozen=True)
class ExpectedDynamics:
    """The predicted band and its comparison with the measurement (module docstring)."""

    anchor: int  # iteration of the first probe (-1: none)
    iters: np.ndarray
    lo: np.ndarray
    mid: np.ndarray
    hi: np.ndarray
    centre: np.ndarray
    probe_iters: np.ndarray
    value_gap: np.ndarray
    ratio_first: np.ndarray
    ratio_prev: np.ndarray
    inside: np.ndarray
    floor: float
    iters_to_floor: float
    fitted_rate: float
    predicted_rate: float
    probe_floor: float = math.nan
    curves: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def inside_fraction(self) -> float:
        return float(np.mean(self.inside)) if self.inside.size else math.nan


def _decay_rate(iters: np.ndarray, values: np.ndarray) -> float:
    """``-slope`` of the least-squares line of ``ln values`` against iters."""
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return math.nan
    return float(-np.polyfit(iters[ok], np.log(values[ok]), 1)[0])


def _at(curve: dict[str, np.ndarray], key: str, it: float) -> float:
    hit = np.flatnonzero(curve["iters"] == it)
    return float(curve[key][hit[0]]) if hit.size else math.nan


def _empty() -> ExpectedDynamics:
    e = np.zeros(0)
    return ExpectedDynamics(-1, e, e, e, e, e, e, e, e, e, e.astype(bool), *(math.nan,) * 4)


def expected_dynamics(data: RunData) -> ExpectedDynamics:
    """The band of the first probe and the per-probe comparison (module docstring)."""
    curves = {}
    for it, path in array_files(data.run_dir, EXPECTED_DYNAMICS_PREFIX).items():
        arr = load_array(path, data.cfg.env.feature_dim if data.cfg else None)
        if isinstance(arr, dict) and BAND_KEYS <= set(arr):
            curves[it] = {k: np.asarray(v, dtype=np.float64) for k, v in arr.items()}
    fp = data.probe("fixed_point_probe")
    if not curves or not len(fp) or not fp.has("value_gap"):
        return _empty()
    probe_iters = fp.iters().astype(np.float64)
    gap = fp.values("value_gap")
    anchor = min(curves)
    first = curves[anchor]
    noise = first.get("value_gap_noise", np.zeros_like(first["value_gap_pred"]))
    est = float(first.get("value_gap_est", np.zeros(1))[0])
    centre = np.sqrt(first["value_gap_pred"] ** 2 + noise**2 + est**2)
    keep = (probe_iters >= anchor) & np.isfinite(gap)
    probe_iters, gap = probe_iters[keep], gap[keep]
    mid_first = np.array([_at(first, "value_gap_pred", t) for t in probe_iters])
    lo = np.array([_at(first, "value_gap_lo", t) for t in probe_iters])
    hi = np.array([_at(first, "value_gap_hi", t) for t in probe_iters])
    prev = []
    for t in probe_iters:
        earlier = [p for p in curves if p < t]
        prev.append(_at(curves[max(earlier)], "value_gap_pred", t) if earlier else math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_first = gap / mid_first
        ratio_prev = gap / np.array(prev)
    centre_at = np.interp(probe_iters, first["iters"], centre)
    floor = float(fp.last("value_gap_floor")) if fp.has("value_gap_floor") else math.nan
    # no column: the probe's own error alone; inf (the predicted noise grows): no floor
    target = math.sqrt((0.0 if math.isnan(floor) else floor) ** 2 + est**2)
    reached = np.flatnonzero(first["value_gap_pred"] <= (target if target < math.inf else -1.0))
    iters_to_floor = float(first["iters"][reached[0]] - anchor) if reached.size else math.inf
    return ExpectedDynamics(
        anchor=anchor,
        iters=first["iters"],
        lo=first["value_gap_lo"],
        mid=first["value_gap_pred"],
        hi=first["value_gap_hi"],
        centre=centre,
        probe_iters=probe_iters,
        value_gap=gap,
        ratio_first=ratio_first,
        ratio_prev=ratio_prev,
        inside=(gap >= lo) & (gap <= hi),
        floor=floor,
        iters_to_floor=iters_to_floor,
        fitted_rate=_decay_rate(probe_iters, gap),
        predicted_rate=_decay_rate(probe_iters, centre_at),
        probe_floor=target,
        curves=curves,
    )


def theory_overlay(data: RunData) -> dict[str, Any]:
    """Plain lists for the report: ``{source, measured_iters, value_gap, pred_iters,
    curves: {label: values}, band: {lo, hi}, ratio_first, ratio_prev, inside_fraction,
    fitted_rate, predicted_rate, floor, probe_floor, iters_to_floor}`` and, under a
    ``schedules.alpha_w`` schedule, ``schedule`` (its description: the band follows it)."""
    dyn = expected_dynamics(data)
    out: dict[str, Any] = {
        "source": "none",
        "measured_iters": dyn.probe_iters.tolist(),
        "value_gap": dyn.value_gap.tolist(),
        "pred_iters": [],
        "curves": {},
        "band": {},
    }
    if dyn.anchor < 0:
        fp = data.probe("fixed_point_probe")
        if len(fp) and fp.has("value_gap"):
            ok = np.isfinite(fp.values("value_gap"))
            out["measured_iters"] = fp.iters()[ok].tolist()
            out["value_gap"] = fp.values("value_gap")[ok].tolist()
        return out
    out.update(
        source=f"probes/{EXPECTED_DYNAMICS_PREFIX}_{dyn.anchor:04d}.npz (first probe)",
        pred_iters=dyn.iters.tolist(),
        curves={"expected dynamics (mean path)": dyn.mid.tolist()},
        band={"lo": dyn.lo.tolist(), "hi": dyn.hi.tolist()},
        ratio_first=dyn.ratio_first.tolist(),
        ratio_prev=dyn.ratio_prev.tolist(),
        inside_fraction=dyn.inside_fraction,
        fitted_rate=dyn.fitted_rate,
        predicted_rate=dyn.predicted_rate,
        floor=dyn.floor,
        probe_floor=dyn.probe_floor,
        iters_to_floor=dyn.iters_to_floor,
    )
    sched = data.cfg.schedules.alpha_w if data.cfg is not None else None
    if sched is not None and not sched.is_constant:
        out["schedule"] = sched.describe()
    return out


@dataclass(frozen=True)
class FloorPlan:
    """How long the critic needs to reach its predicted floor, and the alpha_w that gets
    there within the run (from the fixed-point and stability probes).

    ``target = sqrt(value_gap_floor^2 + est^2)`` (est = value_noise_floor / 2, the w#
    error every measured value_gap carries), ``iters_to_floor = effective_timescale
    ln(value_gap / target)`` from the last probe (0 once value_gap <= target), and
    ``alpha_w_to_floor = alpha_w j_first / (outer_iters - iter_first)`` with j_first the
    same count from the first probe (relaxation times scale as 1/alpha_w while eta stays
    well below the critical step), to be read against the critical alpha_w interval
    ``critical_step_lo / (s B T)``, ``critical_step_hi / (s B T)``."""

    effective_timescale: float
    target: float
    iters_to_floor: float
    alpha_w_to_floor: float
    critical_alpha_w: float
    critical_alpha_w_lo: float
    critical_alpha_w_hi: float


def _iters_to(gap: float, target: float, tau: float) -> float:
    if not (math.isfinite(gap) and target > 0):
        return math.nan
    if target == math.inf:  # no floor (the predicted noise grows): never reached
        return math.inf
    if gap <= target:
        return 0.0
    return tau * math.log(gap / target) if math.isfinite(tau) else math.inf


def floor_plan(data: RunData) -> FloorPlan | None:
    """The :class:`FloorPlan` of a run, None without the columns it needs."""
    fp, stab, cfg = data.probe("fixed_point_probe"), data.probe("stability_probe"), data.cfg
    need = ("value_gap", "value_gap_floor", "effective_timescale", "value_noise_floor")
    if cfg is None or not len(fp) or not all(fp.has(c) for c in need):
        return None
    gap, floor = fp.values("value_gap"), fp.values("value_gap_floor")
    tau = fp.values("effective_timescale")
    target = measured_floor(floor, fp.values("value_noise_floor"))
    last = _iters_to(float(gap[-1]), float(target[-1]), float(tau[-1]))
    first = _iters_to(float(gap[0]), float(target[0]), float(tau[0]))
    left = cfg.outer_iters - float(fp.iters()[0])
    per = cfg.step_scale * cfg.trajectories * cfg.horizon

    def crit(key: str) -> float:
        value = stab.last(key) if len(stab) and stab.has(key) else None
        return value / per if value is not None and math.isfinite(value) else math.nan

    return FloorPlan(
        effective_timescale=float(tau[-1]),
        target=float(target[-1]),
        iters_to_floor=last,
        alpha_w_to_floor=cfg.alpha_w * first / left if left > 0 else math.nan,
        critical_alpha_w=crit("critical_step"),
        critical_alpha_w_lo=crit("critical_step_lo"),
        critical_alpha_w_hi=crit("critical_step_hi"),
    )
