"""The verdict card: the answer at the top of every run report (md, json, html).

Four sentences and a few numbers, computed from what the report already holds:

- ``regime``: :func:`tdlens.scores.label_regime`'s label and its reason;
- ``health``: the worst check verdict (:func:`tdlens.report.verdicts.overall_status`);
- ``why``: one sentence with the numbers that decided the regime (for a frozen critic:
  ``fastest_timescale`` against the run's ``outer_iters``, and how far ``||w||`` moved);
- ``next``: one sentence from the first next-step rule that fired
  (:func:`tdlens.report.rules.next_steps`), with its alpha_w or iteration count;
- ``key_numbers``: name, value, interval ``[lo, hi]`` and how it was obtained. Probe
  columns take their interval from ``<column>_lo`` / ``<column>_hi`` of the same row
  when the probe writes them; the learning-curve numbers are the mean of the last
  quarter ``k = max(1, n // 4)`` of the rows with ``mean +- 1.96 sigma / sqrt(k)``,
  ``sigma = std(diff x) / sqrt(2)`` (the point-to-point noise, as in
  :mod:`tdlens.report.honest`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tdlens.config import RunConfig, SchedulesConfig, eta_t
from tdlens.report.fmt import fmt, fmt_count
from tdlens.report.rules import RELAX_EFOLDS
from tdlens.report.verdicts import NextStep
from tdlens.rundir.read import RunData, Table
from tdlens.scores import Regime, quarter_trend, regime_family

Z95 = 1.96
"""Normal quantile of a two-sided 95% interval."""
REGIME_PHRASE = {
    "frozen": "The critic is frozen",
    "diverged": "The critic diverged",
    "learning": "The critic is learning",
    "plateau": "The critic stopped improving",
}


@dataclass(frozen=True)
class KeyNumber:
    """One number of the card, its 95% interval (None = none known) and its origin."""

    name: str
    value: float | None
    lo: float | None = None
    hi: float | None = None
    note: str = ""

    def text(self) -> str:
        """``name = value [lo, hi] (note)``."""
        band = f" [{fmt(self.lo)}, {fmt(self.hi)}]" if self.lo is not None else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.name} = {fmt(self.value)}{band}{note}"


@dataclass(frozen=True)
class Verdict:
    """The card (module docstring)."""

    regime: str
    regime_reason: str
    health: str
    reasons: list[str]
    why: str
    next: str
    key_numbers: list[KeyNumber] = field(default_factory=list)
    status: str | None = None
    steps: str = ""
    """The step sizes over the run (:func:`steps_line`) when a schedule is not constant,
    else empty (the card shows the line only then; Run Info always)."""

    def as_dict(self) -> dict[str, Any]:
        """run_report.json's ``verdict`` (also :attr:`tdlens.api.Run.verdict`): the keys
        regime, health, why, next first, then reasons, status and key_numbers."""
        return {
            "regime": self.regime,
            "health": self.health,
            "why": self.why,
            "next": self.next,
            "regime_reason": self.regime_reason,
            "reasons": self.reasons,
            "status": self.status,
            "key_numbers": [asdict(k) for k in self.key_numbers],
            "steps": self.steps,
        }


def probe_interval(table: Table, column: str) -> tuple[float | None, float | None]:
    """``(lo, hi)`` of the last row's ``<column>_lo`` / ``<column>_hi`` (None, None when
    the probe does not write them or they are not finite)."""
    lo, hi = table.last(f"{column}_lo"), table.last(f"{column}_hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None, None
    return lo, hi


def tail_mean(x: np.ndarray) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)`` of the last quarter of the finite values (module docstring)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return None
    q = quarter_trend(x)
    half = Z95 * q.sigma / math.sqrt(q.k)
    return q.last, q.last - half, q.last + half


def key_numbers(data: RunData, dynamics: dict[str, Any]) -> list[KeyNumber]:
    """The card's numbers that this run has (module docstring)."""
    out: list[KeyNumber] = []
    stab = data.probe("stability_probe")
    run = dynamics.get("run_iters")
    for col, note in (
        ("fastest_timescale", f"iterations the fastest critic mode needs; run: {fmt(run)}"),
        ("critical_alpha_w", "largest alpha_w whose expected update is stable"),
    ):
        value = dynamics.get(col)
        if value is not None:
            lo, hi = probe_interval(stab, col)
            step = dynamics.get("critical_step")
            if col == "critical_alpha_w" and lo is None and step:
                lo, hi = probe_interval(stab, "critical_step")
                lo, hi = (None, None) if lo is None else (lo * value / step, hi * value / step)
            out.append(KeyNumber(col, value, lo, hi, note))
    eig_min = stab.last("eig_min_real") if len(stab) and stab.has("eig_min_real") else None
    if eig_min is not None and math.isfinite(eig_min):
        lo, hi = probe_interval(stab, "eig_min_real")
        bound = stab.has("eig_min_real_is_bound") and stab.last("eig_min_real_is_bound") == 1
        note = "smallest Re eig(A) over the whole spectrum" + (
            " (a certified lower bound; < 0 beyond its interval: off-policy divergence)"
            if bound
            else " (< 0 beyond its interval: off-policy divergence)"
        )
        out.append(KeyNumber("eig_min_real", eig_min, lo, hi, note))
    if dynamics.get("median_rel_step") is not None:
        out.append(
            KeyNumber(
                "median_rel_step",
                dynamics["median_rel_step"],
                note="median delta_w_norm / w_norm per iteration",
            )
        )
    fp = data.probe("fixed_point_probe")
    if len(fp) and fp.has("value_gap"):
        lo, hi = probe_interval(fp, "value_gap")
        note = "RMS of Q_w - Q_w# at the last probe"
        out.append(KeyNumber("value_gap", fp.last("value_gap"), lo, hi, note))
    for col in ("td_loss", "w_norm"):
        stats = tail_mean(data.curves.values(col))
        if stats is not None:
            mean, lo, hi = stats
            out.append(KeyNumber(col, mean, lo, hi, "mean of the last quarter, 95% interval"))
    return out


