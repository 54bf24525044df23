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
   stability round. :func:`regime_family` strips the mechanism.
2. **frozen**: the critic does not move on the run's timescale: the median over iterations
   of the relative step ``delta_w_norm / w_norm`` is below ``FROZEN_REL_STEP``, or the
   latest ``fastest_timescale`` (iterations the fastest mode of ``w += eta (b - A w)``
   needs) exceeds ``outer_iters``.
3. **learning**: the probe's ``value_gap`` (RMS of ``Q_w - Q_w#``) is still falling on the
   run's own timescale: its fall over the second half of the probe rounds is beyond the
   round-to-round noise, and the relaxation time the run itself shows,
   ``tau_obs = dt / ln((g_mid - F_s) / (g_last - F_s))`` over that half, is at most
   ``outer_iters`` (or value_gap is falling into its floor).
4. **plateau:<mechanism>**: otherwise, named by the evidence of :func:`plateau_evidence`
   (every number in ``Regime.evidence``):

   - ``plateau:noise-floor``: ``value_gap_last <= FLOOR_FACTOR F_s``, the stochastic floor
     (and no longer falling): only a smaller step or averaging goes lower.
   - ``plateau:moving-target``: the fixed point moves faster than the critic relaxes. Per
     probe round k, the drift per iteration in value terms
     ``d_k = w_sharp_drift_k (value_gap_k / w_gap_k) / (iter_k - iter_{k-1})`` against the
     relaxation per iteration ``r_k = value_gap_k / T_k`` with ``T_k = 1/(eta l_eff)`` the
     critic's relaxation time; moving-target when the median over the second half of
     ``d_k / r_k`` is at least ``MOVING_TARGET_RATIO`` (a first-order tracker lags its
     target by ``d T``, so the whole gap is then tracking lag).
   - ``plateau:slow-modes``: the rest: value_gap is above its floor, the target is not
     outrunning the critic, and what remains relaxes slower than the run, ``tau_obs >
     outer_iters`` (inf when it no longer falls); the slowest mode's timescale
     ``1/(eta eig_min_real)`` is reported beside it. A run that still falls but at
     ``tau_obs`` beyond the run is a slow-modes plateau, never "learning": with its budget
     the error stays.

The measurement noise F of value_gap is the median over probe rounds of the value-space
floor: the column ``value_noise_floor`` when the fixed-point table has it, else the
parameter-space ``noise_floor = ||w#_1 - w#_2||`` scaled to value space by the run's own
ratio ``value_gap / w_gap``. The stochastic floor F_s is what a probe measures for a
critic at the predicted stationary floor, :func:`measured_floor` of the median
``value_gap_floor`` (from the per-step update covariance) and F, when the table has it,
else F. The critic's relaxation time T is ``effective_timescale`` (the
predicted relaxation time of value_gap) when a probe table has it, else the relaxation the
run itself shows (``tau_obs``, when value_gap still falls), else the stability probe's
``slowest_timescale`` (else ``fastest_timescale``): the slowest mode above the spectral
noise, which understates T when the gap sits in modes below it. A fall counts when it
exceeds the round-to-round noise: F with fewer than ``MIN_JITTER_ROUNDS`` rounds, else
``min(F, sqrt(2) s_j)`` with the jitter
``s_j = std(second differences of value_gap) / sqrt(6)`` (common random numbers make
successive rounds' errors nearly equal, so F, the error of one round, overstates the
error of a difference). With fewer than two probe rounds, learning vs plateau is judged on
``td_loss`` instead: learning when the mean of its last quarter is below the mean of its
first quarter by more than ``LEARNING_FACTOR`` standard errors (the per-iteration noise is
estimated from successive differences, ``sigma = std(diff td_loss) / sqrt(2)``, so a trend
does not inflate it), else ``plateau`` with no mechanism. A run with fewer than
``MIN_ROWS`` rows that did not diverge is ``n/a``.

