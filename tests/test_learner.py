"""One outer iteration (docs/model.md §4 and §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import small_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import (
    NOISE_AHEAD,
    Params,
    collect,
    gradients,
    init_params,
    iteration_noise,
    outer_iteration,
    project,
    td_errors,
)
from tdlens.policy import score
from tdlens.seeding import stream
from tdlens.threads import limit_threads


def _run(cfg, iters):
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    history = [params]
    metrics = []
    for n in range(iters):
        res = outer_iteration(cfg, maps, params, n)
        params = res.params
        history.append(params)
        metrics.append(res.metrics)
    return maps, history, metrics


def test_same_seed_gives_bit_identical_runs_and_seed_matters():
    cfg = small_config("theta_mu_offset_scale=0.2")
    _, h1, m1 = _run(cfg, 3)
    _, h2, m2 = _run(cfg, 3)
    for a, b in zip(h1, h2, strict=True):
        np.testing.assert_array_equal(a.w, b.w)
        np.testing.assert_array_equal(a.theta_mu, b.theta_mu)
    for a, b in zip(m1, m2, strict=True):
        assert {k: v for k, v in a.items() if k != "iter_time_s"} == {
            k: v for k, v in b.items() if k != "iter_time_s"
        }
    _, h3, _ = _run(small_config("theta_mu_offset_scale=0.2", "seed=1"), 1)
    assert not np.array_equal(h1[0].w, h3[0].w)
    assert not np.array_equal(h1[0].theta_pi, h3[0].theta_pi)
    assert not np.array_equal(h1[0].theta_mu - h1[0].theta_pi, h3[0].theta_mu - h3[0].theta_pi)


def test_init_streams_do_not_depend_on_other_scales():
    maps = make_feature_maps(small_config())
    a = init_params(small_config("theta_mu_offset_scale=0.0"), maps)
    b = init_params(small_config("theta_mu_offset_scale=0.5"), maps)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(a.theta_pi, b.theta_pi)
    np.testing.assert_array_equal(a.theta_mu, a.theta_pi)  # exact copy at offset 0


def test_gamma_zero_makes_every_td_target_its_reward():
    cfg = small_config("gamma=0")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", 0, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, params.theta_mu, params.theta_pi, rngs, cfg.horizon)
    delta = td_errors(batch, params.w, cfg.gamma)
    q = (batch.phi @ (params.w / math.sqrt(maps.D)).astype(batch.phi.dtype)).astype(np.float64)
    target = delta + q
    np.testing.assert_allclose(target, batch.r, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(delta, batch.r - q)


def test_gradients_match_brute_force_twin():
    cfg = small_config(
        "precision=float64", "theta_mu_offset_scale=0.3", "trajectories=2", "horizon=7"
    )
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", 0, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, p.theta_mu, p.theta_pi, rngs, cfg.horizon)
    delta = td_errors(batch, p.w, cfg.gamma)
    G_w, G_theta = gradients(batch, delta, cfg.sigma_pi)
    ref_w = np.zeros(maps.D)
    ref_theta = np.zeros((maps.N, 2))
    for b in range(cfg.trajectories):
        for t in range(cfg.horizon):
            phi, bar = batch.phi[b, t], batch.bar_phi[b, t]
            d = (
                batch.r[b, t]
                + cfg.gamma * p.w @ bar / math.sqrt(maps.D)
                - p.w @ phi / math.sqrt(maps.D)
            )
            assert np.isclose(d, delta[b, t], rtol=1e-10, atol=1e-14)
            ref_w += batch.rho[b, t] * d * phi
            g = score(batch.psi[b, t], batch.u[b, t], batch.m_pi[b, t], cfg.sigma_pi)
            ref_theta += batch.rho[b, t] * d * g
    np.testing.assert_allclose(G_w, ref_w, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(G_theta, ref_theta, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize(
    "sets", [(), ("env.actor_feature_dim=517", "horizon=200", "trajectories=5")]
)
def test_actor_gradient_is_the_documented_product_bit_for_bit(sets):
    """gradients() takes G_theta as (weighted^T psi_t)^T, faster on OpenBLAS's SkylakeX
    kernels (issue 28, session 9): the bits of ``psi_t^T weighted / (sigma_pi^2
    sqrt(N))`` with one BLAS thread, as the iteration runs it (CI repeats this file under
    the Haswell and Prescott kernels), and C-contiguous like theta."""
    cfg = small_config("theta_mu_offset_scale=0.3", *sets)
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", 4, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, p.theta_mu, p.theta_pi, rngs, cfg.horizon)
    delta = td_errors(batch, p.w + 0.3, cfg.gamma)
    N = maps.N
    rd = batch.rho * delta
    weighted = np.swapaxes(rd[..., None] * (batch.u - batch.m_pi), 0, 1).reshape(-1, 2)
    psi_t = np.swapaxes(batch.psi, 0, 1).reshape(-1, N).astype(np.float64)
    with limit_threads(1, "blas"):
        want = psi_t.T @ weighted / (cfg.sigma_pi**2 * math.sqrt(N))
        for threads in (1, 2):
            G_theta = gradients(batch, delta, cfg.sigma_pi, threads)[1]
            np.testing.assert_array_equal(G_theta, want)
            assert G_theta.flags.c_contiguous and np.any(G_theta != 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_critic_values_taken_per_chain_equal_the_batch_products(threads):
    """td_batch given w takes r, Q_w(phi_t) and Q_w(bar_phi_tp1) chain by chain as the
    features are made (issue 28): the bits of reward() and critic_values() on the whole
    [B, T, D] batch, on one thread or two; the iteration's TD errors are made of them."""
    from tdlens.features import reward
    from tdlens.learner import critic_values

    cfg = small_config("theta_mu_offset_scale=0.3", f"threads={threads}")
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    w = p.w + np.random.default_rng(3).normal(0, 0.5, maps.D)
    rngs = [stream(cfg.seed, "rollout", 0, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, p.theta_mu, p.theta_pi, rngs, cfg.horizon, w=w)
    q_t, q_tp1 = critic_values(batch, w)
    np.testing.assert_array_equal(batch.q_t, q_t)
    np.testing.assert_array_equal(batch.q_tp1, q_tp1)
    np.testing.assert_array_equal(batch.r, reward(maps, batch.phi))
    assert collect(cfg, maps, p.theta_mu, p.theta_pi, rngs, cfg.horizon).q_t is None
    res = outer_iteration(cfg, maps, Params(p.theta_mu, p.theta_pi, w), 0)
    np.testing.assert_array_equal(res.q_t, q_t)
    np.testing.assert_array_equal(res.delta, td_errors(batch, w, cfg.gamma))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("D", [64, 70])
def test_iteration_without_bar_phi_gives_the_same_numbers(threads, D):
    """outer_iteration(keep_bar_phi=False), the runner's, makes each chain's bar_phi in a
    scratch buffer and keeps none: three iterations (buffers reused) give the parameters,
    metrics, TD errors, critic values, rewards and phi of the default call bit for bit,
    on one thread or two, with rows whose byte offsets are multiples of 64 (D = 64) or
    not (D = 70); a batch without bar_phi needs w."""
    cfg = small_config(f"threads={threads}", f"env.feature_dim={D}", "theta_mu_offset_scale=0.3")
    maps = make_feature_maps(cfg)
    kept = lean = init_params(cfg, maps)
    ws_kept, ws_lean = Workspace(), Workspace()
    for n in range(3):
        a = outer_iteration(cfg, maps, kept, n, ws_kept)
        b = outer_iteration(cfg, maps, lean, n, ws_lean, keep_bar_phi=False)
        kept, lean = a.params, b.params
        for x, y in [
            (a.params.w, b.params.w),
            (a.params.theta_pi, b.params.theta_pi),
            (a.params.theta_mu, b.params.theta_mu),
            (a.delta, b.delta),
            (a.q_t, b.q_t),
            (a.q_tp1, b.q_tp1),
            (a.batch.r, b.batch.r),
            (a.batch.phi, b.batch.phi),
        ]:
            np.testing.assert_array_equal(y, x)
        a.metrics.pop("iter_time_s"), b.metrics.pop("iter_time_s")
        assert b.metrics == a.metrics
        assert b.batch.bar_phi.shape == (cfg.trajectories, cfg.horizon, 0)
        assert a.batch.bar_phi.shape == (cfg.trajectories, cfg.horizon, D)
    assert ws_lean.held_bytes() == a.batch.phi.nbytes == ws_kept.held_bytes() // 2
    rngs = [stream(cfg.seed, "rollout", 0, b) for b in range(cfg.trajectories)]
    with pytest.raises(ValueError, match="keep_bar_phi=False needs w"):
        collect(cfg, maps, kept.theta_mu, kept.theta_pi, rngs, cfg.horizon, keep_bar_phi=False)


def test_gradients_side_by_side_equal_one_thread():
    """gradients(threads=2) runs G_w and G_theta on two threads (issue 28): the bits of
    the one-thread call."""
    cfg = small_config("theta_mu_offset_scale=0.3")
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", 1, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, p.theta_mu, p.theta_pi, rngs, cfg.horizon)
    delta = td_errors(batch, p.w + 0.3, cfg.gamma)
    one = gradients(batch, delta, cfg.sigma_pi)
    two = gradients(batch, delta, cfg.sigma_pi, threads=2)
    assert np.any(one[0] != 0) and np.any(one[1] != 0)
    np.testing.assert_array_equal(two[0], one[0])
    np.testing.assert_array_equal(two[1], one[1])


def test_next_iterations_noise_drawn_ahead_gives_the_same_run():
    """On two threads an iteration with a workspace draws the next one's noise beside its
    gradients and keeps it there (issue 28), the draws of iteration_noise; the next call
    takes it. Iterations 0, 1, 2 and then 4 (the noise kept for 3 is not 4's: dropped, 4
    draws its own) give the parameters, TD errors and metrics of calls without a
    workspace on one thread bit for bit; the last iteration keeps nothing."""
    cfg = small_config("threads=2", "theta_mu_offset_scale=0.3")
    serial = small_config("threads=1", "theta_mu_offset_scale=0.3")
    maps, maps_serial = make_feature_maps(cfg), make_feature_maps(serial)
    one = two = init_params(cfg, maps)
    ws = Workspace()
    for n in (0, 1, 2, 4):
        a = outer_iteration(serial, maps_serial, one, n)
        b = outer_iteration(cfg, maps, two, n, ws)
        one, two = a.params, b.params
        for x, y in [(a.params.w, b.params.w), (a.params.theta_pi, b.params.theta_pi)]:
            np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(b.delta, a.delta)
        a.metrics.pop("iter_time_s"), b.metrics.pop("iter_time_s")
        assert b.metrics == a.metrics
        key = (cfg.seed, n + 1, cfg.trajectories, cfg.horizon, cfg.K_mc, cfg.env.num_goblets)
        ahead = ws.take_ahead(NOISE_AHEAD, key)
        if n + 1 < cfg.outer_iters:
            fresh = iteration_noise(cfg, n + 1)
            for name in ("reset", "z_act", "z_env", "u_env", "z_next"):
                np.testing.assert_array_equal(getattr(ahead, name), getattr(fresh, name))
            ws.keep_ahead(NOISE_AHEAD, key, ahead)
        else:
            assert ahead is None and n + 1 == cfg.outer_iters


def test_workspace_ahead_slot_gives_its_value_once_and_only_for_its_key():
    ws = Workspace()
    assert ws.take_ahead("s", 1) is None
    ws.keep_ahead("s", 1, "a")
    ws.keep_ahead("s", 2, "b")  # replaces the slot's value
    ws.release_all()  # not a buffer: kept
    assert ws.take_ahead("s", 1) is None
    assert ws.take_ahead("s", 2) is None  # the wrong key emptied the slot
    ws.keep_ahead("s", 3, "c")
    assert ws.take_ahead("s", 3) == "c"
    assert ws.take_ahead("s", 3) is None


def test_alpha_pi_zero_keeps_theta_pi_bit_identical_and_gap_decays_exactly():
    beta = 0.2
    cfg = small_config("alpha_pi=0", f"beta={beta}", "theta_mu_offset_scale=0.3", "theta_radius=0")
    _, hist, metrics = _run(cfg, 5)
    for p in hist[1:]:
        np.testing.assert_array_equal(p.theta_pi, hist[0].theta_pi)
    gap0 = np.sum((hist[0].theta_pi - hist[0].theta_mu) ** 2) / 16
    for n, m in enumerate(metrics):
        # after iteration n the gap is (1 - beta)^(2(n+1)) times its start (float rounding only)
        assert math.isclose(m["tracking_gap"], (1 - beta) ** (2 * (n + 1)) * gap0, rel_tol=1e-12)


def test_projection_keeps_theta_in_the_ball():
    theta = np.full((4, 2), 3.0)
    proj = project(theta, 2.0)
    assert math.isclose(np.linalg.norm(proj), 2.0)
    np.testing.assert_array_equal(project(theta, 0.0), theta)
    np.testing.assert_array_equal(project(0.1 * theta, 2.0), 0.1 * theta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_critic_teacher_error_at_initialisation(seed):
    """E ||w - w_R||^2 / D = w_init^2 (D'/D... all D) + base^2 D'/D + (3 + lambda^2)/D;
    0.01397 at the seed settings (D = 2048). Tolerance: 5 standard deviations of the sum."""
    cfg = small_config("env.feature_dim=2048", f"seed={seed}", "outer_iters=1")
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    D, lam, wi, bs = 2048, 0.1, 0.1, 0.05
    expected = wi**2 + bs**2 * (D - 4) / D + (3 + lam**2) / D
    assert abs(expected - 0.01397) < 1e-5  # 0.0139648: the figure, rounded
    var_entry = 2 * (wi**2 + bs**2) ** 2  # var of (w - w_R)_i^2 for the random part
    sd = math.sqrt((D - 4) * var_entry) / D
    cte = float(np.sum((p.w - maps.w_R) ** 2) / D)
    assert abs(cte - expected) < 5 * sd


def test_metrics_are_the_defined_statistics():
    cfg = small_config("theta_mu_offset_scale=0.2", "env.clip_action=true")
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    res = outer_iteration(cfg, maps, p, 0)
    m, b, d = res.metrics, res.batch, res.delta
    assert m["td_loss"] == pytest.approx(np.mean(d**2), rel=1e-12)
    assert m["mean_rho2"] == pytest.approx(np.mean(b.rho**2), rel=1e-12)
    assert m["w_norm"] == pytest.approx(np.linalg.norm(res.params.w))
    assert m["critic_teacher_error"] == pytest.approx(
        np.sum((res.params.w - maps.w_R) ** 2) / maps.D
    )
    assert m["tracking_gap"] == pytest.approx(
        np.sum((res.params.theta_pi - res.params.theta_mu) ** 2) / maps.N
    )
    excess = np.abs(b.a_unclipped) > cfg.env.v_max
    assert m["clip_fraction"] == pytest.approx(np.mean(excess.any(axis=-1)))
    # the percentiles (taken in pairs from one partition) are np.percentile's, bit for bit
    rho, abs_delta = b.rho.reshape(-1), np.abs(d).reshape(-1)
    for column, x, q in [
        ("p95_rho", rho, 95),
        ("p99_rho", rho, 99),
        ("p95_rho2", rho**2, 95),
        ("p99_rho2", rho**2, 99),
        ("delta_p95", abs_delta, 95),
        ("delta_p99", abs_delta, 99),
    ]:
        assert m[column] == float(np.percentile(x, q)), column
    assert m["delta_p99"] > m["delta_p95"] > 0
    # the update used s = 1/(B T) and alpha_w
    G_w, _ = gradients(b, d, cfg.sigma_pi)
    np.testing.assert_allclose(
        res.params.w - p.w,
        cfg.alpha_w / (cfg.trajectories * cfg.horizon) * G_w,
        rtol=1e-9,
        atol=1e-16,
    )


def test_step_normalisations():
    assert small_config().step_scale == 1 / (4 * 30)
    assert small_config("step_normalization=sqrt_batch").step_scale == 1 / (2 * 30)
    seed = small_config("env.feature_dim=2048", "trajectories=16", "horizon=200", "alpha_w=0.08")
    assert seed.train_step_scale == pytest.approx(2.5e-05)


def test_batched_chain_equals_chain_alone():
    cfg = small_config("theta_mu_offset_scale=0.2", "threads=2")
    maps = make_feature_maps(cfg)
    p = init_params(cfg, maps)
    many = collect(
        cfg, maps, p.theta_mu, p.theta_pi, [stream(0, "rollout", 0, b) for b in range(4)], 30
    )
    one = collect(cfg, maps, p.theta_mu, p.theta_pi, [stream(0, "rollout", 0, 2)], 30)
    for key in ("phi", "bar_phi", "r", "rho", "u", "o"):
        np.testing.assert_array_equal(getattr(many, key)[2], getattr(one, key)[0])


def test_float32_learning_curves_agree_with_float64():
    """The float32 fast path (docs/model.md §14): learning-curve metrics within 1e-4 relative."""
    common = [
        "env.feature_dim=512",
        "env.actor_feature_dim=64",
        "trajectories=4",
        "horizon=50",
        "theta_mu_offset_scale=0.2",
        "alpha_w=2.0",
        "alpha_pi=0.5",
    ]
    _, h32, m32 = _run(small_config(*common, "precision=float32"), 4)
    _, h64, m64 = _run(small_config(*common, "precision=float64"), 4)
    keys = [
        "td_loss",
        "critic_teacher_error",
        "tracking_gap",
        "w_norm",
        "mean_rho",
        "mean_rho2",
        "max_rho",
        "delta_mean",
        "delta_std",
        "delta_max",
        "delta_w_norm",
        "delta_theta_pi_norm",
    ]
    for a, b in zip(m32, m64, strict=True):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4), k
    np.testing.assert_allclose(h32[-1].w, h64[-1].w, rtol=1e-4, atol=1e-7)


def test_params_finite_check():
    p = Params(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0.0, np.nan]))
    assert not p.is_finite()
