"""Run scores: the one definition of diverged, frozen, learning and plateau (docs/model.md §8, §11).

The report's health checks (critic_frozen) and the sweep's regime labels (and so the
catalog's ``regime``) both call this module, so a run can never pass a check here and get
the opposite label there. Read a run with :func:`series_of` (from the run directory's read
model) and label it with :func:`label_regime`; :func:`frozen_reasons` is the frozen test
alone.

Each label is judged against the run's own scales, in this order (the first that holds):

1. **diverged**: status ``diverged``, or a non-finite value in a dense learning-curve
   column (``td_loss``, ``w_norm``), or the run's error grows (:func:`error_grows`, on
   :func:`growth_evidence`): value_gap or ``w_gap = ||w - w#||`` grows by at least
   ``ERROR_GROWTH_FACTOR`` from the first probe round to the last, or ``||w||`` ends above
   ``ERROR_GROWTH_FACTOR x max(||w_0||, ||w#||)`` (``w_sharp_norm`` of the last round),
   AND the growth rate g, the slope of ``log y`` over the second half of the run (the
   fit with the largest ``g / se`` among ``log w_norm`` and the probe series that grew),
   exceeds ``GROWTH_SE_FACTOR`` Newey-West standard errors (:func:`log_growth`; a critic
   growing from a tiny ``w_0`` to its fixed point stops growing, so it is not diverged);
   or, in a run too short to grow that far, the expected update is unstable
   (:func:`unstable_update`: ``eta > critical_step``, ``growth_timescale <
   outer_iters`` or eig_min_real's whole 95% interval below zero) and ``||w||`` grew
   more than ``W_GROWTH_FACTOR`` with a second-half
   rate beyond its error (:func:`grows_while_unstable`). The label names the mechanism
   from the latest stability round (:func:`divergence_kind`): ``diverged:off-policy``
   when g matches the growth ``-eta l`` of a negative mode (l within eig_min_real's 95%
   interval, lo < 0), else ``diverged:step-size`` when the step overshoots (``eta >
   critical_step``, ``|1 - eta l| > 1``), else ``diverged:off-policy`` when
   eig_min_real's whole interval is below zero (TD diverges at EVERY step size); plain
   ``diverged`` otherwise (no stability round). A diverged run is never plateau or
   learning. :func:`regime_family` strips the mechanism.
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

   With a counterfactuals file (``probes/counterfactuals_<iter>.npz``, the predicted final
   value_gap under each intervention of :data:`tdlens.regimes.REGIME_TABLE`, read by
   :func:`counterfactuals_of`) a mechanism is given only when its intervention is
   PREDICTED to lower the final value_gap beyond the prediction's own band,
   :func:`predicted_gain` ``= reference - value_gap_end_hi > PREDICTED_GAIN_MIN``
   (reference: the control's value_gap_end; for moving-target the measured
   value_gap_last, since the probe predicts with the policies frozen), and moving-target
   also needs its drift beyond its own noise, :func:`drift_over_noise` ``>
   DRIFT_NOISE_FACTOR``. When no mechanism qualifies the label is the family
   ``plateau`` with the counterfactuals in its reason and evidence. Runs without the file
   (older runs) keep the rules above.

The measurement noise F of value_gap is the median over probe rounds of the value-space
floor: the column ``value_noise_floor`` when the fixed-point table has it, else the
parameter-space ``noise_floor = ||w#_1 - w#_2||`` scaled to value space by the run's own
ratio ``value_gap / w_gap``. The stochastic floor F_s is what a probe measures for a
critic at the predicted stationary floor, :func:`measured_floor` of the median
``value_gap_floor`` (from the per-step update covariance) and F, when the table has it,
else F; a round whose predicted noise grows has no floor (value_gap_floor inf,
docs/model.md §6.1), and when that is the median F_s is inf: never reached, gap_over_floor
NaN. The critic's relaxation time T is ``effective_timescale`` (the
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
does not inflate it), else ``plateau`` with no mechanism; with fewer than
``NOISE_MIN_ROWS`` rows that noise cannot be estimated (``sigma`` needs two successive
differences), so such a run is ``n/a``, never learning from a fall with no error bar. A run
with fewer than ``MIN_ROWS`` rows that did not diverge is ``n/a``, and so is a run whose
status is ``failed`` (it stopped on an error, its rows are not a run to judge; the card
headlines ``failed``) unless it diverged.

Sparse probe values live only in the probe tables and the sparse learning-curve columns,
whose empty cells mean "no probe this iteration": they are never read as non-finite (the
seed system labelled every probed run "instability" from its NaN placeholders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from tdlens.regimes import FAMILIES, NOT_AVAILABLE, entry, mechanisms
from tdlens.rundir.read import Cell, RunData, array_files, load_array

REGIMES: tuple[str, ...] = tuple(f for f in FAMILIES if f != NOT_AVAILABLE)
"""Regime families (from :data:`tdlens.regimes.REGIME_TABLE`); a label is a family or
``family:mechanism`` (:func:`regime_family`)."""
PLATEAU_MECHANISMS: tuple[str, ...] = mechanisms("plateau")
DIVERGENCE_KINDS: tuple[str, ...] = mechanisms("diverged")
"""Mechanisms of ``diverged`` (module docstring, rule 1)."""
FROZEN_REL_STEP = 1e-6
"""frozen: median relative change of w per iteration (delta_w_norm / w_norm) below this."""
LEARNING_FACTOR = 3.0
"""learning: value_gap (or td_loss) falls by more than this many noise floors (std errors)."""
ERROR_GROWTH_FACTOR = 10.0
"""diverged: value_gap or w_gap = ||w - w#|| grew by at least this factor over the run,
or ||w|| ends above this x max(||w_0||, ||w#||)."""
MIN_FIT_POINTS = 3
"""Points a growth-rate fit needs (a slope and its error)."""
W_GROWTH_FACTOR = 1.5
"""diverged before ERROR_GROWTH_FACTOR: ||w|| grew by more than this factor, at a rate
beyond its error, while the expected update is unstable (:func:`unstable_update`)."""
GROWTH_SE_FACTOR = 2.0
"""diverged: the second-half growth rate of log(error) exceeds this many standard errors
(Newey-West); also the slack when matching it to a negative mode's rate."""
MIN_ROWS = 2
NOISE_MIN_ROWS = 3
"""Fewest td_loss rows whose point-to-point noise ``std(diff td_loss) / sqrt(2)`` can be
estimated: the td_loss rule labels a shorter run ``n/a``."""
FLOOR_FACTOR = 1.5
"""plateau:noise-floor: value_gap_last at most this many stochastic floors F_s."""
MOVING_TARGET_RATIO = 1.0
"""plateau:moving-target: median drift / relaxation per iteration at least this."""
MIN_JITTER_ROUNDS = 5
"""Probe rounds needed to estimate value_gap's round-to-round jitter."""
DRIFT_NOISE_FACTOR = 2.0
"""plateau:moving-target (with counterfactuals): the median over the second-half rounds of
``w_sharp_drift_k / w_sharp_drift_noise_k`` (:func:`drift_over_noise`) must exceed this (a
drift within its own noise is resampling noise, no drift). w_sharp_drift_noise is the RMS
size of a drift that is pure noise, so a still target's median ratio is ~1 (0.93 over 9
rounds with fresh draws at D = 64, single rounds 0.71-1.2): at 1 half of the still
targets would pass; 2 leaves the median of the noise ratios well below."""
PREDICTED_GAIN_MIN = 0.0
"""A plateau mechanism (with counterfactuals) needs its intervention's predicted gain
``reference - value_gap_end_hi`` above this (module docstring)."""
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
    counterfactuals: tuple[dict[str, float | str], ...] = ()
    """The intervention entries of the run's first counterfactuals file
    (:func:`counterfactuals_of`): ``{"name", "value_gap_end", "value_gap_end_lo",
    "value_gap_end_hi"}`` each (NaN where not predicted); () for a run without one."""


COUNTERFACTUAL_PREFIX = "counterfactuals"
"""``probes/counterfactuals_<iter>.npz`` (written by tdlens.probes.counterfactual)."""
PREDICTED_KEYS = ("value_gap_end", "value_gap_end_lo", "value_gap_end_hi")


def counterfactuals_of(run_dir: Path) -> tuple[dict[str, float | str], ...]:
    """The intervention entries of the FIRST readable ``probes/counterfactuals_<iter>.npz``
    (the probe writes one, at the run's first fixed-point round), read by
    :func:`tdlens.rundir.read.load_array`; () when there is none (older runs)."""
    for path in array_files(run_dir, COUNTERFACTUAL_PREFIX).values():
        arrays = load_array(path)
        if not isinstance(arrays, dict):
            continue
        try:
            kinds = arrays["kind"].tolist()
            return tuple(
                {
                    "name": str(name),
                    **{k: float(arrays[k][i]) for k in PREDICTED_KEYS},
                }
                for i, name in enumerate(arrays["name"].tolist())
                if kinds[i] == "intervention"
            )
        except (KeyError, IndexError, ValueError):
            continue
    return ()


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
        counterfactuals_of(data.run_dir),
    )


