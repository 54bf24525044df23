"""Behavioural sanity suite and the base-check matrix C0..C7 (docs/model.md §10).

Every check runs short runs and asserts what the run's own data show — every ratio,
every TD target, bit-identity of frozen parameters, the exact geometric decay of the
tracking gap, a variance ratio against its standard error — never what the config says.
Each check states the source of its tolerance next to it:
- EXACT: the quantity is computed exactly (e.g. exp(0) == 1): compared with ==;
- ROUNDING: equal in exact arithmetic, so it may differ by float64 rounding (rel 1e-12);
- STATISTICAL: a sampling estimate; the tolerance is a multiple of its standard error.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import RunConfig, apply_overrides, parse_config
from tdlens.features import make_feature_maps
from tdlens.learner import IterationResult, gradients, init_params
from tdlens.pages.kit import Html, esc, table
from tdlens.pages.kit import page as kit_page
from tdlens.report import write_report
from tdlens.report.theory import ExpectedDynamics, expected_dynamics
from tdlens.rundir.files import atomic_write_json, atomic_write_text
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner

ROUNDING_RTOL = 1e-12
"""Relative tolerance for identities that hold in exact arithmetic (float64 rounding)."""
Z_LIMIT = 4.0
"""Statistical checks pass within this many standard errors (two-sided p ~ 6e-5)."""


@dataclass
class CheckResult:
    """One check's verdict with what was observed and what was expected."""

    name: str
    passed: bool
    observed: str
    expected: str
    tolerance: str
    run_dirs: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": "PASS" if self.passed else "FAIL",
            "observed": self.observed,
            "expected": self.expected,
            "tolerance": self.tolerance,
            "run_dirs": [str(p) for p in self.run_dirs],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Observed:
    """What a run showed, gathered through the runner's on_iteration hook."""

    results: list[IterationResult] = field(default_factory=list)

    def __call__(self, n: int, result: IterationResult) -> None:
        # the runner reuses the feature buffers of a batch in the next iteration: keep copies
        batch = replace(
            result.batch, phi=result.batch.phi.copy(), bar_phi=result.batch.bar_phi.copy()
        )
        self.results.append(replace(result, batch=batch))


@dataclass
class SuiteContext:
    base: RunConfig
    out_dir: Path

    def config(self, *overrides: str) -> RunConfig:
        data = apply_overrides(self.base.to_dict(), list(overrides))
        return parse_config(data)

    def run(self, name: str, *overrides: str, keep: bool = False) -> tuple[Path, Observed]:
        """Run a variant of the base config into ``out_dir/name``; observe every iteration."""
        cfg = self.config(f"name={name}", *overrides)
        observed = Observed()
        run_dir = self.out_dir / name
        Runner(
            cfg, run_dir, handle_signals=False, on_iteration=observed, write_report=write_report
        ).run()
        return run_dir, observed


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return list(load_run(run_dir).curves.rows)


def _probe_rows(run_dir: Path, probe: str) -> list[dict[str, Any]]:
    return list(load_run(run_dir).probe(probe).rows)


# ----------------------------------------------------------------------------- checks


def check_on_policy(ctx: SuiteContext) -> CheckResult:
    """beta=1, sigma_mu = sigma_pi, zero offset: mu == pi at every iteration, so
    rho == 1 at every step (EXACT: log pi - log mu = 0), tracking_gap == 0, mean_rho2 == 1,
    and the distribution probe's action KL == 0 and TV == 0 (EXACT)."""
    s = ctx.base.sigma_pi
    run_dir, obs = ctx.run("on_policy", "beta=1", f"sigma_mu={s}", "theta_mu_offset_scale=0")
    not_one = sum(int(np.count_nonzero(r.batch.rho_raw != 1.0)) for r in obs.results)
    steps = sum(r.batch.rho_raw.size for r in obs.results)
    rows = _rows(run_dir)
    gaps = [r["tracking_gap"] for r in rows]
    rho2 = [r["mean_rho2"] for r in rows]
    dist = _probe_rows(run_dir, "distribution_probe")
    kl = [r.get("dist_action_kl") for r in dist]
    tv = [r.get("dist_action_tv") for r in dist]
    passed = (
        not_one == 0
        and all(g == 0.0 for g in gaps)
        and all(v == 1.0 for v in rho2)
        and len(dist) > 0
        and all(v == 0.0 for v in kl)
        and all(v == 0.0 for v in tv)
    )
    return CheckResult(
        "on_policy",
        passed,
        f"{not_one} of {steps} ratios != 1; max tracking_gap {max(gaps):.3g}; mean_rho2 in "
        f"[{min(rho2):.17g}, {max(rho2):.17g}]; max |KL| {_max_abs(kl)}, max |TV| "
        f"{_max_abs(tv)} over {len(dist)} probes",
        "rho == 1 at every step, tracking_gap == 0, mean_rho2 == 1, KL == TV == 0",
        "EXACT",
        [run_dir],
    )


