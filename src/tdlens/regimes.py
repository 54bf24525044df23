"""The regime labels, each declared once (docs/model.md §11; issues #25 and #23).

:data:`REGIME_TABLE` holds every label :func:`tdlens.scores.label_regime` can give, with
what every consumer needs of it:

- ``rule``: the function of :mod:`tdlens.scores` that decides the label;
- ``intervention``: the change that label asks for, as config overrides
  (:class:`Override`; :func:`intervention_set` turns them into concrete values);
- ``predictor``: the hook that predicts the intervention's effect: a
  :class:`CounterfactualEntry` naming the entry of ``probes/counterfactuals_<iter>.npz``
  (:mod:`tdlens.probes.counterfactual`) that holds the label's predicted final value_gap
  (None for a label without an intervention);
- ``colour`` and ``marker``: how the atlas draws it (:mod:`tdlens.sweeps.atlas`);
- ``glossary``: its definition, the row of docs/metrics.md "Regime labels".

Consumers in higher layers that attach their own callables per label (the advice builders
of :mod:`tdlens.report.rules`) declare them with :func:`per_label`, which raises at import
when a label lacks one or names a label the table does not have. A label is a family
(``plateau``) or ``family:mechanism`` (``plateau:slow-modes``); every mechanism's family
is itself a label. The table is checked when this module is imported: an entry with an
empty field, a mechanism without its family, or two labels with one colour and marker
raise :class:`RegimeTableError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")

NOT_AVAILABLE = "n/a"
"""The label of a run too short to judge (fewer than ``tdlens.scores.MIN_ROWS`` rows) or
failed (:func:`tdlens.scores.label_regime`)."""


class RegimeTableError(ValueError):
    """The regime table, or a consumer's per-label mapping, is incomplete."""


@dataclass(frozen=True)
class Override:
    """One config change of an intervention: ``key`` (a ``--set`` path) becomes
    ``value`` (a number), or ``times`` x its current value, or the current value of
    ``copy_from``, or ``critical_fraction`` x the critical alpha_w
    (``critical_step / (s B T)``, from the stability probe), never above the current value
    (a cure that lowers a step never raises it). ``cap_critical`` bounds a ``times``
    change to that fraction of the critical alpha_w ("within the stable range"); a change
    never crosses the cap in the wrong direction (the result is at least the current value
    when ``times > 1``; at most ``times`` x it when ``times < 1``)."""

    key: str
    times: float | None = None
    value: float | None = None
    copy_from: str | None = None
    critical_fraction: float | None = None
    cap_critical: float | None = None

    def __post_init__(self) -> None:
        given = [self.times, self.value, self.copy_from, self.critical_fraction]
        if sum(x is not None for x in given) != 1:
            raise RegimeTableError(
                f"override of {self.key!r}: give exactly one of times, value, copy_from, "
                "critical_fraction"
            )


Predictor = Callable[..., Any]
"""Predicts an intervention's effect: called with a run's counterfactual entries (each a
mapping with a ``"name"``), returns the one the label's intervention is (or None)."""


