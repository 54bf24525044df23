"""Sanity checks pass on the real learner and catch deliberately broken twins (docs/model.md
§10)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tdlens import learner, rollout
from tdlens.config import load_config
from tdlens.suites import run_suite

BASE = ["probes.enabled=false", "env.feature_dim=64", "env.actor_feature_dim=16"]


def _check(tmp_path, name, *extra):
    base = load_config("configs/sanity.yaml", [*BASE, *extra])
    res = run_suite(base, tmp_path, only=[name])
    assert (res.out_dir / "SUMMARY.md").exists() and (res.out_dir / "summary.json").exists()
    return res.checks[0]


NON_PROBE_CHECKS = [
    "fixed_pi",
    "batch_scaling",
    "C0_on_policy_critic",
    "C1_on_policy_actor",
    "C2_fixed_behaviour",
    "C3_tracking_beta_0.1",
    "C4_tracking_beta_0.5",
    "C5_gamma_0",
    "C6_batch_B1",
    "C7_batch_B4",
]


@pytest.mark.parametrize("name", NON_PROBE_CHECKS)
def test_check_passes_on_the_real_learner(tmp_path, name):
    check = _check(tmp_path, name)
    assert check.passed, check.observed


@pytest.fixture
def wrong_behaviour_sigma(monkeypatch):
    """Twin: ratios computed with a behaviour sigma 5% off."""
    real = rollout._ratios

    def broken(u, m_pi, sigma_pi, m_mu, sigma_mu, clip):
        return real(u, m_pi, sigma_pi, m_mu, sigma_mu * 1.05, clip)

    monkeypatch.setattr(rollout, "_ratios", broken)


@pytest.mark.parametrize(
    "name", ["C0_on_policy_critic", "C1_on_policy_actor", "C2_fixed_behaviour"]
)
def test_ratio_checks_catch_a_wrong_ratio(tmp_path, wrong_behaviour_sigma, name):
    assert not _check(tmp_path, name).passed


def test_c2_catches_an_inverted_ratio_by_its_supremum(tmp_path, monkeypatch):
    """Twin: mu/pi instead of pi/mu. Its moments are infinite, so a z-test with the
    sample's own standard error alone let it pass (E[rho] = 62,921 at z = 1.17)."""
    real = rollout._ratios

    def inverted(u, m_pi, sigma_pi, m_mu, sigma_mu, clip):
        rho, raw = real(u, m_pi, sigma_pi, m_mu, sigma_mu, None)
        return 1.0 / rho, 1.0 / raw

    monkeypatch.setattr(rollout, "_ratios", inverted)
    check = _check(tmp_path, "C2_fixed_behaviour")
    over = re.search(r"(\d+) of \d+ ratios above their supremum", check.observed)
    assert not check.passed and over is not None and int(over.group(1)) > 0


def test_rho_supremum_per_step_is_the_brute_force_maximum():
    from scipy.optimize import minimize

    from tdlens.suites import _rho_sup_per_step

    rng = np.random.default_rng(3)
    m_pi, m_mu = rng.normal(0, 0.3, (5, 2)), rng.normal(0, 0.3, (5, 2))
    sup = _rho_sup_per_step(m_pi, 0.2, m_mu, 0.35)
    for i in range(5):

        def neg_log_ratio(u, i=i):
            lp = -np.sum((u - m_pi[i]) ** 2) / (2 * 0.2**2) - 2 * np.log(0.2)
            lm = -np.sum((u - m_mu[i]) ** 2) / (2 * 0.35**2) - 2 * np.log(0.35)
            return lm - lp

        best = minimize(neg_log_ratio, m_pi[i], tol=1e-12)
        assert np.exp(-best.fun) == pytest.approx(sup[i], rel=1e-8)


def test_c2_catches_ratios_on_clipped_actions(tmp_path, monkeypatch):
    """Twin: the seed system's bug, rho evaluated on the clipped action."""
    real = rollout._ratios

    def on_clipped(u, m_pi, sigma_pi, m_mu, sigma_mu, clip):
        return real(np.clip(u, -0.4, 0.4), m_pi, sigma_pi, m_mu, sigma_mu, clip)

    monkeypatch.setattr(rollout, "_ratios", on_clipped)
    assert not _check(tmp_path, "C2_fixed_behaviour").passed


@pytest.mark.parametrize("name", ["C5_gamma_0"])
def test_target_check_catches_a_learner_that_bootstraps_anyway(tmp_path, monkeypatch, name):
    real = learner.outer_iteration

    def bootstraps(cfg, maps, params, n, ws=None):
        return real(cfg.model_copy(update={"gamma": 0.5}), maps, params, n, ws)

    from tdlens.runs import runner

    monkeypatch.setattr(runner, "outer_iteration", bootstraps)
    assert not _check(tmp_path, name).passed


@pytest.mark.parametrize("name", ["fixed_pi", "C3_tracking_beta_0.1", "C4_tracking_beta_0.5"])
def test_tracking_checks_catch_a_wrong_sign(tmp_path, monkeypatch, name):
    def wrong_sign(cfg, params, G_w, G_theta):
        s = cfg.step_scale
        theta_pi = params.theta_pi + cfg.alpha_pi * s * G_theta
        theta_mu = (1.0 + cfg.beta) * params.theta_mu - cfg.beta * theta_pi
        return learner.Params(theta_mu, theta_pi, params.w + cfg.alpha_w * s * G_w)

    monkeypatch.setattr(learner, "update", wrong_sign)
    assert not _check(tmp_path, name).passed


