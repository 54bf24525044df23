"""The verdict card: the answer at the top of every run report (md, json, html).

Four sentences and a few numbers, computed from what the report already holds:

- ``regime``: :func:`tdlens.scores.label_regime`'s label and its reason;
- ``health``: the worst check verdict (:func:`tdlens.report.verdicts.overall_status`);
- ``why``: at most two sentences with at most three numbers (WHY_MAX_SENTENCES,
  WHY_MAX_NUMBERS), read aloud: the mechanism in words, its deciding number ("The fixed
  point moves 2.3x faster than the critic can follow: ..."); every other number stays in
  the key numbers and ``regime.evidence``;
- ``next``: always an action: the ``Next:`` clause of the next-step rule of the label's
  own mechanism (LABEL_RULES; a failed or stopped run: run_status first), else of the first
  rule that has one, else the label's default (DEFAULT_ACTION); never cut mid-sentence;
- ``key_numbers``: name, value, interval ``[lo, hi]`` and how it was obtained. Probe
  columns take their interval from ``<column>_lo`` / ``<column>_hi`` of the same row
  when the probe writes them; the learning-curve numbers are the mean of the last
  quarter ``k = max(1, n // 4)`` of the rows with ``mean +- 1.96 sigma / sqrt(k)``,
  ``sigma = std(diff x) / sqrt(2)`` (the point-to-point noise, as in
  :mod:`tdlens.pages.honest`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tdlens.config import RunConfig, SchedulesConfig, eta_t
from tdlens.pages.fmt import fmt, fmt_count
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
WHY_MAX_SENTENCES = 2
WHY_MAX_NUMBERS = 3
ACTION_MARK = "Next: "
"""Where a next-step message's action starts (tdlens.report.rules' module docstring)."""
LABEL_RULES: dict[str, tuple[str, ...]] = {
    "diverged:off-policy": ("growing_mode", "rho_variance", "exploding"),
    "diverged:step-size": ("exploding", "run_status"),
    "diverged": ("run_status", "exploding", "growing_mode"),
    "frozen": ("critic_frozen", "metrics_flat"),
    "plateau": ("plateau_mechanism", "fixed_point_drift"),
    "learning": (),
    "n/a": ("run_status",),
}
"""The next-step rules whose action answers a label (the label, else its family), first
that fired wins; a failed or stopped run takes run_status before them."""
DEFAULT_ACTION = {
    "learning": "Keep these settings: value_gap is still falling; lengthen outer_iters to "
    "see where it settles.",
    "plateau": "Run it again with at least two fixed-point probe rounds (probes.every at "
    "most outer_iters / 2) so the plateau's mechanism can be named.",
    "n/a": "Run it longer: at least a few probe rounds are needed to judge it.",
}
"""Next when no rule with an action fired (any other label: :data:`DEFAULT_ACTION_ANY`)."""
DEFAULT_ACTION_ANY = "Look at the failing checks under Health checks and fix the first one."
FAILED = "failed"
"""The status of a run that stopped on an error, and its card's headline."""


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

    @property
    def headline(self) -> str:
        """The card's first word: ``failed`` for a failed run (its regime is ``n/a``: a run
        that stopped on an error is not judged, :func:`tdlens.scores.label_regime`), else
        the regime label."""
        return FAILED if self.status == FAILED else self.regime

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