@dataclass(frozen=True)
class CounterfactualEntry:
    """The predictor of a label: the counterfactual entry named ``name``.

    The probe (:func:`tdlens.probes.counterfactual.counterfactuals`) writes one entry per
    distinct predictor name of the table, its ``set`` from :func:`intervention_set`;
    ``tdlens explain`` names each twin by it and reads the entry's ``predicted``; the
    label rule (:func:`tdlens.scores.label_regime`) reads its ``value_gap_end_hi``."""

    name: str

    def __call__(self, entries: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The first of `entries` whose ``"name"`` is this one, else None."""
        return next((e for e in entries if e.get("name") == self.name), None)


@dataclass(frozen=True)
class RegimeEntry:
    """One label and everything its consumers need (module docstring)."""

    label: str
    rule: str
    """The function of tdlens.scores whose verdict this label is."""
    intervention: tuple[Override, ...]
    """Config overrides the label asks for; () when none (learning, n/a)."""
    colour: str
    marker: str
    """A matplotlib marker."""
    glossary: str
    """The definition cell of the label's row in docs/metrics.md."""
    predictor: Predictor | None = None

    @property
    def family(self) -> str:
        return self.label.split(":", 1)[0]

    @property
    def mechanism(self) -> str:
        """The part after the colon ("" for a family)."""
        return self.label.split(":", 1)[1] if ":" in self.label else ""


_ALPHA_X4 = (Override("alpha_w", times=4.0, cap_critical=0.5),)
_X4 = CounterfactualEntry("alpha_w_x4")
_HALF_CRITICAL = CounterfactualEntry("alpha_w_half_critical")
_ALPHA_DIV4 = (Override("alpha_w", times=0.25, cap_critical=0.5),)
"""The bare ``diverged`` family's cure: it names no mechanism, and a smaller step slows any
growth per iteration, so ``alpha_w' = min(alpha_w / 4, 0.5 alpha_c)``: a quarter of the
step, and at most half the critical step (a run already below half its critical step,
where ``critical_fraction`` would leave the step unchanged, still gets a smaller one)."""
REGIME_TABLE: dict[str, RegimeEntry] = {
    e.label: e
    for e in (
        RegimeEntry(
            "diverged",
            "error_grows",
            _ALPHA_DIV4,
            "#cf222e",
            "o",
            "status `diverged`, a non-finite `td_loss`/`w_norm`, or the error grows: "
            "`value_gap_ratio` or `w_gap_ratio` (last / first probe round) `>= "
            "ERROR_GROWTH_FACTOR`, or `w_norm_over_scale` = `w_norm_last / max(w_norm_first, "
            "w_sharp_norm) > ERROR_GROWTH_FACTOR`, and a second-half growth rate `growth_rate` "
            "(slope of log w_norm, or of log value_gap / log w_gap when they grew, the one "
            "with the largest t) `> GROWTH_SE_FACTOR growth_rate_se` (Newey-West standard "
            "error); or `w_norm_ratio > W_GROWTH_FACTOR` at such a rate while the expected "
            "update is unstable (`eta > critical_step`, `growth_timescale < outer_iters`, or "
            "eig_min_real's whole 95% interval below zero); "
            "never plateau or learning; its intervention `alpha_w_div4`: `alpha_w' = "
            "min(alpha_w / 4, alpha_c / 2)` (a quarter of the step, at most half the critical "
            "alpha_w)",
            predictor=CounterfactualEntry("alpha_w_div4"),
        ),
        RegimeEntry(
            "diverged:off-policy",
            "divergence_kind",
            (Override("sigma_mu", copy_from="sigma_pi"),),
            "#8250df",
            "P",
            "diverged, and `growth_rate` within `GROWTH_SE_FACTOR` standard errors of `-eta l` "
            "for l in `[eig_min_real_lo, min(eig_min_real_hi, 0)]` (a negative mode: \\(\\lvert 1"
            " - \\eta\\lambda\\rvert > 1\\) at every step size), or, without `eta > "
            "critical_step`, eig_min_real's whole interval below zero; see [the triad](triad.md)",
            predictor=CounterfactualEntry("sigma_mu_to_sigma_pi"),
        ),
        RegimeEntry(
            "diverged:step-size",
            "divergence_kind",
            (Override("alpha_w", critical_fraction=0.5),),
            "#cf222e",
            "X",
            "diverged, `eta > critical_step` (the positive modes overshoot) and the growth rate "
            "not that of a negative mode: a smaller `alpha_w` cures it; its intervention "
            "`alpha_w_half_critical`: `alpha_w' = min(alpha_w, alpha_c / 2)`",
            predictor=_HALF_CRITICAL,
        ),
        RegimeEntry(
            "frozen",
            "frozen_reasons",
            _ALPHA_X4,
            "#1f6feb",
            "o",
            "median over iterations of `delta_w_norm / w_norm < FROZEN_REL_STEP`, or the "
            "latest `fastest_timescale > outer_iters`",
            predictor=_X4,
        ),
        RegimeEntry(
            "learning",
            "_from_value_gap",
            (),
            "#1a7f37",
            "o",
            "`value_gap` still falls: its fall over the second half of the probe rounds "
            "exceeds the fall noise, and the run's own relaxation time `tau_obs <= "
            "outer_iters` (or it falls into the floor, `value_gap_last <= FLOOR_FACTOR F_s`)",
        ),
        RegimeEntry(
            "plateau:noise-floor",
            "_from_value_gap",
            (Override("alpha_w", times=0.25), Override("trajectories", times=4.0)),
            "#8a8f2a",
            "v",
            "no longer falling and `value_gap_last <= FLOOR_FACTOR F_s`; with a counterfactuals "
            "file also `gain_noise_floor > PREDICTED_GAIN_MIN`",
            predictor=CounterfactualEntry("alpha_w_div4_trajectories_x4"),
        ),
        RegimeEntry(
            "plateau:moving-target",
            "_from_value_gap",
            (Override("alpha_pi", value=0.0), Override("beta", value=0.0)),
            "#f0883e",
            ">",
            "above the floor, and the median over the second half of the rounds of `d_k / "
            "r_k >= MOVING_TARGET_RATIO`: fixed-point drift per iteration in value terms "
            "`d_k = w_sharp_drift_k (value_gap_k / w_gap_k) / (iter_k - iter_{k-1})` against "
            "relaxation per iteration `r_k = value_gap_k / T`; with a counterfactuals file also "
            "`drift_over_noise > DRIFT_NOISE_FACTOR` (the drift `w_sharp_drift` beyond its own "
            "noise `w_sharp_drift_noise`, else `noise_floor` in older runs) and "
            "`gain_moving_target > PREDICTED_GAIN_MIN`",
            predictor=CounterfactualEntry("policies_frozen"),
        ),
        RegimeEntry(
            "plateau:slow-modes",
            "_from_value_gap",
            _ALPHA_X4,
            "#d4a017",
            "s",
            "the rest: above the floor, the target not outrunning the critic, and `tau_obs > "
            "outer_iters` (inf when value_gap no longer falls); with a counterfactuals file also "
            "`gain_slow_modes > PREDICTED_GAIN_MIN`",
            predictor=_X4,
        ),
        RegimeEntry(
            "plateau",
            "_from_td_loss",
            _ALPHA_X4,
            "#d4a017",
            "o",
            "no mechanism: fewer than two probe rounds and td_loss not falling, or not learning "
            "and no mechanism's intervention predicted to lower the final value_gap beyond its "
            "band (the counterfactuals `cf_<name>_end`, `cf_<name>_hi` in the evidence)",
            predictor=_X4,
        ),
        RegimeEntry(
            NOT_AVAILABLE,
            "label_regime",
            (),
            "#999999",
            "o",
            "too short to judge: fewer than `MIN_ROWS` learning-curve rows, or fewer than "
            "`NOISE_MIN_ROWS` without a value_gap series (td_loss's noise cannot be estimated), "
            "or a `failed` run (its card headlines failed); and not diverged",
        ),
    )
}
"""Every regime label, in the order docs/metrics.md lists them."""


def _check_table(table: Mapping[str, RegimeEntry]) -> None:
    """Raise RegimeTableError on an incomplete table (module docstring)."""
    looks: dict[tuple[str, str], str] = {}
    for label, e in table.items():
        if label != e.label:
            raise RegimeTableError(f"regime table: key {label!r} holds the entry of {e.label!r}")
        for f in fields(e):
            if f.name not in ("intervention", "predictor") and not getattr(e, f.name):
                raise RegimeTableError(f"regime table: {label!r} has no {f.name}")
        if bool(e.intervention) != (e.predictor is not None):
            raise RegimeTableError(
                f"regime table: {label!r} needs a predictor exactly when it has an intervention"
            )
        if e.mechanism and e.family not in table:
            raise RegimeTableError(f"regime table: {label!r} without its family {e.family!r}")
        other = looks.setdefault((e.colour, e.marker), label)
        if other != label:
            raise RegimeTableError(
                f"regime table: {label!r} and {other!r} share colour {e.colour} and marker "
                f"{e.marker}"
            )


_check_table(REGIME_TABLE)

LABELS: tuple[str, ...] = tuple(REGIME_TABLE)
INTERVENTION_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(
        k for e in REGIME_TABLE.values() for o in e.intervention for k in (o.key, o.copy_from) if k
    )
)
"""Every config key an intervention reads (the ``current`` of :func:`intervention_set`)."""
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(e.family for e in REGIME_TABLE.values()))
"""Regime families in table order (n/a included)."""