@dataclass(frozen=True)
class Regime:
    """A label, the observed values that decided it, and those values by name."""

    label: str
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)
    """The numbers that decided the label (plateau and learning: :func:`plateau_evidence`)."""

    def __post_init__(self) -> None:
        entry(self.label)  # every label is declared in tdlens.regimes.REGIME_TABLE


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


STABILITY_KEYS: tuple[str, ...] = (
    "eig_min_real",
    "eig_min_real_lo",
    "eig_min_real_hi",
    "spectral_noise",
    "growth_timescale",
    "eta",
    "critical_step",
)


def stability_evidence(s: RunSeries) -> dict[str, float]:
    """The latest stability round's eig_min_real (and its 95% interval eig_min_real_lo,
    eig_min_real_hi), spectral_noise, growth_timescale, eta and critical_step (NaN when
    absent)."""
    return {key: latest(s.stability.get(key)) for key in STABILITY_KEYS}


@dataclass(frozen=True)
class GrowthFit:
    """The least-squares line ``log y = a + g t`` and its slope's standard error."""

    rate: float
    """g, the growth rate per iteration (NaN with fewer than 3 finite positive points)."""
    se: float
    """Newey-West (Bartlett kernel) standard error of g, robust to autocorrelation."""
    points: int


def newey_west_lags(n: int) -> int:
    """``floor(4 (n / 100)^(2/9))``, the Newey-West (1994) rule of thumb, at least 1."""
    return max(1, int(4.0 * (n / 100.0) ** (2.0 / 9.0)))


