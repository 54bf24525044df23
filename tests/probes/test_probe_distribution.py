"""Distribution probe (docs/model.md §6.3): reference values, reductions and brute-force twins."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from probe_testlib import tiny_config

from tdlens.features import make_feature_maps
from tdlens.learner import init_params
from tdlens.policy import importance_ratio, rho_moments
from tdlens.probes import distribution as dist
from tdlens.probes.manager import ProbeManager
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
    """docs/model.md §6.3 reference numbers from their closed forms."""
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


def action_tv_twin(m_pi, sigma_pi, m_mu, sigma_mu, z):
    """The TV estimate over whole ``[S, K]`` arrays in NumPy (the probe's code before the
    compiled kernel), float64: ``(TV, se)`` for the draws ``z [S, K, 2]``."""
    K = z.shape[1]
    a = m_pi[:, None, :] + sigma_pi * z
    log_mu = -0.5 * np.sum((a - m_mu[:, None, :]) ** 2, axis=2) / sigma_mu**2 - 2 * math.log(
        sigma_mu
    )
    log_pi = -0.5 * np.sum((a - m_pi[:, None, :]) ** 2, axis=2) / sigma_pi**2 - 2 * math.log(
        sigma_pi
    )
    f = np.maximum(0.0, 1.0 - np.exp(np.clip(log_mu - log_pi, -50.0, 50.0)))
    var_k = f.var(axis=1, ddof=1) if K > 1 else np.zeros(len(f))
    return f.mean(), np.sqrt(np.sum(var_k / K)) / len(f)


@pytest.mark.parametrize("draws", [1, 2, 64])
def test_action_tv_kernel_matches_the_numpy_twin(draws):
    """The compiled per-state kernel against whole-array NumPy on the same draws (means
    apart and a shift large enough to hit the +-50 log-ratio clip)."""
    rng = np.random.default_rng(11)
    m_pi = rng.normal(size=(500, 2))
    m_mu = m_pi + rng.normal(scale=0.5, size=(500, 2))
    m_mu[:5] += 20.0  # log mu/pi < -50: clipped
    tv, se = dist.action_tv(m_pi, SIGMA_PI, m_mu, SIGMA_MU, draws, np.random.default_rng(3))
    z = np.random.default_rng(3).standard_normal((500, draws, 2))
    ref_tv, ref_se = action_tv_twin(m_pi, SIGMA_PI, m_mu, SIGMA_MU, z)
    assert tv == pytest.approx(ref_tv, rel=1e-12)
    assert se == pytest.approx(ref_se, rel=1e-10, abs=1e-15)


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


F32_MMD_ABS = 1e-6
"""The float32 kernel sums' bound on mmd2 (tdlens.probes.distribution docstring)."""


@pytest.mark.parametrize(
    ("dtype", "rel", "abs_"), [(np.float64, 1e-10, 1e-13), (np.float32, 0, F32_MMD_ABS)]
)
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_mmd2_matches_brute_force_double_loop(dtype, rel, abs_, offset):
    """float64 to rounding; the probe's float32 sums within F32_MMD_ABS, also for points
    far from the origin (||x||^2 ~ 2e5: the centring keeps the exponent's rounding small)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(13, 18)) + offset
    Y = rng.normal(loc=0.3, size=(9, 18)) + offset
    sigma = 2.1
    biased, unbiased = dist.mmd2(X, Y, sigma, dtype=dtype)
    ref_b, ref_u = brute_force_mmd2(X, Y, sigma)
    assert biased == pytest.approx(ref_b, rel=rel, abs=abs_)
    assert unbiased == pytest.approx(ref_u, rel=rel, abs=abs_)


@pytest.mark.parametrize(("dtype", "rel"), [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_unit_kernel_sums_are_the_dense_kernels_block_sums(dtype, rel):
    """Every block size and unit layout gives the dense kernel's unit-block sums (float64:
    to rounding; float32: within a few float32 eps, its own rounding), M exactly
    symmetric, and the same bits on two threads as on one."""
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(48, 18))
    K = dist.rbf_kernel(Z, Z, 1.7)
    for bounds in ([0, 37, 48], [0, 5, 6, 20, 48], [0, 48]):
        ref = np.array(
            [
                [K[a:b, c:d].sum() for c, d in itertools.pairwise(bounds)]
                for a, b in itertools.pairwise(bounds)
            ]
        )
        for block in (1, 3, 36, 37, 100):
            M = dist.unit_kernel_sums(Z, bounds, 1.7, block, dtype=dtype)
            np.testing.assert_allclose(M, ref, rtol=rel)
            np.testing.assert_array_equal(M, M.T)
            two = dist.unit_kernel_sums(Z, bounds, 1.7, block, threads=2, dtype=dtype)
            np.testing.assert_array_equal(two, M)


def test_kernel_sum_jobs_run_in_any_order_give_the_unit_kernel_sums():
    """The row-block jobs the distribution probe shares its pool with (the action TV and
    tau_int run in it too) are independent: run in reverse order and reduced in job
    order they give unit_kernel_sums' M bit for bit (as on two threads)."""
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(70, 18))
    bounds = [0, 10, 35, 70]
    sums = dist.kernel_sum_jobs(Z, bounds, 1.3, block=8)
    assert len(sums.jobs) == 11  # 2 + 4 + 5 blocks of at most 8 rows, none across a unit
    results = {j: sums.jobs[j]() for j in reversed(range(len(sums.jobs)))}
    M = sums.reduce([results[j] for j in range(len(sums.jobs))])
    np.testing.assert_array_equal(M, dist.unit_kernel_sums(Z, bounds, 1.3, block=8))
    np.testing.assert_array_equal(M, dist.unit_kernel_sums(Z, bounds, 1.3, block=8, threads=2))