def _td_targets_equal_rewards(obs: Observed) -> tuple[int, int, float]:
    """Count steps whose TD target as the learner used it, ``delta_t + Q(phi_t)``, is not
    its reward ``r_t`` to float rounding (relative to |r| + |Q|)."""
    bad, total, worst = 0, 0, 0.0
    for res in obs.results:
        r = res.batch.r
        err = np.abs(res.delta + res.q_t - r)
        scale = np.abs(r) + np.abs(res.q_t) + 1e-300
        worst = max(worst, float(np.max(err / scale)))
        bad += int(np.count_nonzero(err > ROUNDING_RTOL * scale))
        total += r.size
    return bad, total, worst


def check_no_bootstrap(ctx: SuiteContext) -> CheckResult:
    """gamma = 0: every TD target the learner used, ``delta_t + Q(phi_t)``, equals its
    reward (ROUNDING), and the fixed point probe solves E[rho phi phi^T] w = E[rho r phi]
    to its solver tolerance."""
    run_dir, obs = ctx.run("no_bootstrap", "gamma=0")
    bad, total, worst = _td_targets_equal_rewards(obs)
    fp = _probe_rows(run_dir, "fixed_point_probe")
    residuals = [r.get("residual") for r in fp]
    tol = ctx.base.probes.fixed_point.tol
    fp_ok = len(fp) > 0 and all(v is not None and v <= tol for v in residuals)
    return CheckResult(
        "no_bootstrap",
        bad == 0 and fp_ok,
        f"{bad} of {total} targets differ from r (worst relative {worst:.2g}); fixed point "
        f"residual at most {_max_abs(residuals)} over {len(fp)} probes",
        f"target == r at every step; fixed point residual <= {tol:g}",
        f"ROUNDING 1e-12 (targets), solver tolerance {tol:g} (fixed point)",
        [run_dir],
    )


def _max_abs(values: list[Any]) -> str:
    """``max |v|`` of probe cells with 4 significant digits (``-`` when none; ``nan`` when
    any is missing, so a missing value is never hidden by the maximum)."""
    if not values:
        return "-"
    if any(v is None or not math.isfinite(v) for v in values):
        return "nan"
    return f"{max(abs(v) for v in values):.4g}"


def _gap_ratios(rows: list[dict[str, Any]], gap0: float) -> list[float]:
    gaps = [gap0] + [r["tracking_gap"] for r in rows]
    return [b / a for a, b in itertools.pairwise(gaps) if a > 0]


def _tracking_check(ctx: SuiteContext, name: str, beta: float, offset: float = 0.3) -> CheckResult:
    """alpha_pi = 0: theta_pi bit-identical (EXACT) and each iteration multiplies the
    squared tracking gap by exactly (1 - beta)^2 (ROUNDING), so after n iterations it is
    (1 - beta)^(2n) times its start."""
    over = ("alpha_pi=0", f"beta={beta}", f"theta_mu_offset_scale={offset}", "theta_radius=0")
    cfg = ctx.config(f"name={name}", *over)
    start = init_params(cfg, make_feature_maps(cfg))
    run_dir, obs = ctx.run(name, *over)
    moved = sum(int(not np.array_equal(r.params.theta_pi, start.theta_pi)) for r in obs.results)
    gap0 = float(np.sum((start.theta_pi - start.theta_mu) ** 2) / start.theta_pi.shape[0])
    ratios = _gap_ratios(_rows(run_dir), gap0)
    want = (1 - beta) ** 2
    worst = max((abs(r / want - 1) for r in ratios), default=math.inf)
    passed = moved == 0 and len(ratios) == len(obs.results) and worst <= ROUNDING_RTOL * 10
    return CheckResult(
        name,
        passed,
        f"theta_pi changed in {moved} iterations; {len(ratios)} gap ratios, worst relative "
        f"deviation from {want:.15g} {worst:.2g}",
        f"theta_pi bit-identical; every gap ratio == (1 - beta)^2 = {want:.15g}",
        "EXACT (theta_pi), ROUNDING 1e-11 relative (gap ratios)",
        [run_dir],
    )


