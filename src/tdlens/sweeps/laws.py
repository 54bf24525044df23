"""The plateau laws of a sweep (issue 27 item 3): how the noise floor and the relaxation
time scale with the critic's step and the batch, measured run by run against each run's
own prediction (:mod:`tdlens.probes.expected`).

For every finished run of the sweep, from its fixed-point probe table:

- ``x = eta / B``, ``eta = alpha_w s B T`` the expected step and B the trajectories per
  iteration (the prediction's effective batch: the noise covariance is that of one
  trajectory's mean update over B, so steps within a trajectory count as one sample);
- the **measured stationary mean square** ``m = mean (value_gap^2 - est^2)`` over the
  probes of the run's second half, ``est = value_noise_floor / 2`` the probe's own w#
  error, with its standard error over those probes; the **predicted** one
  ``value_gap_floor^2`` of the last probe;
- the **measured relaxation time**: the iterations after the first probe at which the
  excess ``sqrt(max(value_gap^2 - target^2, 0))``, ``target^2 = value_gap_floor^2 +
  est^2``, first falls to 1/e of its value at the first probe (log-linear interpolation
  between probes; NaN when it never does), against the **predicted**
  ``effective_timescale`` of the first probe.

A run counts in the fits only when its design resolves both (decided from the run's
own probe and prediction, never from the measured outcome): its step is well below the
critical one (``eta eig_max_abs <= NEAR_CRITICAL``, half the critical step ``2 /
l_max`` for a real top eigenvalue: past it the noise the error itself multiplies, which
the prediction leaves out, grows), its floor exists and stands clear of
the probe's own error (``value_gap_floor`` finite, docs/model.md §6.1, and ``>=
RESOLVE_FACTOR est``), and the run has relaxed by its
second half: the mean path its first probe predicts (``value_gap_pred`` of its
``expected_dynamics`` band, multi-mode, so a slow tail counts) is at most ``REACH_RATIO``
times the floor at ``outer_iters / 2``; the relaxation time also needs ``tau_predicted >=
probes.every`` (a faster fall happens between two probes) and a first gap at least
``RESOLVE_FACTOR e`` times ``target`` (its 1/e point stands clear of the noise). The
other runs are drawn hollow and listed with their reason.

The laws are power laws: ``m ~ (eta / B)^1`` and ``tau ~ (1 / eta)^1`` for a step well
below the critical one. :func:`fit_power_law` fits ``log y = a + k log x`` by least squares
with the 95% interval of k (Student t), once on the measured values and once on the
predicted ones at the same points, so the page compares the measured slope with the
prediction's own. Pure reading and drawing: no run is started.
"""

from __future__ import annotations

import io
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from tdlens.rundir.files import atomic_write_bytes, atomic_write_text
from tdlens.rundir.read import RunData, array_files, load_array, load_run
from tdlens.sweeps.plan import read_plan, run_dir

Z_LEVEL = 0.95
"""Confidence level of the fitted slopes' intervals."""
EXPECTED_SLOPES = {"floor": 1.0, "relaxation": 1.0}
"""The laws' slopes well below the critical step: ``m ~ eta / B``, ``tau ~ 1 / eta``."""
RESOLVE_FACTOR = 2.0
"""A floor is resolved when the predicted floor is at least this many times est = F/2."""
NEAR_CRITICAL = 1.0
"""Largest ``eta eig_max_abs`` that counts as well below the critical step."""
REACH_RATIO = 0.5
"""The predicted mean path at the second half's start, at most this times the floor."""


class LawsError(ValueError):
    """The sweep cannot give the laws (no finished run with a fixed-point table...)."""


@dataclass(frozen=True)
class LawPoint:
    """One run's numbers (module docstring)."""

    run_id: str
    alpha_w: float
    trajectories: int
    seed: int
    eta: float
    x: float  # eta / B
    measured: float  # stationary mean square
    measured_se: float
    predicted: float  # value_gap_floor^2
    tau_measured: float
    tau_predicted: float
    est: float = math.nan  # the probe's own w# error F/2 (median over the run)
    floor_issue: str = ""  # why the floor is not resolved ("" when it is)
    tau_issue: str = ""  # why the relaxation time is not resolved ("" when it is)