def test_median_bandwidth_brute_force():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(40, 18))
    d2 = [np.sum((Z[i] - Z[j]) ** 2) for i in range(40) for j in range(i + 1, 40)]
    ref = math.sqrt(np.median(d2) / 2)
    assert dist.median_bandwidth(Z, rng, 300) == pytest.approx(ref, rel=1e-12)


def test_mmd_of_sample_with_itself_is_zero_and_pvalue_not_small():
    X = np.random.default_rng(5).normal(size=(300, 18))
    sigma = dist.median_bandwidth(X, np.random.default_rng(0), 300)
    assert abs(dist.mmd2(X, X, sigma, dtype=np.float64)[0]) < 1e-12
    assert abs(dist.mmd2(X, X, sigma)[0]) < F32_MMD_ABS
    test = dist.mmd_permutation_pvalue(X, X, sigma, 100, np.random.default_rng(0))
    assert test.unit_len == 2 and test.units == 300 and test.points == 600  # tau_int ~ 1
    assert test.pvalue > 0.05


def test_mmd_pvalue_small_for_shifted_sample_and_thinning():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(700, 18))
    Y = rng.normal(loc=0.5, size=(700, 18))
    sigma = dist.median_bandwidth(np.concatenate([X, Y]), rng, 300)
    test = dist.mmd_permutation_pvalue(X, Y, sigma, 50, rng, max_points=400)
    assert (test.points, test.unit_len) == (350, 1)  # stride 4: 175 per chain, 2 tau / 4 < 1
    assert test.pvalue == pytest.approx(1 / 51)
    same = dist.mmd_permutation_pvalue(X, X[::-1], sigma, 0, rng)
    assert math.isnan(same.pvalue)


def ar1_chains(rng: np.random.Generator, chains: int, T: int, a: float, loc: float) -> np.ndarray:
    """``x_t = a x_{t-1} + e_t`` in 18 dims from the stationary start, plus loc [C, T, 18]."""
    e = rng.standard_normal((T, chains, 18))
    x = np.empty_like(e)
    x[0] = e[0] / math.sqrt(1 - a * a)
    for t in range(1, T):
        x[t] = a * x[t - 1] + e[t]
    return np.swapaxes(x, 0, 1) + loc


@pytest.mark.parametrize(("a", "tau"), [(0.0, 1.0), (0.5, 3.0), (0.8, 9.0)])
def test_integrated_autocorrelation_time_of_ar1(a, tau):
    """AR(1): tau_int = (1 + a) / (1 - a) (closed form); 32 chains x 4096 steps estimate
    it to a few percent (Sokal's window bias ~ exp(-5))."""
    x = ar1_chains(np.random.default_rng(7), 32, 4096, a, 0.0)
    assert dist.integrated_autocorrelation_time(list(x)) == pytest.approx(tau, rel=0.06)


def test_mmd_chain_permutation_null_uniform_and_shift_detected():
    """Strongly autocorrelated chains (AR(1), a = 0.9, tau_int = 19): permuting whole
    independent chains keeps P(p < 0.05) within [0.01, 0.12] over 100 null repeats (the
    binomial 95% band of 0.05 is [0.01, 0.10]); a 0.5 shift of the mean is still found.
    The same chains tested as ONE chain per policy with sample-level exchangeability
    (the old test) rejects far too often: the reason for the chains."""
    rng = np.random.default_rng(8)
    pvalues, naive = [], []
    for _ in range(100):
        X, Y = ar1_chains(rng, 8, 24, 0.9, 0.0), ar1_chains(rng, 8, 24, 0.9, 0.0)
        sigma = dist.median_bandwidth(np.concatenate([X, Y]).reshape(-1, 18), rng, 300)
        pvalues.append(dist.mmd_permutation_pvalue(X, Y, sigma, 100, rng).pvalue)
        x, y = X.reshape(-1, 18), Y.reshape(-1, 18)
        naive.append(dist.mmd_permutation_pvalue(x[:, None], y[:, None], sigma, 100, rng).pvalue)
    assert 0.01 <= np.mean(np.array(pvalues) < 0.05) <= 0.12
    assert np.mean(np.array(naive) < 0.05) > 0.3
    X, Y = ar1_chains(rng, 8, 24, 0.9, 0.0), ar1_chains(rng, 8, 24, 0.9, 0.5)
    sigma = dist.median_bandwidth(np.concatenate([X, Y]).reshape(-1, 18), rng, 300)
    assert dist.mmd_permutation_pvalue(X, Y, sigma, 100, rng).pvalue < 0.05


