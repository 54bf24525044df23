"""Are the importance ratios what theory says? (docs/model.md §6.5)

On a chain under mu: ``rho_raw_t [n]`` the unclipped ratios ``pi(u_t|s_t) / mu(u_t|s_t)``
on the actions as sampled, and the per-state policy means ``m_pi, m_mu [n, 2]``. For
Gaussian policies, per state (``policy.rho_moments``):

    E_mu[rho | s] = 1,
    E_mu[rho^2 | s] = prod_dims sigma_mu^2 / (sigma_pi sqrt(2 sigma_mu^2 - sigma_pi^2))
                      * exp(||m_pi - m_mu||^2 / (2 sigma_mu^2 - sigma_pi^2)),
    E_mu[min(rho, c) | s] = P_pi(rho <= c) + c P_mu(rho > c)          (closed form below).

Each residual ``e_t = f(rho_t) - E_mu[f(rho) | s_t]`` has conditional mean 0 given the
past, so the residuals are uncorrelated along the chain (a martingale difference
sequence) and ``z = mean(e) / (std(e) / sqrt(n))`` is asymptotically N(0, 1) even though
the states are autocorrelated. That needs ``Var f(rho) < inf``: for rho,
``sigma_pi^2 < 2 sigma_mu^2``; for rho^2, ``sigma_pi^2 < 4/3 sigma_mu^2`` (E_mu[rho^k] is
finite iff ``sigma_pi^2 < k/(k-1) sigma_mu^2``); min(rho, c) is bounded. A z-score whose
variance is infinite is reported but marked unreliable and left out of the verdict;
``reliable`` is 0 when any is (E_mu[rho^2] itself is infinite when
``sigma_pi^2 >= 2 sigma_mu^2``). Verdict: passed when every reliable |z| <= z_threshold
and the largest ratio does not exceed its supremum ``max_u pi(u)/mu(u)``.
"""

from __future__ import annotations

import math

import numpy as np

from tdlens.config import RunConfig
from tdlens.policy import rho_moments
from tdlens.probes.common import audit_chains, rho_summary
from tdlens.probes.registry import RoundContext
from tdlens.rollout import TDBatch


