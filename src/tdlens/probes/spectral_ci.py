"""Confidence intervals of the spectral numbers (docs/model.md §6.2): a cluster bootstrap of the
first-order (delta-method) eigenvalue of each mode that decides a number.

For an eigenvalue ``l`` of A with right and left eigenvectors ``A x = l x``,
``y^T A = l y^T``, a perturbation ``A + E`` moves it to first order by
``y^T E x / y^T x``. Since ``A = (1/n) sum_i a_i``, ``a_i = rho_i phi_i dphi_i^T / sqrt(D)``,
``l`` is exactly the mean of the per-sample terms

    z_i = rho_i (y . phi_i) (dphi_i . x) / (sqrt(D) y . x)          [n] complex

and the eigenvalue of A built from a resample of the batch is, to first order, the mean
of the resampled z. The batch's samples are correlated within a trajectory, so the
resampling unit is a cluster: a trajectory of the trainer-style batch, or a block of
``horizon`` consecutive steps of a continuing chain (``cluster_size``). The per-cluster
means ``L [C, k]`` of the modes that decide a number are resampled with replacement
(BOOTSTRAP_REPLICATES times, from the probe's auxiliary stream); every number is
recomputed per replicate from the resampled eigenvalues (critical_step as the minimum of
``2 Re l / |l|^2`` over its candidate modes, so a change of the deciding mode is
covered), and ``<name>_lo`` / ``<name>_hi`` are the 2.5 and 97.5 percentiles (95%).
Modes without a left/right vector (a Krylov mode outside the largest-modulus set) give
no interval (NaN); a number that is inf for want of a mode (no eigenvalue with Re l > 0,
none above the noise) has the interval [inf, inf].

eig_min_real is different: the smallest real part of a sampled A is biased low (sampling
noise spreads the eigenvalues near the bottom of the spectrum apart, a second-order
effect the first-order terms miss), and on a spectrum whose noise exceeds its smallest
eigenvalues the bias is as large as the spread (issue 23: 35% of the percentile
intervals covered the exact value). Its replicates are therefore the smallest real part
of the eigenvalues of the whole block ``Y^T A* X`` of the MIN_BLOCK eigenvalues with the
smallest real parts, a complex one with its conjugate (:func:`min_block`; ``Y^T X = I``),
``A*`` the resampled A (the block's per-cluster means ``M [C, k, k]``, in a real basis,
resampled with the same draws), so the replicates spread the way the sample spread;
the interval is the basic (reflected) bootstrap interval ``[2 l - q_97.5, 2 l - q_2.5]``
around the sample's ``l = min Re``, which moves the percentiles by minus the bias they
show (the replicates' mean minus ``l``). The block
of the nearest modes carries the second-order terms with the smallest denominators;
modes farther away move ``l`` by ``|E|^2 / gap``, which the block leaves out.
"""

from __future__ import annotations

import math

import numpy as np

from tdlens.probes.spectrum import Spectrum, step_limits, timescale

BOOTSTRAP_REPLICATES = 2000
CI_LEVEL = 0.95
CANDIDATES = 4
"""Modes per number whose eigenvalues are resampled (the deciding one and its runners-up)."""
MIN_BLOCK = 6
"""Eigenvalues (smallest real parts, pairs whole: :func:`min_block`) in the block whose
eigenvalues eig_min_real's replicates take (module docstring). On the coverage problem of
tests/probes/test_spectral_coverage.py the 95% interval covered the exact value in 94% /
95% / 92% of 100 draws with blocks of 4 / 6 / 8 modes (63% with the percentile interval
of 4 modes' first-order terms); on a variant with independent samples 97% / 95% / 86% /
85% with 4 / 8 / 16 / 32: larger blocks over-correct the bias slightly. With the pairs
kept whole (issue 28) 96% / 92% / 95% / 91% on problem 0 (draws 1, 2) and problems 1, 2,
as before (95% / 92% / 95% / 91%)."""
CI_COLUMNS = (
    "critical_step",
    "eig_max_real",
    "eig_min_real",
    "fastest_timescale",
    "slowest_timescale",
)


def cluster_means(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    cluster_size: int,
) -> np.ndarray:
    """``L [C, k]``: per-cluster means of ``z_i`` (module docstring) for the modes with
    right/left vectors ``[D, k]``; ``phi_t, dphi_t [n, D]``, C = n // cluster_size (a
    remainder of samples is dropped)."""
    return _cluster_means(
        *_projections(phi_t, dphi_t, right, left, cluster_size), rho_t, cluster_size
    )