def why_sentence(regime: Regime, dynamics: dict[str, Any], data: RunData) -> str:
    """One sentence with the numbers behind the regime (module docstring)."""
    base = regime_family(regime.label)
    phrase = REGIME_PHRASE.get(base, f"Regime {regime.label}")
    if ":" in regime.label:
        phrase += f" ({regime.label.split(':', 1)[1]})"
    w = data.curves.values("w_norm")
    w = w[np.isfinite(w)]
    moved = ""
    if len(w) >= 2 and w[0] != 0:
        rel = abs(w[-1] - w[0]) / abs(w[0])
        change = f"grew x{w[-1] / w[0]:.3g}" if rel > 1 else f"moved {100 * rel:.2g}%"
        moved = f"; ||w|| {change} over the run ({w[0]:.6g} -> {w[-1]:.6g})"
    fastest = dynamics.get("fastest_timescale")
    run = dynamics.get("run_iters")
    if base == "frozen" and fastest is not None and math.isfinite(fastest) and run:
        lo, hi = probe_interval(data.probe("stability_probe"), "fastest_timescale")
        band = f" [{fmt_count(lo)}, {fmt_count(hi)}]" if lo is not None else ""
        rate = dynamics.get("eta"), dynamics.get("eig_max_real")
        speed = (
            f" (eta x max Re eig(A) = {fmt(rate[0] * rate[1])} per iteration)"
            if None not in rate
            else ""
        )
        return (
            f"{phrase}: its fastest mode needs ~{fmt_count(fastest)}{band} iterations to "
            f"relax{speed}, but the run has {fmt(run)}{moved}."
        )
    if base == "n/a":
        return f"Too short to judge ({regime.reason})."
    return f"{phrase}: {regime.reason}{moved}."


def next_sentence(
    steps: list[NextStep], alpha_w: float | None, numbers: dict[str, KeyNumber] | None = None
) -> str:
    """One sentence from the first next-step rule (module docstring), with the critical
    alpha_w's interval from ``numbers`` when it has one."""
    if not steps:
        return "Nothing to change."
    step = steps[0]
    v = step.values
    if step.rule == "critic_frozen" and v.get("alpha_w_next") is not None:
        crit = v.get("alpha_w_critical")
        known = (numbers or {}).get("critical_alpha_w")
        band = f" [{fmt(known.lo)}, {fmt(known.hi)}]" if known and known.lo is not None else ""
        stable = f", stable up to alpha_w = {fmt(crit)}{band} by the critical step" if crit else ""
        more = v.get("outer_iters_at_alpha_w_next")
        at_next = f" and outer_iters >= ~{fmt_count(more)}" if more else ""
        # short of the needed alpha_w (the 10x cap): a first step, not the fix
        first = not more and v["alpha_w_next"] < v.get("alpha_w_needed", math.inf)
        verb = "Raise alpha_w" + (" stepwise (its sampling noise grows with it)" if first else "")
        return (
            f"{verb} from {fmt(alpha_w)} to {fmt(v['alpha_w_next'])}{at_next}"
            f"{stable} (alpha_w = {fmt(v.get('alpha_w_needed'))} would relax the fastest mode "
            f"{fmt(RELAX_EFOLDS)} times in {fmt(v.get('run_iters'))} iterations), or keep "
            "alpha_w and run "
            f"outer_iters >= ~{fmt_count(v['outer_iters_at_alpha_w'])}."
        )
    message = step.message
    cut = message.find(". ")
    first = message if cut < 0 else message[: cut + 1]
    return first[:1].upper() + first[1:]


def steps_line(cfg: RunConfig | None) -> str:
    """The step sizes over the run, e.g. ``alpha_w: inverse_time (t0=8), 1200 -> 109.1 at
    iteration 79; alpha_pi: constant 0.05`` (``eta_t`` at iterations 0 and
    outer_iters - 1); empty without a config."""
    if cfg is None:
        return ""
    last = cfg.outer_iters - 1
    parts = []
    for key, base in (("alpha_w", cfg.alpha_w), ("alpha_pi", cfg.alpha_pi)):
        sched = getattr(cfg.schedules, key)
        if sched.is_constant:
            parts.append(f"{key}: constant {fmt(base)}")
        else:
            end = fmt(eta_t(sched, base, last))
            parts.append(f"{key}: {sched.describe()}, {fmt(base)} -> {end} at iteration {last}")
    return "; ".join(parts)


def verdict_of(
    regime: Regime,
    health: str,
    health_reasons: list[str],
    steps: list[NextStep],
    dynamics: dict[str, Any],
    data: RunData,
) -> Verdict:
    """The card of a run (module docstring)."""
    cfg = data.cfg
    alpha_w = cfg.alpha_w if cfg is not None else None
    numbers = key_numbers(data, dynamics)
    return Verdict(
        regime=regime.label,
        regime_reason=regime.reason,
        health=health,
        reasons=health_reasons,
        why=why_sentence(regime, dynamics, data),
        next=next_sentence(steps, alpha_w, {k.name: k for k in numbers}),
        key_numbers=numbers,
        status=data.status.get("status"),
        steps=steps_line(cfg) if cfg is not None and cfg.schedules != SchedulesConfig() else "",
    )