Sparse probe values live only in the probe tables and the sparse learning-curve columns,
whose empty cells mean "no probe this iteration": they are never read as non-finite (the
seed system labelled every probed run "instability" from its NaN placeholders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from tdlens.rundir.read import Cell, RunData

REGIMES: tuple[str, ...] = ("diverged", "frozen", "learning", "plateau")
"""Regime families; a label is a family or ``family:mechanism`` (:func:`regime_family`)."""
PLATEAU_MECHANISMS: tuple[str, ...] = ("slow-modes", "moving-target", "noise-floor")
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
FLOOR_FACTOR = 1.5
"""plateau:noise-floor: value_gap_last at most this many stochastic floors F_s."""
MOVING_TARGET_RATIO = 1.0
"""plateau:moving-target: median drift / relaxation per iteration at least this."""
MIN_JITTER_ROUNDS = 5
"""Probe rounds needed to estimate value_gap's round-to-round jitter."""
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
    """The numbers that decided the label (plateau and learning: :func:`plateau_evidence`)."""


def regime_family(label: str) -> str:
    """``"plateau:slow-modes" -> "plateau"``: the family of a label."""
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


def _column(s: RunSeries, name: str) -> Sequence[Cell] | None:
    """A probe column from the fixed-point table, else the stability table."""
    return s.fixed_point.get(name) or s.stability.get(name)


def relaxation_timescales(s: RunSeries, rounds: int, tau_obs: float = math.inf) -> np.ndarray:
    """The critic's relaxation time T_k per probe round (module docstring), ``[rounds]``:
    per round when the column has one value per round, else its latest value;
    ``effective_timescale`` first, then a finite ``tau_obs``, then the spectrum's."""
    cells = _column(s, "effective_timescale")
    if not floats(cells).size and math.isfinite(tau_obs):
        return np.full(rounds, tau_obs)
    for name in ("effective_timescale", "slowest_timescale", "fastest_timescale"):
        cells = _column(s, name)
        values = floats(cells)
        if values.size == rounds and np.all(np.isfinite(values)):
            return values
        last = latest(cells)
        if math.isfinite(last):
            return np.full(rounds, last)
    return np.full(rounds, math.nan)


def drift_per_iteration(s: RunSeries, iters: np.ndarray) -> np.ndarray:
    """``d_k = w_sharp_drift_k (value_gap_k / w_gap_k) / (iter_k - iter_{k-1})`` per probe
    round ``[rounds]`` (NaN at the first round and where a cell is missing)."""
    fp = s.fixed_point
    cols = [fp.get(c) or () for c in ("w_sharp_drift", "value_gap", "w_gap")]
    rows = list(zip(*cols, strict=False))
    out = np.full(len(iters), math.nan)
    for k in range(1, min(len(rows), len(iters))):
        drift, gap, w_gap = (float(c) if isinstance(c, float | int) else math.nan for c in rows[k])
        dt = iters[k] - iters[k - 1]
        if w_gap > 0 and dt > 0:
            out[k] = drift * (gap / w_gap) / dt
    return out


def _probe_iters(s: RunSeries, rounds: int) -> np.ndarray:
    iters = floats(s.fixed_point.get("iter"))
    if iters.size == rounds:
        return iters
    return np.linspace(0, s.outer_iters - 1, rounds) if rounds > 1 else np.zeros(rounds)


def fall_noise(gap: np.ndarray, floor: float) -> float:
    """Round-to-round noise of a fall of value_gap (module docstring)."""
    if gap.size < MIN_JITTER_ROUNDS:
        return floor
    jitter = float(np.std(np.diff(gap, 2), ddof=1) / math.sqrt(6.0))
    return min(floor, math.sqrt(2.0) * jitter)


def measured_floor(stochastic_floor: ArrayLike, noise_floor: ArrayLike) -> np.ndarray:
    """The lowest value_gap a probe can measure: ``sqrt(F_s^2 + (F / 2)^2)``.

    The measured value_gap is the RMS of ``Q_w - Q_w#`` with the probe's estimate w#,
    whose own error in value terms is ``F / 2`` (F, the value-space noise floor, is the
    distance between the two half-batch solutions: each half has sqrt(2) times the full
    batch's error, their difference 2 times). A critic sitting at the stochastic floor
    F_s therefore reads ``sqrt(F_s^2 + (F/2)^2)``."""
    return np.hypot(stochastic_floor, np.asarray(noise_floor) / 2.0)


def plateau_evidence(s: RunSeries, gap: np.ndarray, floor: float) -> dict[str, float]:
    """The numbers behind learning and the plateau mechanisms (module docstring)."""
    stochastic = finite(_column(s, "value_gap_floor"))
    f_s = float(measured_floor(np.median(stochastic), floor)) if stochastic.size else floor
    iters = _probe_iters(s, gap.size)
    mid = (gap.size - 1) // 2
    recent = float(gap[mid] - gap[-1])
    noise = fall_noise(gap, floor)
    falling = recent > noise
    excess_mid, excess_last = gap[mid] - f_s, gap[-1] - f_s
    if not (excess_mid > 0 and excess_last > 0):
        excess_mid, excess_last = gap[mid], gap[-1]
    dt = float(iters[-1] - iters[mid])
    tau_obs = math.inf
    if falling and excess_last > 0 and excess_mid > excess_last and dt > 0:
        tau_obs = dt / math.log(excess_mid / excess_last)
    T = relaxation_timescales(s, gap.size, tau_obs)
    drift, relax = drift_per_iteration(s, iters)[mid:], (gap / T)[mid:]
    ratio = drift / relax
    ok = np.isfinite(ratio)
    eta, eig_min = latest(s.stability.get("eta")), latest(s.stability.get("eig_min_real"))
    return {
        "value_gap_first": float(gap[0]),
        "value_gap_last": float(gap[-1]),
        "fall_second_half": recent,
        "fall_noise": noise,
        "noise_floor": floor,
        "stochastic_floor": f_s,
        "gap_over_floor": float(gap[-1] / f_s) if f_s > 0 else math.inf,
        "tau_obs": tau_obs,
        "outer_iters": float(s.outer_iters),
        "relaxation_timescale": float(T[-1]),
        "drift_per_iter": float(np.median(drift[ok])) if ok.any() else math.nan,
        "relaxation_per_iter": float(np.median(relax[ok])) if ok.any() else math.nan,
        "drift_ratio": float(np.median(ratio[ok])) if ok.any() else math.nan,
        "slowest_mode_timescale": 1.0 / (eta * eig_min) if eta * eig_min > 0 else math.inf,
        "falling": float(falling),
    }


def _from_value_gap(s: RunSeries, gap: np.ndarray, floor: float) -> Regime:
    ev = plateau_evidence(s, gap, floor)
    numbers = (
        f"value_gap {gap[0]:.4g} -> {gap[-1]:.4g} (fall {gap[0] - gap[-1]:.4g}, second half "
        f"{ev['fall_second_half']:.4g} vs noise {ev['fall_noise']:.4g}), value_noise_floor "
        f"{floor:.4g}, probe_floor {ev['stochastic_floor']:.4g} "
        f"(x{ev['gap_over_floor']:.3g}), tau_obs {ev['tau_obs']:.4g} vs {s.outer_iters} "
        f"iterations"
    )
    at_floor = ev["value_gap_last"] <= FLOOR_FACTOR * ev["stochastic_floor"]
    if ev["falling"] and (at_floor or ev["tau_obs"] <= s.outer_iters):
        return Regime("learning", numbers, ev)
    if at_floor:
        return Regime("plateau:noise-floor", f"{numbers}; at probe_floor", ev)
    tracking = (
        f"second-half medians: fixed-point drift {ev['drift_per_iter']:.3g}/iter vs "
        f"relaxation {ev['relaxation_per_iter']:.3g}/iter (T {ev['relaxation_timescale']:.4g}), "
        f"ratio {ev['drift_ratio']:.3g}"
    )
    if ev["drift_ratio"] >= MOVING_TARGET_RATIO:
        return Regime("plateau:moving-target", f"{numbers}; {tracking}", ev)
    slow = f"slowest mode 1/(eta eig_min_real) {ev['slowest_mode_timescale']:.4g} iterations"
    return Regime("plateau:slow-modes", f"{numbers}; {slow}; {tracking}", ev)


@dataclass(frozen=True)
class QuarterTrend:
    """The first and last quarter of a series, ``k = max(1, n // 4)`` points each, and its
    point-to-point noise ``sigma = std(diff y) / sqrt(2)`` (successive differences, so a
    steady trend does not inflate it; 0 with fewer than 3 points)."""

    k: int
    first: float
    last: float
    sigma: float

    @property
    def se(self) -> float:
        """Standard error of ``last - first``: ``sigma sqrt(2 / k)``."""
        return self.sigma * math.sqrt(2.0 / self.k)


def quarter_trend(y: np.ndarray) -> QuarterTrend:
    """The :class:`QuarterTrend` of a series of finite values (at least one)."""
    k = max(1, y.size // 4)
    sigma = float(np.std(np.diff(y), ddof=1) / math.sqrt(2)) if y.size > 2 else 0.0
    return QuarterTrend(k, float(np.mean(y[:k])), float(np.mean(y[-k:])), sigma)


def _from_td_loss(td: np.ndarray) -> Regime:
    q = quarter_trend(td)
    k, fall, se = q.k, q.first - q.last, q.se
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
        return _from_value_gap(s, gap, floor)
    return _from_td_loss(td)


def thresholds() -> dict[str, float]:
    """The named thresholds, for summaries."""
    return {
        "FROZEN_REL_STEP": FROZEN_REL_STEP,
        "LEARNING_FACTOR": LEARNING_FACTOR,
        "W_GROWTH_FACTOR": W_GROWTH_FACTOR,
        "MIN_ROWS": MIN_ROWS,
        "FLOOR_FACTOR": FLOOR_FACTOR,
        "MOVING_TARGET_RATIO": MOVING_TARGET_RATIO,
        "MIN_JITTER_ROUNDS": MIN_JITTER_ROUNDS,
    }


REGIME_DOC = (
    "diverged: status diverged, a non-finite td_loss/w_norm, or w_norm growing "
    f"x{W_GROWTH_FACTOR}+ with growth_timescale < outer_iters or eta > critical_step; "
    "diverged:off-policy when eig_min_real < -spectral_noise (diverges at any step), "
    "diverged:step-size when eta > critical_step with no such eigenvalue. "
    f"frozen: median delta_w_norm/w_norm < {FROZEN_REL_STEP:g} per iteration, or "
    "fastest_timescale > outer_iters. "
    "learning: value_gap still falls beyond its round-to-round noise over the second half "
    "of the probe rounds, with its own relaxation time tau_obs <= outer_iters (or into its "
    f"floor). plateau:noise-floor: value_gap <= {FLOOR_FACTOR:g} x probe_floor "
    "(hypot(value_gap_floor, F / 2), else F). plateau:moving-target: fixed-point drift per "
    "iteration (in "
    "value terms) over the critic's relaxation per iteration (value_gap / "
    f"effective_timescale) >= {MOVING_TARGET_RATIO:g}. plateau:slow-modes: the rest above "
    "the floor (tau_obs > outer_iters). F = median value_noise_floor, or noise_floor "
    "x value_gap / w_gap. Without two probe rounds: td_loss first vs last quarter, "
    f"> {LEARNING_FACTOR:g} standard errors = learning. Empty probe cells are never non-finite."
)
"""One-paragraph description of the labels for summary files."""