def log_growth(t: ArrayLike, y: ArrayLike) -> GrowthFit:
    """Fit ``log y = a + g t`` by least squares over the points with finite ``y > 0``.

    With ``x = t - mean(t)``, residuals ``e`` and ``u_i = x_i e_i``, the slope's
    variance is ``n / (n - 2) sum_{|l| <= L} (1 - |l| / (L + 1)) sum_i u_i u_{i-l} /
    (sum x^2)^2`` with ``L`` = :func:`newey_west_lags`: successive points of a learning
    curve are correlated, so the iid formula would understate it."""
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(y) & (y > 0) & np.isfinite(t)
    t, z = t[ok], np.log(y[ok])
    n = t.size
    if n < MIN_FIT_POINTS:
        return GrowthFit(math.nan, math.nan, n)
    x = t - t.mean()
    sxx = float(x @ x)
    if sxx <= 0:
        return GrowthFit(math.nan, math.nan, n)
    g = float(x @ (z - z.mean()) / sxx)
    e = z - z.mean() - g * x
    u = x * e
    lags = min(newey_west_lags(n), n - 1)
    s = float(u @ u)
    for lag in range(1, lags + 1):
        s += 2.0 * (1.0 - lag / (lags + 1.0)) * float(u[lag:] @ u[:-lag])
    var = max(s, 0.0) * n / (n - 2) / sxx**2
    return GrowthFit(g, math.sqrt(var), n)


def _t_statistic(fit: GrowthFit) -> float:
    """``rate / se`` (inf for a positive rate known exactly; -inf when undefined)."""
    if not math.isfinite(fit.rate):
        return -math.inf
    if fit.se > 0:
        return fit.rate / fit.se
    return math.inf if fit.rate > 0 else -math.inf


