"""Health checks for the sanity runs of docs/model.md §10 (docs/model.md §8): on_policy_expected,
no_bootstrap_expected and fixed_pi_expected.

Each applies only to runs configured for it (else PASS "not applicable") and then
observes the behaviour the configuration implies in the files, never the config alone.
"""

from __future__ import annotations

import numpy as np

from tdlens.pages.fmt import fmt
from tdlens.report.checks import iters_where
from tdlens.report.series_stats import nan_max, nan_min
from tdlens.report.verdicts import FAIL, PASS, WARN, Check
from tdlens.rundir.read import RunData, Table

ON_POLICY_TOL = 1e-12
"""on_policy_expected: |mean_rho - 1|, |mean_rho2 - 1|, tracking_gap, KL, TV must be
below this (they are exactly 0 or 1 on policy; the tolerance only absorbs printing)."""
FIXED_PI_DECAY_RTOL = 1e-6
"""fixed_pi_expected: relative tolerance of tracking_gap[n+1] / tracking_gap[n] = (1-beta)^2."""
FIXED_PI_GAP_FLOOR = 1e-20
"""fixed_pi_expected: rows with tracking_gap below this are left out of the decay test
(float rounding of theta_mu dominates there)."""


def _max_abs_dev(table: Table, column: str, target: float) -> float | None:
    if not table.has(column) or not len(table):
        return None
    values = table.values(column)
    return float(np.max(np.abs(values - target))) if len(values) else None


def check_on_policy_expected(data: RunData) -> Check:
    """On-policy runs (beta = 1, or beta = 0 with alpha_pi = 0; sigma_mu = sigma_pi; zero
    offset): mean_rho = min_rho = max_rho = mean_rho2 = 1 and tracking_gap = 0 on every
    row, and the distribution probe's action KL and TV are 0."""
    cfg = data.cfg
    if cfg is None:
        return Check("on_policy_expected", WARN, "config.json unreadable")
    applies = (
        cfg.sigma_mu == cfg.sigma_pi
        and cfg.theta_mu_offset_scale == 0
        and (cfg.beta == 1 or (cfg.beta == 0 and cfg.alpha_pi == 0))
    )
    if not applies:
        return Check("on_policy_expected", PASS, "not applicable: not an on-policy run")
    targets = {
        "mean_rho": 1.0,
        "min_rho": 1.0,
        "max_rho": 1.0,
        "mean_rho2": 1.0,
        "tracking_gap": 0.0,
    }
    observed: dict[str, float | None] = {
        f"max|{c}-{t:g}|": _max_abs_dev(data.curves, c, t) for c, t in targets.items()
    }
    dist = data.probe("distribution_probe")
    for col in ("dist_action_kl", "dist_action_tv"):
        if dist.has(col):
            observed[f"max|{col}|"] = _max_abs_dev(dist, col, 0.0)
    checked = {k: v for k, v in observed.items() if v is not None}
    if not len(data.curves):
        return Check("on_policy_expected", WARN, "no rows to observe", observed)
    bad = {k: v for k, v in checked.items() if not v <= ON_POLICY_TOL}
    text = ", ".join(f"{k}={fmt(v)}" for k, v in checked.items())
    if bad:
        return Check(
            "on_policy_expected",
            FAIL,
            f"on-policy run is not on policy: {text}",
            observed,
            "on-policy run: " + ", ".join(f"{k}={fmt(v)}" for k, v in bad.items()),
        )
    return Check(
        "on_policy_expected",
        PASS,
        f"rho == 1 and tracking_gap == 0 on all {len(data.curves)} rows: {text}",
        observed,
    )


