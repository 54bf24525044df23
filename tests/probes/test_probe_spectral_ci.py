"""The spectral bootstrap's resampling unit (docs/model.md §6.2): clusters, not samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdlens.probes.spectral_ci import (
    MIN_BLOCK,
    _projections,
    block_means,
    min_block,
    real_block_factors,
    spectral_intervals,
)
from tdlens.probes.spectrum import eigenvalues

D, C, T = 4, 200, 10
SCALES = np.array([8.0, 4.0, 2.0, 1.0])
"""``E[A] = diag(SCALES) / sqrt(D)``: real eigenvalues 4, 2, 1, 0.5, well separated."""


def clustered_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``phi_t, dphi_t [C T, D]``, ``rho_t [C T]``: C clusters of T samples that share one
    feature vector up to a small per-sample jitter (samples of a trajectory are strongly
    correlated), ``dphi_t = phi_t diag(SCALES)``, rho = 1."""
    phi_c = rng.standard_normal((C, 1, D))
    phi_t = (phi_c + 0.2 * rng.standard_normal((C, T, D))).reshape(C * T, D)
    return phi_t, phi_t * SCALES, np.ones(C * T)


def eig_max_real(phi_t: np.ndarray, dphi_t: np.ndarray) -> float:
    A = phi_t.T @ dphi_t / (len(phi_t) * math.sqrt(D))
    return float(np.linalg.eigvals(A).real.max())


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_interval_matches_the_sampling_spread_of_clustered_batches(seed):
    """The 95% interval of eig_max_real, ``(hi - lo) / (2 x 1.96)``, averaged over 30
    batches (SE ~2.5%), against the standard deviation of eig_max_real over 1500
    independent batches (the truth; SE ~2-4%, the top eigenvalue's tails are heavier than
    normal). With the clusters resampled the ratio is ~1 (seeds 0-5: 0.93 to 1.02; band
    [0.8, 1.25]); resampling single samples treats the C T = 2000 near-duplicates as
    independent and shrinks it to ~1/sqrt(T / (1 + 0.2^2)) ~ 0.33 (measured 0.31)."""
    rng = np.random.default_rng(seed)
    truth = np.std([eig_max_real(*clustered_batch(rng)[:2]) for _ in range(1500)], ddof=1)
    half = []
    for _ in range(30):
        phi_t, dphi_t, rho_t = clustered_batch(rng)
        A = phi_t.T @ dphi_t / (len(phi_t) * math.sqrt(D))
        spec = eigenvalues(A, 0.0, np.ones(D))
        ci = spectral_intervals(spec, phi_t, dphi_t, rho_t, T, 1.0, rng)
        assert ci["eig_max_real_lo"] < eig_max_real(phi_t, dphi_t) < ci["eig_max_real_hi"]
        half.append((ci["eig_max_real_hi"] - ci["eig_max_real_lo"]) / (2 * 1.96))
    ratio = float(np.mean(half)) / truth
    assert 0.8 <= ratio <= 1.25, ratio


def assert_same_spectrum(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Equal multisets of eigenvalues (each of `a` paired with a distinct nearest of `b`)."""
    a, b = np.asarray(a), list(np.asarray(b))
    assert a.size == len(b)
    for lam in a:
        j = int(np.argmin(np.abs(np.array(b) - lam)))
        assert abs(b.pop(j) - lam) <= atol, (lam, a)


def test_real_block_has_the_eigenvalues_of_the_complex_block_and_its_conjugates():
    """The block of eig_min_real's replicates in the real basis (real_block_factors) has
    the eigenvalues of the complex block of the same modes closed under conjugation
    (block_means), to rounding; a mode whose conjugate is left out (as ARPACK's k-th
    eigenvalue can be) brings it in."""
    rng = np.random.default_rng(4)
    n, d, size = 600, 10, 20
    phi = rng.standard_normal((n, d))
    dphi = phi @ (np.eye(d) + 0.6 * rng.standard_normal((d, d)))
    rho = rng.uniform(0.5, 1.5, n)
    A = (phi * rho[:, None]).T @ dphi / (n * math.sqrt(d))
    spec = eigenvalues(A, 0.0, np.ones(d))
    vals = spec.eigvals
    pairs = np.flatnonzero(vals.imag > 0)
    assert pairs.size >= 2
    M = block_means(phi, dphi, rho, spec.right, spec.left, size)  # [C, d, d], all modes
    py, qx, norm = _projections(phi, dphi, spec.right, spec.left, size)
    p = py * (rho[:, None] / norm)
    # every real mode and one member of each pair: the whole spectrum, in a real basis
    keep = np.flatnonzero(vals.imag >= 0)
    pr, qr = real_block_factors(vals[keep], p[:, keep], qx[:, keep])
    assert pr.dtype == qr.dtype == np.float64 and pr.shape == (n, d)
    Mr = np.einsum("hi,hj->ij", pr, qr) / n  # the mean over all clusters
    Mc = M.mean(axis=0)
    assert_same_spectrum(np.linalg.eigvals(Mr), vals, 1e-12)
    assert_same_spectrum(np.linalg.eigvals(Mc), vals, 1e-12)
    # one cluster's block (not diagonal in the eigenbasis): the same eigenvalues both ways
    C0 = np.einsum("hi,hj->ij", pr[:size], qr[:size]) / size
    assert_same_spectrum(np.linalg.eigvals(C0), np.linalg.eigvals(M[0]), 1e-12)


def test_min_block_takes_both_members_of_a_pair():
    """MIN_BLOCK eigenvalues by real part, a complex mode counting with its conjugate
    (present or not); a pair on the boundary is kept whole."""
    vals = np.array([5.0, 1 + 2j, 1 - 2j, 0.5 + 1j, 3.0, 2.0 + 0j, 4.0, 0.1, 6.0])
    idx = np.arange(vals.size)
    assert MIN_BLOCK == 6
    block = min_block(vals, idx)
    # 0.1, 0.5+1j (and its absent conjugate), 1+-2j (once), 2.0, 3.0: 1 + 2 + 2 + 1 = 6
    assert sorted(vals[block].real) == [0.1, 0.5, 1.0, 2.0]
    assert sum(2 if vals[m].imag else 1 for m in block) == 6
    # only the modes with vectors (`idx`) enter; the pair at the boundary stays whole (7)
    block = min_block(vals, np.array([0, 1, 2, 4, 5, 6, 7]))
    assert sorted(vals[block].real.tolist()) == [0.1, 1.0, 2.0, 3.0, 4.0]
    block = min_block(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6 + 1j, 0.6 - 1j, 0.7]), np.arange(8))
    assert block.size == 6 and sum(2 if b == 5 or b == 6 else 1 for b in block) == 7