def eig_min_number(stab: Table) -> KeyNumber | None:
    """eig_min_real's key number: the computed minimum (``eig_min_real_computed``, the
    smallest real part of the eigenvalues the probe computed; ``eig_min_real`` when the
    table has no such column) with ``eig_min_real``'s interval, and, for a Krylov spectrum,
    the certified lower bound over the whole spectrum named apart in the note, so a
    healthy run does not headline the negative bound as if it were an eigenvalue."""
    if not len(stab) or not stab.has("eig_min_real"):
        return None
    computed = stab.last("eig_min_real_computed") if stab.has("eig_min_real_computed") else None
    value = computed if computed is not None and math.isfinite(computed) else None
    value = stab.last("eig_min_real") if value is None else value
    if value is None or not math.isfinite(value):
        return None
    lo, hi = probe_interval(stab, "eig_min_real")
    bound = stab.has("eig_min_real_is_bound") and stab.last("eig_min_real_is_bound") == 1
    note = "smallest Re eig(A) computed"
    if bound:
        note += (
            f"; the rest of the spectrum has a certified lower bound of "
            f"{fmt(stab.last('eig_min_real_bound') or stab.last('eig_min_real'))}"
        )
    below = hi is not None and hi < 0
    note += (
        "; its whole interval is below zero: a growing mode (off-policy divergence)"
        if below
        else "; a growing mode only when its whole interval is below zero"
    )
    return KeyNumber("eig_min_real", value, lo, hi, note)


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
    number = eig_min_number(stab)
    if number is not None:
        out.append(number)
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


def _w_growth(data: RunData) -> float | None:
    """``||w||`` last / first over the run (None without two finite values)."""
    w = data.curves.values("w_norm")
    w = w[np.isfinite(w)]
    return float(w[-1] / w[0]) if len(w) >= 2 and w[0] != 0 else None


def _times(ratio: float) -> str:
    """A ratio read aloud: 2 significant digits, thousands separated (``2.3``, ``25,000``)."""
    return fmt_count(ratio) if ratio >= 10 else f"{ratio:.2g}"


def _failure(data: RunData) -> str:
    """What stopped a failed run, from its status reason (the forms of
    :func:`tdlens.runs.runner.failure_reason`): the exception's name (``ValueError at
    iteration 2: ...`` and ``MemoryError: ...`` -> ValueError, MemoryError), else the cause
    without its iteration and file (``out of memory``, ``No space left on device``)."""
    head = str(data.status.get("reason") or "").split(":", 1)[0]
    head = re.split(r" at iteration \d+| writing '", head, maxsplit=1)[0].strip()
    return head or "error"


def why_sentence(regime: Regime, dynamics: dict[str, Any], data: RunData) -> str:
    """At most two sentences with at most three numbers, read aloud: the mechanism behind
    the regime and its deciding number (module docstring)."""
    base = regime_family(regime.label)
    mech = regime.label.split(":", 1)[1] if ":" in regime.label else ""
    ev = regime.evidence or {}
    growth = _w_growth(data)
    grew = f"; ||w|| grew {fmt_count(growth)}-fold over the run" if growth and growth > 2 else ""
    fastest, run = dynamics.get("fastest_timescale"), dynamics.get("run_iters")
    if data.status.get("status") == FAILED:
        cause = _failure(data)
        if re.fullmatch(r"[A-Za-z_]\w*", cause):
            article = "an " if cause == "error" else ""
            return f"The run failed with {article}{cause} before it could be judged."
        return f"The run failed ({cause}) before it could be judged."
    if base == "n/a":
        return f"Too short to judge: {fmt(len(data.curves))} iterations ran."
    if base == "frozen" and fastest is not None and math.isfinite(fastest) and run:
        return (
            f"The critic is frozen: its fastest mode needs ~{fmt_count(fastest)} iterations "
            f"to relax, but the run has {fmt(run)}."
        )
    if mech == "off-policy":
        return (
            "The critic diverged off-policy: an eigenvalue of A is below zero, so TD grows "
            f"at every step size{grew}."
        )
    if mech == "step-size":
        eta, crit = ev.get("eta"), ev.get("critical_step")
        over = (
            f" is {_times(eta / crit)}x the largest stable one"
            if eta and crit and math.isfinite(crit)
            else " exceeds the critical step"
        )
        return f"The critic diverged: the step{over}, so its fastest mode overshoots{grew}."
    last = ev.get("value_gap_last")
    if mech == "moving-target" and ev.get("drift_ratio") is not None:
        return (
            f"The fixed point moves {_times(ev['drift_ratio'])}x faster than the critic can "
            f"follow: value_gap stalls at {fmt(last)}."
        )
    if mech == "noise-floor" and last is not None:
        return (
            f"The critic reached its noise floor: value_gap {fmt(last)} is "
            f"{_times(ev.get('gap_over_floor', math.nan))}x probe_floor, the lowest a probe can "
            "measure, which only a smaller step or more averaging lowers."
        )
    if mech == "slow-modes" and last is not None:
        tau = ev.get("tau_obs", math.inf)
        outer = ev.get("outer_iters") or run
        rest = (
            f"what remains relaxes over ~{fmt_count(tau)} iterations, longer than the run's "
            f"{fmt(outer)}"
            if math.isfinite(tau)
            else f"it no longer falls within the run's {fmt(outer)} iterations"
        )
        return f"The critic stopped improving at value_gap {fmt(last)}: {rest}."
    if base == "learning" and last is not None and ev.get("value_gap_first") is not None:
        return (
            f"The critic is learning: value_gap fell from {fmt(ev['value_gap_first'])} to "
            f"{fmt(last)} and is still falling."
        )
    if base == "diverged":
        return f"The critic diverged{grew.replace(';', ':', 1) or '.'}".rstrip(".") + "."
    if regime.label == "plateau" and "gain_slow_modes" in ev and last is not None:
        return (
            f"The critic stopped improving at value_gap {fmt(last)}, and no mechanism's "
            "intervention is predicted to lower it beyond the prediction's own band."
        )
    phrase = REGIME_PHRASE.get(base, f"Regime {regime.label}")
    return f"{phrase}: its error no longer falls beyond its own noise."


