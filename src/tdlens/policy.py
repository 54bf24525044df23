"""Linear-Gaussian policies and importance ratios (docs/model.md §3).

Shapes: ``psi [..., N]`` actor features, ``theta [N, 2]``, ``u, m [..., 2]``.
Mean ``m(s) = theta^T psi(s) / sqrt(N)``; the Gaussian draw ``u ~ N(m, sigma^2 I)`` is the
action, or with squashing ``a = v_max tanh(u)``. Densities, scores and ratios are all
taken on ``u``, the action as sampled, before the environment clips it.
"""

from __future__ import annotations

import math

import numpy as np

from tdlens.kernels import policy_means
from tdlens.threads import parallel_map

LOG_2PI = math.log(2.0 * math.pi)


def policy_mean(theta: np.ndarray, psi: np.ndarray, threads: int = 1) -> np.ndarray:
    """``m [..., 2] = psi theta / sqrt(N)`` for ``theta [N, 2]`` or one per row ``[..., N, 2]``.

    Evaluated as per-row dot products (no matrix product) so that a row's value does not
    depend on how many rows are evaluated together, nor on whether the other rows share its
    theta (a chain rolled out alone equals the same chain in a batch). A compiled kernel
    (:func:`tdlens.kernels.policy_means`) sums each dot product in its documented order,
    whatever the shapes (theta broadcast to the rows) and dtype (other than float32 and
    float64: cast to float64). With ``threads > 1`` and at least SPLIT_ROWS rows, the rows
    in `threads` contiguous blocks side by side (the same numbers: rows are independent).
    """
    N = theta.shape[-2]
    if psi.dtype not in _KERNEL_DTYPES:
        psi = psi.astype(np.float64)
    th = np.asarray(theta, dtype=np.float64)
    if th.ndim > 2 and th.shape[:-2] != psi.shape[:-1]:
        shape = np.broadcast_shapes(th.shape[:-2], psi.shape[:-1])
        th = np.broadcast_to(th, (*shape, N, 2))
        psi = np.broadcast_to(psi, (*shape, N))
    m = np.empty((*psi.shape[:-1], 2))
    rows = np.ascontiguousarray(psi).reshape(-1, N)
    th_rows = np.ascontiguousarray(th).reshape(-1, N, 2)
    out = m.reshape(-1, 2)
    R = rows.shape[0]
    if threads <= 1 or R < SPLIT_ROWS:
        policy_means(rows, th_rows, out)
        return m
    bounds = np.linspace(0, R, threads + 1).astype(int)

    def block(k: int) -> None:
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        policy_means(rows[lo:hi], th_rows[lo:hi] if th_rows.shape[0] > 1 else th_rows, out[lo:hi])

    parallel_map(block, range(threads), threads)
    return m


SPLIT_ROWS = 1024
"""Rows from which :func:`policy_mean` splits its rows across threads (the training batch's
are 3216 at the seed settings: ~0.7 ms on one thread, latency-bound sequential sums)."""

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def squash(u: np.ndarray, v_max: float) -> np.ndarray:
    """``a = v_max tanh(u)``."""
    return v_max * np.tanh(u)


def gaussian_log_prob(u: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    """``log N(u; mean, sigma^2 I)`` summed over the action axis."""
    d = u.shape[-1]
    sq = np.sum((u - mean) ** 2, axis=-1)
    return -0.5 * sq / sigma**2 - d * math.log(sigma) - 0.5 * d * LOG_2PI


def log_prob(
    u: np.ndarray, mean: np.ndarray, sigma: float, squash_action: bool = False, v_max: float = 1.0
) -> np.ndarray:
    """log-density of the executed action given its pre-squash draw `u`.

    Without squashing this is the Gaussian log-density of ``a = u``. With squashing,
    ``log pi(a) = log N(u) - sum_i log(v_max (1 - tanh(u_i)^2))`` (change of variables),
    computed stably as ``log(1 - tanh^2 u) = 2 (log 2 - u - softplus(-2u))``.
    """
    logp = gaussian_log_prob(u, mean, sigma)
    if squash_action:
        log_jac = 2.0 * (math.log(2.0) - u - np.logaddexp(0.0, -2.0 * u))
        logp = logp - np.sum(log_jac + math.log(v_max), axis=-1)
    return logp


def score(psi: np.ndarray, u: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    """``grad_theta log pi(a|s) [..., N, 2] = psi (u - m)^T / (sigma^2 sqrt(N))``.

    The tanh Jacobian does not depend on theta, so the score is the same with squashing.
    """
    N = psi.shape[-1]
    return psi[..., :, None] * (u - mean)[..., None, :] / (sigma**2 * math.sqrt(N))


def log_ratio(
    u: np.ndarray, m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float
) -> np.ndarray:
    """``log pi(u|s) - log mu(u|s)`` for two Gaussians (the squash Jacobians cancel)."""
    return gaussian_log_prob(u, m_pi, sigma_pi) - gaussian_log_prob(u, m_mu, sigma_mu)


def importance_ratio(
    u: np.ndarray,
    m_pi: np.ndarray,
    sigma_pi: float,
    m_mu: np.ndarray,
    sigma_mu: float,
    rho_clip: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rho, rho_raw)``: ``rho_raw = exp(log pi - log mu)`` on `u`, ``rho = min(rho_raw,
    rho_clip)`` (no clipping when rho_clip is None)."""
    rho_raw = np.exp(log_ratio(u, m_pi, sigma_pi, m_mu, sigma_mu))
    rho = rho_raw if rho_clip is None else np.minimum(rho_raw, rho_clip)
    return rho, rho_raw


def gaussian_kl(m_p: np.ndarray, sigma_p: float, m_q: np.ndarray, sigma_q: float) -> np.ndarray:
    """``KL(N(m_p, sigma_p^2 I) || N(m_q, sigma_q^2 I))`` per row, d = action dimension.

    ``d [log(sigma_q/sigma_p) + sigma_p^2/(2 sigma_q^2) - 1/2] + ||m_p - m_q||^2/(2 sigma_q^2)``.
    """
    d = m_p.shape[-1]
    sq = np.sum((m_p - m_q) ** 2, axis=-1)
    const = d * (math.log(sigma_q / sigma_p) + sigma_p**2 / (2 * sigma_q**2) - 0.5)
    return const + sq / (2 * sigma_q**2)


def rho_moments(
    m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ``(E_mu[rho], E_mu[rho^2])`` per state for Gaussian pi, mu (docs/model.md §6.5).

    ``E_mu[rho] = 1``. Per dimension, ``E_mu[rho^2] = sigma_mu^2 / (sigma_pi sqrt(2
    sigma_mu^2 - sigma_pi^2)) exp((m_pi - m_mu)^2 / (2 sigma_mu^2 - sigma_pi^2))``; the
    product over the action dimensions; infinite when sigma_pi^2 >= 2 sigma_mu^2.
    """
    d = m_pi.shape[-1]
    first = np.ones(m_pi.shape[:-1])
    denom = 2.0 * sigma_mu**2 - sigma_pi**2
    if denom <= 0:
        return first, np.full(m_pi.shape[:-1], np.inf)
    sq = np.sum((m_pi - m_mu) ** 2, axis=-1)
    base = (sigma_mu**2 / (sigma_pi * math.sqrt(denom))) ** d
    return first, base * np.exp(sq / denom)