def check_fixed_pi_expected(data: RunData) -> Check:
    """alpha_pi = 0: delta_theta_pi_norm == 0 on every row; with beta > 0 the tracking gap
    decays as ``tracking_gap[n+1] / tracking_gap[n] = (1 - beta)^2`` (docs/model.md §10)."""
    cfg = data.cfg
    if cfg is None:
        return Check("fixed_pi_expected", WARN, "config.json unreadable")
    if cfg.alpha_pi != 0:
        return Check("fixed_pi_expected", PASS, "not applicable: alpha_pi != 0")
    curves = data.curves
    if not curves.has("delta_theta_pi_norm") or not len(curves):
        return Check("fixed_pi_expected", WARN, "no delta_theta_pi_norm values to observe")
    moved = nan_max(np.abs(curves.values("delta_theta_pi_norm")))
    observed: dict[str, float | None] = {"max_delta_theta_pi_norm": moved}
    problems = [f"max delta_theta_pi_norm = {fmt(moved)} != 0"] if moved != 0 else []
    gap = curves.values("tracking_gap")
    use = (gap[:-1] > FIXED_PI_GAP_FLOOR) & (gap[1:] > FIXED_PI_GAP_FLOOR)
    if cfg.beta > 0 and use.any():
        ratio = gap[1:][use] / gap[:-1][use]
        dev = float(np.max(np.abs(ratio / (1 - cfg.beta) ** 2 - 1)))
        observed["max_rel_dev_decay"] = dev
        if not dev <= FIXED_PI_DECAY_RTOL:
            problems.append(f"tracking_gap ratio deviates from (1-beta)^2 by {fmt(dev)}")
    if problems:
        return Check("fixed_pi_expected", FAIL, "; ".join(problems), observed, problems[0])
    extra = (
        f", tracking gap decays as (1-beta)^2 within {fmt(observed['max_rel_dev_decay'])}"
        if "max_rel_dev_decay" in observed
        else ""
    )
    return Check(
        "fixed_pi_expected",
        PASS,
        f"delta_theta_pi_norm == 0 on all {len(curves)} rows{extra}",
        observed,
    )


def check_no_bootstrap_expected(data: RunData) -> Check:
    """gamma = 0: ``A = E[rho phi phi^T] / sqrt(D)`` is symmetric positive semi-definite, so
    the stability probe sees no eigenvalue below ``-spectral_noise`` (growth_timescale inf),
    and the fixed-point probe solves ``E[rho phi phi^T] w# = E[rho r phi]`` (converged)."""
    cfg = data.cfg
    if cfg is None:
        return Check("no_bootstrap_expected", WARN, "config.json unreadable")
    if cfg.gamma != 0:
        return Check("no_bootstrap_expected", PASS, "not applicable: gamma != 0")
    stab, fp = data.probe("stability_probe"), data.probe("fixed_point_probe")
    observed: dict[str, float | None] = {}
    problems: list[str] = []
    if len(stab) and stab.has("eig_min_real"):
        eig_min = stab.values("eig_min_real")
        noise = stab.values("spectral_noise") if stab.has("spectral_noise") else np.zeros(len(stab))
        observed["min_eig_min_real"] = nan_min(eig_min)
        observed["spectral_noise"] = nan_max(noise) or 0.0
        below = ~(eig_min >= -np.nan_to_num(noise, nan=0.0))
        if below.any():
            where = ", ".join(iters_where(stab, below))
            problems.append(f"eig_min_real < -spectral_noise at iter {where}")
    if len(fp) and fp.has("converged"):
        conv = fp.values("converged")
        observed["fixed_point_not_converged"] = int(np.sum(conv != 1))
        if np.any(conv != 1):
            where = ", ".join(iters_where(fp, conv != 1))
            problems.append(f"fixed point not converged at iter {where}")
    if not observed:
        return Check(
            "no_bootstrap_expected",
            WARN,
            "gamma = 0 but no stability or fixed-point probe rows to observe",
            observed,
        )
    if problems:
        return Check("no_bootstrap_expected", FAIL, "; ".join(problems), observed, problems[0])
    parts = []
    if "min_eig_min_real" in observed:
        parts.append(
            f"A positive semi-definite: min eig_min_real = "
            f"{fmt(observed['min_eig_min_real'])} >= -spectral_noise = "
            f"{fmt(-observed['spectral_noise'])}"
        )
    if "fixed_point_not_converged" in observed:
        parts.append(f"fixed point solved on all {len(fp)} probes")
    return Check("no_bootstrap_expected", PASS, "; ".join(parts), observed)
