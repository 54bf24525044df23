"""The probes' next-action features (issue 28, ``probes.bar_phi``): the fixed-point and
stability batches use the closed-form ``bar_phi`` (one cosine per row instead of K_mc),
which is the expectation of the trainer's Monte Carlo estimate, so the probes estimate
the same A and b with less noise; the update-noise factor U stays the trainer's (its TD
errors carry the trainer's Monte Carlo draws)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from probe_testlib import tiny_config

from tdlens.config import ConfigError, load_config, shipped_configs
from tdlens.features import make_feature_maps
from tdlens.learner import init_params
from tdlens.probes import expected as ex
from tdlens.probes import fixed_point as fp
from tdlens.probes.common import batch_slices, plan_chains, roll_chains, truncate_noise
from tdlens.probes.critic import batch_view, probe_config, trainer_td_errors
from tdlens.probes.manager import ProbeManager
from tdlens.rollout import td_batch


def _fixed_batch(cfg):
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    plan = plan_chains(cfg)
    rolled = roll_chains(cfg, maps, params, plan.specs(), 2)
    return maps, params, plan.fixed, rolled


def _moments(cfg, batch):
    n, D = batch.phi.shape[0] * batch.phi.shape[1], batch.phi.shape[-1]
    phi = batch.phi.reshape(n, D).astype(np.float64)
    dphi = fp.td_difference_(phi.copy(), batch.bar_phi.reshape(n, D).astype(np.float64), cfg.gamma)
    return fp.td_moments(phi, dphi, batch.rho.reshape(n), batch.r.reshape(n))


def test_probe_bar_phi_resolves_to_the_closed_form_only_where_it_is_the_expectation():
    assert tiny_config().probe_bar_phi == "exact"  # default, trainer keeps bar_phi: mc
    assert tiny_config().bar_phi == "mc"
    assert tiny_config("probes.bar_phi=same_as_training").probe_bar_phi == "mc"
    assert tiny_config("env.clip_action=true").probe_bar_phi == "mc"
    assert tiny_config("squash_action=true").probe_bar_phi == "mc"
    assert tiny_config("K_mc=0").probe_bar_phi == "mc"  # phi(s', 0) is no expectation
    exact = tiny_config("bar_phi=exact", "probes.bar_phi=same_as_training")
    assert exact.probe_bar_phi == "exact"
    cfg = tiny_config()
    assert probe_config(cfg).bar_phi == "exact" and probe_config(cfg).K_mc == cfg.K_mc
    same = tiny_config("probes.bar_phi=same_as_training")
    assert probe_config(same) is same


def test_probe_bar_phi_default_keeps_the_config_hash_and_a_bad_value_names_the_key():
    seed = shipped_configs() / "seed_plateau.yaml"
    default = load_config(seed)
    explicit = load_config(seed, ["probes.bar_phi=exact"])
    other = load_config(seed, ["probes.bar_phi=same_as_training"])
    assert explicit.config_hash() == default.config_hash()
    assert other.config_hash() != default.config_hash()
    with pytest.raises(ConfigError, match=r"probes\.bar_phi"):
        load_config(None, ["probes.bar_phi=mcc"])


def test_closed_form_A_is_the_mean_of_the_trainers_monte_carlo_A_and_b_is_unchanged():
    """On one probe batch (D = 64, 256 samples): A from the closed-form bar_phi against
    the mean of R = 120 Monte Carlo A (K_mc = 4 fresh draws of z_next each), entry by
    entry within 5.5 standard errors (A is linear in bar_phi, so the MC A is unbiased
    for the closed form's; P(|z| > 5.5) ~ 4e-8 per entry under the closed form). The
    closed form without its damping factor exp(-sigma^2 |w_a|^2 / 2) is rejected by the
    same statistic (the test can fail). b = E rho r phi does not involve bar_phi: equal
    bit for bit."""
    cfg = tiny_config()
    maps, params, spec, rolled = _fixed_batch(cfg)
    group, cols = rolled.group(spec), rolled.columns(spec)
    paths = group.paths.take(cols)
    noise = truncate_noise(group.noise.take(cols), spec.T)
    sigma_mu = group.sigma_mu[cols]
    theta_pi = params.theta_pi
    exact = _moments(cfg, td_batch(probe_config(cfg), maps, paths, noise, theta_pi, sigma_mu))
    trainer = _moments(cfg, td_batch(cfg, maps, paths, noise, theta_pi, sigma_mu))
    np.testing.assert_array_equal(exact.b, trainer.b)
    rng = np.random.default_rng(28)
    reps = []
    for _ in range(120):
        z = rng.standard_normal(noise.z_next.shape)
        batch = td_batch(cfg, maps, paths, replace(noise, z_next=z), params.theta_pi, sigma_mu)
        reps.append(_moments(cfg, batch).A.copy())
    reps = np.stack(reps)
    mean, se = reps.mean(axis=0), reps.std(axis=0, ddof=1) / math.sqrt(len(reps))
    scale = np.abs(exact.A).max()
    # entries without Monte Carlo noise (the flag columns of dphi: their replicates differ
    # only by float64 summation order, ~1e-20) agree to float32 rounding
    noisy = se > 1e-12 * scale
    np.testing.assert_allclose(exact.A[~noisy], mean[~noisy], rtol=0, atol=1e-6 * scale)
    z_exact = np.abs(exact.A - mean)[noisy] / se[noisy]
    assert z_exact.max() < 5.5, z_exact.max()
    # the undamped closed form (a wrong expectation) fails the same statistic
    D_base = maps.D - 4
    w_sq = np.sum(maps.W_act.astype(np.float64) ** 2, axis=0)
    damp = np.exp(-0.5 * cfg.sigma_pi**2 * w_sq)
    wrong_cfg = probe_config(cfg)
    wrong = td_batch(wrong_cfg, maps, paths, noise, params.theta_pi, sigma_mu)
    wrong.bar_phi[..., :D_base] /= damp.astype(wrong.bar_phi.dtype)
    z_wrong = np.abs(_moments(cfg, wrong).A - mean)[noisy] / se[noisy]
    assert z_wrong.max() > 20, z_wrong.max()


def test_update_noise_factor_stays_the_trainers_with_closed_form_probe_features():
    """U of the closed-form batch with the trainer's TD errors (trainer_td_errors) equals U
    of the trainer's own Monte Carlo batch at the same w, to float32 rounding of the
    products; without them (closed-form TD errors) it misses the Monte Carlo part of
    the trainer's noise and differs by far more."""
    cfg = tiny_config()
    maps, params, spec, rolled = _fixed_batch(cfg)
    (cols,) = batch_slices([spec])
    w = np.random.default_rng(3).standard_normal(maps.D) * 3.0
    mc = batch_view(cfg, rolled.difference_batch(cfg, maps, [spec], params.theta_pi), cols, spec)
    closed = batch_view(
        cfg, rolled.difference_batch(probe_config(cfg), maps, [spec], params.theta_pi), cols, spec
    )
    np.testing.assert_array_equal(mc.phi_t, closed.phi_t)
    delta = trainer_td_errors(cfg, maps, rolled, spec, params.theta_pi, w, closed.r_t)
    ref = mc.r_t - (mc.dphi_t.astype(np.float64) @ w) / math.sqrt(maps.D)
    np.testing.assert_allclose(delta, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    size = mc.cluster_size
    U_mc = ex.update_noise_factor(mc.phi_t, mc.dphi_t, mc.rho_t, mc.r_t, w, size)
    c = closed
    U = ex.update_noise_factor(c.phi_t, c.dphi_t, c.rho_t, c.r_t, w, size, delta)
    scale = np.abs(U_mc).max()
    np.testing.assert_allclose(U, U_mc, rtol=0, atol=1e-6 * scale)  # measured: equal
    U_closed = ex.update_noise_factor(c.phi_t, c.dphi_t, c.rho_t, c.r_t, w, size)
    assert np.abs(U_closed - U_mc).max() > 1e-3 * scale


def test_a_round_builds_U_from_the_trainers_td_errors_and_same_as_training_from_its_own(
    monkeypatch,
):
    """In a probe round (ProbeManager, tiny config) the update-noise factor receives the
    trainer's Monte Carlo TD errors at the round's w# (equal to r - dphi_mc . w# / sqrt(D)
    of the trainer-featurised fixed-point batch); with probes.bar_phi: same_as_training
    the batch is the trainer's and U its own TD errors (none passed)."""
    calls = []
    original = ex.update_noise_factor

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(ex, "update_noise_factor", spy)
    others = ("distribution", "q_kernel", "rho_audit", "plateau")
    off = tuple(f"probes.{name}.enabled=false" for name in others)
    for overrides, expect_delta in (((), True), (("probes.bar_phi=same_as_training",), False)):
        calls.clear()
        cfg = tiny_config(*off, *overrides)
        maps, params, spec, rolled = _fixed_batch(cfg)
        ProbeManager(cfg, maps).run(2, params, np.zeros(1), 0.0, "every")
        (args,) = calls
        delta, w_sharp = args[6], args[4]
        if not expect_delta:
            assert delta is None
            continue
        (cols,) = batch_slices([spec])
        batch = rolled.difference_batch(cfg, maps, [spec], params.theta_pi)
        mc = batch_view(cfg, batch, cols, spec)
        ref = mc.r_t - (mc.dphi_t.astype(np.float64) @ w_sharp) / math.sqrt(maps.D)
        np.testing.assert_allclose(delta, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
