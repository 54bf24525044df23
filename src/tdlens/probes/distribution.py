"""How far apart are mu and pi? (docs/model.md §6.3)

Two chains of num_samples states, one under mu and one under pi; their observation
vectors ``X [m, 18]`` and ``Y [n, 18]``; the policy means at the pooled states
``m_pi, m_mu [S, 2]`` (S = m + n).

- RBF kernel ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` with the median heuristic
  ``sigma = sqrt(median_{i<j} ||z_i - z_j||^2 / 2)`` over <= mmd_bandwidth_samples pooled
  points drawn without replacement.
- ``mmd2 = mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y)`` (biased V-statistic) and
  ``mmd2_unbiased`` (diagonal terms removed). The kernel is summed once over the pooled
  ``Z = [X; Y]``, only its upper block triangle, into unit-block sums ``M [U, U]``
  (:func:`unit_kernel_sums`; the units are the chains, so the same M serves the
  permutation test). Row blocks are formed from
  ``||x||^2 + ||y||^2 - 2 x.y`` as one product of augmented matrices (memory O(block S),
  never an m x n x 18 broadcast), in float32 (KERNEL_DTYPE) on points centred at their
  pooled mean, their column sums added up in float64: the exponent's rounding is a few
  float32 eps of ``(||x||^2 + ||y||^2) / (2 sigma^2)`` = O(1) after centring, so each
  ``k`` is off by ~1e-7 relative and mmd2 by < 1e-6 absolute (measured: 6e-10 at the seed
  settings, where mmd2 ~ 1e-2 and its chain permutation null has sd ~3e-3).
- mmd_pvalue: a permutation test of the biased statistic over independent UNITS. The
  samples of one continuing chain are not exchangeable one by one (permuting single
  samples of one mu chain and one pi chain gave p = 1/(1 + permutations) in 12 of 12 runs
  with mu == pi), so each policy is sampled as ``chains`` independent chains of
  ``ceil(num_samples / chains)`` steps from the initial state distribution, and a
  permutation reassigns whole chains to the two groups: under mu == pi the 2 chains
  chains are i.i.d., so this test is exact (p-values uniform up to their discreteness).
  With one chain per policy the units are blocks of ``mmd_block_len`` consecutive samples,
  ``L = ceil(BLOCK_TAU_FACTOR tau_int)`` from the chains' integrated autocorrelation time
  (:func:`integrated_autocorrelation_time`), and the test is approximate (anti-conservative
  when blocks are correlated). The probe tests its mmd2's own unit sums M, every pooled
  sample (:func:`unit_permutation_test`); :func:`mmd_permutation_pvalue`, which forms its
  own kernel, thins the chains by the stride ``s = ceil(S / PERM_MAX_POINTS)`` first.
  Every permutation costs ``O(U^2)``:
  ``stat = l^T M l`` with ``l_u = 1/m'`` on X units and ``-1/n'`` on Y units, and
  ``p = (1 + #{perm stat >= observed}) / (1 + permutations)``. mmd_tau_int is reported in
  both cases; mmd_ess = ``S / tau_int`` is the pooled effective sample size.
- dist_action_kl: mean over pooled states of ``KL(N(m_pi, sigma_pi^2 I) || N(m_mu, sigma_mu^2 I))``.
- dist_action_tv: ``TV = E_pi[max(0, 1 - mu/pi)]`` per state, estimated with action_samples
  draws ``a ~ pi`` per state (log-ratio clipped to +-50), then averaged over states;
  unbiased for the clipped-ratio TV. dist_action_tv_se is its Monte Carlo standard error
  given the states.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from tdlens.policy import gaussian_kl
from tdlens.probes.common import aux_rng, distribution_chains, rho_summary
from tdlens.probes.registry import RoundContext
from tdlens.threads import limit_threads, parallel_map

PERM_MAX_POINTS = 2048
BLOCK_TAU_FACTOR = 2.0
"""Block length of the MMD permutation test in units of tau_int (blocks >> correlation)."""
TAU_WINDOW = 5.0
"""Sokal's window: sum the autocorrelation up to the first lag M >= TAU_WINDOW tau_int."""
KERNEL_BLOCK = 64
"""Rows of a kernel-sum block: 64 x S float32 (1 MB on average over the upper triangle
of S = 8192 pooled points) stays near the 1 MB L2 through its product, exp and column sums
(256-row float64 blocks were 25% slower; 32-128 rows measured alike in float32)."""
KERNEL_DTYPE = np.float32
"""dtype of the kernel sums' products and exponentials (module docstring: their rounding
is far below mmd2's own sampling noise; float32 halves the exp and the product)."""
LOG_RATIO_CLIP = 50.0