def test_fixed_pi_catches_an_actor_that_moves(tmp_path, monkeypatch):
    real = learner.update

    def leaks(cfg, params, G_w, G_theta):
        return real(cfg.model_copy(update={"alpha_pi": 1e-3}), params, G_w, G_theta)

    monkeypatch.setattr(learner, "update", leaks)
    assert not _check(tmp_path, "fixed_pi").passed


@pytest.mark.parametrize("name", ["batch_scaling", "C7_batch_B4"])
def test_batch_checks_catch_a_step_that_ignores_b(tmp_path, monkeypatch, name):
    """Twin: the update sums over trajectories instead of averaging (s = 1/T)."""
    real = learner.update

    def sums(cfg, params, G_w, G_theta):
        scaled = cfg.model_copy(update={"alpha_w": cfg.alpha_w * cfg.trajectories})
        return real(scaled, params, G_w, G_theta)

    monkeypatch.setattr(learner, "update", sums)
    assert not _check(tmp_path, name).passed


PROBED = ["env.feature_dim=64", "env.actor_feature_dim=16"]


def _probed_check(tmp_path, name, *extra):
    base = load_config("configs/sanity.yaml", [*PROBED, *extra])
    return run_suite(base, tmp_path, only=[name]).checks[0]


@pytest.mark.parametrize("name", ["on_policy", "no_bootstrap"])
def test_probe_backed_checks_pass_and_catch_their_twins(tmp_path, monkeypatch, name):
    check = _probed_check(tmp_path / "real", name)
    assert check.passed, check.observed
    if name == "on_policy":
        real = rollout._ratios
        monkeypatch.setattr(
            rollout, "_ratios", lambda u, mp, sp, mb, sb, c: real(u, mp, sp, mb, sb * 1.05, c)
        )
    else:
        from tdlens.runs import runner

        real_it = learner.outer_iteration
        monkeypatch.setattr(
            runner,
            "outer_iteration",
            lambda cfg, maps, p, n, ws=None: real_it(
                cfg.model_copy(update={"gamma": 0.5}), maps, p, n, ws
            ),
        )
    assert not _probed_check(tmp_path / "twin", name).passed


def test_full_triad_catches_the_seed_loss_convention(tmp_path, monkeypatch):
    """Twin: the seed's 1/2 in td_loss_from_Q makes the loss_convention health check FAIL."""
    from dataclasses import replace

    from tdlens.probes import q_kernel as qk

    real = qk.q_kernel
    monkeypatch.setattr(
        qk, "q_kernel", lambda cache: replace(real(cache), Q_hat=real(cache).Q_hat / 2)
    )
    assert not _probed_check(tmp_path, "full_triad_short").passed


def test_learning_catches_a_critic_that_learns_too_slowly(tmp_path, monkeypatch):
    """Twin: the critic applies a quarter of its step; the value gap lags the prediction."""
    real = learner.update
    monkeypatch.setattr(
        learner,
        "update",
        lambda cfg, p, G_w, G_t: real(
            cfg.model_copy(update={"alpha_w": cfg.alpha_w / 4}), p, G_w, G_t
        ),
    )
    assert not _probed_check(tmp_path, "learning").passed


def test_learning_catches_a_trainer_with_another_gamma(tmp_path, monkeypatch):
    """Twin: the trainer bootstraps with gamma 0.5 while the probes use 0.9. The earlier
    check (|measured - predicted| <= value_noise_floor, 5 iterations ahead) could not see
    it; the measured value_gap now settles ~2.7x (squared) above the predicted floor."""
    gamma = 0.5
    from tdlens.runs import runner

    real_it = learner.outer_iteration
    monkeypatch.setattr(
        runner,
        "outer_iteration",
        lambda cfg, maps, p, n, ws=None: real_it(
            cfg.model_copy(update={"gamma": gamma}), maps, p, n, ws
        ),
    )
    twin = _probed_check(tmp_path, "learning")
    assert not twin.passed, twin.observed


def test_whole_suite_end_to_end(tmp_path):
    """`tdlens sanity` with every check passes and writes its summary files (docs/model.md §10)."""
    from typer.testing import CliRunner

    from tdlens.cli import app

    res = CliRunner().invoke(app, ["sanity", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (out,) = list(tmp_path.iterdir())
    for name in ("SUMMARY.md", "SUMMARY.html", "summary.json"):
        assert (out / name).is_file()
    summary = (out / "SUMMARY.md").read_text()
    from tdlens.suites import SANITY_CHECKS

    assert summary.count("| PASS |") == len(SANITY_CHECKS) and "FAIL" not in summary


def test_console_keeps_brackets_of_the_observed_text(tmp_path):
    """rich read `[rho]` and `[rho^2]` as markup and dropped them (`E = 1.0119`)."""
    from typer.testing import CliRunner

    from tdlens.cli import app

    args = ["sanity", "--only", "C2_fixed_behaviour", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, *(a for b in BASE for a in ("--set", b))])
    assert result.exit_code == 0, result.output
    assert "E[rho] = " in result.output and "E[rho^2] - theory = " in result.output
