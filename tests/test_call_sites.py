"""Tests at the call sites: what the trainer and the probes really compute inside a run.

Each test catches a hand-made mutant that the pure-function tests let through:

1. the importance ratio computed on the executed (clipped or squashed) action instead of
   the Gaussian draw u (the seed system's real bug);
2. the TD target using the next step's sampled-action features instead of bar_phi;
3. a resume that drops the probe manager's state (tests/test_faults.py compares the probe
   tables, w_sharp_drift included, of a resumed run with probes on; the toy probe's
   state test in tests/probes/test_probe_registry.py does the same for any probe);
4. the distribution probe passing sigma_pi where sigma_mu belongs in its KL;
5. the fixed point solving A^T w = b instead of A w = b;
6. bar_phi under the default ``bar_phi: mc`` estimated from mu's sampled next action
   (then the critic evaluates mu, not pi);
7. the actor stepping against its gradient (``theta_pi -= ...``).

Every reference below is a float64 twin computed from the run's own batch, observed
through ``Runner(on_iteration=...)``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from tdlens.config import load_config
from tdlens.features import (
    NextActions,
    chain_features,
    expected_critic_features_exact,
    make_feature_maps,
)
from tdlens.learner import init_params, project
from tdlens.policy import squash
from tdlens.probes.common import fixed_point_chains, roll_chains
from tdlens.probes.critic import probe_config
from tdlens.probes.manager import ProbeManager
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner
from tdlens.torus.dynamics import clip_action

SMALL = ["env.feature_dim=32", "env.actor_feature_dim=8", "probes.enabled=false"]


def _observe(cfg, tmp_path):
    """Run `cfg`, returning [(params before, result)] of every iteration (copied: the
    runner's workspace reuses a batch's feature arrays in the next iteration)."""
    seen = []
    maps = make_feature_maps(cfg)
    before = [init_params(cfg, maps)]

    def hook(n, result):
        seen.append((before[0], copy.deepcopy(result)))
        before[0] = result.params

    res = Runner(cfg, tmp_path / "run", on_iteration=hook, handle_signals=False).run()
    assert res.status == "complete"
    return maps, seen


def _log_normal(u, mean, sigma):
    """log N(u; mean, sigma^2 I) over the last axis, float64."""
    d = u.shape[-1]
    sq = np.sum((u - mean) ** 2, axis=-1)
    return -0.5 * sq / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)


@pytest.mark.parametrize("executed", ["env.clip_action=true", "squash_action=true"])
def test_trainer_ratios_use_the_gaussian_draw_not_the_executed_action(tmp_path, executed):
    # sigma_mu = 0.5 against v_max = 0.4: most actions are clipped (or squashed)
    cfg = load_config(
        "configs/sanity.yaml",
        [*SMALL, executed, "outer_iters=2", "sigma_mu=0.5", "sigma_pi=0.45", "rho_clip=null"],
    )
    _, seen = _observe(cfg, tmp_path)
    for _, result in seen:
        b = result.batch
        # the action the environment executed differs from the draw on some steps
        executed = clip_action(b.a_unclipped, cfg.env)
        assert np.abs(b.u - executed).max() > 1e-3
        if cfg.env.clip_action:  # the draw left the box on some steps
            assert np.mean(np.abs(b.u).max(axis=-1) > cfg.env.v_max) > 0.1
        log_rho = _log_normal(b.u, b.m_pi, cfg.sigma_pi) - _log_normal(b.u, b.m_mu, cfg.sigma_mu)
        np.testing.assert_allclose(b.rho_raw, np.exp(log_rho), rtol=1e-10)
        np.testing.assert_array_equal(b.rho, b.rho_raw)  # no clip configured


def test_trainer_td_target_bootstraps_on_bar_phi_under_pi(tmp_path):
    cfg = load_config(
        "configs/sanity.yaml",
        [*SMALL, "outer_iters=2", "bar_phi=exact", "precision=float64", "gamma=0.9"],
    )
    maps, seen = _observe(cfg, tmp_path)
    for params, result in seen:
        b = result.batch
        w = params.w / math.sqrt(maps.D)
        expected = b.r + cfg.gamma * (b.bar_phi @ w) - b.phi @ w
        np.testing.assert_allclose(result.delta, expected, rtol=1e-9, atol=1e-12)
        # bar_phi(s_{t+1}) is E_{a ~ pi}[phi(s_{t+1}, a)]: the closed form at pi's mean
        exact = expected_critic_features_exact(maps, b.o[:, 1:-1], b.m_pi[:, 1:], cfg.sigma_pi)
        np.testing.assert_allclose(b.bar_phi[:, :-1], exact, rtol=1e-9, atol=1e-12)
        # and it is not the next step's sampled-action features
        assert np.abs(b.bar_phi[:, :-1] - b.phi[:, 1:]).max() > 1e-3


def _mc_bar_phi(cfg, maps, b, chain: int, K: int, rng) -> np.ndarray:
    """``[T - 1, D]``: bar_phi(s_{t+1}) of `chain` for t < T - 1 as the mean of phi over
    K fresh draws ``a' = m_pi(s_{t+1}) + sigma_pi z`` (squashed and clipped like a real
    action), the run's own states and pi means."""
    T = b.r.shape[1]
    u_next = b.m_pi[chain, 1:T, None, :] + cfg.sigma_pi * rng.standard_normal((T - 1, K, 2))
    a_next = squash(u_next, cfg.env.v_max) if cfg.squash_action else u_next
    draws = clip_action(a_next, cfg.env)
    phi = np.empty((T - 1, maps.D), maps.dtype)
    bar_phi = np.empty((T - 1, maps.D), maps.dtype)
    chain_features(
        maps, b.o[chain, :T], np.zeros((T - 1, 2)), NextActions(draws=draws), phi, bar_phi
    )
    return bar_phi.astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trainer_mc_bar_phi_averages_draws_under_pi(tmp_path, seed):
    """bar_phi in the default ``bar_phi: mc`` mode, against twins drawn here under pi.

    With V the variance of phi(s', a') over a' ~ pi, the run's K-draw mean differs from a
    16K-draw twin by ``V/K + V/(16 K)`` per entry on average, and two independent K-draw
    twins by ``2 V / K``; so ``ratio = mean (run - big)^2 / (mean (t1 - t2)^2 / 2)`` is
    1.0625 for any V (measured over seeds 0-2: 0.89 to 1.26, sd ~0.12; band [0.6, 1.6],
    ~4 sd). A bar_phi from mu's sampled next action (one draw, from the wrong policy)
    gives at least K = 4 (measured: 16 to 17).
    """
    K = 4
    cfg = load_config(
        "configs/sanity.yaml",
        [
            *SMALL,
            "outer_iters=2",
            "trajectories=4",
            f"K_mc={K}",
            "precision=float64",
            "theta_mu_offset_scale=0.5",
            f"seed={seed}",
        ],
    )
    assert cfg.bar_phi == "mc"
    maps, seen = _observe(cfg, tmp_path)
    rng = np.random.default_rng(1000 + seed)
    for _, result in seen:
        b = result.batch
        num = den = 0.0
        for chain in range(cfg.trajectories):
            big = _mc_bar_phi(cfg, maps, b, chain, 16 * K, rng)
            t1, t2 = (_mc_bar_phi(cfg, maps, b, chain, K, rng) for _ in range(2))
            num += np.sum((b.bar_phi[chain, :-1] - big) ** 2)
            den += np.sum((t1 - t2) ** 2) / 2
        assert 0.6 <= num / den <= 1.6, num / den


