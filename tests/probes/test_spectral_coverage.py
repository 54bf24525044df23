"""Coverage of the spectral intervals (tdlens.probes.spectral_ci, issue 23 item 5) over
fresh draws of a sampled A whose expectation is known in closed form.

The problem (D = 48): features ``phi_i = L z_i`` with ``z_i ~ N(0, I)`` (``L L^T = S``,
``S`` with eigenvalues ``k^(-1/2)`` in a random basis), ``dphi_i = M^T phi_i + s_e e_i``
with ``M = I - gamma Q``, ``Q = expm(K - K^T)`` a rotation by small angles, and ``rho_i``
log-normal with mean 1, independent of both. Then ``E[rho phi dphi^T] = S M`` and the
exact ``A = S M / sqrt(D)``: gamma = 0.99 and small angles put a bulk of eigenvalues
near zero, so the sampling noise (spectral_noise ~ 8e-3) is many times the smallest
eigenvalue (2.9e-4), the regime of issue 23 where the smallest eigenvalue of a sampled
A is biased low. Samples of a cluster (the resampling unit, like a trajectory) share
half the variance of ``z``, so clusters matter.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

from tdlens.probes import spectrum as sp
from tdlens.probes.spectral_ci import spectral_intervals

D, N_SAMPLES, CLUSTER, DRAWS = 48, 4096, 16, 100


def exact_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``L [D, D]``, ``M [D, D]`` and the exact ``A = L L^T M / sqrt(D)`` (module docstring)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((D, D)))
    S = (U / np.sqrt(np.arange(1, D + 1))) @ U.T
    K = rng.standard_normal((D, D)) * 0.3 / math.sqrt(D)
    M = np.eye(D) - 0.99 * sla.expm(K - K.T)
    return np.linalg.cholesky(S), M, S @ M / math.sqrt(D)


def draw(L: np.ndarray, M: np.ndarray, rng: np.random.Generator):
    """``phi, dphi [n, D]`` and ``rho [n]`` of one batch, clusters of CLUSTER samples."""
    shared = np.repeat(rng.standard_normal((N_SAMPLES // CLUSTER, D)), CLUSTER, axis=0)
    z = math.sqrt(0.5) * (shared + rng.standard_normal((N_SAMPLES, D)))
    phi = z @ L.T
    dphi = phi @ M + 0.3 * rng.standard_normal((N_SAMPLES, D))
    rho = rng.lognormal(-0.125, 0.5, N_SAMPLES)
    return phi, dphi, rho


def test_spectral_intervals_cover_the_exact_values():
    """>= 90% of the eig_min_real intervals cover the exact value over 100 fresh draws
    (95% here; the percentile interval of the first-order terms covered 63%);
    eig_max_real and critical_step still cover ~95% (95% and 94% here): at least 88%
    each, 3 binomial standard errors (2.2%) below 95%. Over other problem and draw seeds
    (problem 0 with draws 2, 3; problems 1, 2 with draws 1) eig_min_real covered 92%,
    97%, 95% and 91%, eig_max_real 95-97%, critical_step 95-99%: the interval covers
    ~94%, so a seed can land near the 90% line (binomial SE 2.4% at 100 draws)."""
    L, M, A = exact_problem()
    ev = np.linalg.eigvals(A)
    exact = {
        "eig_min_real": ev.real.min(),
        "eig_max_real": ev.real.max(),
        "critical_step": sp.critical_step(ev),
    }
    rng = np.random.default_rng(1)
    covered = {k: 0 for k in exact}
    sample_min = []
    for d in range(DRAWS):
        phi, dphi, rho = draw(L, M, rng)
        h = N_SAMPLES // 2
        halves = [
            (phi[s] * rho[s, None]).T @ dphi[s] / (h * math.sqrt(D))
            for s in (slice(0, h), slice(h, None))
        ]
        A_hat = (halves[0] + halves[1]) / 2
        noise = float(np.linalg.norm(halves[0] - halves[1], 2)) / 2
        spec = sp.eigenvalues(A_hat, noise, rng.standard_normal(D))
        ci = spectral_intervals(spec, phi, dphi, rho, CLUSTER, 1.0, np.random.default_rng(100 + d))
        sample_min.append(spec.eigvals.real.min())
        for key, value in exact.items():
            covered[key] += ci[f"{key}_lo"] <= value <= ci[f"{key}_hi"]
    # the problem is the hard one: the sample minimum is biased low by more than its spread
    bias = np.mean(sample_min) - exact["eig_min_real"]
    assert bias < -np.std(sample_min), (bias, np.std(sample_min))
    rate = {k: v / DRAWS for k, v in covered.items()}
    assert rate["eig_min_real"] >= 0.90, rate
    assert rate["eig_max_real"] >= 0.88 and rate["critical_step"] >= 0.88, rate
