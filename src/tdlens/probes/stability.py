"""Is the expected critic update contracting? (docs/model.md §6.2)

In expectation over a probe batch the trainer's critic step is
``w <- w + eta (b - A w)`` with ``eta = alpha_w s M``: ``s`` the step scale
(``1/(B T)`` or ``1/(sqrt(B) T)``) and ``M = B T`` the number of terms ``rho delta phi``
the trainer sums (its gradient is ``M (b - A w)`` on its own batch). The Jacobian is
``J = I - eta A``.

stability_proxy (the seed's number) = spectral radius of J by power iteration, per batch
``k`` of k_mc: ``v <- J v / ||J v||`` for power_iters steps from a random unit vector,
estimate ``||J v||`` at the last step, i.e. ``||J^P v_0|| / ||J^(P-1) v_0||`` for
P = power_iters. ``A v`` is applied matrix-free,
``A v = Phi^T (rho * (dPhi v)) / (n sqrt(D))`` with ``Phi, Psi = Phi - gamma BarPhi [n, D]``.
Because ``eta |l| ~ 1e-4`` at the seed settings this is ~1 whatever A is; the spectrum
of A (:mod:`tdlens.probes.spectrum`) says more: critical step and timescales.

When J is that close to I the P products with A are mostly redundant: ``J^i v_0 =
sum_m C(i, m) q_m`` with ``q_m = (-eta A)^m v_0``, whose terms fall like
``(i eta ||A||)^m / m!``. :func:`power_iteration_radius` then sums the series (a handful
of products with A instead of P, each a pass over 64 MB of features at the seed
settings) to float64 rounding, with a rigorous tail bound from :func:`norm_bound_A`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit

from tdlens.config import RunConfig
from tdlens.probes.binomial import KAPPA_MAX, SERIES_TOL, binomial_terms

PROXY_SERIES_TOL = 1e-9
"""The series tail the probe's stability_proxy neglects (:func:`power_iteration_radius`'s
``tol``; SERIES_TOL = 2^-60 is float64 rounding). It moves the proxy by at most ``4 tol``
= 4e-9, against a spread of the proxy across the k_mc batches (stability_proxy_std) of
4.1e-8 in every round of the seed run (D = 2048): a tenth of that spread, a quarter of
the standard error of the mean over k_mc = 8 batches. At the seed settings it takes 2
products with A per batch (the first fused with the norm bound, :func:`first_product`)
instead of 5 at SERIES_TOL and 3 at 1e-12 (each a pass over 64 MB of features); the
proxies of seed rounds moved by at most 6e-14 from 1e-12's (the bound is loose: ``eta
||A||`` is far below its triangle-inequality bound), 1.5e-6 of the spread (BENCHMARKS.md,
"Issue 28, session 10: cpu1")."""


def trainer_terms(cfg: RunConfig) -> int:
    """M = B T, the number of terms the trainer sums into one critic step (docs/model.md §4)."""
    return cfg.trajectories * cfg.horizon


def probe_step_scale(cfg: RunConfig) -> float:
    """stability_probe_step_scale = ``alpha_w s``; must equal cfg.train_step_scale."""
    return cfg.alpha_w * cfg.step_scale


def expected_step(cfg: RunConfig) -> float:
    """``eta = alpha_w s M``: the step of the expected update ``w += eta (b - A w)``."""
    return probe_step_scale(cfg) * trainer_terms(cfg)


def apply_A(phi_t: np.ndarray, dphi_t: np.ndarray, rho_t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``A v = Phi^T (rho * (dPhi v)) / (n sqrt(D))`` for ``phi_t, dphi_t [n, D]``, ``v [D]``.

    Two passes over the batch in the features dtype; the result is float64.
    """
    n, D = phi_t.shape
    y = dphi_t @ v.astype(dphi_t.dtype)
    y *= rho_t.astype(y.dtype)
    return (phi_t.T @ y).astype(np.float64) / (n * math.sqrt(D))


