"""verdict.advice and regime.counterfactuals from ``probes/counterfactuals_<iter>.npz``
(written by :mod:`tdlens.probes.counterfactual`, docs/model.md §6.1, issue 23 item 4).

Each stored setting has a predicted final value_gap (``value_gap_end``, the band's centre
``sqrt(mid^2 + s^2)`` at iteration outer_iters - 1) with its interval and the regime its
predicted path implies. The advice (:func:`advice`) is the grid setting with the smallest
value_gap_end at the run's batch, replaced by a larger batch's best only when that is lower
by more than BATCH_GAIN (2-4x the samples per iteration must pay). It ``helps`` when its
predicted interval lies below the unchanged run's predicted end (:func:`helps`), the test
the label rule puts to a mechanism's intervention; else its sentence says plainly that no
setting within the run helps beyond the prediction's band.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from tdlens.config import RunConfig
from tdlens.scores import PREDICTED_GAIN_MIN

PREFIX = "counterfactuals"
"""``probes/counterfactuals_<iter>.npz`` (the probe module's PREFIX)."""
BATCH_GAIN = 0.2
"""A larger batch is advised only when it lowers value_gap_end by more than this fraction
against the best setting at the run's batch."""


NOISE_FLOOR = "plateau:noise-floor"
"""The label (or the control's predicted regime) under which annealing is advised."""
PREDICTED_KEYS = ("value_gap_end", "value_gap_end_lo", "value_gap_end_hi", "value_gap_end_path")


def entries(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The settings of a ``counterfactuals_<iter>.npz`` as ``{"name", "kind", "set",
    "eta", "trajectories", "predicted", "note"}`` in file order (inverse of
    :func:`tdlens.probes.counterfactual.to_arrays`); ``predicted`` = ``{value_gap_end,
    _lo, _hi, _path, regime}``, None when not predicted (a diverging path keeps its inf)."""
    out = []
    for i, name in enumerate(arrays["name"].tolist()):
        end = {k: float(arrays[k][i]) for k in PREDICTED_KEYS}
        regime = str(arrays["regime"][i])  # "" when not predicted (NaN values)
        predicted = {**end, "regime": regime} if regime else None
        out.append(
            {
                "name": str(name),
                "kind": str(arrays["kind"][i]),
                "set": json.loads(str(arrays["set_json"][i])),
                "eta": float(arrays["eta"][i]),
                "trajectories": int(arrays["trajectories"][i]),
                "predicted": predicted,
                "note": str(arrays["note"][i]),
            }
        )
    return out


def _num(x: float) -> str:
    return f"{x:.4g}"


def helps(p: dict[str, Any], c: dict[str, Any]) -> bool:
    """Does the change predicted by `p` help against the unchanged run's `c`? When its
    interval lies below the unchanged run's predicted end: ``c.value_gap_end -
    p.value_gap_end_hi > PREDICTED_GAIN_MIN``, the predicted gain the label rule asks of a
    mechanism's intervention (:func:`tdlens.scores.predicted_gain`), so a Next that
    advises a change and a label that names a mechanism make the same promise.

    Against the control's centre, not its lower end ``value_gap_end_lo``: both predictions
    come from one probe and carry its same w# error ``est`` and the same estimate of A, so
    their errors move together and the change's own band already holds the spread of
    the difference; requiring the two bands to be disjoint would count that shared error
    twice. A lower centre with overlapping bands does not help: the gain is within the
    prediction's spread (the trainer's minibatch noise and the probe's w# error)."""
    return float(c["value_gap_end"]) - float(p["value_gap_end_hi"]) > PREDICTED_GAIN_MIN


def advice(
    rows: list[dict[str, Any]], cfg: RunConfig, critical_step: float, label: str = ""
) -> list[dict[str, Any]]:
    """``verdict.advice`` from :func:`entries`: the grid setting with the smallest
    predicted value_gap_end at the run's batch among those that help (all, when none
    does), replaced by a larger batch's best only when that helps and the other does not,
    or is lower by more than BATCH_GAIN; then, when the batch changed, the best at the
    run's batch. Each ``{"set", "predicted", "why", "helps"}``, helps = false when
    its predicted interval does not lie below the control's predicted end (:func:`helps`;
    no setting within the run helps beyond the prediction's band). Where the run is
    ``plateau:noise-floor`` (its `label`, or the control's predicted path) and stored
    annealing schedules are predicted to end lower than the control, the lowest of them
    follows (:func:`anneal_advice`). [] without
    a control or grid."""
    control = next((r for r in rows if r["name"] == "control" and r["predicted"]), None)
    grid = [
        r
        for r in rows
        if r["kind"] == "grid" and r["predicted"] and math.isfinite(r["predicted"]["value_gap_end"])
    ]
    if control is None or not grid:
        return []
    c = control["predicted"]

    def rank(r: dict[str, Any]) -> tuple[bool, float]:
        """Settings that help first, then by value_gap_end: "no setting helps" stays true."""
        return (not helps(r["predicted"], c), r["predicted"]["value_gap_end"])

    best: dict[int, dict[str, Any]] = {}
    for r in grid:
        b = r["trajectories"]
        if b not in best or rank(r) < rank(best[b]):
            best[b] = r
    own = best.get(cfg.trajectories)
    chosen = own
    for b in sorted(k for k in best if k > cfg.trajectories):
        if chosen is None:
            chosen = best[b]
            continue
        (fails, lower), (chosen_fails, end) = rank(best[b]), rank(chosen)
        # helping beats not helping; else lower by more than BATCH_GAIN
        if (fails, lower) < (chosen_fails, (1.0 - BATCH_GAIN) * end):
            chosen = best[b]
    picks = [chosen] if chosen is own or own is None else [chosen, own]
    out = [_advice_entry(r, control, cfg, critical_step) for r in picks if r is not None]
    anneal = anneal_advice(rows, control, cfg, label)
    return [*out, anneal] if anneal else out


def anneal_advice(
    rows: list[dict[str, Any]], control: dict[str, Any], cfg: RunConfig, label: str = ""
) -> dict[str, Any] | None:
    """The stored ``schedule`` setting (an ``inverse_time`` alpha_w schedule, written by
    the probe when the control's path reaches a floor) with the smallest predicted
    value_gap_end, as a ``verdict.advice`` entry, when the run is ``plateau:noise-floor``
    (`label` or the control's predicted regime) and it ends below the control's
    value_gap_end; else None."""
    c = control["predicted"]
    if NOISE_FLOOR not in (label, c["regime"]):
        return None
    sched = [
        r
        for r in rows
        if r["kind"] == "schedule"
        and r["predicted"]
        and math.isfinite(r["predicted"]["value_gap_end"])
    ]
    if not sched:
        return None
    best = min(sched, key=lambda r: r["predicted"]["value_gap_end"])
    p = best["predicted"]
    if not p["value_gap_end"] < c["value_gap_end"]:
        return None
    what = ", ".join(
        f"{k} = {v if isinstance(v, str) else _num(v)}" for k, v in best["set"].items()
    )
    last = cfg.outer_iters - 1
    why = (
        f"anneal the critic step ({what}: alpha_w / (1 + t / t0) from alpha_w = "
        f"{_num(cfg.alpha_w)}): a constant step holds value_gap at its noise floor, a "
        f"falling one keeps lowering it; {_outcome(p, c, last)}"
    )
    return _entry(best["set"], p, why, helps(p, c))


def _outcome(p: dict[str, Any], c: dict[str, Any], last: int) -> str:
    """``predicted value_gap at iteration <last> v [lo, hi] (regime), against ... unchanged
    (regime)`` for the prediction `p` and the control's `c`."""
    return (
        f"predicted value_gap at iteration {last} {_num(p['value_gap_end'])} "
        f"[{_num(p['value_gap_end_lo'])}, {_num(p['value_gap_end_hi'])}] ({p['regime']}), "
        f"against {_num(c['value_gap_end'])} [{_num(c['value_gap_end_lo'])}, "
        f"{_num(c['value_gap_end_hi'])}] unchanged ({c['regime']})"
    )


def _entry(sets: dict[str, Any], p: dict[str, Any], why: str, helps: bool) -> dict[str, Any]:
    """One ``verdict.advice`` entry (docs/metrics.md)."""
    predicted = {k: p[k] for k in ("value_gap_end", "value_gap_end_lo", "value_gap_end_hi")}
    return {
        "set": sets,
        "predicted": {**predicted, "regime": p["regime"]},
        "why": why,
        "helps": helps,
    }


def _advice_entry(
    r: dict[str, Any], control: dict[str, Any], cfg: RunConfig, critical_step: float
) -> dict[str, Any]:
    """One advice entry with its sentence (:func:`advice`)."""
    p, c = r["predicted"], control["predicted"]
    helpful = helps(p, c)
    alpha = r["set"]["alpha_w"]
    what = f"alpha_w = {_num(alpha)} (x{_num(alpha / cfg.alpha_w) if cfg.alpha_w else 'inf'}"
    if math.isfinite(critical_step) and critical_step > 0:
        what += f", eta = {_num(r['eta'] / critical_step)} x critical_step"
    what += ")"
    if "trajectories" in r["set"]:
        what += f", trajectories = {r['set']['trajectories']}"
    last = cfg.outer_iters - 1
    why = f"{what}: {_outcome(p, c, last)}"
    if not helpful:
        if p["value_gap_end"] < c["value_gap_end"]:
            cause = (
                f"its centre is lower, but its band reaches {_num(p['value_gap_end_hi'])}, "
                f"above the unchanged run's {_num(c['value_gap_end'])}: the predicted gain is "
                "within the spread of the trainer's minibatch noise and the probe's w# error"
            )
        else:
            cause = {
                "plateau:noise-floor": "the minibatch noise holds value_gap at its floor",
                "learning": "the run already reaches its noise floor",
            }.get(p["regime"], "slow modes dominate: the error sits in modes slower than the run")
        why += (
            f". No setting within the run's {cfg.outer_iters} iterations helps beyond the "
            f"prediction's band: {cause}"
        )
    return _entry(r["set"], p, why, helpful)