def check_fixed_pi(ctx: SuiteContext) -> CheckResult:
    return _tracking_check(ctx, "fixed_pi", beta=ctx.base.beta if ctx.base.beta > 0 else 0.2)


def _critical_alpha_w(ctx: SuiteContext, name: str, *overrides: str) -> float:
    """The largest stable alpha_w from a one-iteration pilot run's stability probe."""
    pilot, _ = ctx.run(
        f"{name}_pilot",
        *overrides,
        "outer_iters=1",
        "probes.distribution.enabled=false",
        "probes.rho_audit.enabled=false",
    )
    rows = _probe_rows(pilot, "stability_probe")
    value = rows[-1].get("critical_alpha_w") if rows else None
    if value is None or not math.isfinite(value):
        raise RuntimeError(f"{name}: the pilot run's stability probe gave no critical step")
    return float(value)


def check_full_triad_short(ctx: SuiteContext) -> CheckResult:
    """The base config with actor, critic and tracking all on, alpha_w at a fifth of the
    critical step (so that the critic learns within the short run instead of being
    frozen): generic health PASS."""
    alpha_w = 0.2 * _critical_alpha_w(ctx, "full_triad_short")
    run_dir, _ = ctx.run("full_triad_short", f"alpha_w={alpha_w:.6g}")
    health = load_run(run_dir).report.get("health", {})
    status = health.get("status")
    return CheckResult(
        "full_triad_short",
        status == "PASS",
        f"health {status}" + (f": {'; '.join(health['reasons'])}" if health.get("reasons") else ""),
        "health PASS",
        "the report's health checks",
        [run_dir],
    )


def _update_variance(obs: Observed, w0: np.ndarray) -> tuple[float, float]:
    """Total variance over iterations of the critic update the learner applied,
    ``Delta w_n = w_{n+1} - w_n``, and its standard error (delta method)."""
    ws = [w0] + [r.params.w for r in obs.results]
    x = np.diff(np.asarray(ws), axis=0)
    q = np.sum((x - x.mean(axis=0)) ** 2, axis=1)
    M = len(q)
    return float(q.mean() * M / (M - 1)), float(q.std(ddof=1) / math.sqrt(M))


def check_batch_scaling(ctx: SuiteContext, iters: int = 160) -> CheckResult:
    """Same seeds, B=1 vs B=4, policies frozen (alpha_pi = beta = 0) and the critic moving
    slowly: the update the learner applies is a mean over B iid trajectories, so its
    variance across iterations shrinks 4x (STATISTICAL: |ratio - 4| < Z_LIMIT standard
    errors of the ratio, delta method)."""
    frozen = ("alpha_pi=0", "beta=0", f"outer_iters={iters}", "probes.enabled=false")
    d1, o1 = ctx.run("batch_scaling_B1", "trajectories=1", *frozen)
    d4, o4 = ctx.run("batch_scaling_B4", "trajectories=4", *frozen)
    cfg = ctx.config(*frozen)
    w0 = init_params(cfg, make_feature_maps(cfg)).w
    v1, se1 = _update_variance(o1, w0)
    v4, se4 = _update_variance(o4, w0)
    ratio = v1 / v4
    se = ratio * math.hypot(se1 / v1, se4 / v4)
    passed = abs(ratio - 4.0) < Z_LIMIT * se
    return CheckResult(
        "batch_scaling",
        passed,
        f"Var(B=1)/Var(B=4) = {ratio:.3f} +- {se:.3f} over {iters} iterations",
        "4",
        f"STATISTICAL: within {Z_LIMIT} standard errors (delta method)",
        [d1, d4],
    )


def _all_rho_one(obs: Observed) -> tuple[int, int]:
    bad = sum(int(np.count_nonzero(r.batch.rho_raw != 1.0)) for r in obs.results)
    return bad, sum(r.batch.rho_raw.size for r in obs.results)


