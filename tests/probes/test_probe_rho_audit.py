"""Rho audit (docs/model.md §6.5): passes on correct ratios, fails on the seed's kinds of wrong
ones."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from probe_testlib import snapshot, tiny_config

from tdlens.policy import importance_ratio
from tdlens.probes import rho_audit as ra


def chain_means(n: int, seed: int, offset: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Slowly varying (autocorrelated) behaviour means and target means offset from them."""
    rng = np.random.default_rng(seed)
    m_mu = 0.2 * np.cumsum(rng.normal(size=(n, 2)), axis=0) / math.sqrt(n)
    return m_mu + offset * np.array([1.0, -0.5]), m_mu


@pytest.mark.parametrize("seed", range(5))
def test_audit_passes_on_correct_ratios(seed):
    m_pi, m_mu = chain_means(4096, seed)
    u = m_mu + 0.35 * np.random.default_rng(100 + seed).standard_normal(m_mu.shape)
    _, rho_raw = importance_ratio(u, m_pi, 0.30, m_mu, 0.35, None)
    row = ra.audit_rho(rho_raw, m_pi, m_mu, 0.30, 0.35, 1.2, 5.0)
    assert row["passed"] == 1.0 and row["reliable"] == 1.0
    assert row["max_abs_z"] < 5.0
    assert row["rho_mean_theory"] == 1.0


def test_audit_fails_on_wrong_sigma():
    m_pi, m_mu = chain_means(4096, 0)
    u = m_mu + 0.35 * np.random.default_rng(1).standard_normal(m_mu.shape)
    _, wrong = importance_ratio(u, m_pi, 0.30, m_mu, 0.30, None)  # mu's sigma taken as 0.30
    row = ra.audit_rho(wrong, m_pi, m_mu, 0.30, 0.35, None, 5.0)
    assert row["passed"] == 0.0 and row["max_abs_z"] > 5.0


def test_audit_fails_on_ratios_of_clipped_actions():
    """The seed's bug: rho computed on the action after the environment clipped it."""
    m_pi, m_mu = chain_means(4096, 2, offset=0.0)
    u = m_mu + 0.35 * np.random.default_rng(3).standard_normal(m_mu.shape)
    _, wrong = importance_ratio(np.clip(u, -0.25, 0.25), m_pi, 0.30, m_mu, 0.35, None)
    row = ra.audit_rho(wrong, m_pi, m_mu, 0.30, 0.35, 10.0, 5.0)
    assert row["passed"] == 0.0 and row["max_abs_z"] > 5.0


@pytest.mark.parametrize(
    ("sigma_pi", "sigma_mu", "c", "offset"),
    [(0.30, 0.35, 1.1, 0.1), (0.35, 0.35, 1.5, 0.2), (0.40, 0.35, 2.0, 0.05), (0.4, 0.3, 3.0, 0.3)],
)
def test_clipped_mean_closed_form_against_monte_carlo(sigma_pi, sigma_mu, c, offset):
    """E_mu[min(rho, c)] (noncentral chi-square / normal-tail closed form) vs 400k draws."""
    n = 400_000
    m_mu = np.zeros((n, 2))
    m_pi = np.full((n, 2), offset)
    u = sigma_mu * np.random.default_rng(4).standard_normal((n, 2))
    _, rho = importance_ratio(u, m_pi, sigma_pi, m_mu, sigma_mu, None)
    clipped = np.minimum(rho, c)
    theory = ra.clipped_rho_mean(c, m_pi[:1], sigma_pi, m_mu[:1], sigma_mu)[0]
    assert abs(clipped.mean() - theory) < 5 * clipped.std() / math.sqrt(n)


@pytest.mark.parametrize(("sigma_pi", "sigma_mu"), [(0.30, 0.35), (0.35, 0.35), (0.40, 0.35)])
def test_tail_probabilities_are_scipy_stats_bit_for_bit(sigma_pi, sigma_mu):
    """P(rho > c) from scipy.special (sigma_pi <= sigma_mu) equals the scipy.stats
    ``norm.sf`` / ``ncx2.cdf`` / ``ncx2.sf`` expressions it replaced, to the last bit,
    for states from the disk's centre (nc = 0) to far outside it."""
    from scipy import stats

    rng = np.random.default_rng(7)
    m_mu = rng.normal(scale=0.5, size=(2000, 2))
    m_pi = m_mu + rng.normal(scale=0.3, size=(2000, 2))
    for c in (0.5, 1.1, 3.0):
        log_c = math.log(c)
        for m, sigma in ((m_pi.copy(), sigma_pi), (m_mu.copy(), sigma_mu)):
            if sigma_pi == sigma_mu:
                diff = m_pi - m_mu
                scale = np.sqrt(np.sum(diff**2, axis=-1)) / sigma_pi
                loc = np.sum(diff * (m - 0.5 * (m_pi + m_mu)), axis=-1) / sigma_pi**2
                want = stats.norm.sf((log_c - loc) / scale)
            else:
                a, c0, K = ra._quadratic_log_ratio(m_pi, sigma_pi, m_mu, sigma_mu)
                m[:5] = c0[:5]  # nc = 0: the central chi-square
                radius2 = (log_c - K) / a
                nc = np.sum((m - c0) ** 2, axis=-1) / sigma**2
                x = np.maximum(radius2, 0.0) / sigma**2
                if a > 0:
                    want = np.where(radius2 < 0, 1.0, stats.ncx2.sf(x, 2, nc))
                else:
                    want = np.where(radius2 <= 0, 0.0, stats.ncx2.cdf(x, 2, nc))
                assert np.sum(nc == 0) == 5 and 0 < np.mean(radius2 > 0)
            got = ra.prob_rho_above(c, m, sigma, m_pi, sigma_pi, m_mu, sigma_mu)
            assert np.array_equal(got, want)