@dataclass(frozen=True)
class PowerFit:
    """``log y = intercept + slope log x`` with the slope's 95% interval, over n points."""

    slope: float
    lo: float
    hi: float
    intercept: float
    n: int

    def covers(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def text(self) -> str:
        return f"{self.slope:.3g} [{self.lo:.3g}, {self.hi:.3g}] (n = {self.n})"


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerFit:
    """Least-squares line of ``log y`` on ``log x`` over the positive finite pairs, with
    the slope's interval ``slope +- t_{0.975, n-2} se`` (NaN bounds for n < 3)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    lx, ly = np.log(xa[ok]), np.log(ya[ok])
    n = int(ok.sum())
    if n < 2 or np.ptp(lx) == 0:
        return PowerFit(math.nan, math.nan, math.nan, math.nan, n)
    res = stats.linregress(lx, ly)
    if n < 3:
        return PowerFit(float(res.slope), math.nan, math.nan, float(res.intercept), n)
    half = float(stats.t.ppf(0.5 + Z_LEVEL / 2, n - 2)) * float(res.stderr)
    return PowerFit(float(res.slope), res.slope - half, res.slope + half, float(res.intercept), n)


def relaxation_time(iters: np.ndarray, gap: np.ndarray, target: float) -> float:
    """Iterations after ``iters[0]`` at which ``sqrt(max(gap^2 - target^2, 0))`` first falls
    to 1/e of its first value (log-linear between probes); NaN when it never does."""
    excess = np.sqrt(np.maximum(gap**2 - target**2, 0.0))
    if excess.size < 2 or not excess[0] > 0:
        return math.nan
    goal = excess[0] / math.e
    below = np.flatnonzero(excess <= goal)
    if not below.size:
        return math.nan
    k = int(below[0])
    a, b = excess[k - 1], excess[k]
    if b <= 0:
        frac = 1.0 if a <= goal else (a - goal) / (a - b)
    else:
        frac = math.log(a / goal) / math.log(a / b)
    return float(iters[k - 1] + frac * (iters[k] - iters[k - 1]) - iters[0])


def _predicted_mid(data: RunData, at: float) -> float:
    """The mean path ``value_gap_pred`` the run's first ``expected_dynamics`` band predicts
    at iteration `at` (NaN without the band)."""
    bands = array_files(data.run_dir, "expected_dynamics")
    if not bands or data.cfg is None:
        return math.nan
    band = load_array(next(iter(bands.values())), data.cfg.env.feature_dim)
    if not isinstance(band, dict) or "value_gap_pred" not in band:
        return math.nan
    iters = np.asarray(band["iters"], dtype=float)
    return float(np.interp(at, iters, np.asarray(band["value_gap_pred"], dtype=float)))


def law_point(data: RunData, run_id: str) -> LawPoint | None:
    """The :class:`LawPoint` of a finished run, None without the probe columns it needs."""
    cfg, fp = data.cfg, data.probe("fixed_point_probe")
    need = ("value_gap", "value_gap_floor", "value_noise_floor", "effective_timescale")
    if cfg is None or data.status.get("status") != "complete" or len(fp) < 3:
        return None
    if not all(fp.has(c) for c in need):
        return None
    iters = fp.iters().astype(float)
    gap, est = fp.values("value_gap"), fp.values("value_noise_floor") / 2.0
    floor = fp.values("value_gap_floor")
    late = iters >= cfg.outer_iters / 2
    if late.sum() < 2:
        return None
    excess = gap[late] ** 2 - est[late] ** 2
    eta = cfg.alpha_w * cfg.step_scale * cfg.trajectories * cfg.horizon
    target = math.sqrt(float(floor[0]) ** 2 + float(est[0]) ** 2)
    tau_pred = float(fp.values("effective_timescale")[0])
    est_med = float(np.median(est))
    near = eta * float(np.median(fp.values("eig_max_abs"))) if fp.has("eig_max_abs") else 0.0
    floor_issue = ""
    if near > NEAR_CRITICAL:
        floor_issue = f"eta l_max {near:.2g} > {NEAR_CRITICAL:g}: near the critical step"
    elif float(floor[-1]) == math.inf:
        floor_issue = "no floor: the predicted noise grows (value_gap_floor inf)"
    elif not float(floor[-1]) >= RESOLVE_FACTOR * est_med:
        floor_issue = f"floor {float(floor[-1]):.2g} < {RESOLVE_FACTOR:g} x F/2 {est_med:.2g}"
    elif not (mid_half := _predicted_mid(data, cfg.outer_iters / 2)) <= REACH_RATIO * float(
        floor[-1]
    ):
        floor_issue = f"predicted path {mid_half:.2g} at outer_iters / 2 > {REACH_RATIO:g} x floor"
    tau_issue = ""
    if near > NEAR_CRITICAL:
        tau_issue = "near the critical step"
    elif not tau_pred >= cfg.probes.every:
        tau_issue = f"tau {tau_pred:.2g} < probes.every {cfg.probes.every}"
    elif not float(gap[0]) >= RESOLVE_FACTOR * math.e * target:
        tau_issue = f"first gap {float(gap[0]):.2g} < {RESOLVE_FACTOR:g} e x floor and F/2"
    return LawPoint(
        run_id=run_id,
        alpha_w=cfg.alpha_w,
        trajectories=cfg.trajectories,
        seed=cfg.seed,
        eta=eta,
        x=eta / cfg.trajectories,
        measured=float(excess.mean()),
        measured_se=float(excess.std(ddof=1) / math.sqrt(excess.size)),
        predicted=float(floor[-1]) ** 2,
        tau_measured=relaxation_time(iters, gap, target),
        tau_predicted=tau_pred,
        est=est_med,
        floor_issue=floor_issue,
        tau_issue=tau_issue,
    )


@dataclass(frozen=True)
class Laws:
    """The points of a sweep and the four fits (measured and predicted, per law)."""

    points: list[LawPoint]
    skipped: list[str]
    floor_measured: PowerFit
    floor_predicted: PowerFit
    tau_measured: PowerFit
    tau_predicted: PowerFit


def fit_laws(points: Sequence[LawPoint], skipped: Sequence[str] = ()) -> Laws:
    """Fit both laws over the runs that resolve them: m against eta / B, tau against
    1 / eta (module docstring)."""
    fl = [p for p in points if not p.floor_issue]
    ta = [p for p in points if not p.tau_issue]
    x = [p.x for p in fl]
    inv_eta = [1.0 / p.eta if p.eta > 0 else math.nan for p in ta]
    return Laws(
        points=list(points),
        skipped=list(skipped),
        floor_measured=fit_power_law(x, [p.measured for p in fl]),
        floor_predicted=fit_power_law(x, [p.predicted for p in fl]),
        tau_measured=fit_power_law(inv_eta, [p.tau_measured for p in ta]),
        tau_predicted=fit_power_law(inv_eta, [p.tau_predicted for p in ta]),
    )


def read_laws(sweep_dir: Path) -> tuple[dict[str, Any], Laws]:
    """The sweep's plan and its :class:`Laws`; LawsError when fewer than 3 runs count."""
    plan = read_plan(sweep_dir)
    points, skipped = [], []
    for entry in plan["runs"]:
        rd = run_dir(sweep_dir, entry["run_id"])
        point = law_point(load_run(rd), entry["run_id"]) if rd.is_dir() else None
        if point is None:
            skipped.append(entry["run_id"])
        else:
            points.append(point)
    if len(points) < 3:
        raise LawsError(
            f"{Path(sweep_dir).name}: {len(points)} finished run(s) with at least 3 "
            "fixed-point probes; the laws need 3 or more"
        )
    return plan, fit_laws(points, skipped)


def _scatter(
    ax: Any, x: np.ndarray, y: np.ndarray, used: np.ndarray, fit: PowerFit, pred: PowerFit
) -> None:
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    ax.loglog(x[ok & used], y[ok & used], "o", ms=4, color="C0", label="measured (fitted)")
    if np.any(ok & ~used):
        ax.loglog(
            x[ok & ~used], y[ok & ~used], "o", ms=4, mfc="none", color="C0",
            label="measured, not resolved",
        )  # fmt: skip
    xs = np.geomspace(np.nanmin(x[ok]), np.nanmax(x[ok]), 50) if ok.any() else np.array([])
    if math.isfinite(fit.slope) and xs.size:
        ax.loglog(xs, np.exp(fit.intercept) * xs**fit.slope, "-", label=f"fit, slope {fit.text()}")
    if math.isfinite(pred.slope) and xs.size:
        ax.loglog(
            xs,
            np.exp(pred.intercept) * xs**pred.slope,
            "--",
            label=f"predicted, slope {pred.slope:.3g}",
        )
    ax.legend(fontsize=7)


def laws_figure(laws: Laws) -> Figure:
    """Two log-log panels: stationary mean square against eta / B, relaxation time
    against 1 / eta, measured points (hollow: not resolved, outside the fit) with their
    fit and the line fitted to the runs' own predictions."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    pts = laws.points
    _scatter(
        left,
        np.array([p.x for p in pts]),
        np.array([p.measured for p in pts]),
        np.array([not p.floor_issue for p in pts], dtype=bool),
        laws.floor_measured,
        laws.floor_predicted,
    )
    left.set(xlabel="eta / B", ylabel="value_gap^2 - est^2 (second half)", title="noise floor")
    _scatter(
        right,
        np.array([1.0 / p.eta for p in pts]),
        np.array([p.tau_measured for p in pts]),
        np.array([not p.tau_issue for p in pts], dtype=bool),
        laws.tau_measured,
        laws.tau_predicted,
    )
    right.set(xlabel="1 / eta", ylabel="iterations to 1/e of the excess", title="relaxation")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Curve:
    """One run of the constant vs annealed panel: its probes' value_gap, the band its
    first probe predicts over the rest of the run, and its constant-step floor."""

    label: str
    run_dir: Path
    iters: np.ndarray
    gap: np.ndarray
    band_iters: np.ndarray
    mid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    floor: float
    est: float
    schedule: str


def read_curve(run: Path) -> Curve:
    """The :class:`Curve` of a finished run with a fixed-point table and its first
    ``expected_dynamics_<n>.npz``; LawsError naming the run otherwise."""
    data = load_run(run)
    fp = data.probe("fixed_point_probe")
    if data.cfg is None or len(fp) < 2 or not fp.has("value_gap_floor"):
        raise LawsError(f"{run}: not a run with a fixed-point table of 2 or more probes")
    bands = array_files(run, "expected_dynamics")
    band = load_array(next(iter(bands.values())), data.cfg.env.feature_dim) if bands else None
    if not isinstance(band, dict) or "value_gap_lo" not in band:
        raise LawsError(f"{run}: no expected_dynamics_<n>.npz band")
    est = fp.values("value_noise_floor") / 2.0
    kind = data.cfg.schedules.alpha_w.kind
    return Curve(
        label=f"{kind} (alpha_w {data.cfg.alpha_w:.4g}, B {data.cfg.trajectories})",
        run_dir=Path(run),
        iters=fp.iters().astype(float),
        gap=fp.values("value_gap"),
        band_iters=np.asarray(band["iters"], dtype=float),
        mid=np.asarray(band["value_gap_pred"], dtype=float),
        lo=np.asarray(band["value_gap_lo"], dtype=float),
        hi=np.asarray(band["value_gap_hi"], dtype=float),
        floor=float(fp.values("value_gap_floor")[-1]),
        est=float(np.median(est)),
        schedule=kind,
    )


@dataclass(frozen=True)
class Comparison:
    """The constant and annealed twins with their last-quarter means and standard errors."""

    curves: tuple[Curve, Curve]
    final: tuple[float, float]  # mean value_gap over the last quarter's probes
    final_se: tuple[float, float]


def compare_runs(constant: Path, annealed: Path) -> Comparison:
    """Read both runs; the annealed one must have an alpha_w schedule, the constant none."""
    curves = read_curve(constant), read_curve(annealed)
    if curves[0].schedule != "constant" or curves[1].schedule == "constant":
        raise LawsError(
            f"--constant {constant} must have a constant alpha_w and --annealed {annealed} "
            f"a schedule (got {curves[0].schedule} and {curves[1].schedule})"
        )
    finals, ses = [], []
    for c in curves:
        late = c.gap[c.iters >= c.iters[-1] * 0.75]
        finals.append(float(late.mean()))
        ses.append(float(late.std(ddof=1) / math.sqrt(late.size)) if late.size > 1 else math.nan)
    return Comparison(curves, (finals[0], finals[1]), (ses[0], ses[1]))


def comparison_figure(cmp: Comparison) -> Figure:
    """One log-y panel: both runs' value_gap at their probes, each with the band its first
    probe predicts (the annealed one following its schedule), the constant step's
    predicted floor and the probe's own error F/2."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for color, c in zip(("C0", "C3"), cmp.curves, strict=True):
        ax.fill_between(c.band_iters, np.maximum(c.lo, 1e-12), c.hi, color=color, alpha=0.15)
        ax.plot(c.band_iters, c.mid, "--", color=color, lw=1)
        ax.plot(c.iters, c.gap, "o-", ms=3, lw=1, color=color, label=c.label)
    const = cmp.curves[0]
    gaps = np.concatenate([c.gap for c in cmp.curves])
    low = min(float(np.min(gaps[gaps > 0], initial=const.est)), const.est)
    ax.set_ylim(0.3 * low, 2.0 * float(np.max(gaps, initial=const.floor)))
    ax.axhline(const.floor, color="k", lw=1, ls=":", label="constant step's floor")
    ax.axhline(const.est, color="gray", lw=1, ls="-.", label="probe's own error F/2")
    ax.set_yscale("log")
    ax.set(xlabel="iteration", ylabel="value_gap", title="constant vs annealed alpha_w")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _comparison_lines(cmp: Comparison, image: str) -> list[str]:
    diff = cmp.final[0] - cmp.final[1]
    se = math.hypot(*cmp.final_se)
    lines = [
        "## Constant vs annealed step",
        "",
        f"![constant vs annealed]({image})",
        "",
        "Each run's value_gap at its probes, with the band its first probe predicts for the",
        "rest of the run (shaded; dashed the mean path), the annealed band following its",
        "schedule. Last quarter of the probes, mean value_gap +- its standard error:",
        "",
        "| run | schedule | last-quarter value_gap | constant floor | F/2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c, f, e in zip(cmp.curves, cmp.final, cmp.final_se, strict=True):
        lines.append(
            f"| {c.run_dir.name} | {c.label} | {f:.3g} +- {e:.2g} | {c.floor:.3g} | {c.est:.2g} |"
        )
    if se > 0:
        lines += [
            "",
            f"The annealed run ends {diff:.3g} below the constant one ({diff / se:.1f} "
            "standard errors of the difference).",
        ]
    return [*lines, ""]


def _median_ratio(points: Sequence[LawPoint]) -> str:
    """``median [min, max]`` of measured / predicted floor over `points`."""
    r = np.array([p.measured / p.predicted for p in points if p.predicted > 0])
    if not r.size:
        return "n/a"
    return f"{np.median(r):.2g} (median; {r.min():.2g} to {r.max():.2g})"


def laws_markdown(
    plan: dict[str, Any],
    laws: Laws,
    image: str,
    command: str,
    comparison: Comparison | None = None,
    comparison_image: str = "",
    reproduce: Sequence[str] = (),
) -> str:
    """The page: figure, the fitted slopes against the predicted ones, the constant vs
    annealed panel (when given), where the laws hold and break, the points, and the
    commands that reproduce it (`reproduce`: the runs of the panel)."""
    spec = plan.get("spec") or {}
    name = spec.get("name") or plan.get("name") or "sweep"

    def verdict(fit: PowerFit, pred: PowerFit) -> str:
        if not math.isfinite(fit.lo):
            return "too few points for an interval"
        inside = fit.covers(pred.slope)
        return (
            "the prediction's slope is inside the interval"
            if inside
            else "the prediction's slope is OUTSIDE the interval"
        )

    floor_verdict = verdict(laws.floor_measured, laws.floor_predicted)
    tau_verdict = verdict(laws.tau_measured, laws.tau_predicted)
    n_floor = sum(not p.floor_issue for p in laws.points)
    n_tau = sum(not p.tau_issue for p in laws.points)
    lines = [
        "# Plateau laws",
        "",
        "Generated by `tdlens laws`; do not edit by hand. How the critic's noise floor and",
        "its relaxation time scale with the step `eta = alpha_w s B T` and the batch `B`",
        "(Bordelon et al., NeurIPS 2023, for a fixed policy; here the policy moves), each run",
        "measured against its own prediction ([the model](model.md) §6.1). Back to the",
        "[regime atlas](atlas.md).",
        "",
        f"![plateau laws]({image})",
        "",
        "| law | measured slope, 95% interval | predicted slope | theory |",
        "| --- | --- | --- | --- |",
        f"| value_gap^2 - est^2 ~ (eta / B)^k | {laws.floor_measured.text()} | "
        f"{laws.floor_predicted.slope:.3g} | 1 ({floor_verdict}) |",
        f"| relaxation time ~ (1 / eta)^k | {laws.tau_measured.text()} | "
        f"{laws.tau_predicted.slope:.3g} | 1 ({tau_verdict}) |",
        "",
        "Measured: the mean over the second half's probes of `value_gap^2 - est^2` (`est =",
        "value_noise_floor / 2`, the probe's own w# error, removed); the iterations after the",
        "first probe at which the excess over the predicted floor falls to 1/e. Predicted:",
        "`value_gap_floor^2` and `effective_timescale` of the same run. The effective batch",
        "is B trajectories: steps within a trajectory are correlated, so the prediction",
        "estimates the noise per trajectory.",
        "",
        f"Fitted: {n_floor} of {len(laws.points)} runs for the floor, {n_tau} for the",
        "relaxation time. A run counts when its own probe says the design resolves it: the",
        f"step at most {NEAR_CRITICAL:g} / `eig_max_abs` (half the critical step),",
        f"the floor at least {RESOLVE_FACTOR:g} x F/2 and the predicted mean path at most",
        f"{REACH_RATIO:g} x the floor when the second half starts; a relaxation time no",
        "shorter than the probe interval and a first gap that falls by e clear of the noise. The",
        "others are hollow in the figure and their reason is in the table below.",
        "",
    ]
    if comparison is not None:
        lines += _comparison_lines(comparison, comparison_image)
    near = [p for p in laws.points if "critical" in p.floor_issue]
    fitted = [p for p in laws.points if not p.floor_issue]
    lines += [
        "## Where the laws hold and where they break",
        "",
        "- They hold well below the critical step, once the run has relaxed for a few",
        "  `effective_timescale`s and while its floor stands above the probe's own error",
        "  F/2 (the fitted runs above).",
        "- Near the critical step (`eta` close to `critical_step`) the floor grows faster",
        "  than `eta / B` (the `eta^2 A S A` terms of the noise sum no longer vanish) and",
        "  the relaxation time stops following `1 / eta`: keep the swept steps well below it.",
        *(
            [
                f"  Here: measured / predicted floor {_median_ratio(near)} over the {len(near)}"
                f" runs past half the critical step, {_median_ratio(fitted)} over the"
                f" {len(fitted)} fitted ones.",
            ]
            if near and fitted
            else []
        ),
        "- Under tracking (`beta > 0`) the fixed point moves with the policy; when it moves",
        "  faster than the critic relaxes (`plateau:moving-target`) the gap is set by the",
        "  drift, not by the noise, and falls with a larger step instead of rising.",
        "- Off-policy, the variance of `rho` scales the noise covariance: a run with heavy",
        "  ratio tails (`mean_rho2` far above 1, clipping) sits above the line of its batch.",
        "- Annealing removes the floor: with `schedules.alpha_w.kind` set the noise the",
        "  later, smaller steps add falls with them, and the prediction follows the schedule.",
        "",
        "## Reproduce",
        "",
        "```",
        f"tdlens sweep configs/sweeps/{name}.yaml --jobs 2 --output-dir OUT",
        *reproduce,
        command,
        "```",
        "",
        "## Runs",
        "",
        "| run | alpha_w | B | seed | eta / B | measured | predicted | F/2 | tau measured "
        "| tau predicted | left out of the fit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in laws.points:
        issues = "; ".join(
            f"{what}: {why}"
            for what, why in (("floor", p.floor_issue), ("tau", p.tau_issue))
            if why
        )
        lines.append(
            f"| {p.run_id} | {p.alpha_w:.4g} | {p.trajectories} | {p.seed} | {p.x:.4g} | "
            f"{p.measured:.3g} +- {p.measured_se:.2g} | {p.predicted:.3g} | {p.est:.2g} | "
            f"{p.tau_measured:.3g} | {p.tau_predicted:.3g} | {issues} |"
        )
    if laws.skipped:
        lines += [
            "",
            f"Left out (not complete, or fewer than 3 probes): {', '.join(laws.skipped)}.",
        ]
    return "\n".join(lines) + "\n"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def write_laws(
    sweep_dir: str | Path,
    docs: str | Path,
    command: str | None = None,
    compare: tuple[Path, Path] | None = None,
    reproduce: Sequence[str] = (),
) -> Laws:
    """Read the sweep (and the `compare` pair: constant, annealed run) and write the page
    `docs` with its figures in ``<docs stem>/``; everything is read and drawn before the
    first file is written."""
    sweep_dir, docs = Path(sweep_dir), Path(docs)
    plan, laws = read_laws(sweep_dir)
    cmp = compare_runs(*compare) if compare is not None else None
    images = {"laws.png": _png(laws_figure(laws))}
    if cmp is not None:
        images["annealing.png"] = _png(comparison_figure(cmp))
    command = command or " ".join(
        shlex.quote(p) for p in ("tdlens", "laws", str(sweep_dir), "--docs", str(docs))
    )
    page = laws_markdown(
        plan,
        laws,
        f"{docs.stem}/laws.png",
        command,
        cmp,
        f"{docs.stem}/annealing.png",
        reproduce,
    )
    image_dir = docs.parent / docs.stem
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        atomic_write_bytes(image_dir / name, data)
    atomic_write_text(docs, page)
    return laws
