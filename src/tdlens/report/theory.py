"""Theory overlay (SPEC 10 "learning"): value_gap predicted by the expected dynamics
``w <- w + eta (b - A w)`` against the value_gap the fixed-point probe measured.

Sources, best first:
1. ``probes/expected_dynamics_<iter>.npz`` with arrays ``iters`` and ``value_gap_pred``
   (the prediction from that probe's A and b), when the probes write it;
2. otherwise a spectral envelope from the last stability probe: starting from the first
   measured value_gap ``g_0`` at iteration ``t_0``, the fastest decay any mode allows,
   ``g_0 exp(-(t - t_0) / fastest_timescale)``, and the slowest resolved mode's,
   ``g_0 exp(-(t - t_0) / slowest_timescale)`` (modes below the spectral noise do not
   decay at all, so the measured gap should stay above the fastest curve).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tdlens.rundir.read import RunData, latest_array

EXPECTED_DYNAMICS_PREFIX = "expected_dynamics"


def theory_overlay(data: RunData) -> dict[str, Any]:
    """``{source, measured_iters, value_gap, pred_iters, curves: {label: values}}``."""
    fp = data.probe("fixed_point_probe")
    out: dict[str, Any] = {
        "source": "none",
        "measured_iters": [],
        "value_gap": [],
        "pred_iters": [],
        "curves": {},
    }
    if len(fp) and fp.has("value_gap"):
        ok = np.isfinite(fp.values("value_gap"))
        out["measured_iters"] = fp.iters()[ok].tolist()
        out["value_gap"] = fp.values("value_gap")[ok].tolist()
    it, arr = latest_array(data.run_dir, EXPECTED_DYNAMICS_PREFIX)
    if isinstance(arr, dict) and {"iters", "value_gap_pred"} <= set(arr):
        out.update(
            source=f"probes/{EXPECTED_DYNAMICS_PREFIX}_{it:04d}.npz",
            pred_iters=np.asarray(arr["iters"], float).tolist(),
            curves={"expected dynamics": np.asarray(arr["value_gap_pred"], float).tolist()},
        )
        return out
    stab = data.probe("stability_probe")
    if not out["value_gap"] or not len(stab):
        return out
    t0, g0 = out["measured_iters"][0], out["value_gap"][0]
    end = max(out["measured_iters"][-1], data.curves.iters()[-1] if len(data.curves) else t0)
    t = np.linspace(t0, end, 50)
    curves = {}
    for key in ("fastest_timescale", "slowest_timescale"):
        tau = stab.last(key)
        if tau is not None and math.isfinite(tau) and tau > 0:
            curves[f"{key} decay"] = (g0 * np.exp(-(t - t0) / tau)).tolist()
    if curves:
        out.update(
            source="spectral envelope of the last stability probe",
            pred_iters=t.tolist(),
            curves=curves,
        )
    return out