def check_c0(ctx: SuiteContext) -> CheckResult:
    """C0 on-policy critic only (beta=1, equal sigmas, alpha_pi=0): rho == 1 at every
    step and theta_pi bit-identical (EXACT)."""
    s = ctx.base.sigma_pi
    over = ("beta=1", f"sigma_mu={s}", "theta_mu_offset_scale=0", "alpha_pi=0")
    cfg = ctx.config(*over)
    start = init_params(cfg, make_feature_maps(cfg))
    run_dir, obs = ctx.run("C0_on_policy_critic", *over)
    bad, total = _all_rho_one(obs)
    moved = sum(int(not np.array_equal(r.params.theta_pi, start.theta_pi)) for r in obs.results)
    return CheckResult(
        "C0_on_policy_critic",
        bad == 0 and moved == 0,
        f"{bad} of {total} ratios != 1; theta_pi changed in {moved} iterations",
        "rho == 1 everywhere; theta_pi never changes",
        "EXACT",
        [run_dir],
    )


def check_c1(ctx: SuiteContext) -> CheckResult:
    """C1 on-policy actor on (beta=1, equal sigmas, alpha_pi > 0): the actor learns
    (theta_pi moves) while mu follows exactly: rho == 1 and tracking_gap == 0 (EXACT)."""
    s = ctx.base.sigma_pi
    alpha_pi = ctx.base.alpha_pi if ctx.base.alpha_pi > 0 else 0.05
    over = ("beta=1", f"sigma_mu={s}", "theta_mu_offset_scale=0", f"alpha_pi={alpha_pi}")
    run_dir, obs = ctx.run("C1_on_policy_actor", *over)
    bad, total = _all_rho_one(obs)
    rows = _rows(run_dir)
    moves = [r["delta_theta_pi_norm"] for r in rows]
    gaps = [r["tracking_gap"] for r in rows]
    return CheckResult(
        "C1_on_policy_actor",
        bad == 0 and all(g == 0.0 for g in gaps) and all(m > 0 for m in moves),
        f"{bad} of {total} ratios != 1; max tracking_gap {max(gaps):.3g}; "
        f"min |delta theta_pi| {min(moves):.3g}",
        "rho == 1 everywhere, tracking_gap == 0, theta_pi moves every iteration",
        "EXACT",
        [run_dir],
    )


def check_c2(ctx: SuiteContext) -> CheckResult:
    """C2 fixed behaviour (beta=0, theta_mu offset 0.5, sigma_mu 0.35, sigma_pi 0.2):
    theta_mu bit-identical (EXACT); the sample moments of the unclipped ratio match their
    closed forms for the actual per-state means, E_mu[rho] = 1 and E_mu[rho^2] =
    mean_s prod_d sigma_mu^2/(sigma_pi sqrt(2 sigma_mu^2 - sigma_pi^2)) exp(dm^2/(2
    sigma_mu^2 - sigma_pi^2)) (STATISTICAL: |z| < Z_LIMIT)."""
    from tdlens.policy import rho_moments

    over = (
        "beta=0",
        "theta_mu_offset_scale=0.5",
        "sigma_mu=0.35",
        "sigma_pi=0.2",
        "trajectories=16",
        "horizon=100",
        "probes.enabled=false",
    )
    cfg = ctx.config(*over)
    start = init_params(cfg, make_feature_maps(cfg))
    run_dir, obs = ctx.run("C2_fixed_behaviour", *over)
    moved = sum(int(not np.array_equal(r.params.theta_mu, start.theta_mu)) for r in obs.results)
    rho = np.concatenate([r.batch.rho_raw.ravel() for r in obs.results])
    theory2 = np.concatenate(
        [rho_moments(r.batch.m_pi, 0.2, r.batch.m_mu, 0.35)[1].ravel() for r in obs.results]
    )
    # sigma_pi < sigma_mu bounds every ratio: rho_i <= sup_u pi/mu at its own state. A
    # z-test alone cannot reject an inverted ratio, whose moments are infinite.
    sup = np.concatenate(
        [_rho_sup_per_step(r.batch.m_pi, 0.2, r.batch.m_mu, 0.35) for r in obs.results]
    )
    over_sup = int(np.sum(rho > sup * (1 + 1e-9)))
    n = rho.size
    z1 = (rho.mean() - 1.0) / (rho.std(ddof=1) / math.sqrt(n))
    z2 = ((rho**2 - theory2).mean()) / ((rho**2 - theory2).std(ddof=1) / math.sqrt(n))
    return CheckResult(
        "C2_fixed_behaviour",
        moved == 0 and over_sup == 0 and abs(z1) < Z_LIMIT and abs(z2) < Z_LIMIT,
        f"theta_mu changed in {moved} iterations; {over_sup} of {n} ratios above their "
        f"supremum; E[rho] = {rho.mean():.4f} (z {z1:.2f}); "
        f"E[rho^2] - theory = {(rho**2 - theory2).mean():.4f} (z {z2:.2f})",
        "theta_mu fixed; every rho <= its supremum; E[rho] = 1 and E[rho^2] = closed form",
        f"EXACT (theta_mu, supremum); STATISTICAL |z| < {Z_LIMIT}",
        [run_dir],
    )