def test_trainer_actor_and_critic_step_along_their_gradients(tmp_path):
    """The update at the call site: ``w += alpha_w s G_w``, ``theta_pi += alpha_pi s
    G_theta`` (projected), ``theta_mu = (1 - beta) theta_mu + beta theta_pi``, with G the
    float64 twins of docs/model.md §4 recomputed from the run's own batch and TD errors."""
    cfg = load_config(
        "configs/sanity.yaml",
        [*SMALL, "outer_iters=3", "precision=float64", "alpha_pi=0.5", "theta_radius=0"],
    )
    _, seen = _observe(cfg, tmp_path)
    s = cfg.step_scale
    for params, result in seen:
        b, new = result.batch, result.params
        N = b.psi.shape[-1]
        rd = (b.rho * result.delta)[..., None]
        G_w = np.sum(rd * b.phi, axis=(0, 1))
        g_t = np.einsum("btn,btk->btnk", b.psi, b.u - b.m_pi) / (cfg.sigma_pi**2 * math.sqrt(N))
        G_theta = np.sum(rd[..., None] * g_t, axis=(0, 1))
        theta_pi = project(params.theta_pi + cfg.alpha_pi * s * G_theta, cfg.theta_radius)
        step = new.theta_pi - params.theta_pi
        assert np.linalg.norm(step) > 1e-6  # the actor moved
        np.testing.assert_allclose(
            new.theta_pi, theta_pi, rtol=1e-9, atol=1e-12 * np.abs(step).max()
        )
        np.testing.assert_allclose(new.w, params.w + cfg.alpha_w * s * G_w, rtol=1e-9, atol=1e-12)
        mu = (1 - cfg.beta) * params.theta_mu + cfg.beta * new.theta_pi
        np.testing.assert_allclose(new.theta_mu, mu, rtol=1e-9, atol=1e-14)


