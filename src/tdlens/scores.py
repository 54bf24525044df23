"""Run scores: the one definition of diverged, frozen, learning and plateau (SPEC 8, 11).

The report's health checks (critic_frozen) and the sweep's regime labels (and so the
catalog's ``regime``) both call this module, so a run can never pass a check here and get
the opposite label there. Read a run with :func:`series_of` (from the run directory's read
model) and label it with :func:`label_regime`; :func:`frozen_reasons` is the frozen test
alone.

Each label is judged against the run's own scales, in this order (the first that holds):

1. **diverged**: status ``diverged``, or a non-finite value in a dense learning-curve
   column (``td_loss``, ``w_norm``), or ``||w||`` grows
   (``w_norm_last / w_norm_first > W_GROWTH_FACTOR``) while the latest stability round
   shows a mode that grows within the run: ``growth_timescale < outer_iters`` (a real
   part below zero), or ``eta > critical_step`` (the step overshoots: ``|1 - eta l| > 1``).
   The label names the mechanism from the latest stability round (:func:`divergence_kind`):
   ``diverged:off-policy`` when an eigenvalue of A has ``Re l < -spectral_noise`` (finite
   ``growth_timescale``: TD diverges at EVERY step size) and either it grows within the run
   or the step does not overshoot; ``diverged:step-size`` when the step overshoots
   (``eta > critical_step``) and no eigenvalue is below zero beyond the noise, or the
   negative one is too slow to matter within the run; plain ``diverged`` without a
   stability round. :func:`base_label` strips the mechanism.
2. **frozen**: the critic does not move on the run's timescale: the median over iterations
   of the relative step ``delta_w_norm / w_norm`` is below ``FROZEN_REL_STEP``, or the
   latest ``fastest_timescale`` (iterations the fastest mode of ``w += eta (b - A w)``
   needs) exceeds ``outer_iters``.
3. **learning**: the probe's ``value_gap`` (RMS of ``Q_w - Q_w#``) falls by more than
   ``LEARNING_FACTOR`` noise floors F over the run, and is still falling (its fall over the
   second half of the probe rounds exceeds F) or has reached the floor
   (``value_gap_last <= F``).
4. **plateau**: otherwise: ``value_gap`` stopped falling above its floor.

The noise floor F is the median over probe rounds of the value-space floor: the column
``value_noise_floor`` when the fixed-point table has it, else the parameter-space
``noise_floor = ||w#_1 - w#_2||`` scaled to value space by the run's own ratio
``value_gap / w_gap``. With fewer than two probe rounds, learning vs plateau is judged on
``td_loss`` instead: learning when the mean of its last quarter is below the mean of its
first quarter by more than ``LEARNING_FACTOR`` standard errors (the per-iteration noise is
estimated from successive differences, ``sigma = std(diff td_loss) / sqrt(2)``, so a trend
does not inflate it). A run with fewer than ``MIN_ROWS`` rows that did not diverge is
``n/a``.

Sparse probe values live only in the probe tables and the sparse learning-curve columns,
whose empty cells mean "no probe this iteration": they are never read as non-finite (the
seed system labelled every probed run "instability" from its NaN placeholders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tdlens.rundir.read import Cell, RunData

REGIMES: tuple[str, ...] = ("diverged", "frozen", "learning", "plateau")
"""Base labels; a label may carry a mechanism after a colon (``diverged:off-policy``)."""
DIVERGENCE_KINDS: tuple[str, ...] = ("off-policy", "step-size")
"""Mechanisms of ``diverged`` (module docstring, rule 1)."""
NOT_AVAILABLE = "n/a"
FROZEN_REL_STEP = 1e-6
"""frozen: median relative change of w per iteration (delta_w_norm / w_norm) below this."""
LEARNING_FACTOR = 3.0
"""learning: value_gap (or td_loss) falls by more than this many noise floors (std errors)."""
W_GROWTH_FACTOR = 1.5
"""diverged by a growing mode: ||w|| grew by more than this factor over the run."""
MIN_ROWS = 2
"""Fewer learning-curve rows than this (and no divergence): label n/a."""
DENSE_COLUMNS: tuple[str, ...] = ("td_loss", "w_norm")
"""Learning-curve columns present on every row: a non-finite value there is divergence."""


@dataclass(frozen=True)
class RunSeries:
    """The columns a label needs, cells as read from the CSVs (None = empty cell).

    ``curves`` maps learning-curve columns to their cells (one per iteration); ``fixed_point``
    and ``stability`` map probe-table columns to their cells (one per probe round).
    """

    status: str | None
    outer_iters: int
    curves: dict[str, Sequence[Cell]]
    fixed_point: dict[str, Sequence[Cell]] = field(default_factory=dict)
    stability: dict[str, Sequence[Cell]] = field(default_factory=dict)


def series_of(data: RunData) -> RunSeries:
    """The RunSeries of a run directory read by :func:`tdlens.rundir.read.load_run`."""
    outer = int(data.config_data.get("outer_iters") or data.status.get("outer_iters") or 0)

    def cells(rows: Sequence[dict[str, Cell]]) -> dict[str, list[Cell]]:
        return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}

    return RunSeries(
        data.status.get("status"),
        outer,
        cells(data.curves.rows),
        cells(data.probe("fixed_point_probe").rows),
        cells(data.probe("stability_probe").rows),
    )


@dataclass(frozen=True)
class Regime:
    """A label, the observed values that decided it, and those values by name."""

    label: str
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


def base_label(label: str) -> str:
    """The regime without its mechanism: ``diverged:off-policy`` -> ``diverged``."""
    return label.split(":", 1)[0]


def floats(cells: Sequence[Cell] | None) -> np.ndarray:
    """Cells as float64 with empty or text cells DROPPED (missing is not non-finite)."""
    if not cells:
        return np.zeros(0)
    return np.array([float(c) for c in cells if isinstance(c, float | int)], dtype=float)


def finite(cells: Sequence[Cell] | None) -> np.ndarray:
    values = floats(cells)
    return values[np.isfinite(values)]


def non_finite_cells(cells: Sequence[Cell] | None) -> int:
    """Count of cells holding a number that is NaN or infinite (empty cells do not count)."""
    values = floats(cells)
    return int(np.sum(~np.isfinite(values)))


def latest(cells: Sequence[Cell] | None) -> float:
    """The last non-NaN number of a column (inf counts: an infinite timescale), else NaN."""
    values = floats(cells)
    values = values[~np.isnan(values)]
    return float(values[-1]) if values.size else math.nan


def relative_step(delta_w_norm: np.ndarray, w_norm: np.ndarray) -> np.ndarray:
    """``delta_w_norm / w_norm`` per iteration (0 where both are 0, inf where only w is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = delta_w_norm / w_norm
    return np.where((delta_w_norm == 0) & (w_norm == 0), 0.0, rel)


def value_noise_floor(fixed_point: dict[str, Sequence[Cell]]) -> float:
    """Median over rounds of the value-space noise floor F (module docstring)."""
    direct = finite(fixed_point.get("value_noise_floor"))
    if direct.size:
        return float(np.median(direct))
    rows = list(
        zip(
            fixed_point.get("noise_floor", ()),
            fixed_point.get("value_gap", ()),
            fixed_point.get("w_gap", ()),
            strict=False,
        )
    )
    scaled = [
        float(nf) * float(vg) / float(wg)
        for nf, vg, wg in rows
        if all(isinstance(x, float | int) and math.isfinite(x) for x in (nf, vg, wg))
        and float(wg) > 0
    ]
    return float(np.median(scaled)) if scaled else math.nan


def stability_evidence(s: RunSeries) -> dict[str, float]:
    """The latest stability round's eig_min_real, spectral_noise, growth_timescale, eta and
    critical_step (NaN when absent)."""
    keys = ("eig_min_real", "spectral_noise", "growth_timescale", "eta", "critical_step")
    return {key: latest(s.stability.get(key)) for key in keys}


def divergence_kind(evidence: dict[str, float], outer_iters: int) -> str | None:
    """``off-policy``, ``step-size`` or None (no stability evidence of a growing mode).

    negative: a finite growth_timescale (the probe sets it only when
    ``eig_min_real < -spectral_noise``); fast: ``growth_timescale < outer_iters``;
    overshoot: ``eta > critical_step``. off-policy = fast or (negative and not overshoot);
    step-size = overshoot otherwise.
    """
    e = evidence
    negative = math.isfinite(e["growth_timescale"])
    fast = negative and e["growth_timescale"] < outer_iters
    overshoot = e["eta"] > e["critical_step"]
    if fast or (negative and not overshoot):
        return "off-policy"
    return "step-size" if overshoot else None


def _divergence_reason(kind: str | None, e: dict[str, float]) -> str:
    if kind == "off-policy":
        return (
            f"eig_min_real {e['eig_min_real']:.4g} < -spectral_noise = {-e['spectral_noise']:.4g}:"
            f" diverges at any step (growth_timescale {e['growth_timescale']:.4g})"
        )
    if kind == "step-size":
        return (
            f"step eta {e['eta']:.4g} > critical_step {e['critical_step']:.4g} (overshoot; "
            f"eig_min_real {e['eig_min_real']:.4g}, spectral_noise {e['spectral_noise']:.4g})"
        )
    return "no stability round to name the mechanism"


def _diverged(s: RunSeries) -> Regime | None:
    evidence = stability_evidence(s)
    kind = divergence_kind(evidence, s.outer_iters)
    label = "diverged" if kind is None else f"diverged:{kind}"
    mechanism = _divergence_reason(kind, evidence)
    if s.status == "diverged":
        return Regime(
            label, f"status diverged (non-finite parameters or metrics); {mechanism}", evidence
        )
    for col in DENSE_COLUMNS:
        bad = non_finite_cells(s.curves.get(col))
        if bad:
            return Regime(label, f"{bad} non-finite {col} value(s); {mechanism}", evidence)
    w = finite(s.curves.get("w_norm"))
    ratio = w[-1] / w[0] if w.size >= 2 and w[0] > 0 else math.nan
    if not ratio > W_GROWTH_FACTOR or kind is None:
        return None
    fast = evidence["growth_timescale"] < s.outer_iters
    if kind == "step-size" or fast:
        grew = f"w_norm grew x{ratio:.4g} (> {W_GROWTH_FACTOR})"
        within = f"; growth_timescale < {s.outer_iters} iterations" if fast else ""
        return Regime(label, f"{mechanism}{within}; {grew}", {**evidence, "w_norm_ratio": ratio})
    return None


def relative_steps(s: RunSeries) -> np.ndarray:
    """``delta_w_norm / w_norm`` per iteration, NaN rows dropped (0/0 counts as 0)."""
    rel = relative_step(floats(s.curves.get("delta_w_norm")), floats(s.curves.get("w_norm")))
    return rel[~np.isnan(rel)]


def frozen_reasons(s: RunSeries) -> list[str]:
    """Why the critic is frozen on the run's timescale ([] when it is not): the median
    relative step ``delta_w_norm / w_norm`` below ``FROZEN_REL_STEP``, or the latest
    ``fastest_timescale`` beyond ``outer_iters``."""
    reasons = []
    rel = relative_steps(s)
    if rel.size and float(np.median(rel)) < FROZEN_REL_STEP:
        reasons.append(
            f"median delta_w_norm/w_norm {np.median(rel):.3g} < {FROZEN_REL_STEP:g} per iteration"
        )
    fastest = latest(s.stability.get("fastest_timescale"))
    if not math.isnan(fastest) and fastest > s.outer_iters:
        reasons.append(f"fastest_timescale {fastest:.4g} > the run's {s.outer_iters} iterations")
    return reasons


def _frozen(s: RunSeries) -> Regime | None:
    reasons = frozen_reasons(s)
    return Regime("frozen", reasons[0]) if reasons else None


def _from_value_gap(gap: np.ndarray, floor: float) -> Regime:
    mid = (gap.size - 1) // 2
    total, recent = gap[0] - gap[-1], gap[mid] - gap[-1]
    numbers = (
        f"value_gap {gap[0]:.4g} -> {gap[-1]:.4g} (fall {total:.4g}, second half {recent:.4g}), "
        f"noise floor {floor:.4g}"
    )
    if total > LEARNING_FACTOR * floor and (recent > floor or gap[-1] <= floor):
        return Regime("learning", numbers)
    return Regime("plateau", numbers)


def _from_td_loss(td: np.ndarray) -> Regime:
    k = max(1, td.size // 4)
    fall = float(np.mean(td[:k]) - np.mean(td[-k:]))
    sigma = float(np.std(np.diff(td), ddof=1) / math.sqrt(2)) if td.size > 2 else 0.0
    se = sigma * math.sqrt(2.0 / k)
    numbers = f"td_loss fell {fall:.4g} (first vs last {k} iterations), std error {se:.4g}"
    if fall > LEARNING_FACTOR * se and fall > 0:
        return Regime("learning", numbers + " [no value_gap series]")
    return Regime("plateau", numbers + " [no value_gap series]")


def label_regime(s: RunSeries) -> Regime:
    """The regime of one run (rules and thresholds in the module docstring)."""
    verdict = _diverged(s)
    if verdict is not None:
        return verdict
    td = finite(s.curves.get("td_loss"))
    if td.size < MIN_ROWS:
        return Regime(NOT_AVAILABLE, f"{td.size} learning-curve row(s)")
    verdict = _frozen(s)
    if verdict is not None:
        return verdict
    gap = finite(s.fixed_point.get("value_gap"))
    floor = value_noise_floor(s.fixed_point)
    if gap.size >= 2 and math.isfinite(floor):
        return _from_value_gap(gap, floor)
    return _from_td_loss(td)


def thresholds() -> dict[str, float]:
    """The named thresholds, for summaries."""
    return {
        "FROZEN_REL_STEP": FROZEN_REL_STEP,
        "LEARNING_FACTOR": LEARNING_FACTOR,
        "W_GROWTH_FACTOR": W_GROWTH_FACTOR,
        "MIN_ROWS": MIN_ROWS,
    }


REGIME_DOC = (
    "diverged: status diverged, a non-finite td_loss/w_norm, or w_norm growing "
    f"x{W_GROWTH_FACTOR}+ with growth_timescale < outer_iters or eta > critical_step; "
    "diverged:off-policy when eig_min_real < -spectral_noise (diverges at any step), "
    "diverged:step-size when eta > critical_step with no such eigenvalue. "
    f"frozen: median delta_w_norm/w_norm < {FROZEN_REL_STEP:g} per iteration, or "
    "fastest_timescale > outer_iters. "
    f"learning: value_gap falls by > {LEARNING_FACTOR:g} noise floors F and still falls by > F "
    "over the second half of the probe rounds (or reached F). "
    "plateau: value_gap stopped falling above F. F = median value_noise_floor, or noise_floor "
    "x value_gap / w_gap. Without two probe rounds: td_loss first vs last quarter, "
    f"> {LEARNING_FACTOR:g} standard errors = learning. Empty probe cells are never non-finite."
)
"""One-paragraph description of the labels for summary files."""