def dense_apply(A32: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> A v`` with a float32 copy ``A32 [D, D]`` of the explicit A (16 MB at D = 2048,
    cache-resident; its rounding, ~1e-7 |A v|, is far below what ``||J v||`` resolves)."""
    return lambda v: (A32 @ v.astype(np.float32)).astype(np.float64)


def norm_bound_A(phi_t: np.ndarray, dphi_t: np.ndarray, rho_t: np.ndarray) -> float:
    """An upper bound on ``||A||_2``: ``sum_i rho_i ||phi_i|| ||dphi_i|| / (n sqrt(D))``.

    ``A`` is the mean of the rank-one terms ``rho_i phi_i dphi_i^T / sqrt(D)`` (rho >= 0),
    so the triangle inequality bounds its operator norm by the mean of their norms. The
    squared row norms are dot products in the features dtype (one pass over the batch);
    the factor ``1 + 1e-3`` covers their rounding (at most ``D eps`` relative, 1.2e-4 for
    float32 at D = 2048).
    """
    n, D = phi_t.shape
    phi_sq = np.vecdot(phi_t, phi_t).astype(np.float64)
    dphi_sq = np.vecdot(dphi_t, dphi_t).astype(np.float64)
    total = float(np.sum(np.abs(rho_t) * np.sqrt(phi_sq * dphi_sq)))
    return _bound_factor(D, phi_t.dtype) * total / (n * math.sqrt(D))


def _bound_factor(D: int, dtype: np.dtype) -> float:
    """:func:`norm_bound_A`'s allowance for the rounding of the squared row norms."""
    return 1.0 + max(1e-3, 4.0 * D * float(np.finfo(dtype).eps))


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _first_product_rows(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    row_norms: np.ndarray,
) -> None:
    """``out = sum_i rho_i (dphi_i . v) phi_i`` and ``row_norms[i] = ||phi_i|| ||dphi_i||``
    for ``phi_t, dphi_t [n, D]``, ``rho_t [n]``, ``v, out [D]`` in the features dtype
    (``row_norms`` float64): each row of both arrays read once.

    Summation order: the dot products ``dphi_i . v``, ``dphi_i . dphi_i`` and ``phi_i .
    phi_i`` are sums in the features dtype reassociated by LLVM's vectoriser (lanes of
    strided partial sums, the same on every run and thread count of one compiled kernel;
    like OpenBLAS's kernels, the lanes may differ between CPU types); ``out`` adds the
    rows in row order, feature by feature (fused multiply-adds where the CPU has them).
    """
    n, D = phi_t.shape
    zero = np.zeros(1, out.dtype)
    for j in range(D):
        out[j] = zero[0]
    for i in range(n):
        p = phi_t[i]
        q = dphi_t[i]
        y = zero[0]
        qq = zero[0]
        pp = zero[0]
        for j in range(D):
            y += q[j] * v[j]
            qq += q[j] * q[j]
        for j in range(D):
            pp += p[j] * p[j]
        c = rho_t[i] * y
        for j in range(D):
            out[j] += c * p[j]
        row_norms[i] = math.sqrt(float(pp) * float(qq))


def first_product(
    phi_t: np.ndarray, dphi_t: np.ndarray, rho_t: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, float]:
    """``(A v, bound)``: :func:`apply_A` of `v` and :func:`norm_bound_A` in one pass over the
    batch (:func:`_first_product_rows`, compiled) instead of four (two BLAS products and
    the two squared row norms). A pass over the 2 x 32 MB of a seed-settings batch is
    memory-bound: ~3.6 ms against ~5.3 ms (CPU, one thread) for the two functions.

    ``A v`` is float64 from a sum in the features dtype, as :func:`apply_A`'s (float32:
    ~1e-6 relative from float64, BLAS ~3e-7); the bound is :func:`norm_bound_A`'s with
    the row norms summed in float64.
    """
    n, D = phi_t.shape
    dtype = phi_t.dtype
    out = np.empty(D, dtype=dtype)
    row_norms = np.empty(n, dtype=np.float64)
    _first_product_rows(phi_t, dphi_t, rho_t.astype(dtype), v.astype(dtype), out, row_norms)
    scale = n * math.sqrt(D)
    bound = _bound_factor(D, dtype) * float(np.sum(np.abs(rho_t) * row_norms)) / scale
    return out.astype(np.float64) / scale, bound


def power_iteration_radius(
    apply: Callable[[np.ndarray], np.ndarray],
    eta: float,
    v0: np.ndarray,
    iters: int,
    norm_bound: float | None = None,
    tol: float = SERIES_TOL,
    first_pass: Callable[[np.ndarray], tuple[np.ndarray, float]] | None = None,
) -> float:
    """Spectral radius estimate of ``J = I - eta A``: ``||J v||`` after `iters` steps of
    ``v <- J v / ||J v||`` from ``v0 / ||v0||`` (vector arithmetic in float64).

    With ``norm_bound >= ||A||_2`` and ``kappa = iters eta norm_bound < 1/2`` the same
    number comes from the binomial series (module docstring): ``u_i = J^i v_0 =
    sum_m C(i, m) q_m``, ``q_{m+1} = -eta A q_m``, summed up to the first m whose tail
    bound ``C(iters, m) ||q_m|| kappa / (1 - kappa)`` is below `tol`
    (:func:`tdlens.probes.binomial.binomial_terms`), and the estimate ``||u_iters|| /
    ||u_(iters-1)||``. Each q is applied normalised, so float32 products never underflow.
    Otherwise (or without a bound) the loop itself.

    The neglected tails ``t_i`` of ``u_i`` (i = iters - 1, iters) have ``||t_i|| <= tol``
    and ``||u_i|| >= (1 - kappa / iters)^i >= 1 - kappa > 1/2``, so the estimate moves by
    at most ``(||t_iters|| + r ||t_(iters-1)||) / ||u_(iters-1)|| <= 2 (1 + r) tol``,
    ``<= 4 tol`` for an estimate r ~ 1.

    `first_pass` (e.g. :func:`first_product`), when given, returns ``(A v, norm_bound)``
    for the unit start vector v in one go: its product serves as the first call of
    `apply` (both paths apply A to v first) and its bound replaces `norm_bound`.
    """
    v = v0 / np.linalg.norm(v0)
    if first_pass is not None:
        first, norm_bound = first_pass(v)
        apply = _first_then(apply, first)
    kappa = math.inf if norm_bound is None else iters * eta * norm_bound
    if iters >= 1 and kappa < KAPPA_MAX:
        return _series_radius(apply, eta, v, iters, kappa, tol)
    estimate = math.nan
    for _ in range(iters):
        u = v - eta * apply(v)
        estimate = float(np.linalg.norm(u))
        if not np.isfinite(estimate) or estimate == 0.0:
            break
        v = u / estimate
    return estimate


def _first_then(
    apply: Callable[[np.ndarray], np.ndarray], first: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """`apply` whose first call returns `first` (``A v``, computed beforehand) unread."""
    pending = [first]

    def wrapped(x: np.ndarray) -> np.ndarray:
        return pending.pop() if pending else apply(x)

    return wrapped


def _series_radius(
    apply: Callable[[np.ndarray], np.ndarray],
    eta: float,
    v: np.ndarray,
    iters: int,
    kappa: float,
    tol: float,
) -> float:
    """``||J^iters v|| / ||J^(iters-1) v||`` by the binomial series (see the caller)."""
    terms = binomial_terms(
        lambda q, q_norm: -eta * q_norm * apply(q / q_norm),
        v,
        iters,
        kappa,
        1.0,
        x0_norm=1.0,
        tol=tol,
    )
    if not np.isfinite(np.linalg.norm(terms[-1])):
        return math.nan
    last, prev = v.copy(), v.copy()  # u_iters and u_(iters-1), term m = 0
    coef_last, coef_prev = 1.0, 1.0  # C(iters, m), C(iters - 1, m)
    for m, q in enumerate(terms[1:]):
        coef_last *= (iters - m) / (m + 1)
        coef_prev *= (iters - 1 - m) / (m + 1)
        last += coef_last * q
        prev += coef_prev * q
    return float(np.linalg.norm(last) / np.linalg.norm(prev))


def proxy_row(proxies: list[float], cfg: RunConfig) -> dict[str, float]:
    """stability_proxy (= mean over the k_mc batches), _mean, _std and the step scales."""
    values = np.asarray(proxies, dtype=np.float64)
    return {
        "stability_proxy": float(values.mean()),
        "stability_proxy_mean": float(values.mean()),
        "stability_proxy_std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "eta": expected_step(cfg),
        "stability_probe_step_scale": probe_step_scale(cfg),
        "trainer_terms": float(trainer_terms(cfg)),
        "batch_size": float(cfg.probes.stability.batch_size),
        "k_mc": float(cfg.probes.stability.k_mc),
        "power_iters": float(cfg.probes.stability.power_iters),
    }


def critical_alpha_w(critical_step: float, cfg: RunConfig) -> float:
    """The alpha_w whose eta equals critical_step: ``critical_step / (s M)``."""
    return critical_step / (cfg.step_scale * trainer_terms(cfg))