def _rho_sup_per_step(
    m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float
) -> np.ndarray:
    """``sup_u N(u; m_pi, sigma_pi^2 I) / N(u; m_mu, sigma_mu^2 I)`` per step (sigma_pi <
    sigma_mu): ``(sigma_mu/sigma_pi)^d exp(||m_pi - m_mu||^2 / (2 (sigma_mu^2 -
    sigma_pi^2)))``, flattened."""
    d = m_pi.shape[-1]
    sq = np.sum((m_pi - m_mu) ** 2, axis=-1).ravel()
    return (sigma_mu / sigma_pi) ** d * np.exp(sq / (2 * (sigma_mu**2 - sigma_pi**2)))


def check_c3(ctx: SuiteContext) -> CheckResult:
    res = _tracking_check(ctx, "C3_tracking_beta_0.1", beta=0.1)
    return res


def check_c4(ctx: SuiteContext) -> CheckResult:
    return _tracking_check(ctx, "C4_tracking_beta_0.5", beta=0.5)


def check_c5(ctx: SuiteContext) -> CheckResult:
    """C5 gamma = 0: every TD target the learner used equals its reward (ROUNDING)."""
    run_dir, obs = ctx.run("C5_gamma_0", "gamma=0", "probes.enabled=false")
    bad, total, worst = _td_targets_equal_rewards(obs)
    return CheckResult(
        "C5_gamma_0",
        bad == 0,
        f"{bad} of {total} targets differ from r (worst relative {worst:.2g})",
        "target == r at every step",
        "ROUNDING 1e-12",
        [run_dir],
    )


def _step_identity(ctx: SuiteContext, name: str, B: int) -> tuple[CheckResult, Observed]:
    """The critic update is exactly alpha_w / (B T) * sum rho delta phi (ROUNDING), the
    `mean` step normalisation, recomputed from the observed batch."""
    run_dir, obs = ctx.run(name, f"trajectories={B}", "probes.enabled=false", "outer_iters=8")
    cfg = ctx.config(f"trajectories={B}")
    worst = 0.0
    prev_w = init_params(cfg, make_feature_maps(cfg)).w
    for res in obs.results:
        G_w, _ = gradients(res.batch, res.delta, cfg.sigma_pi)
        want = cfg.alpha_w / (B * cfg.horizon) * G_w
        got = res.params.w - prev_w
        worst = max(worst, float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-300)))
        prev_w = res.params.w
    passed = worst < 1e-9
    return (
        CheckResult(
            name,
            passed,
            f"max relative deviation of the critic update from alpha_w/(B T) G_w: {worst:.2g}",
            "update == alpha_w / (B T) * G_w",
            "ROUNDING (1e-9: w carries the update's rounding)",
            [run_dir],
        ),
        obs,
    )


def check_c6(ctx: SuiteContext) -> CheckResult:
    """C6 batch B=1: the update is the one-trajectory mean (step identity)."""
    return _step_identity(ctx, "C6_batch_B1", 1)[0]


def check_c7(ctx: SuiteContext) -> CheckResult:
    """C7 batch B=4: the update is the four-trajectory mean (step identity); the variance
    scaling itself is the batch_scaling check."""
    return _step_identity(ctx, "C7_batch_B4", 4)[0]


