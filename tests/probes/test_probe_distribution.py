"""Distribution probe (SPEC 6.3): reference values, reductions and brute-force twins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdlens.policy import importance_ratio, rho_moments
from tdlens.probes import distribution as dist
from tdlens.probes.rho_audit import rho_supremum

SIGMA_PI, SIGMA_MU = 0.30, 0.35


def kl_closed_form(sigma_p: float, sigma_q: float, d: int = 2) -> float:
    """KL(N(0, sp^2 I) || N(0, sq^2 I)) = d [log(sq/sp) + sp^2/(2 sq^2) - 1/2] (hand formula)."""
    return d * (math.log(sigma_q / sigma_p) + sigma_p**2 / (2 * sigma_q**2) - 0.5)


def tv_closed_form(sigma_p: float, sigma_q: float) -> float:
    """TV of two centred isotropic 2-D Gaussians, sigma_p < sigma_q (radial closed form).

    p > q inside the radius ``r*^2 = 2 log(sq^2/sp^2) / (1/sp^2 - 1/sq^2)``; ||u||^2 is
    Rayleigh-distributed, so ``TV = P_p(R < r*) - P_q(R < r*) = exp(-r*^2/(2 sq^2))
    - exp(-r*^2/(2 sp^2))``.
    """
    r2 = 2 * math.log(sigma_q**2 / sigma_p**2) / (1 / sigma_p**2 - 1 / sigma_q**2)
    return math.exp(-r2 / (2 * sigma_q**2)) - math.exp(-r2 / (2 * sigma_p**2))


def test_reference_values_closed_forms():
    """SPEC 6.3 reference numbers from their closed forms."""
    assert kl_closed_form(SIGMA_PI, SIGMA_MU) == pytest.approx(0.04300, abs=1e-4)
    assert tv_closed_form(SIGMA_PI, SIGMA_MU) == pytest.approx(0.1130, abs=1e-4)
    m = np.zeros((5, 2))
    _, second = rho_moments(m, SIGMA_PI, m, SIGMA_MU)
    np.testing.assert_allclose(second, 1.0757, atol=1e-4)
    assert rho_supremum(m, SIGMA_PI, m, SIGMA_MU) == pytest.approx(1.3611, abs=1e-4)
    assert rho_supremum(m, SIGMA_PI, m, SIGMA_MU) == pytest.approx((SIGMA_MU / SIGMA_PI) ** 2)


def test_action_kl_equal_means():
    m = np.random.default_rng(0).normal(size=(100, 2))
    kl = dist.action_kl(m, SIGMA_PI, m, SIGMA_MU)
    assert kl == pytest.approx(kl_closed_form(SIGMA_PI, SIGMA_MU), rel=1e-12)
    assert kl == pytest.approx(0.04300, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_action_tv_monte_carlo_within_standard_error(seed):
    """MC TV within 4 of its own standard errors of the closed form, for several seeds."""
    m = np.random.default_rng(100 + seed).normal(size=(2048, 2))
    tv, se = dist.action_tv(m, SIGMA_PI, m, SIGMA_MU, 64, np.random.default_rng(seed))
    assert 0 < se < 2e-3
    assert abs(tv - tv_closed_form(SIGMA_PI, SIGMA_MU)) < 4 * se


@pytest.mark.parametrize("seed", range(3))
def test_rho_second_moment_and_max_by_sampling(seed):
    """E_mu[rho^2] = 1.0757 within 5 SE; no sampled ratio exceeds (sigma_mu/sigma_pi)^2."""
    rng = np.random.default_rng(seed)
    m = np.zeros((200_000, 2))
    u = SIGMA_MU * rng.standard_normal(m.shape)
    _, rho = importance_ratio(u, m, SIGMA_PI, m, SIGMA_MU, None)
    se = np.std(rho**2) / math.sqrt(rho.size)
    assert abs(np.mean(rho**2) - 1.0757) < 5 * se + 1e-4
    assert abs(np.mean(rho) - 1.0) < 5 * np.std(rho) / math.sqrt(rho.size)
    assert rho.max() <= 1.3611112
    assert rho.max() > 1.36


def test_on_policy_kl_tv_rho_exactly_zero_and_one():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(300, 2))
    assert dist.action_kl(m, 0.3, m, 0.3) == 0.0
    tv, se = dist.action_tv(m, 0.3, m, 0.3, 16, rng)
    assert tv == 0.0 and se == 0.0
    u = m + 0.3 * rng.standard_normal(m.shape)
    rho, rho_raw = importance_ratio(u, m, 0.3, m, 0.3, 10.0)
    assert np.all(rho == 1.0) and np.all(rho_raw == 1.0)


def brute_force_mmd2(X: np.ndarray, Y: np.ndarray, sigma: float) -> tuple[float, float]:
    """Double loops over the RBF kernel: the O(n^2) twin of dist.mmd2."""

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))

    m, n = len(X), len(Y)
    kxx = sum(k(X[i], X[j]) for i in range(m) for j in range(m))
    kyy = sum(k(Y[i], Y[j]) for i in range(n) for j in range(n))
    kxy = sum(k(X[i], Y[j]) for i in range(m) for j in range(n))
    kxx_off = kxx - sum(k(X[i], X[i]) for i in range(m))
    kyy_off = kyy - sum(k(Y[i], Y[i]) for i in range(n))
    biased = kxx / m**2 + kyy / n**2 - 2 * kxy / (m * n)
    unbiased = kxx_off / (m * (m - 1)) + kyy_off / (n * (n - 1)) - 2 * kxy / (m * n)
    return biased, unbiased


def test_mmd2_matches_brute_force_double_loop():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(13, 18))
    Y = rng.normal(loc=0.3, size=(9, 18))
    sigma = 2.1
    biased, unbiased = dist.mmd2(X, Y, sigma)
    ref_b, ref_u = brute_force_mmd2(X, Y, sigma)
    assert biased == pytest.approx(ref_b, rel=1e-10, abs=1e-13)
    assert unbiased == pytest.approx(ref_u, rel=1e-10, abs=1e-13)


def test_kernel_sum_blocking_is_exact():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(37, 18)), rng.normal(size=(11, 18))
    full = dist.rbf_kernel(X, Y, 1.7).sum()
    for block in (1, 3, 36, 37, 100):
        assert dist.rbf_kernel_sum(X, Y, 1.7, block) == pytest.approx(full, rel=1e-13)
        sym = dist.rbf_kernel(X, X, 1.7).sum()
        assert dist.rbf_kernel_sum_sym(X, 1.7, block) == pytest.approx(sym, rel=1e-13)


def test_median_bandwidth_brute_force():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(40, 18))
    d2 = [np.sum((Z[i] - Z[j]) ** 2) for i in range(40) for j in range(i + 1, 40)]
    ref = math.sqrt(np.median(d2) / 2)
    assert dist.median_bandwidth(Z, rng, 300) == pytest.approx(ref, rel=1e-12)


def test_mmd_of_sample_with_itself_is_zero_and_pvalue_not_small():
    X = np.random.default_rng(5).normal(size=(300, 18))
    sigma = dist.median_bandwidth(X, np.random.default_rng(0), 300)
    biased, _ = dist.mmd2(X, X, sigma)
    assert abs(biased) < 1e-12
    pvalue, points = dist.mmd_permutation_pvalue(X, X, sigma, 100, np.random.default_rng(0))
    assert points == 600
    assert pvalue > 0.05


def test_mmd_pvalue_small_for_shifted_sample_and_subsampling():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(700, 18))
    Y = rng.normal(loc=0.5, size=(700, 18))
    sigma = dist.median_bandwidth(np.concatenate([X, Y]), rng, 300)
    pvalue, points = dist.mmd_permutation_pvalue(X, Y, sigma, 50, rng, max_points=400)
    assert points == 400
    assert pvalue == pytest.approx(1 / 51)
    same, _ = dist.mmd_permutation_pvalue(X, X[::-1], sigma, 0, rng)
    assert math.isnan(same)
