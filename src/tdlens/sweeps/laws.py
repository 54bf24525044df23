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
from tdlens.rundir.read import RunData, load_run
from tdlens.sweeps.plan import read_plan, run_dir

Z_LEVEL = 0.95
"""Confidence level of the fitted slopes' intervals."""
EXPECTED_SLOPES = {"floor": 1.0, "relaxation": 1.0}
"""The laws' slopes well below the critical step: ``m ~ eta / B``, ``tau ~ 1 / eta``."""


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
        tau_predicted=float(fp.values("effective_timescale")[0]),
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
    """Fit both laws: m against eta / B, tau against 1 / eta (module docstring)."""
    x = [p.x for p in points]
    inv_eta = [1.0 / p.eta if p.eta > 0 else math.nan for p in points]
    return Laws(
        points=list(points),
        skipped=list(skipped),
        floor_measured=fit_power_law(x, [p.measured for p in points]),
        floor_predicted=fit_power_law(x, [p.predicted for p in points]),
        tau_measured=fit_power_law(inv_eta, [p.tau_measured for p in points]),
        tau_predicted=fit_power_law(inv_eta, [p.tau_predicted for p in points]),
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


def _scatter(ax: Any, x: np.ndarray, y: np.ndarray, fit: PowerFit, pred: PowerFit) -> None:
    ax.loglog(x, y, "o", ms=4, label="measured")
    xs = np.geomspace(np.nanmin(x), np.nanmax(x), 50)
    if math.isfinite(fit.slope):
        ax.loglog(xs, np.exp(fit.intercept) * xs**fit.slope, "-", label=f"fit, slope {fit.text()}")
    if math.isfinite(pred.slope):
        ax.loglog(
            xs,
            np.exp(pred.intercept) * xs**pred.slope,
            "--",
            label=f"predicted, slope {pred.text()}",
        )
    ax.legend(fontsize=7)


def laws_figure(laws: Laws) -> Figure:
    """Two log-log panels: stationary mean square against eta / B, relaxation time
    against 1 / eta, measured points with their fit and the predicted line."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    pts = laws.points
    _scatter(
        left,
        np.array([p.x for p in pts]),
        np.array([p.measured for p in pts]),
        laws.floor_measured,
        laws.floor_predicted,
    )
    left.set(xlabel="eta / B", ylabel="value_gap^2 - est^2 (second half)", title="noise floor")
    _scatter(
        right,
        np.array([1.0 / p.eta for p in pts]),
        np.array([p.tau_measured for p in pts]),
        laws.tau_measured,
        laws.tau_predicted,
    )
    right.set(xlabel="1 / eta", ylabel="iterations to 1/e of the excess", title="relaxation")
    fig.tight_layout()
    return fig


def laws_markdown(plan: dict[str, Any], laws: Laws, image: str, command: str) -> str:
    """The page: figure, the fitted slopes against the predicted ones, where the laws
    hold and break, the points, and the commands that reproduce it."""
    spec = plan.get("spec") or {}
    name = spec.get("name") or plan.get("name") or "sweep"

    def verdict(fit: PowerFit, pred: PowerFit) -> str:
        if not math.isfinite(fit.lo):
            return "too few points for an interval"
        inside = fit.covers(pred.slope)
        return "the prediction's slope is inside the interval" if inside else "it is NOT"

    floor_verdict = verdict(laws.floor_measured, laws.floor_predicted)
    tau_verdict = verdict(laws.tau_measured, laws.tau_predicted)
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
        "## Where the laws hold and where they break",
        "",
        "- Near the critical step (`eta` close to `critical_step`) the floor grows faster",
        "  than `eta / B` (the `eta^2 A S A` terms of the noise sum no longer vanish) and",
        "  the relaxation time stops following `1 / eta`: keep the swept steps well below it.",
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
        f"tdlens sweep configs/sweeps/{name}.yaml --jobs 2",
        command,
        "```",
        "",
        "## Runs",
        "",
        "| run | alpha_w | B | seed | eta / B | measured | predicted | tau measured "
        "| tau predicted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in laws.points:
        lines.append(
            f"| {p.run_id} | {p.alpha_w:.4g} | {p.trajectories} | {p.seed} | {p.x:.4g} | "
            f"{p.measured:.3g} +- {p.measured_se:.2g} | {p.predicted:.3g} | "
            f"{p.tau_measured:.3g} | {p.tau_predicted:.3g} |"
        )
    if laws.skipped:
        lines += [
            "",
            f"Left out (not complete, or fewer than 3 probes): {', '.join(laws.skipped)}.",
        ]
    return "\n".join(lines) + "\n"


def write_laws(sweep_dir: str | Path, docs: str | Path, command: str | None = None) -> Laws:
    """Read the sweep and write the page `docs` with its figure in ``<docs stem>/laws.png``."""
    sweep_dir, docs = Path(sweep_dir), Path(docs)
    plan, laws = read_laws(sweep_dir)
    image_dir = docs.parent / docs.stem
    image_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    laws_figure(laws).savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(image_dir / "laws.png", buf.getvalue())
    command = command or " ".join(
        shlex.quote(p) for p in ("tdlens", "laws", str(sweep_dir), "--docs", str(docs))
    )
    atomic_write_text(docs, laws_markdown(plan, laws, f"{docs.stem}/laws.png", command))
    return laws