LEARNING = (
    "alpha_pi=0",
    "beta=1",
    "theta_mu_offset_scale=0",
    "gamma=0.9",
    "trajectories=8",
    "horizon=100",
    "env.feature_dim=64",
    "w_init_scale=1.0",
    "probes.fixed_point.batch_size=16384",
    "probes.stability.batch_size=16384",
    "probes.distribution.enabled=false",
)
"""Learning check: critic only, on-policy, gamma 0.9, D=64 and a large probe batch so the
fixed point is sharp (value_noise_floor well below the initial value_gap, and the
predicted floor dominated by the trainer's own noise, not by the w# error)."""


def check_learning(ctx: SuiteContext, iters: int = 16) -> CheckResult:
    """Critic only, on-policy, alpha_w at half the critical step of a pilot's stability
    probe. The measured value_gap must fall (to below half its start, by more than twice
    the fixed point's value_noise_floor) and lie inside the band the first probe predicts
    for every later probe: the expected dynamics ``e <- (I - eta A) e`` from that probe's
    A and w#, with the minibatch-noise floor of the trainer's update and the w# sampling
    error (STATISTICAL: :mod:`tdlens.probes.expected`), and over the second half settle
    where predicted (:func:`settled_ratio` within a factor SETTLE_TOL). A trainer that
    applies a quarter of its step leaves the band; one that bootstraps with another gamma
    settles above the predicted floor (gamma 0.5 for 0.9; gamma 0.8 is too close here)."""
    sigma = f"sigma_mu={ctx.base.sigma_pi}"
    alpha_w = 0.5 * _critical_alpha_w(ctx, "learning", *LEARNING, sigma)
    run_dir, _ = ctx.run(
        "learning",
        *LEARNING,
        sigma,
        f"alpha_w={alpha_w:.6g}",
        f"outer_iters={iters}",
        "probes.every=2",
    )
    rows = _probe_rows(run_dir, "fixed_point_probe")
    gaps = {int(r["iter"]): r["value_gap"] for r in rows}
    floor = max(r["value_noise_floor"] for r in rows)
    dyn = expected_dynamics(load_run(run_dir))
    later = dyn.probe_iters > dyn.anchor
    inside = dyn.inside[later]
    ratios = dyn.ratio_first[later]
    start, end = gaps[min(gaps)], gaps[max(gaps)]
    falls = end < 0.5 * start and start - end > 2 * floor
    follows = bool(inside.size) and bool(inside.all())
    span = f"{ratios.min():.3g}-{ratios.max():.3g}" if ratios.size else "n/a"
    settled = settled_ratio(dyn)
    settles = abs(math.log(settled)) <= math.log(SETTLE_TOL) if math.isfinite(settled) else False
    return CheckResult(
        "learning",
        falls and follows and settles,
        f"alpha_w {alpha_w:.4g}: value_gap {start:.4g} -> {end:.4g}; inside the predicted band "
        f"at {int(inside.sum())} of {inside.size} later probes (measured/predicted {span}); "
        f"second half: mean value_gap^2 / predicted {settled:.3g}; "
        f"value_noise_floor {floor:.3g}",
        "value_gap falls below half its start, stays inside the expected-dynamics band and "
        f"settles where predicted (second-half ratio within x{SETTLE_TOL:g})",
        "STATISTICAL: band of the mean path +- 2 x (minibatch noise + w# error); settled "
        f"ratio within x{SETTLE_TOL:g} (~4 standard errors of the predicted floor)",
        [run_dir],
    )


SETTLE_TOL = 2.0
"""Allowed factor between the measured and the predicted mean value_gap^2 over the second
half of the learning run. The prediction's floor is estimated from the batch's
trajectories (C = 40 clusters: relative SE of the noise variance ~sqrt(2 / 39) = 0.23)
and the half-batch w# difference (~D = 64 directions: ~0.09), so a factor 2 is about 4
standard errors. A trainer bootstrapping with gamma 0.5 instead of 0.9 settles at ~2.7x;
one with 0.8 at ~1.04x (its fixed point is that close in value space at these settings),
which no check at this noise level can tell from a correct trainer."""


def settled_ratio(dyn: ExpectedDynamics) -> float:
    """``mean value_gap^2 / mean centre^2`` over the probes of the second half of the
    predicted run (centre = sqrt(mid^2 + noise^2 + est^2), the band's centre)."""
    if not dyn.probe_iters.size:
        return math.nan
    half = dyn.anchor + (dyn.iters[-1] - dyn.anchor) / 2.0
    late = dyn.probe_iters >= half
    centre = np.interp(dyn.probe_iters[late], dyn.iters, dyn.centre)
    if not late.any() or not np.all(centre > 0):
        return math.nan
    return float(np.mean(dyn.value_gap[late] ** 2) / np.mean(centre**2))


