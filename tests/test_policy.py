"""Linear-Gaussian policies and importance ratios (docs/model.md §3)."""

from __future__ import annotations

import math

import numpy as np

from tdlens.policy import (
    gaussian_kl,
    importance_ratio,
    log_prob,
    policy_mean,
    rho_moments,
    score,
    squash,
)

SIGMA_PI, SIGMA_MU = 0.30, 0.35
# Closed form E_mu[rho^2] = prod_dims sigma_mu^2 / (sigma_pi sqrt(2 sigma_mu^2 - sigma_pi^2))
# = (0.1225 / (0.3 * sqrt(0.155)))^2 = 1.07574 (docs/model.md §6.3 reference value 1.0757).
RHO2_REF = (SIGMA_MU**2 / (SIGMA_PI * math.sqrt(2 * SIGMA_MU**2 - SIGMA_PI**2))) ** 2


def test_reference_rho2_value():
    assert abs(RHO2_REF - 1.0757) < 5e-5
    _, rho2 = rho_moments(np.zeros((1, 2)), SIGMA_PI, np.zeros((1, 2)), SIGMA_MU)
    assert np.isclose(rho2[0], RHO2_REF)


def test_rho_is_one_when_pi_equals_mu():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(100, 2))
    u = m + 0.3 * rng.standard_normal((100, 2))
    rho, raw = importance_ratio(u, m, 0.3, m, 0.3, 10.0)
    assert np.all(rho == 1.0) and np.all(raw == 1.0)


def test_rho_moments_match_monte_carlo_within_standard_error():
    rng = np.random.default_rng(1)
    n = 400_000
    for shift in (0.0, 0.1):
        m_mu = np.zeros((n, 2))
        m_pi = np.full((n, 2), shift)
        u = m_mu + SIGMA_MU * rng.standard_normal((n, 2))
        _, rho = importance_ratio(u, m_pi, SIGMA_PI, m_mu, SIGMA_MU, None)
        e1, e2 = rho_moments(m_pi[:1], SIGMA_PI, m_mu[:1], SIGMA_MU)
        se1 = rho.std() / math.sqrt(n)
        se2 = (rho**2).std() / math.sqrt(n)
        assert abs(rho.mean() - e1[0]) < 5 * se1
        assert abs((rho**2).mean() - e2[0]) < 5 * se2
        if shift == 0.0:
            # at equal means rho peaks at u = m with value (sigma_mu / sigma_pi)^2 = 1.3611
            sup = (SIGMA_MU / SIGMA_PI) ** 2
            assert abs(sup - 1.3611) < 1e-4
            assert sup - 1e-3 < rho.max() <= sup


def test_rho_clip_and_infinite_variance_condition():
    u = np.array([[3.0, 0.0]])
    rho, raw = importance_ratio(u, np.array([[3.0, 0.0]]), 0.4, np.zeros((1, 2)), 0.25, 10.0)
    assert raw[0] > 10 and rho[0] == 10.0
    _, e2 = rho_moments(np.zeros((1, 2)), 0.40, np.zeros((1, 2)), 0.25)
    assert np.isinf(e2[0])  # sigma_pi^2 >= 2 sigma_mu^2


def test_score_equals_finite_difference_gradient():
    rng = np.random.default_rng(2)
    N = 6
    theta = rng.normal(size=(N, 2))
    psi = rng.uniform(-0.4, 0.4, N)
    u = rng.normal(size=2)
    sigma = 0.3

    def logp(th):
        return log_prob(u, policy_mean(th, psi), sigma)

    g = score(psi, u, policy_mean(theta, psi), sigma)
    fd = np.zeros_like(theta)
    h = 1e-6
    for idx in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[idx] = h
        fd[idx] = (logp(theta + e) - logp(theta - e)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_squashed_log_prob_is_change_of_variables():
    u = np.array([[0.3, -1.2], [2.0, 0.1]])
    m, sigma, v_max = np.array([[0.1, 0.0]]), 0.5, 0.4
    gauss = -0.5 * np.sum((u - m) ** 2, 1) / sigma**2 - 2 * math.log(sigma) - math.log(2 * math.pi)
    jac = np.sum(np.log(v_max * (1 - np.tanh(u) ** 2)), 1)
    np.testing.assert_allclose(log_prob(u, m, sigma, True, v_max), gauss - jac, rtol=1e-12)
    assert np.all(np.abs(squash(u, v_max)) < v_max)


def test_gaussian_kl_closed_form_and_monte_carlo():
    # equal means, sigma 0.30 vs 0.35, 2-D: 2 [ln(0.35/0.3) + 0.09/(2 * 0.1225) - 0.5] = 0.04300
    kl = gaussian_kl(np.zeros((1, 2)), SIGMA_PI, np.zeros((1, 2)), SIGMA_MU)[0]
    assert abs(kl - 0.04300) < 1e-5
    rng = np.random.default_rng(3)
    m_p, m_q = np.array([[0.1, -0.2]]), np.array([[0.0, 0.05]])
    x = m_p + SIGMA_PI * rng.standard_normal((200_000, 2))
    lr = log_prob(x, m_p, SIGMA_PI) - log_prob(x, m_q, SIGMA_MU)
    exact = gaussian_kl(m_p, SIGMA_PI, m_q, SIGMA_MU)[0]
    assert abs(lr.mean() - exact) < 5 * lr.std() / math.sqrt(len(lr))
    assert gaussian_kl(m_p, 0.3, m_p, 0.3)[0] == 0.0


def test_policy_mean_split_across_threads_is_the_one_thread_result():
    """policy_mean(threads=2) splits rows from SPLIT_ROWS on into contiguous blocks on two
    threads (issue 28): each row is its own dot products, so the bits of one thread, with
    theta shared or one per row, float32 or float64 rows, and a row count that does not
    halve evenly."""
    from tdlens.policy import SPLIT_ROWS

    rng = np.random.default_rng(5)
    N = 96
    for dtype in (np.float32, np.float64):
        psi = rng.standard_normal((SPLIT_ROWS + 7, 3, N)).astype(dtype)
        for theta in (rng.standard_normal((N, 2)), rng.standard_normal((SPLIT_ROWS + 7, 3, N, 2))):
            one = policy_mean(theta, psi)
            for threads in (2, 3):
                np.testing.assert_array_equal(policy_mean(theta, psi, threads), one)
            assert np.all(one != 0)