def _cluster_means(
    py: np.ndarray, qx: np.ndarray, norm: np.ndarray, rho_t: np.ndarray, cluster_size: int
) -> np.ndarray:
    """:func:`cluster_means` from the factors of :func:`_projections`."""
    rows, k = py.shape
    z = rho_t[:rows, None] * py * qx / norm
    return z.reshape(rows // cluster_size, cluster_size, k).mean(axis=1)


def _projections(
    phi_t: np.ndarray, dphi_t: np.ndarray, right: np.ndarray, left: np.ndarray, cluster_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``py = Phi y_m``, ``qx = dPhi x_j`` (complex ``[rows, k]``, over the samples of
    whole clusters, in the features dtype and summed in float64) and ``norm = sqrt(D)
    y_m . x_m [k]``: the factors of :func:`cluster_means` and :func:`block_means`."""
    n, D = phi_t.shape
    k = right.shape[1]
    rows = n // cluster_size * cluster_size
    dtype = phi_t.dtype
    Y = np.concatenate([left.real, left.imag], axis=1).astype(dtype)
    X = np.concatenate([right.real, right.imag], axis=1).astype(dtype)
    P = (phi_t[:rows] @ Y).astype(np.float64)
    Q = (dphi_t[:rows] @ X).astype(np.float64)
    norm = math.sqrt(D) * np.sum(left * right, axis=0)
    return P[:, :k] + 1j * P[:, k:], Q[:, :k] + 1j * Q[:, k:], norm


def block_means(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    cluster_size: int,
) -> np.ndarray:
    """``M [C, k, k]``: per-cluster means of the block ``rho_i (y_m . phi_i)(dphi_i . x_j)
    / (sqrt(D) y_m . x_m)`` of the modes with right/left vectors ``[D, k]`` (its diagonal
    is :func:`cluster_means`; the mean over clusters is ``diag(l)`` when no sample is
    dropped). ``phi_t, dphi_t [n, D]``, C = n // cluster_size."""
    py, qx, norm = _projections(phi_t, dphi_t, right, left, cluster_size)
    return _outer_means(py * (rho_t[: py.shape[0], None] / norm), qx, cluster_size)


def _min_real_interval(
    vals: np.ndarray,
    py: np.ndarray,
    qx: np.ndarray,
    norm: np.ndarray,
    rho_t: np.ndarray,
    cluster_size: int,
    draws: np.ndarray,
) -> tuple[float, float]:
    """eig_min_real's basic bootstrap interval (module docstring) of the block of the modes
    with eigenvalues `vals [k]` (:func:`min_block`) and the factors ``py, qx, norm`` of
    :func:`_projections`, from the cluster `draws [R, C]` shared with the other numbers."""
    p, q = real_block_factors(vals, py * (rho_t[: py.shape[0], None] / norm), qx)
    M = _outer_means(p, q, cluster_size)
    R, C = draws.shape
    counts = np.bincount((draws + C * np.arange(R)[:, None]).ravel(), minlength=R * C)
    reps = (counts.reshape(R, C) / C) @ M.reshape(C, -1)
    k = p.shape[1]
    rep_min = np.linalg.eigvals(reps.reshape(R, k, k)).real.min(axis=1)
    lo, hi = _interval(rep_min)
    point = float(vals.real.min())
    return 2.0 * point - hi, 2.0 * point - lo


def min_block(vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """eig_min_real's block: the modes `idx` (indices into `vals`) in order of real part,
    a complex one standing for itself and its conjugate, until they hold MIN_BLOCK
    eigenvalues (MIN_BLOCK + 1 when the last is a pair).

    A is real, so its eigenvalues come in conjugate pairs, and a pair's members are the
    modes nearest each other (``2 |Im l|`` apart: the second-order terms with the
    smallest denominators); the largest-modulus Krylov set may hold one member of a pair
    (ARPACK's k-th eigenvalue), and the block takes both.
    """
    chosen: list[int] = []
    size = 0
    for m in idx[np.argsort(vals.real[idx], kind="stable")]:
        lam = vals[m]
        if lam.imag != 0 and any(vals[c] == np.conj(lam) for c in chosen):
            continue
        chosen.append(int(m))
        size += 1 if lam.imag == 0 else 2
        if size >= MIN_BLOCK:
            break
    return np.array(chosen, dtype=np.int64)


def real_block_factors(
    vals: np.ndarray, p: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``p', q' [rows, k']``: the block ``M = mean_h p_h q_h^T`` of the modes with
    eigenvalues `vals` (``p = rho py / norm``, ``q = qx``, complex ``[rows, k]``; one
    member of each conjugate pair, as :func:`min_block` picks them) and of the conjugates
    of its complex ones, in a real basis: ``M' = mean_h p'_h q'_h^T`` (``k'`` = k plus
    the number of complex modes) is real with the eigenvalues of M's closure under
    conjugation.

    A complex mode ``i`` and its conjugate ``j`` (``x_j = conj x_i``, so ``q_j = conj
    q_i``, ``p_j = conj p_i``) have the real columns ``q' = (Re q_i, Im q_i) = (q_i, q_j)
    S``, ``S = [[1, -i], [1, i]] / 2``, and ``p' = S^-1 (p_i, p_j) = (2 Re p_i, -2 Im
    p_i)``, so that ``M' = S^-1 M S``; a real mode keeps ``(Re p_m, Re q_m)``. A real
    eigenvalue problem costs a third of a complex one (2000 replicates of 6 x 6: ~9 ms
    against ~28 ms).
    """
    p_cols: list[np.ndarray] = []
    q_cols: list[np.ndarray] = []
    for m, lam in enumerate(vals):
        if lam.imag == 0:
            p_cols.append(p[:, m].real)
            q_cols.append(q[:, m].real)
        else:
            p_cols += [2.0 * p[:, m].real, -2.0 * p[:, m].imag]
            q_cols += [q[:, m].real, q[:, m].imag]
    return np.stack(p_cols, axis=1), np.stack(q_cols, axis=1)


def _outer_means(p: np.ndarray, q: np.ndarray, cluster_size: int) -> np.ndarray:
    """``[C, k, k]``: per-cluster means of ``p_h q_h^T`` over the rows ``h`` of ``p, q
    [rows, k]`` (whole clusters of `cluster_size` rows)."""
    rows, k = p.shape
    C = rows // cluster_size
    M = np.einsum("chi,chj->cij", p.reshape(C, cluster_size, k), q.reshape(C, cluster_size, k))
    return M / cluster_size


def _interval(values: np.ndarray) -> tuple[float, float]:
    """2.5 and 97.5 percentiles (no interpolation, so infinite replicates are kept)."""
    tail = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def _modes(spectrum: Spectrum) -> dict[str, np.ndarray]:
    """Candidate modes (indices into ``eigvals[:lm_count]`` with vectors) per number, and
    eig_min_real's block (:func:`min_block`)."""
    vals = spectrum.eigvals[: spectrum.lm_count]
    ok = np.all(np.isfinite(spectrum.left), axis=0) & np.all(np.isfinite(spectrum.right), axis=0)
    idx = np.flatnonzero(ok)
    re = vals.real[idx]
    out = {
        "max": idx[np.argsort(-re)[:CANDIDATES]],
        "min": idx[np.argsort(re)[:CANDIDATES]],
        "block": min_block(vals, idx),
    }
    pos = idx[re > 0]
    crit = step_limits(vals[pos])
    out["critical"] = pos[np.argsort(crit)[:CANDIDATES]]
    resolved = idx[re > spectrum.noise]
    out["slowest"] = resolved[np.argsort(vals.real[resolved])[:1]]
    return out


def spectral_intervals(
    spectrum: Spectrum,
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    cluster_size: int,
    eta: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """``<name>_lo`` / ``<name>_hi`` for the names of CI_COLUMNS (module docstring).

    eig_min_real's interval is the bootstrap one when the spectrum is dense; otherwise
    eig_min_real is a bound and its interval ``[eig_min_real_bound, min computed Re]``
    brackets the smallest real part of the batch's A (the bootstrap of the computed
    minimum widening it).
    """
    out = {f"{name}_{end}": math.nan for name in CI_COLUMNS for end in ("lo", "hi")}
    if spectrum.right is None or spectrum.left is None:
        return out
    modes = _modes(spectrum)
    union = np.unique(np.concatenate(list(modes.values())))
    if union.size == 0:
        return out
    # one projection of the batch serves every mode (the block's too)
    py, qx, norm = _projections(
        phi_t, dphi_t, spectrum.right[:, union], spectrum.left[:, union], cluster_size
    )
    L = _cluster_means(py, qx, norm, rho_t, cluster_size)
    C = L.shape[0]
    if C < 2:
        return out
    draws = rng.integers(0, C, size=(BOOTSTRAP_REPLICATES, C))
    reps = L[draws].mean(axis=1)  # [R, k]
    col = {int(m): j for j, m in enumerate(union)}

    def cols(key: str) -> list[int]:
        return [col[int(m)] for m in modes[key]]

    def rep(key: str) -> np.ndarray:
        return reps[:, cols(key)]

    if modes["max"].size:
        max_re = rep("max").real.max(axis=1)
        out["eig_max_real_lo"], out["eig_max_real_hi"] = _interval(max_re)
        out["fastest_timescale_lo"], out["fastest_timescale_hi"] = _interval(timescale(eta, max_re))
    # no candidate at all: the number itself is inf (spectrum_row), and so is its interval
    if not modes["critical"].size:
        out["critical_step_lo"] = out["critical_step_hi"] = math.inf
    if not modes["slowest"].size:
        out["slowest_timescale_lo"] = out["slowest_timescale_hi"] = math.inf
    if modes["critical"].size:
        lam = rep("critical")
        out["critical_step_lo"], out["critical_step_hi"] = _interval(step_limits(lam).min(axis=1))
    if modes["slowest"].size:
        ts = timescale(eta, rep("slowest").real[:, 0])
        out["slowest_timescale_lo"], out["slowest_timescale_hi"] = _interval(ts)
    if modes["min"].size:
        block = cols("block")
        vals = spectrum.eigvals[modes["block"]]
        lo, hi = _min_real_interval(
            vals, py[:, block], qx[:, block], norm[block], rho_t, cluster_size, draws
        )
        if not spectrum.dense:
            lo = min(lo, spectrum.min_real_bound)
            hi = max(hi, float(spectrum.eigvals.real.min()))
        out["eig_min_real_lo"], out["eig_min_real_hi"] = lo, hi
    return out