def squared_distances(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``||x_i - y_j||^2 [m, n]`` via ``||x||^2 + ||y||^2 - 2 x.y``, clipped at 0 (float64)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    d2 = X @ Y.T
    d2 *= -2.0
    d2 += np.einsum("ij,ij->i", X, X)[:, None]
    d2 += np.einsum("ij,ij->i", Y, Y)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def median_bandwidth(Z: np.ndarray, rng: np.random.Generator, max_samples: int) -> float:
    """``sqrt(median_{i<j} ||z_i - z_j||^2 / 2)`` over <= max_samples rows of ``Z [S, 18]``
    drawn without replacement (1 when that median is 0, e.g. identical points)."""
    if Z.shape[0] > max_samples:
        Z = Z[np.sort(rng.choice(Z.shape[0], size=max_samples, replace=False))]
    d2 = squared_distances(Z, Z)[np.triu_indices(Z.shape[0], k=1)]
    sigma = float(np.sqrt(np.median(d2) / 2.0)) if d2.size else 0.0
    return sigma if sigma > 0 else 1.0


def _augmented(
    X: np.ndarray, Y: np.ndarray, sigma: float, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """``L [m, 20]``, ``R^T [20, n]`` with ``L R^T = -||x - y||^2 / (2 sigma^2)``.

    ``L = c [2 x, -||x||^2, -1]``, ``R = [y, 1, ||y||^2]``, ``c = 1 / (2 sigma^2)``: one
    matrix product gives the kernel exponent without ``m x n`` temporaries. Both are formed
    in float64 from X and Y shifted by their pooled mean (the distances are unchanged, the
    cancellation in ``||x||^2 + ||y||^2 - 2 x.y`` is smaller), then cast to `dtype`.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    centre = (X.sum(axis=0) + Y.sum(axis=0)) / max(len(X) + len(Y), 1)
    X, Y = X - centre, Y - centre
    c = 1.0 / (2.0 * sigma**2)
    x2 = np.einsum("ij,ij->i", X, X)[:, None]
    y2 = np.einsum("ij,ij->i", Y, Y)[:, None]
    L = np.concatenate([2.0 * c * X, -c * x2, np.full_like(x2, -c)], axis=1)
    R_t = np.concatenate([Y, np.ones_like(y2), y2], axis=1).T
    return L.astype(dtype), np.ascontiguousarray(R_t, dtype=dtype)


def _exp_nonpositive(out: np.ndarray) -> np.ndarray:
    """``exp(min(out, 0))`` in place (rounding can make ``-||x - x||^2`` slightly positive)."""
    np.minimum(out, 0.0, out=out)
    return np.exp(out, out=out)


def rbf_kernel(X: np.ndarray, Y: np.ndarray, sigma: float, dtype: type = np.float64) -> np.ndarray:
    """``k(x_i, y_j) [m, n] = exp(-||x_i - y_j||^2 / (2 sigma^2))``, in `dtype`: the dense
    kernel (the reference of :func:`unit_kernel_sums`)."""
    L, R_t = _augmented(X, Y, sigma, dtype)
    return _exp_nonpositive(L @ R_t)


def _block_buffer(local: threading.local, rows: int, cols: int, dtype: type) -> np.ndarray:
    """A per-thread ``[rows, cols]`` block buffer (fresh 1-2 MB arrays page-fault)."""
    if getattr(local, "buffer", None) is None or local.buffer.shape != (rows, cols):
        local.buffer = np.empty((rows, cols), dtype=dtype)
    return local.buffer


def _row_blocks(bounds: np.ndarray, block: int) -> list[tuple[int, int, int]]:
    """``(unit, start, stop)``: row blocks of at most `block` rows, none across a unit's
    bound (unit u is rows ``bounds[u]:bounds[u + 1]``)."""
    return [
        (u, start, min(start + block, int(hi)))
        for u, (lo, hi) in enumerate(itertools.pairwise(bounds))
        for start in range(int(lo), int(hi), block)
    ]


BlockSum = tuple[int, float, np.ndarray]
"""One row block's share of :func:`unit_kernel_sums`: its unit u, the sum over its own
square (for ``M[u, u]``) and its column sums after it, summed per unit (``[U]``)."""


@dataclass(frozen=True)
class KernelSumJobs:
    """:func:`unit_kernel_sums` in pieces: ``jobs``, one per row block (independent, any
    thread), and ``reduce``, which adds their results, given in the order of ``jobs``,
    into ``M [U, U]``. A caller may run other work in the same pool as the blocks."""

    jobs: list[Callable[[], BlockSum]]
    reduce: Callable[[Sequence[BlockSum]], np.ndarray]


def kernel_sum_jobs(
    Z: np.ndarray,
    bounds: Sequence[int],
    sigma: float,
    block: int = KERNEL_BLOCK,
    dtype: type = KERNEL_DTYPE,
) -> KernelSumJobs:
    """The row-block jobs of :func:`unit_kernel_sums` and their reduction (block order,
    so the same bits whichever threads ran them)."""
    bounds = np.asarray(bounds)
    U = len(bounds) - 1
    L, R_t = _augmented(Z, Z, sigma, dtype)
    S = len(L)
    unit_of = np.repeat(np.arange(U), np.diff(bounds))
    local = threading.local()

    def part(rows: tuple[int, int, int]) -> BlockSum:
        u, start, stop = rows
        out = _block_buffer(local, min(block, S), S, dtype)[: stop - start, : S - start]
        np.matmul(L[start:stop], R_t[:, start:], out=out)
        col = np.exp(out, out=out).sum(axis=0, dtype=np.float64)
        after = np.bincount(unit_of[stop:], weights=col[stop - start :], minlength=U)
        return u, float(col[: stop - start].sum()), after

    def reduce(parts: Sequence[BlockSum]) -> np.ndarray:
        M = np.zeros((U, U))
        for u, own, after in parts:
            M[u, u] += own
            M[u] += after
            M[:, u] += after
        return M

    jobs = [functools.partial(part, rows) for rows in _row_blocks(bounds, block)]
    return KernelSumJobs(jobs, reduce)


def unit_kernel_sums(
    Z: np.ndarray,
    bounds: Sequence[int],
    sigma: float,
    block: int = KERNEL_BLOCK,
    threads: int = 1,
    dtype: type = KERNEL_DTYPE,
) -> np.ndarray:
    """``M [U, U]`` (float64), ``M[u, v] = sum_{i in u, j in v} k(z_i, z_j)`` over the units
    ``bounds[u]:bounds[u + 1]`` of ``Z [S, 18]``.

    Each row block (within one unit u, at most `block` rows) is taken against itself and
    every column after it, the upper block triangle (half the kernel work): its column
    sums (float64) over its own square go to ``M[u, u]``, those after it, summed per unit
    v, to ``M[u, v]`` and ``M[v, u]`` (the transposed entries, never formed). The kernel in
    `dtype` (module docstring); the blocks on up to `threads` threads, added up in block
    order (the same bits for any thread count); memory O(threads block S). The exponent
    is not clipped at 0 (rbf_kernel's clip cost a fifth of the pass): where rounding makes
    it positive (near-duplicate points) it is a few float32 eps of ``(||x||^2 +
    ||y||^2) / (2 sigma^2)``, so k exceeds 1 by as little as it would be off anyway.
    (:func:`kernel_sum_jobs` hands out the blocks and their reduction.)
    """
    sums = kernel_sum_jobs(Z, bounds, sigma, block, dtype)
    return sums.reduce(parallel_map(lambda job: job(), sums.jobs, threads))


def mmd2_of_sums(M: np.ndarray, units_x: int, m: int, n: int) -> tuple[float, float]:
    """``(mmd2, mmd2_unbiased)`` from the unit kernel sums ``M [U, U]`` whose first
    `units_x` units hold the m points of X and the rest the n points of Y (:func:`mmd2`)."""
    s_xx = float(M[:units_x, :units_x].sum())
    s_yy = float(M[units_x:, units_x:].sum())
    s_xy = float(M[:units_x, units_x:].sum())
    biased = s_xx / m**2 + s_yy / n**2 - 2.0 * s_xy / (m * n)
    unbiased = (s_xx - m) / (m * (m - 1)) + (s_yy - n) / (n * (n - 1)) - 2.0 * s_xy / (m * n)
    return float(biased), float(unbiased)


def mmd2(
    X: np.ndarray, Y: np.ndarray, sigma: float, threads: int = 1, dtype: type = KERNEL_DTYPE
) -> tuple[float, float]:
    """``(mmd2 biased V-statistic, mmd2_unbiased)`` between ``X [m, 18]`` and ``Y [n, 18]``
    (kernel sums in `dtype` on up to `threads` threads, the same bits for any count).

    Unbiased: ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1))
    - 2 sum_{ij} k(x_i,y_j)/(mn)``, using ``k(x, x) = 1``; the sums are
    :func:`unit_kernel_sums` with X and Y as the two units.
    """
    m, n = len(X), len(Y)
    M = unit_kernel_sums(np.concatenate([X, Y]), [0, m, m + n], sigma, threads=threads, dtype=dtype)
    return mmd2_of_sums(M, 1, m, n)


def integrated_autocorrelation_time(chains: Sequence[np.ndarray]) -> float:
    """``tau_int = 1 + 2 sum_{k=1}^{M} r(k)`` of chains ``[T, d]`` (Sokal's window).

    ``r(k) = sum_chains sum_d c_d(k) / sum_chains sum_d c_d(0)`` with the per-chain
    autocovariance ``c_d(k) = sum_t (x_td - xbar_d)(x_{t+k,d} - xbar_d) / T`` (FFT, zero
    padded), i.e. the autocorrelation of the trace of the covariance; M is the smallest lag
    with ``M >= TAU_WINDOW tau_int(M)``. 1 for white noise, ``(1 + a) / (1 - a)`` for an
    AR(1) process with coefficient a.
    """
    T = min(len(x) for x in chains)
    acov = np.zeros(T)
    for x in chains:
        x = np.asarray(x[:T], dtype=np.float64)
        x = x - x.mean(axis=0)
        f = np.fft.rfft(x, n=2 * T, axis=0)
        acov += np.fft.irfft(np.sum(np.abs(f) ** 2, axis=1), n=2 * T)[:T] / T
    if acov[0] <= 0:
        return 1.0
    tau = 1.0 + 2.0 * np.cumsum(acov[1:] / acov[0])
    window = np.flatnonzero(np.arange(1, T) >= TAU_WINDOW * tau)
    return float(max(1.0, tau[window[0]] if window.size else tau[-1]))


@dataclass(frozen=True)
class UnitTest:
    """A unit permutation test's result: p-value, points used, units, samples per unit,
    and the chains' integrated autocorrelation time."""

    pvalue: float
    points: int
    units: int
    unit_len: int
    tau_int: float


def unit_permutation_test(
    M: np.ndarray,
    units_x: int,
    unit_len: int,
    tau: float,
    permutations: int,
    rng: np.random.Generator,
) -> UnitTest:
    """Permutation test of the biased MMD^2 on unit kernel sums ``M [U, U]``
    (:func:`unit_kernel_sums`; the first `units_x` units are X's, every unit `unit_len`
    samples): ``stat = l^T M l`` with ``l_u = 1/m'`` on X units and ``-1/n'`` on Y units,
    the observed labels against `permutations` reassignments of the units, ``p = (1 +
    #{perm stat >= observed}) / (1 + permutations)`` (NaN when permutations is 0). `tau`
    (the chains' tau_int) is passed through to the result."""
    U = M.shape[0]
    if permutations <= 0:
        return UnitTest(float("nan"), 0, U, unit_len, tau)
    units_y = U - units_x
    l = np.concatenate(
        [
            np.full(units_x, 1.0 / (units_x * unit_len)),
            np.full(units_y, -1.0 / (units_y * unit_len)),
        ]
    )
    labels = np.stack([l] + [rng.permutation(l) for _ in range(permutations)], axis=1)
    stats = np.einsum("ij,ij->j", labels, M @ labels)
    exceed = np.sum(stats[1:] >= stats[0] - 1e-12 * abs(stats[0]))
    return UnitTest(float((1 + exceed) / (1 + permutations)), U * unit_len, U, unit_len, tau)


def mmd_permutation_pvalue(
    X: np.ndarray,
    Y: np.ndarray,
    sigma: float,
    permutations: int,
    rng: np.random.Generator,
    max_points: int = PERM_MAX_POINTS,
) -> UnitTest:
    """Unit permutation test of the biased MMD^2 (module docstring) on its own kernel.

    ``X [C, T, 18]``, ``Y [C', T, 18]``: independent chains in time order (a 2-D array is
    one chain), thinned to at most `max_points` pooled points. With C = C' = 1 the units
    are blocks of ``ceil(BLOCK_TAU_FACTOR tau_int)`` samples, else the chains
    (:func:`unit_permutation_test`). p is NaN when permutations is 0.
    """
    X, Y = (np.asarray(c, dtype=np.float64) for c in (X, Y))
    X, Y = (c[None] if c.ndim == 2 else c for c in (X, Y))
    tau = integrated_autocorrelation_time([*X, *Y])
    stride = max(1, math.ceil((X.shape[0] * X.shape[1] + Y.shape[0] * Y.shape[1]) / max_points))
    X, Y = X[:, ::stride], Y[:, ::stride]
    if X.shape[0] == 1 and Y.shape[0] == 1:
        L = max(1, math.ceil(BLOCK_TAU_FACTOR * tau / stride))
        B = max(1, min(X.shape[1], Y.shape[1]) // L)
        X, Y = (c[0, : B * L].reshape(B, L, -1) for c in (X, Y))
    units_x, units_y, L = X.shape[0], Y.shape[0], X.shape[1]
    U = units_x + units_y
    if permutations <= 0:
        return UnitTest(float("nan"), 0, U, L, tau)
    Z = np.concatenate([X.reshape(-1, X.shape[2]), Y.reshape(-1, Y.shape[2])])
    M = unit_kernel_sums(Z, np.arange(0, U * L + 1, L), sigma)
    return unit_permutation_test(M, units_x, L, tau, permutations, rng)


def action_kl(m_pi: np.ndarray, sigma_pi: float, m_mu: np.ndarray, sigma_mu: float) -> float:
    """Mean over states of ``KL(N(m_pi, sigma_pi^2 I) || N(m_mu, sigma_mu^2 I))``, ``m [S, 2]``."""
    return float(np.mean(gaussian_kl(m_pi, sigma_pi, m_mu, sigma_mu)))


@njit(cache=True, nogil=True)
def _tv_per_state(
    m_pi: np.ndarray,
    sigma_pi: float,
    m_mu: np.ndarray,
    sigma_mu: float,
    z: np.ndarray,
    mean_s: np.ndarray,
    var_s: np.ndarray,
) -> None:
    """``mean_s[s]``, ``var_s[s]``: mean and variance (ddof 1; 0 for one draw) over k of
    ``f_sk = max(0, 1 - exp(clip(log mu(a) - log pi(a), +-LOG_RATIO_CLIP)))`` at ``a =
    m_pi[s] + sigma_pi z[s, k]``, ``z [S, K, dim]``.

    ``log N(a; m, sigma^2 I) = -0.5 ||a - m||^2 / sigma^2 - dim log sigma``, the squares
    added one action component at a time; both terms are the same expression, so mu = pi
    gives exactly 0. One pass over the draws (NumPy needed ~20 over ``[S, K]`` arrays).
    """
    S, K, dim = z.shape
    log_norm = dim * (math.log(sigma_mu) - math.log(sigma_pi))
    f = np.empty(K)
    for s in range(S):
        total = 0.0
        for k in range(K):
            sq_mu = 0.0
            sq_pi = 0.0
            for i in range(dim):
                a = m_pi[s, i] + sigma_pi * z[s, k, i]
                sq_mu += (a - m_mu[s, i]) ** 2
                sq_pi += (a - m_pi[s, i]) ** 2
            log_ratio = -0.5 * sq_mu / sigma_mu**2 + 0.5 * sq_pi / sigma_pi**2 - log_norm
            log_ratio = min(max(log_ratio, -LOG_RATIO_CLIP), LOG_RATIO_CLIP)
            f[k] = max(0.0, 1.0 - math.exp(log_ratio))
            total += f[k]
        mean_s[s] = total / K
        squares = 0.0
        for k in range(K):
            squares += (f[k] - mean_s[s]) ** 2
        var_s[s] = squares / (K - 1) if K > 1 else 0.0


def action_tv(
    m_pi: np.ndarray,
    sigma_pi: float,
    m_mu: np.ndarray,
    sigma_mu: float,
    draws: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """``(TV, standard error)``: mean over states of ``E_pi[max(0, 1 - mu(a)/pi(a))]``.

    ``a = m_pi + sigma_pi z``, ``z [S, K, 2]`` standard normal; the log-ratio
    ``log mu(a) - log pi(a)`` is clipped to +-50 (:func:`_tv_per_state`). The standard
    error is ``sqrt(sum_s var_k f_sk / K) / S`` (Monte Carlo error given the S states).
    """
    S, dim = m_pi.shape
    z = rng.standard_normal((S, draws, dim))
    mean_s, var_s = np.empty(S), np.empty(S)
    m_pi, m_mu = (np.ascontiguousarray(m, dtype=np.float64) for m in (m_pi, m_mu))
    _tv_per_state(m_pi, float(sigma_pi), m_mu, float(sigma_mu), z, mean_s, var_s)
    return float(mean_s.mean()), float(np.sqrt(np.sum(var_s / draws)) / S)


def mean_l2(X: np.ndarray, Y: np.ndarray) -> float:
    """``||mean(X) - mean(Y)||`` of the observation vectors."""
    return float(np.linalg.norm(X.mean(axis=0) - Y.mean(axis=0)))


def run_round(ctx: RoundContext) -> None:
    """The distribution probe of one round (registry ``run``): MMD between the states of
    the mu and pi chains ``[chains, T_c, 18]``, the KL and TV of their action
    distributions at those states, and the rho summary of the last chain (under mu)."""
    cfg, conf, params, n = ctx.cfg, ctx.cfg.probes.distribution, ctx.params, ctx.n
    *specs, rho_spec = distribution_chains(cfg)
    C = conf.chains
    paths = [ctx.rolled.chain_paths(spec) for spec in specs]
    T_c = specs[0].T
    obs = np.stack([p.o[:T_c, 0] for p in paths])
    X_chains, Y_chains = obs[:C], obs[C:]
    X, Y = X_chains.reshape(-1, obs.shape[2]), Y_chains.reshape(-1, obs.shape[2])
    m_pi, m_mu = (
        np.concatenate([p.mean_under(theta)[:T_c, 0] for p in paths])
        for theta in (params.theta_pi, params.theta_mu)
    )
    Z = np.concatenate([X, Y])
    sigma = median_bandwidth(
        Z, aux_rng(cfg, "probe_distribution", n, 0), conf.mmd_bandwidth_samples
    )

    def tv_estimate() -> tuple[float, float]:
        rng = aux_rng(cfg, "probe_distribution", n, 2)
        return action_tv(m_pi, cfg.sigma_pi, m_mu, cfg.sigma_mu, conf.action_samples, rng)

    def tau_int() -> float:
        return integrated_autocorrelation_time([*X_chains, *Y_chains])

    # one kernel pass over the 2C chains serves mmd2 and its permutation test; its row
    # blocks share one pool with the action TV and tau_int (first, so the blocks fill in
    # around them), which need no M
    sums = kernel_sum_jobs(Z, np.arange(0, len(Z) + 1, T_c), sigma)
    (tv, tv_se), tau, *blocks = parallel_map(
        lambda job: job(), [tv_estimate, tau_int, *sums.jobs], ctx.maps.threads
    )
    M = sums.reduce(blocks)
    mmd2_b, mmd2_u = mmd2_of_sums(M, C, len(X), len(Y))
    rng = aux_rng(cfg, "probe_distribution", n, 1)
    with limit_threads(1, "blas"):  # as it ran before, beside the TV: the same bits
        test = unit_permutation_test(M, C, T_c, tau, conf.permutations, rng)
    rho_batch = ctx.rolled.td_batch(cfg, ctx.maps, [rho_spec], params.theta_pi, False)
    ctx.out.rows["distribution_probe"] = {
        "mmd2": mmd2_b,
        "mmd2_unbiased": mmd2_u,
        "mmd_sigma": sigma,
        "mmd_pvalue": test.pvalue,
        "mmd_perm_points": float(test.points),
        "mmd_units": float(test.units),
        "mmd_unit_len": float(test.unit_len),
        "mmd_tau_int": test.tau_int,
        "mmd_ess": float(len(X) + len(Y)) / test.tau_int,
        "permutations": float(conf.permutations),
        "mean_l2": mean_l2(X, Y),
        "dist_action_kl": action_kl(m_pi, cfg.sigma_pi, m_mu, cfg.sigma_mu),
        "dist_action_tv": tv,
        "dist_action_tv_se": tv_se,
        "num_samples": float(len(X)),
        "chains": float(C),
        "action_samples": float(conf.action_samples),
        **rho_summary(rho_batch.rho, rho_batch.rho_raw, cfg.effective_rho_clip),
    }