def test_permutation_test_on_the_mmds_own_sums_is_the_unthinned_test():
    """The probe's p-value (unit_permutation_test on the unit sums its mmd2 comes from)
    is mmd_permutation_pvalue's without thinning, for the same draws; and mmd2_of_sums of
    those sums is mmd2 itself (to float32 rounding)."""
    for seed, shift in ((9, 0.0), (10, 0.15)):
        rng = np.random.default_rng(seed)
        X = ar1_chains(rng, 4, 40, 0.5, 0.0)
        Y = ar1_chains(rng, 4, 40, 0.5, shift)
        x, y = X.reshape(-1, 18), Y.reshape(-1, 18)
        sigma = dist.median_bandwidth(np.concatenate([x, y]), rng, 300)
        M = dist.unit_kernel_sums(np.concatenate([x, y]), np.arange(0, 321, 40), sigma)
        tau = dist.integrated_autocorrelation_time([*X, *Y])
        got = dist.unit_permutation_test(M, 4, 40, tau, 200, np.random.default_rng(0))
        ref = dist.mmd_permutation_pvalue(X, Y, sigma, 200, np.random.default_rng(0), 320)
        assert got == ref
        assert (got.points, got.units, got.unit_len) == (320, 8, 40)
        b, u = dist.mmd2_of_sums(M, 4, 160, 160)
        assert (b, u) == pytest.approx(dist.mmd2(x, y, sigma, dtype=np.float64), abs=F32_MMD_ABS)


def test_distribution_probe_null_pvalues_uniform_on_the_torus():
    """mu == pi exactly (offset 0, equal sigmas): 60 probe rounds with fresh draws on a
    small config; the fraction of p < 0.05 is within [0.01, 0.12] (binomial sd 0.028)."""
    cfg = tiny_config(
        "theta_mu_offset_scale=0",
        "sigma_mu=0.25",
        "sigma_pi=0.25",
        "probes.common_random_numbers=false",
        "probes.fixed_point.enabled=false",
        "probes.stability.enabled=false",
        "probes.q_kernel.enabled=false",
        "probes.rho_audit.enabled=false",
        "probes.distribution.num_samples=128",
        "probes.distribution.permutations=200",
        "probes.distribution.action_samples=1",
    )
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    assert np.array_equal(params.theta_mu, params.theta_pi)
    manager = ProbeManager(cfg, maps)
    rows = [manager.run(n, params, np.zeros(1), 0.0, "every").rows for n in range(60)]
    pvalues = np.array([r["distribution_probe"]["mmd_pvalue"] for r in rows])
    assert 0.01 <= np.mean(pvalues < 0.05) <= 0.12
    row = rows[0]["distribution_probe"]
    assert row["mmd_units"] == 16 and row["mmd_unit_len"] == 16 and row["chains"] == 8
    assert row["mmd_ess"] == pytest.approx(256 / row["mmd_tau_int"])


def test_probe_tests_every_pooled_sample():
    """The probe's permutation test permutes the unit sums of its own mmd2 kernel: all
    2 x 4096 pooled samples in 16 chains of 512 (the thinned test used 2048 points)."""
    cfg = tiny_config(
        "probes.fixed_point.enabled=false",
        "probes.stability.enabled=false",
        "probes.q_kernel.enabled=false",
        "probes.rho_audit.enabled=false",
        "probes.distribution.num_samples=4096",
        "probes.distribution.permutations=20",
        "probes.distribution.action_samples=1",
    )
    maps = make_feature_maps(cfg)
    row = ProbeManager(cfg, maps).run(0, init_params(cfg, maps), np.zeros(1), 0.0, "every")
    row = row.rows["distribution_probe"]
    assert (row["mmd_perm_points"], row["mmd_units"], row["mmd_unit_len"]) == (8192, 16, 512)
    assert 1 / 21 <= row["mmd_pvalue"] <= 1 and row["mmd2"] > 0