def action_of(step: NextStep) -> str | None:
    """The action of a next-step message: its ``Next:`` clause, capitalised (None when it
    has none)."""
    cut = step.message.rfind(ACTION_MARK)
    if cut < 0:
        return None
    action = step.message[cut + len(ACTION_MARK) :].strip()
    if not action:
        return None
    action = action[:1].upper() + action[1:]
    return action if action.endswith(".") else action + "."


def _frozen_action(step: NextStep, alpha_w: float | None, numbers: dict[str, KeyNumber]) -> str:
    """critic_frozen's action with its alpha_w, the critical alpha_w's interval and the
    run length it needs."""
    v = step.values
    crit = v.get("alpha_w_critical")
    known = numbers.get("critical_alpha_w")
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


def next_sentence(
    steps: list[NextStep],
    alpha_w: float | None,
    numbers: dict[str, KeyNumber] | None = None,
    label: str | None = None,
    status: str | None = None,
) -> str:
    """The card's Next, always an action (module docstring): the rule of the label's
    mechanism (LABEL_RULES), run_status first for a failed or stopped run, else the first
    rule with an action, else the label's DEFAULT_ACTION."""
    numbers = numbers or {}
    family = regime_family(label) if label else ""
    preferred = LABEL_RULES.get(label or "", LABEL_RULES.get(family, ()))
    if status not in (None, "complete", "diverged"):
        preferred = ("run_status", *preferred)
    by_rule = {s.rule: s for s in steps}
    ordered = [by_rule[r] for r in preferred if r in by_rule] + list(steps)
    for step in ordered:
        if step.rule == "critic_frozen" and step.values.get("alpha_w_next") is not None:
            return _frozen_action(step, alpha_w, numbers)
        action = action_of(step)
        if action is not None:
            return action
    return DEFAULT_ACTION.get(family, DEFAULT_ACTION_ANY if steps else DEFAULT_ACTION["learning"])


ADVISED_LABELS = ("frozen", "plateau")
"""Label families whose card's Next is the first probe's advice when it helps
(``verdict.advice``, :mod:`tdlens.report.advice`): the change they ask for is a step size or
a batch, whose effect the expected dynamics predict (docs/model.md §6.1)."""