def test_sigma_pi_below_sigma_mu_needs_no_scipy_stats():
    """The seed settings (sigma_pi < sigma_mu, rho clipped) audit without importing
    scipy.stats (~0.3 s of every run's start-up, BENCHMARKS.md issue 28 session 9)."""
    code = (
        "import sys, numpy as np; from tdlens.probes import rho_audit as ra; "
        "m = np.zeros((4, 2)); ra.clipped_rho_mean(1.1, m + 0.1, 0.30, m, 0.35); "
        "print(sorted(k for k in sys.modules if k.startswith('scipy.stats')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_clipped_mean_limits_and_supremum():
    m = np.zeros((3, 2))
    np.testing.assert_allclose(ra.clipped_rho_mean(10.0, m, 0.30, m, 0.35), 1.0)
    assert ra.clipped_rho_mean(1.0, m[:1], 0.3, m[:1], 0.3)[0] == pytest.approx(1.0)
    assert ra.rho_supremum(m, 0.30, m, 0.35) == pytest.approx((0.35 / 0.30) ** 2)
    assert ra.rho_supremum(m, 0.40, m, 0.35) == math.inf
    assert ra.rho_supremum(m, 0.3, m, 0.3) == 1.0


def test_infinite_variance_is_flagged_unreliable():
    m = np.zeros((2000, 2))
    u = 0.2 * np.random.default_rng(5).standard_normal(m.shape)
    _, rho = importance_ratio(u, m, 0.35, m, 0.2, None)
    row = ra.audit_rho(rho, m, m, 0.35, 0.2, None, 5.0)
    assert row["reliable"] == 0.0 and row["rho2_z_reliable"] == 0.0 and row["rho_z_reliable"] == 0.0
    assert math.isinf(row["rho2_mean_theory"])
    mid = ra.audit_rho(rho, m, m, 0.25, 0.2, None, 5.0)  # 1.33 < ratio^2 = 1.56 < 2
    assert mid["rho_z_reliable"] == 1.0 and mid["rho2_z_reliable"] == 0.0


def test_audit_of_a_trainer_batch_passes():
    cfg = tiny_config("horizon=256")
    _, result = snapshot(cfg)
    row = ra.audit_td_batch(result.batch, cfg)
    assert row["passed"] == 1.0
    assert row["n"] == cfg.trajectories * cfg.horizon


def test_rho_z_is_calibrated_on_autocorrelated_states():
    """The residuals f(rho_t) - E_mu[f(rho) | s_t] are a martingale difference sequence, so
    z needs no effective-sample-size correction even when the states (here the policy
    means, a random walk) are strongly autocorrelated: over 400 chains of 512 steps,
    P(|z| > 1.96) is within [0.02, 0.085] (0.05 +- 3 binomial sd of 0.011) for rho and
    rho^2."""
    rng = np.random.default_rng(11)
    z1, z2 = [], []
    for seed in range(400):
        m_pi, m_mu = chain_means(512, 1000 + seed)
        u = m_mu + 0.35 * rng.standard_normal(m_mu.shape)
        _, rho_raw = importance_ratio(u, m_pi, 0.30, m_mu, 0.35, None)
        row = ra.audit_rho(rho_raw, m_pi, m_mu, 0.30, 0.35, None, 5.0)
        z1.append(row["rho_mean_z"])
        z2.append(row["rho2_mean_z"])
    for z in (np.abs(z1), np.abs(z2)):
        assert 0.02 <= np.mean(z > 1.96) <= 0.085


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_z_scores_carry_the_sign_of_empirical_minus_theory(scale):
    """Ratios scaled by 0.9 (1.1) average below (above) their closed forms: every z is
    ``(mean(x) - mean(theory)) / (std(x, ddof=1) / sqrt(n))`` with that sign, recomputed
    here from the row's own empirical and theory columns (signed, not only |z|)."""
    m_pi, m_mu = chain_means(4096, 7)
    u = m_mu + 0.35 * np.random.default_rng(8).standard_normal(m_mu.shape)
    _, rho_raw = importance_ratio(u, m_pi, 0.30, m_mu, 0.35, None)
    rho = scale * rho_raw
    row = ra.audit_rho(rho, m_pi, m_mu, 0.30, 0.35, 1.2, 5.0)
    n = rho.size
    clipped = np.minimum(rho, 1.2)
    for name, x in (("rho_mean", rho), ("rho2_mean", rho**2), ("clipped_mean", clipped)):
        theory = row[f"{name}_theory"]
        z = (x.mean() - theory) / (x.std(ddof=1) / math.sqrt(n))
        assert np.sign(row[f"{name}_z"]) == np.sign(scale - 1.0), name
        assert row[f"{name}_z"] == pytest.approx(z, rel=1e-3), name