SANITY_CHECKS: dict[str, Callable[[SuiteContext], CheckResult]] = {
    "on_policy": check_on_policy,
    "no_bootstrap": check_no_bootstrap,
    "fixed_pi": check_fixed_pi,
    "full_triad_short": check_full_triad_short,
    "learning": check_learning,
    "batch_scaling": check_batch_scaling,
    "C0_on_policy_critic": check_c0,
    "C1_on_policy_actor": check_c1,
    "C2_fixed_behaviour": check_c2,
    "C3_tracking_beta_0.1": check_c3,
    "C4_tracking_beta_0.5": check_c4,
    "C5_gamma_0": check_c5,
    "C6_batch_B1": check_c6,
    "C7_batch_B4": check_c7,
}


# ----------------------------------------------------------------------------- suite


@dataclass
class SuiteResult:
    out_dir: Path
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def run_suite(
    base: RunConfig,
    out_root: Path,
    only: list[str] | None = None,
    on_check: Callable[[CheckResult], None] | None = None,
) -> SuiteResult:
    """Run the checks (all, or `only`) into ``out_root/<timestamp>/<check>/``."""
    names = list(SANITY_CHECKS) if not only else only
    unknown = [n for n in names if n not in SANITY_CHECKS]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; known: {', '.join(SANITY_CHECKS)}")
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    out_dir = Path(out_root) / stamp
    k = 2
    while out_dir.exists():
        out_dir = Path(out_root) / f"{stamp}_{k}"
        k += 1
    out_dir.mkdir(parents=True)
    ctx = SuiteContext(base=base, out_dir=out_dir)
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            res = SANITY_CHECKS[name](ctx)
        except Exception as exc:  # a crashing check is a failing check, reported as such
            res = CheckResult(name, False, f"{type(exc).__name__}: {exc}", "no error", "-")
        res.seconds = time.perf_counter() - t0
        results.append(res)
        if on_check is not None:
            on_check(res)
    suite = SuiteResult(out_dir, results)
    write_summary(suite)
    return suite


def markdown_cell(text: str) -> str:
    """A table cell of SUMMARY.md: ``|`` escaped as ``\\|`` (GitHub-flavoured tables show it
    as ``|``, so ``|measured - predicted|`` stays itself), newlines as spaces."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def write_summary(suite: SuiteResult) -> None:
    """SUMMARY.md, SUMMARY.html (one bsuite-style table) and summary.json."""
    rows = [c.to_dict() for c in suite.checks]
    verdict = "PASS" if suite.passed else "FAIL"
    atomic_write_json(suite.out_dir / "summary.json", {"verdict": verdict, "checks": rows})
    md = [f"# Sanity suite: {verdict}", "", "| check | verdict | observed | expected | tolerance |"]
    md.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [r["name"], r["verdict"], r["observed"], r["expected"], r["tolerance"]]
        md.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    atomic_write_text(suite.out_dir / "SUMMARY.md", "\n".join(md) + "\n")
    table_rows = []
    for r in rows:
        links = " ".join(
            f'<a href="{esc(Path(p).relative_to(suite.out_dir))}/run_report.html">'
            f"{esc(Path(p).name)}</a>"
            for p in r["run_dirs"]
        )
        table_rows.append(
            (r["name"], r["verdict"], r["observed"], r["expected"], r["tolerance"], Html(links))
        )
    header = ("check", "verdict", "observed", "expected", "tolerance", "report")
    passed = sum(r["verdict"] == "PASS" for r in rows)
    failed = ", ".join(r["name"] for r in rows if r["verdict"] != "PASS") or "none"
    card = (
        f'<section class="card" id="verdict"><p><span class="regime {verdict}">{verdict}</span>'
        f" &middot; {passed} of {len(rows)} checks passed; not passed: {esc(failed)}</p>"
        "<p>Each check runs tiny runs whose outcome is known in closed form; its report "
        "link opens the run's own report.</p></section>"
    )
    body = card + table(header, table_rows)
    page = kit_page(f"Sanity suite: {verdict}", body)
    atomic_write_text(suite.out_dir / "SUMMARY.html", page)