def advised_action(
    advice: list[dict[str, Any]],
    counterfactuals: list[dict[str, Any]],
    cfg: RunConfig | None,
    label: str | None,
    status: str | None,
) -> str | None:
    """The card's Next from the first advice that helps and changes only alpha_w (and the
    trajectories): the setting and its predicted final value_gap ``[lo, hi]`` and regime
    against the unchanged run's; None for other labels, a run that did not complete, or
    advice that does not help (the rule's own action stands)."""
    if cfg is None or status != "complete" or regime_family(label or "") not in ADVISED_LABELS:
        return None
    first = next((a for a in advice if a.get("helps")), None)
    if first is None or not set(first["set"]) <= {"alpha_w", "trajectories"}:
        return None
    control = next((c for c in counterfactuals if c.get("name") == "control"), None)
    p, new = first["predicted"], first["set"]
    alpha = float(new.get("alpha_w", cfg.alpha_w))
    verb = "Raise" if alpha > cfg.alpha_w else "Lower"
    change = f"{verb} alpha_w from {fmt(cfg.alpha_w)} to {fmt(alpha)}"
    if "trajectories" in new:
        change += f" and trajectories from {cfg.trajectories} to {int(new['trajectories'])}"
    text = (
        f"{change}: the first probe predicts value_gap {fmt(p['value_gap_end'])} "
        f"[{fmt(p['value_gap_end_lo'])}, {fmt(p['value_gap_end_hi'])}] at the run's end "
        f"({p['regime']})"
    )
    if control is not None and control.get("predicted"):
        text += f", against {fmt(control['predicted']['value_gap_end'])} unchanged"
    return text + "."


def unhelpful_note(
    advice: list[dict[str, Any]],
    counterfactuals: list[dict[str, Any]],
    cfg: RunConfig | None,
    label: str | None,
    status: str | None,
) -> str:
    """What the card's Next adds when the first probe's advice does not help (where
    :func:`advised_action` would take it): `` No alpha_w or batch is predicted to lower
    value_gap beyond its band within N iterations (best alpha_w = a: v [lo, hi], against c
    unchanged).``, the
    advice's own finding (:func:`tdlens.report.advice.helps`) beside the rule's action,
    which does not predict its outcome. Empty otherwise."""
    if cfg is None or status != "complete" or regime_family(label or "") not in ADVISED_LABELS:
        return ""
    first = advice[0] if advice else None
    if first is None or any(a.get("helps") for a in advice) or "alpha_w" not in first["set"]:
        return ""
    p = first["predicted"]
    control = next((c for c in counterfactuals if c.get("name") == "control"), None)
    against = (
        f", against {fmt(control['predicted']['value_gap_end'])} unchanged"
        if control is not None and control.get("predicted")
        else ""
    )
    best = f"alpha_w = {fmt(float(first['set']['alpha_w']))}"
    if "trajectories" in first["set"]:
        best += f", trajectories = {int(first['set']['trajectories'])}"
    return (
        f" No alpha_w or batch is predicted to lower value_gap beyond its band within "
        f"{cfg.outer_iters} iterations (best {best}: {fmt(p['value_gap_end'])} "
        f"[{fmt(p['value_gap_end_lo'])}, {fmt(p['value_gap_end_hi'])}]{against})."
    )


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
    advice: list[dict[str, Any]] | None = None,
    counterfactuals: list[dict[str, Any]] | None = None,
) -> Verdict:
    """The card of a run (module docstring); Next is the first probe's advice where
    :func:`advised_action` gives one, else the rules' (:func:`next_sentence`) with the
    advice's finding that no setting helps (:func:`unhelpful_note`) where it has one."""
    cfg = data.cfg
    alpha_w = cfg.alpha_w if cfg is not None else None
    numbers = key_numbers(data, dynamics)
    status = data.status.get("status")
    advised = advised_action(advice or [], counterfactuals or [], cfg, regime.label, status)
    note = unhelpful_note(advice or [], counterfactuals or [], cfg, regime.label, status)
    return Verdict(
        regime=regime.label,
        regime_reason=regime.reason,
        health=health,
        reasons=health_reasons,
        why=why_sentence(regime, dynamics, data),
        next=advised
        or next_sentence(
            [s for s in steps if s.rule != "none"],
            alpha_w,
            {k.name: k for k in numbers},
            regime.label,
            status,
        )
        + note,
        key_numbers=numbers,
        status=data.status.get("status"),
        steps=steps_line(cfg) if cfg is not None and cfg.schedules != SchedulesConfig() else "",
    )