def _ratio(values: np.ndarray) -> float:
    return float(values[-1] / values[0]) if values.size >= 2 and values[0] > 0 else math.nan


def growth_evidence(s: RunSeries) -> dict[str, float]:
    """The numbers of rule 1's growth test (module docstring): value_gap_ratio and
    w_gap_ratio (last / first probe round), w_norm_ratio (last / first iteration),
    w_norm_scale = max(w_norm_first, w_sharp_norm_last) and w_norm_over_scale, and the
    second-half log-linear growth rate (growth_rate, growth_rate_se, growth_points) with the
    largest ``rate / se`` among: log(w_norm) over the second half of the iterations (at
    least the last MIN_FIT_POINTS), and
    log(value_gap), log(w_gap) over the probe rounds from the middle one on (at least 3),
    each when its ratio is at least ERROR_GROWTH_FACTOR."""
    w = finite(s.curves.get("w_norm"))
    w_sharp = latest(s.fixed_point.get("w_sharp_norm"))
    scale = max(float(w[0]) if w.size else math.nan, w_sharp if w_sharp > 0 else 0.0)
    ev = {
        "value_gap_ratio": _ratio(finite(s.fixed_point.get("value_gap"))),
        "w_gap_ratio": _ratio(finite(s.fixed_point.get("w_gap"))),
        "w_norm_ratio": _ratio(w),
        "w_norm_scale": scale,
        "w_norm_over_scale": float(w[-1] / scale) if w.size and scale > 0 else math.nan,
    }
    y = floats(s.curves.get("w_norm"))
    tail = min(y.size, max(MIN_FIT_POINTS, y.size - y.size // 2))  # the second half, >= 3
    fits = [log_growth(np.arange(y.size)[-tail:], y[-tail:])] if tail else []
    for col, key in (("value_gap", "value_gap_ratio"), ("w_gap", "w_gap_ratio")):
        if ev[key] >= ERROR_GROWTH_FACTOR:
            y = finite(s.fixed_point.get(col))
            mid = (y.size - 1) // 2  # the rounds from the middle one on, as plateau_evidence
            fits.append(log_growth(_probe_iters(s, y.size)[mid:], y[mid:]))
    fit = max(fits, key=_t_statistic, default=GrowthFit(math.nan, math.nan, 0))
    ev.update(growth_rate=fit.rate, growth_rate_se=fit.se, growth_points=float(fit.points))
    return ev


def error_grows(ev: dict[str, float]) -> bool:
    """Rule 1's growth test on :func:`growth_evidence`: value_gap or w_gap grew by at
    least ERROR_GROWTH_FACTOR, or ||w|| ends above ERROR_GROWTH_FACTOR x w_norm_scale, and
    the second-half growth rate exceeds GROWTH_SE_FACTOR standard errors."""
    grew = (
        ev["value_gap_ratio"] >= ERROR_GROWTH_FACTOR
        or ev["w_gap_ratio"] >= ERROR_GROWTH_FACTOR
        or ev["w_norm_over_scale"] > ERROR_GROWTH_FACTOR
    )
    return grew and ev["growth_rate"] > GROWTH_SE_FACTOR * ev["growth_rate_se"]


def unstable_update(e: dict[str, float], outer_iters: int) -> bool:
    """The latest stability round says ``w += eta (b - A w)`` grows: ``eta >
    critical_step`` (overshoot), ``growth_timescale < outer_iters`` (a mode below
    ``-spectral_noise``), or eig_min_real's whole 95% interval below zero (a negative mode
    at any step; the reflected bootstrap's interval covers at 95%,
    tests/probes/test_spectral_coverage.py). The growth itself must still be measured
    (:func:`grows_while_unstable`)."""
    lo, hi = e.get("eig_min_real_lo", math.nan), e.get("eig_min_real_hi", math.nan)
    negative = math.isfinite(lo) and hi < 0
    return e["eta"] > e["critical_step"] or e["growth_timescale"] < outer_iters or negative


def grows_while_unstable(ev: dict[str, float], outer_iters: int) -> bool:
    """Rule 1's second route: the update is unstable (:func:`unstable_update`) and ||w||
    grew by more than W_GROWTH_FACTOR with a second-half growth rate beyond
    GROWTH_SE_FACTOR standard errors (a short run that explodes before it can grow
    ERROR_GROWTH_FACTOR-fold)."""
    return (
        unstable_update(ev, outer_iters)
        and ev["w_norm_ratio"] > W_GROWTH_FACTOR
        and ev["growth_rate"] > GROWTH_SE_FACTOR * ev["growth_rate_se"]
    )


def _eig_interval(e: dict[str, float]) -> tuple[float, float]:
    """eig_min_real's 95% interval; ``eig_min_real -+ spectral_noise`` without one."""
    lo, hi = e.get("eig_min_real_lo", math.nan), e.get("eig_min_real_hi", math.nan)
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    return e["eig_min_real"] - e["spectral_noise"], e["eig_min_real"] + e["spectral_noise"]


def divergence_kind(
    evidence: dict[str, float], rate: float = math.nan, rate_se: float = math.nan
) -> str | None:
    """``off-policy``, ``step-size`` or None (nothing in the stability round explains it).

    With eig_min_real's interval ``[lo, hi]`` and the fitted growth rate g (per
    iteration): ``matches`` when ``lo < 0`` and g lies within GROWTH_SE_FACTOR standard
    errors of the growth ``-eta l`` of a mode with l in ``[lo, min(hi, 0)]``;
    ``overshoot`` when ``eta > critical_step``; ``negative`` when ``hi < 0`` (or, without
    an interval, a finite growth_timescale). off-policy when matches; else step-size when
    overshoot; else off-policy when negative."""
    e = evidence
    lo, hi = _eig_interval(e)
    eta = e["eta"]
    slack = GROWTH_SE_FACTOR * rate_se if math.isfinite(rate_se) else 0.0
    matches = (
        lo < 0 and math.isfinite(rate) and -eta * min(hi, 0.0) - slack <= rate <= -eta * lo + slack
    )
    if matches:
        return "off-policy"
    if e["eta"] > e["critical_step"]:
        return "step-size"
    if hi < 0 or math.isfinite(e["growth_timescale"]):
        return "off-policy"
    return None


def _divergence_reason(kind: str | None, e: dict[str, float]) -> str:
    lo, hi = _eig_interval(e)
    eig = f"eig_min_real {e['eig_min_real']:.4g} (95% interval {lo:.4g} to {hi:.4g})"
    if kind == "off-policy":
        return (
            f"{eig}: a mode of A with Re l < 0 grows at any step (growth rate "
            f"{e.get('growth_rate', math.nan):.4g}/iter vs -eta eig_min_real "
            f"{-e['eta'] * e['eig_min_real']:.4g}; growth_timescale {e['growth_timescale']:.4g})"
        )
    if kind == "step-size":
        return (
            f"step eta {e['eta']:.4g} > critical_step {e['critical_step']:.4g} (overshoot; "
            f"{eig}, spectral_noise {e['spectral_noise']:.4g})"
        )
    return "no stability round to name the mechanism"


def _growth_reason(ev: dict[str, float]) -> str:
    return (
        f"error grows: value_gap x{ev['value_gap_ratio']:.4g}, w_gap x{ev['w_gap_ratio']:.4g}, "
        f"w_norm x{ev['w_norm_ratio']:.4g} (last / max(first, ||w#||) "
        f"x{ev['w_norm_over_scale']:.4g}; >= {ERROR_GROWTH_FACTOR:g} needed), second-half "
        f"growth rate {ev['growth_rate']:.4g} +- {ev['growth_rate_se']:.4g} per iteration"
    )


def _diverged(s: RunSeries) -> Regime | None:
    evidence = {**stability_evidence(s), **growth_evidence(s)}
    kind = divergence_kind(evidence, evidence["growth_rate"], evidence["growth_rate_se"])
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
    if error_grows(evidence):
        return Regime(label, f"{_growth_reason(evidence)}; {mechanism}", evidence)
    if grows_while_unstable(evidence, s.outer_iters):
        grew = (
            f"w_norm grew x{evidence['w_norm_ratio']:.4g} (> {W_GROWTH_FACTOR:g}) at "
            f"{evidence['growth_rate']:.4g} +- {evidence['growth_rate_se']:.4g} per iteration "
            "while the expected update is unstable"
        )
        return Regime(label, f"{grew}; {mechanism}", evidence)
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
    stochastic = floats(_column(s, "value_gap_floor"))
    stochastic = stochastic[~np.isnan(stochastic)]  # inf kept: that round's noise grows
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
        "gap_over_floor": (
            float(gap[-1] / f_s) if 0 < f_s < math.inf else math.inf if f_s == 0 else math.nan
        ),
        "tau_obs": tau_obs,
        "outer_iters": float(s.outer_iters),
        "relaxation_timescale": float(T[-1]),
        "drift_per_iter": float(np.median(drift[ok])) if ok.any() else math.nan,
        "relaxation_per_iter": float(np.median(relax[ok])) if ok.any() else math.nan,
        "drift_ratio": float(np.median(ratio[ok])) if ok.any() else math.nan,
        "slowest_mode_timescale": 1.0 / (eta * eig_min) if eta * eig_min > 0 else math.inf,
        "falling": float(falling),
    }


def drift_over_noise(s: RunSeries, rounds: int) -> float:
    """Median over the second-half probe rounds (from the middle one on) of
    ``w_sharp_drift_k / w_sharp_drift_noise_k``: the fixed point's move since the last
    round against that move's own noise, ``||d_1 - d_2|| / 2`` of the two half batches'
    moves (docs/model.md §6.1; with common random numbers far below the half-batch
    distance, which the rounds share). Rounds without a positive w_sharp_drift_noise (older
    runs, a resume from a checkpoint without the previous halves) fall back to
    ``noise_floor_k = ||w#_1 - w#_2||`` (NaN without a finite pair)."""
    fp = s.fixed_point
    drift, noise = floats_or_nan(fp.get("w_sharp_drift")), floats_or_nan(fp.get("noise_floor"))
    own = floats_or_nan(fp.get("w_sharp_drift_noise"))
    if own.size == noise.size:
        noise = np.where(own > 0, own, noise)
    n = min(drift.size, noise.size, rounds)
    mid = (rounds - 1) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = drift[mid:n] / noise[mid:n]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else math.nan


def floats_or_nan(cells: Sequence[Cell] | None) -> np.ndarray:
    """Cells as float64, one per cell, NaN for an empty or text cell (rows stay aligned)."""
    return np.array(
        [float(c) if isinstance(c, float | int) else math.nan for c in cells or ()], dtype=float
    )


def predicted_gain(s: RunSeries, label: str, value_gap_last: float) -> float:
    """The predicted lowering of the final value_gap by `label`'s intervention, beyond the
    prediction's own band: ``reference - value_gap_end_hi`` of the label's counterfactual
    entry (its predictor, :data:`tdlens.regimes.REGIME_TABLE`), with reference the
    control's ``value_gap_end``; for ``plateau:moving-target`` the reference is the run's
    measured ``value_gap_last``, since the probe's prediction assumes the policies frozen
    (its policies_frozen entry IS the control's prediction: the moving run's cost is what
    it measures above that band). NaN when not predicted."""
    predictor = entry(label).predictor
    found = predictor(s.counterfactuals) if predictor is not None else None
    if found is None:
        return math.nan
    if label == "plateau:moving-target":
        reference = value_gap_last
    else:
        control = next((c for c in s.counterfactuals if c["name"] == "control"), None)
        reference = float(control["value_gap_end"]) if control else math.nan
    return reference - float(found["value_gap_end_hi"])


def _qualifies(gain: float) -> bool:
    return math.isfinite(gain) and gain > PREDICTED_GAIN_MIN


def _counterfactual_text(s: RunSeries) -> str:
    """The counterfactuals as ``name end [lo, hi]`` (predicted final value_gap)."""
    parts = [
        f"{c['name']} {c['value_gap_end']:.4g} [{c['value_gap_end_lo']:.4g}, "
        f"{c['value_gap_end_hi']:.4g}]"
        for c in s.counterfactuals
        if math.isfinite(float(c["value_gap_end"]))
    ]
    return "predicted final value_gap: " + "; ".join(parts) if parts else ""


def counterfactual_evidence(s: RunSeries) -> dict[str, float]:
    """``cf_<name>_end`` and ``cf_<name>_hi`` (predicted final value_gap and its band's top)
    per counterfactual entry of the run (NaN where not predicted)."""
    out: dict[str, float] = {}
    for c in s.counterfactuals:
        out[f"cf_{c['name']}_end"] = float(c["value_gap_end"])
        out[f"cf_{c['name']}_hi"] = float(c["value_gap_end_hi"])
    return out


def _from_value_gap(s: RunSeries, gap: np.ndarray, floor: float) -> Regime:
    ev = plateau_evidence(s, gap, floor)
    numbers = (
        f"value_gap {gap[0]:.4g} -> {gap[-1]:.4g} (fall {gap[0] - gap[-1]:.4g}, second half "
        f"{ev['fall_second_half']:.4g} vs noise {ev['fall_noise']:.4g}), value_noise_floor "
        f"{floor:.4g}, probe_floor {ev['stochastic_floor']:.4g} "
        + (
            f"(x{ev['gap_over_floor']:.3g})"
            if ev["stochastic_floor"] < math.inf
            else "(none: the predicted noise grows)"
        )
        + f", tau_obs {ev['tau_obs']:.4g} vs {s.outer_iters} "
        f"iterations"
    )
    # an infinite F_s (the predicted noise grows: no floor) is never reached
    f_s = ev["stochastic_floor"]
    at_floor = math.isfinite(f_s) and ev["value_gap_last"] <= FLOOR_FACTOR * f_s
    if ev["falling"] and (at_floor or ev["tau_obs"] <= s.outer_iters):
        return Regime("learning", numbers, ev)
    tracking = (
        f"second-half medians: fixed-point drift {ev['drift_per_iter']:.3g}/iter vs "
        f"relaxation {ev['relaxation_per_iter']:.3g}/iter (T {ev['relaxation_timescale']:.4g}), "
        f"ratio {ev['drift_ratio']:.3g}"
    )
    slow = f"slowest mode 1/(eta eig_min_real) {ev['slowest_mode_timescale']:.4g} iterations"
    if s.counterfactuals:
        return _from_predictions(s, ev, at_floor, numbers, tracking, slow)
    if at_floor:
        return Regime("plateau:noise-floor", f"{numbers}; at probe_floor", ev)
    if ev["drift_ratio"] >= MOVING_TARGET_RATIO:
        return Regime("plateau:moving-target", f"{numbers}; {tracking}", ev)
    return Regime("plateau:slow-modes", f"{numbers}; {slow}; {tracking}", ev)


def _from_predictions(
    s: RunSeries, ev: dict[str, float], at_floor: bool, numbers: str, tracking: str, slow: str
) -> Regime:
    """The plateau mechanism of a run with counterfactuals (module docstring, rule 4): a
    mechanism only when its intervention's :func:`predicted_gain` exceeds
    PREDICTED_GAIN_MIN, moving-target only with a drift beyond DRIFT_NOISE_FACTOR noise
    floors; else the family ``plateau`` with the counterfactuals listed."""
    rounds = int(np.isfinite(floats_or_nan(s.fixed_point.get("value_gap"))).sum())
    last = ev["value_gap_last"]
    ev = {
        **ev,
        "drift_over_noise": drift_over_noise(s, rounds),
        "gain_noise_floor": predicted_gain(s, "plateau:noise-floor", last),
        "gain_moving_target": predicted_gain(s, "plateau:moving-target", last),
        "gain_slow_modes": predicted_gain(s, "plateau:slow-modes", last),
        **counterfactual_evidence(s),
    }
    gains = (
        f"predicted gain (reference - value_gap_end_hi): noise-floor "
        f"{ev['gain_noise_floor']:.3g}, moving-target {ev['gain_moving_target']:.3g}, "
        f"slow-modes {ev['gain_slow_modes']:.3g}; drift / its noise "
        f"{ev['drift_over_noise']:.3g}"
    )
    if at_floor:
        if _qualifies(ev["gain_noise_floor"]):
            return Regime("plateau:noise-floor", f"{numbers}; at probe_floor; {gains}", ev)
    else:
        moving = (
            ev["drift_ratio"] >= MOVING_TARGET_RATIO
            and ev["drift_over_noise"] > DRIFT_NOISE_FACTOR
            and _qualifies(ev["gain_moving_target"])
        )
        if moving:
            return Regime("plateau:moving-target", f"{numbers}; {tracking}; {gains}", ev)
        if _qualifies(ev["gain_slow_modes"]):
            return Regime("plateau:slow-modes", f"{numbers}; {slow}; {tracking}; {gains}", ev)
    where = "at probe_floor" if at_floor else "above probe_floor"
    return Regime(
        "plateau",
        f"{numbers}; {where}; no mechanism's intervention is predicted to help beyond its "
        f"band ({gains}); {_counterfactual_text(s)}",
        ev,
    )


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
    if td.size < NOISE_MIN_ROWS:
        return Regime(
            NOT_AVAILABLE,
            f"too short to judge: {td.size} learning-curve rows, too few to estimate "
            "td_loss's noise [no value_gap series]",
        )
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
    if s.status == "failed":
        return Regime(
            NOT_AVAILABLE,
            f"the run failed after {td.size} learning-curve row(s); a failed run is not judged",
        )
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
        "ERROR_GROWTH_FACTOR": ERROR_GROWTH_FACTOR,
        "W_GROWTH_FACTOR": W_GROWTH_FACTOR,
        "GROWTH_SE_FACTOR": GROWTH_SE_FACTOR,
        "MIN_ROWS": MIN_ROWS,
        "FLOOR_FACTOR": FLOOR_FACTOR,
        "MOVING_TARGET_RATIO": MOVING_TARGET_RATIO,
        "MIN_JITTER_ROUNDS": MIN_JITTER_ROUNDS,
        "DRIFT_NOISE_FACTOR": DRIFT_NOISE_FACTOR,
        "PREDICTED_GAIN_MIN": PREDICTED_GAIN_MIN,
    }