def test_distribution_probe_kl_uses_each_policys_sigma(tmp_path):
    """theta_mu = theta_pi (no offset, alpha_pi = 0): equal means, so the probe's KL is
    the closed form of the two widths alone, 2 (log(s_mu/s_pi) + s_pi^2/(2 s_mu^2) - 1/2)."""
    cfg = load_config(
        "configs/sanity.yaml",
        [
            "env.feature_dim=32",
            "env.actor_feature_dim=8",
            "outer_iters=2",
            "alpha_pi=0",
            "theta_mu_offset_scale=0",
            "sigma_mu=0.5",
            "sigma_pi=0.3",
            "probes.distribution.permutations=0",
        ],
    )
    Runner(cfg, tmp_path / "run", handle_signals=False).run()
    kl = load_run(tmp_path / "run").probe("distribution_probe").values("dist_action_kl")
    s_mu, s_pi = cfg.sigma_mu, cfg.sigma_pi
    closed = 2 * (math.log(s_mu / s_pi) + s_pi**2 / (2 * s_mu**2) - 0.5)
    np.testing.assert_allclose(kl, closed, rtol=1e-12)


def test_fixed_point_solves_A_not_its_transpose(tmp_path):
    """At gamma = 0.9 (A not symmetric), the w# a probe round keeps satisfies A w# = b for
    the A and b of its own chain rebuilt here in float64 (ridge 0), featurised as the probes
    featurise it (`probe_config`: the closed-form bar_phi, probes.bar_phi): a solve with A^T,
    which the no_bootstrap sanity check cannot see (A is symmetric at gamma = 0), fails here."""
    cfg = load_config(
        "configs/sanity.yaml",
        [
            "env.feature_dim=32",
            "env.actor_feature_dim=8",
            "gamma=0.9",
            "probes.fixed_point.ridge=0",
            "probes.fixed_point.batch_size=512",
            # the exact (ridge 0) solve needs every feature excited: 10 trajectories of 50
            # steps from reset leave one of the 32 at zero, the 512-step chain does not
            "probes.fixed_point.sampling=stationary",
            "probes.stability.enabled=false",
        ],
    )
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    manager = ProbeManager(cfg, maps)
    delta = np.zeros((cfg.trajectories, cfg.horizon))
    manager.run(0, params, delta, 0.0, "last")
    w_sharp = manager.state["w_sharp_prev"]
    chain = fixed_point_chains(cfg)
    rolled = roll_chains(cfg, maps, params, [chain], 0)
    batch = rolled.td_batch(probe_config(cfg), maps, [chain], params.theta_pi)
    # the batch's trajectories (trainer-style sampling), flattened to samples
    phi_t = batch.phi.reshape(-1, maps.D).astype(np.float64)
    dphi_t = phi_t - cfg.gamma * batch.bar_phi.reshape(-1, maps.D).astype(np.float64)
    rho_t, r_t = batch.rho.reshape(-1), batch.r.reshape(-1)
    A = (rho_t[:, None] * phi_t).T @ dphi_t / (len(r_t) * math.sqrt(maps.D))
    b = (rho_t * r_t) @ phi_t / len(r_t)
    assert np.abs(A - A.T).max() > 1e-3 * np.abs(A).max()
    rel = np.linalg.norm(A @ w_sharp - b) / np.linalg.norm(b)
    rel_transposed = np.linalg.norm(A.T @ w_sharp - b) / np.linalg.norm(b)
    assert rel < 1e-5 and rel_transposed > 1e-2, (rel, rel_transposed)