def mechanisms(family: str) -> tuple[str, ...]:
    """The mechanisms of a family in table order: ``mechanisms("diverged") ==
    ("off-policy", "step-size")``."""
    return tuple(e.mechanism for e in REGIME_TABLE.values() if e.family == family and e.mechanism)


def entry(label: str) -> RegimeEntry:
    """The table entry of a label; RegimeTableError naming it when there is none."""
    try:
        return REGIME_TABLE[label]
    except KeyError:
        raise RegimeTableError(
            f"unknown regime label {label!r} (tdlens.regimes.REGIME_TABLE has {list(LABELS)})"
        ) from None


def per_label(mapping: Mapping[str, T], consumer: str) -> dict[str, T]:
    """``mapping`` when its keys are exactly the table's labels, else RegimeTableError
    naming ``consumer`` and the labels missing or unknown (call it at module level, so an
    incomplete consumer fails at import)."""
    missing = [lab for lab in LABELS if lab not in mapping]
    unknown = [lab for lab in mapping if lab not in REGIME_TABLE]
    if missing or unknown:
        raise RegimeTableError(
            f"{consumer}: regime labels without an entry {missing}, unknown labels {unknown}"
        )
    return {lab: mapping[lab] for lab in LABELS}


def intervention_set(
    label: str, current: Mapping[str, float], critical_alpha_w: float | None = None
) -> dict[str, float]:
    """The label's intervention as concrete ``{key: value}`` overrides.

    ``current`` maps each key an override reads (its own key, ``copy_from``) to the run's
    value. ``times``: ``v' = times v``, then with ``cap_critical`` and a finite
    ``critical_alpha_w`` ``v' = max(v, min(v', cap_critical alpha_c))`` when ``times > 1``
    (never past the cap, never below the current value), ``v' = min(v', cap_critical
    alpha_c)`` when ``times < 1`` (never past the cap), rounded for an integer key;
    ``critical_fraction``: ``v' = min(v, critical_fraction alpha_c)`` (a step lowered to a
    fraction of the critical one is never raised; left out without a finite alpha_c)."""
    out: dict[str, float] = {}
    crit = critical_alpha_w
    if crit is not None and not math.isfinite(crit):
        crit = None
    for o in entry(label).intervention:
        if o.value is not None:
            out[o.key] = o.value
        elif o.copy_from is not None:
            out[o.key] = float(current[o.copy_from])
        elif o.critical_fraction is not None:
            if crit is not None:
                out[o.key] = min(float(current[o.key]), o.critical_fraction * crit)
        else:
            assert o.times is not None
            v = float(current[o.key])
            new = o.times * v
            if o.cap_critical is not None and crit is not None and o.times > 1:
                new = max(v, min(new, o.cap_critical * crit))
            elif o.cap_critical is not None and crit is not None:
                new = min(new, o.cap_critical * crit)
            out[o.key] = round(new) if isinstance(current[o.key], int) else new
    return out


def predicted_interventions() -> dict[str, str]:
    """Each distinct predictor name of the table with the first label that uses it, in
    table order: the interventions the counterfactual probe predicts."""
    out: dict[str, str] = {}
    for label, e in REGIME_TABLE.items():
        name = getattr(e.predictor, "name", None)
        if e.intervention and isinstance(name, str):
            out.setdefault(name, label)
    return out


def predictor_name(label: str) -> str | None:
    """The counterfactual entry name of a label's predictor (None without one)."""
    name = getattr(entry(label).predictor, "name", None)
    return name if isinstance(name, str) else None