REGIME_DOC = (
    "diverged: status diverged, a non-finite td_loss/w_norm, or the error grows: value_gap "
    f"or ||w - w#|| x{ERROR_GROWTH_FACTOR:g}+ over the run, or ||w|| ending above "
    f"{ERROR_GROWTH_FACTOR:g} x max(||w_0||, ||w#||), with a second-half log growth rate "
    f"beyond {GROWTH_SE_FACTOR:g} (Newey-West) standard errors, or ||w|| growing "
    f"x{W_GROWTH_FACTOR:g}+ at such a rate while eta > critical_step, "
    "growth_timescale < outer_iters or eig_min_real's whole interval lies below zero; "
    "diverged:off-policy when that rate matches a negative mode's -eta eig_min_real (or "
    "eig_min_real's interval lies below zero without an overshoot), "
    "diverged:step-size when eta > critical_step. "
    f"frozen: median delta_w_norm/w_norm < {FROZEN_REL_STEP:g} per iteration, or "
    "fastest_timescale > outer_iters. "
    "learning: value_gap still falls beyond its round-to-round noise over the second half "
    "of the probe rounds, with its own relaxation time tau_obs <= outer_iters (or into its "
    "floor). plateau:<mechanism>: otherwise, named only when the mechanism's intervention "
    "is predicted to lower the final value_gap beyond its band (the unchanged run's "
    "predicted end above the intervention's band top): plateau:noise-floor (value_gap <= "
    f"{FLOOR_FACTOR:g} x probe_floor = hypot(value_gap_floor, F / 2), else F; alpha_w / 4 "
    "with 4x the trajectories), plateau:moving-target (fixed-point drift per iteration over "
    f"the critic's relaxation per iteration >= {MOVING_TARGET_RATIO:g} and the drift beyond "
    f"{DRIFT_NOISE_FACTOR:g} x its own noise w_sharp_drift_noise; the policies frozen), "
    "plateau:slow-modes (above the floor; alpha_w x4); the family plateau when none "
    "qualifies. F = median value_noise_floor, or noise_floor "
    "x value_gap / w_gap. Without two probe rounds: td_loss first vs last quarter, "
    f"> {LEARNING_FACTOR:g} standard errors = learning. Empty probe cells are never non-finite."
)
"""One-paragraph description of the labels for summary files."""