def _quadratic_log_ratio(
    m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """``log rho(u) = a ||u - c0||^2 + K`` for ``sigma_pi != sigma_mu``: ``(a, c0 [n, d], K [n])``.

    ``a = 1/(2 sigma_mu^2) - 1/(2 sigma_pi^2)``, ``g = m_pi/sigma_pi^2 - m_mu/sigma_mu^2``,
    ``c0 = -g / (2a)``, ``K = ||m_mu||^2/(2 sigma_mu^2) - ||m_pi||^2/(2 sigma_pi^2)
    + d log(sigma_mu/sigma_pi) - ||g||^2 / (4a)``.
    """
    d = m_pi.shape[-1]
    a = 0.5 / sigma_mu**2 - 0.5 / sigma_pi**2
    g = m_pi / sigma_pi**2 - m_mu / sigma_mu**2
    k0 = (
        np.sum(m_mu**2, axis=-1) / (2 * sigma_mu**2)
        - np.sum(m_pi**2, axis=-1) / (2 * sigma_pi**2)
        + d * math.log(sigma_mu / sigma_pi)
    )
    return a, -g / (2 * a), k0 - np.sum(g**2, axis=-1) / (4 * a)


def prob_rho_above(
    c: float,
    m: np.ndarray,
    sigma: float,
    m_pi: np.ndarray,
    sigma_pi: float,
    m_mu: np.ndarray,
    sigma_mu: float,
) -> np.ndarray:
    """``P(rho(u) > c)`` per state for ``u ~ N(m, sigma^2 I)``, ``m, m_pi, m_mu [n, d]``.

    Unequal sigmas: ``{rho > c} = {a ||u - c0||^2 > log c - K}``, a disk or its complement,
    and ``||u - c0||^2 / sigma^2`` is noncentral chi-square (d dof, ``||m - c0||^2/sigma^2``).
    Equal sigmas: ``log rho`` is linear in u, a half-plane (normal tail).

    The normal tail and the noncentral chi-square cdf come from scipy.special (the
    functions scipy.stats' ``norm.sf`` and ``ncx2.cdf`` call, the same bits); only the
    ``sigma_pi > sigma_mu`` complement imports scipy.stats, whose import would cost every
    run ~0.3 s (BENCHMARKS.md, issue 28 session 9).
    """
    from scipy import special

    d = m.shape[-1]
    log_c = math.log(c)
    if math.isclose(sigma_pi, sigma_mu, rel_tol=1e-12):
        diff = m_pi - m_mu
        norm = np.sqrt(np.sum(diff**2, axis=-1))
        loc = np.sum(diff * (m - 0.5 * (m_pi + m_mu)), axis=-1) / sigma_pi**2
        scale = norm / sigma_pi
        safe = np.where(scale > 0, scale, 1.0)
        tail = special.ndtr(-((log_c - loc) / safe))
        return np.where(scale > 0, tail, float(log_c < 0.0))
    a, c0, K = _quadratic_log_ratio(m_pi, sigma_pi, m_mu, sigma_mu)
    radius2 = (log_c - K) / a
    nc = np.sum((m - c0) ** 2, axis=-1) / sigma**2
    x = np.maximum(radius2, 0.0) / sigma**2
    if a > 0:
        from scipy import stats

        return np.where(radius2 < 0, 1.0, stats.ncx2.sf(x, d, nc))
    cdf = np.where(nc != 0, special.chndtr(x, d, nc), special.chdtr(d, x))
    return np.where(radius2 <= 0, 0.0, cdf)


def clipped_rho_mean(
    c: float, m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float
) -> np.ndarray:
    """``E_mu[min(rho, c) | s] = P_pi(rho <= c) + c P_mu(rho > c)`` per state.

    Uses ``E_mu[rho 1{rho <= c}] = P_pi(rho <= c)``.
    """
    above_pi = prob_rho_above(c, m_pi, sigma_pi, m_pi, sigma_pi, m_mu, sigma_mu)
    above_mu = prob_rho_above(c, m_mu, sigma_mu, m_pi, sigma_pi, m_mu, sigma_mu)
    return 1.0 - above_pi + c * above_mu


def rho_supremum(m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float) -> float:
    """``max_s sup_u pi(u|s)/mu(u|s)``: ``exp(K)`` when ``sigma_pi < sigma_mu`` (at equal
    means ``(sigma_mu/sigma_pi)^d``), 1 for identical policies, else infinite."""
    if math.isclose(sigma_pi, sigma_mu, rel_tol=1e-12):
        return 1.0 if np.all(m_pi == m_mu) else math.inf
    if sigma_pi > sigma_mu:
        return math.inf
    _, _, K = _quadratic_log_ratio(m_pi, sigma_pi, m_mu, sigma_mu)
    return float(np.exp(np.max(K)))


def _z(residual: np.ndarray, scale: float = 1.0) -> tuple[float, float]:
    """``(standard error, z)`` of the mean of residuals that should average 0.

    A mean below float rounding of the compared quantity (``1e-12 scale``) counts as 0, so
    exact reductions (pi == mu) never produce 0/0 or rounding-sized infinities.
    """
    n = residual.size
    se = float(np.std(residual, ddof=1) / math.sqrt(n))
    mean = float(np.mean(residual))
    if abs(mean) <= 1e-12 * scale:
        return se, 0.0
    return se, mean / se if se > 0 else math.copysign(math.inf, mean)


def audit_rho(
    rho_raw_t: np.ndarray,
    m_pi: np.ndarray,
    m_mu: np.ndarray,
    sigma_pi: float,
    sigma_mu: float,
    rho_clip: float | None,
    z_threshold: float,
) -> dict[str, float]:
    """The rho_audit columns for ratios sampled under mu (any leading shape, flattened).

    See the module docstring for the equations, the z-scores and the verdict.
    """
    rho = np.asarray(rho_raw_t, dtype=np.float64).reshape(-1)
    d = m_pi.shape[-1]
    m_pi, m_mu = m_pi.reshape(-1, d), m_mu.reshape(-1, d)
    m1, m2 = rho_moments(m_pi, sigma_pi, m_mu, sigma_mu)
    rho_ok = sigma_pi**2 < 2.0 * sigma_mu**2
    rho2_ok = sigma_pi**2 < 4.0 / 3.0 * sigma_mu**2
    se1, z1 = _z(rho - m1)
    se2, z2 = _z(rho**2 - m2, float(np.mean(m2))) if rho_ok else (math.nan, math.nan)
    row = {
        "n": float(rho.size),
        "rho_mean_emp": float(rho.mean()),
        "rho_mean_theory": float(m1.mean()),
        "rho_mean_se": se1,
        "rho_mean_z": z1,
        "rho2_mean_emp": float(np.mean(rho**2)),
        "rho2_mean_theory": float(m2.mean()),
        "rho2_mean_se": se2,
        "rho2_mean_z": z2,
        "rho_max_emp": float(rho.max()),
        "rho_sup_theory": rho_supremum(m_pi, sigma_pi, m_mu, sigma_mu),
        "rho_z_reliable": float(rho_ok),
        "rho2_z_reliable": float(rho2_ok),
    }
    zs = [abs(z) for z, ok in ((z1, rho_ok), (z2, rho2_ok)) if ok]
    row.update(_clip_columns(rho, m_pi, m_mu, sigma_pi, sigma_mu, rho_clip, zs))
    sup_ok = row["rho_max_emp"] <= row["rho_sup_theory"] * (1.0 + 1e-9)
    row["max_abs_z"] = max(zs) if zs else math.nan
    row["z_threshold"] = float(z_threshold)
    row["sup_ok"] = float(sup_ok)
    row["reliable"] = float(rho_ok and rho2_ok)
    row["passed"] = float(sup_ok and all(z <= z_threshold for z in zs))
    return row


def _clip_columns(
    rho: np.ndarray,
    m_pi: np.ndarray,
    m_mu: np.ndarray,
    sigma_pi: float,
    sigma_mu: float,
    rho_clip: float | None,
    zs: list[float],
) -> dict[str, float]:
    """Clipped mean ``E[min(rho, c)]``, its bias ``E[min(rho, c)] - 1`` and z (appends to zs)."""
    if rho_clip is None:
        keys = ("clipped_mean_emp", "clipped_mean_theory", "clip_bias_emp", "clip_bias_theory")
        return {**{k: math.nan for k in keys}, "clipped_mean_se": math.nan, "clipped_mean_z": 0.0}
    clipped = np.minimum(rho, rho_clip)
    theory = clipped_rho_mean(rho_clip, m_pi, sigma_pi, m_mu, sigma_mu)
    se, z = _z(clipped - theory)
    zs.append(abs(z))
    return {
        "clipped_mean_emp": float(clipped.mean()),
        "clipped_mean_theory": float(theory.mean()),
        "clip_bias_emp": float(clipped.mean() - 1.0),
        "clip_bias_theory": float(theory.mean() - 1.0),
        "clipped_mean_se": se,
        "clipped_mean_z": z,
    }


def audit_td_batch(batch: TDBatch, cfg: RunConfig) -> dict[str, float]:
    """Audit the ratios of an existing batch collected under mu (e.g. a trainer batch)."""
    return audit_rho(
        batch.rho_raw,
        batch.m_pi,
        batch.m_mu,
        cfg.sigma_pi,
        cfg.sigma_mu,
        cfg.effective_rho_clip,
        cfg.probes.rho_audit.z_threshold,
    )


def run_round(ctx: RoundContext) -> None:
    """The rho audit of one round (registry ``run``): a fresh chain under mu, its ratios
    against their closed forms, and the histogram array of the raw ratios."""
    cfg = ctx.cfg
    batch = ctx.rolled.td_batch(cfg, ctx.maps, [audit_chains(cfg)], ctx.params.theta_pi, False)
    row = audit_td_batch(batch, cfg)
    row.update(rho_summary(batch.rho, batch.rho_raw, cfg.effective_rho_clip))
    ctx.out.rows["rho_audit"] = row
    ctx.out.arrays[f"rho_hist_{ctx.n:04d}.npy"] = batch.rho_raw[0].copy()
