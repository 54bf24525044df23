"""The compiled fast paths reproduce the NumPy definitions they replace (issue 7).

References, each stated where it is used: the NumPy environment of
:mod:`tdlens.torus.dynamics` (bit for bit), NumPy's ``vecdot`` and ``matmul`` (to the
last bit where the BLAS sums in the order the kernels document, else to rounding), a
float64 loop written from the definition of the expected critic dynamics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import small_config
from tdlens.config import EnvConfig
from tdlens.features import NextActions, actor_features, chain_features, make_feature_maps
from tdlens.kernels import (
    action_arguments,
    affine_rows,
    block_arguments,
    block_features,
    mean_rows,
    scale_rows,
)
from tdlens.learner import init_params
from tdlens.policy import policy_mean
from tdlens.probes.fixed_point import expected_iterates
from tdlens.rollout import draw_noise, roll_out
from tdlens.seeding import stream
from tdlens.threads import limit_threads
from tdlens.torus import dynamics as dyn
from tdlens.torus import fast

ENVS = {
    "default": EnvConfig(),
    "eventful_clip": EnvConfig(p_mix=0.2, eps_pick=0.15, eps_catch=0.15, clip_action=True),
    "big_torus_5_goblets": EnvConfig(
        p_mix=0.0, eps_pick=0.3, eps_catch=0.2, num_goblets=5, torus_size=2.5
    ),
    "one_goblet_tight_clip": EnvConfig(
        eps_pick=0.3, eps_catch=0.2, num_goblets=1, clip_action=True, v_max=0.1
    ),
}


@pytest.mark.parametrize("name", sorted(ENVS))
def test_kernel_step_and_observation_equal_numpy_bit_for_bit(name):
    """Long random rollouts (actions beyond v_max, so clipping acts) through both paths:
    packed states and observations identical at every step, and every event happens."""
    env = ENVS[name]
    rng = np.random.default_rng(7)
    n, steps = 12, 1500
    state = dyn.reset_from_uniforms(rng.random((n, dyn.reset_width(env.num_goblets))), env)
    S, p, o = fast.pack(state), fast.env_params(env), np.empty((n, dyn.OBS_DIM))
    fast.observe_packed(S, p, o)
    np.testing.assert_array_equal(o, dyn.observe(state, env))
    events = np.zeros(4)
    for _ in range(steps):
        a = rng.normal(0.0, 0.6, (n, 2))
        z = rng.standard_normal((n, dyn.NORMAL_WIDTH))
        u = rng.random((n, dyn.uniform_width(env.num_goblets)))
        state = dyn.step(state, a, z, u, env)
        fast.step_observe_packed(S, a, z, u, p, o)
        np.testing.assert_array_equal(S, fast.pack(state))
        np.testing.assert_array_equal(o, dyn.observe(state, env))
        events += [state.caught.sum(), state.picked.sum(), state.restart.sum(), 0]
        events[3] += np.sum(state.picked_type < 0)
    assert np.all(events[:2] > 0) and events[3] > 0
    assert (events[2] > 0) == (env.p_mix > 0)


def test_kernel_events_exactly_at_the_thresholds():
    """Ghost and goblet at exactly eps from the (still) adventurer: the same verdicts as
    NumPy's, whichever way the rounding of the distance goes."""
    env = EnvConfig(sigma_env=0.0, sigma_ghost=0.0, v_ghost=0.0, p_mix=0.0)
    rows = []
    for x in (0.5, 0.0, 0.999, 0.25):
        for dx in (env.eps_catch, -env.eps_catch, env.eps_pick, np.nextafter(env.eps_pick, 1)):
            rows.append((x, x + dx))
    n = len(rows)
    x_a = np.array([[x, 0.5] for x, _ in rows])
    other = np.array([[y % 1.0, 0.5] for _, y in rows])
    state = dyn.TorusState(
        x_a=x_a,
        x_g=other.copy(),
        goblets=np.stack([other, other + 0.3, other + 0.6], axis=1) % 1.0,
        types=np.ones((n, 3)),
        caught=np.zeros(n, bool),
        picked=np.zeros(n, bool),
        picked_type=np.zeros(n),
        restart=np.zeros(n, bool),
    )
    u = np.full((n, dyn.uniform_width(3)), 0.99)
    ref = dyn.step(state, np.zeros((n, 2)), np.zeros((n, 4)), u, env)
    got = fast.step(state, np.zeros((n, 2)), np.zeros((n, 4)), u, env)
    for key in dyn.TorusState.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(got, key), getattr(ref, key), err_msg=key)
    assert ref.caught.any() and ref.picked.any() and not ref.picked.all()


def test_packed_batch_equals_single_rows():
    env = ENVS["eventful_clip"]
    rng = np.random.default_rng(2)
    n = 6
    state = dyn.reset_from_uniforms(rng.random((n, dyn.reset_width(3))), env)
    S, p = fast.pack(state), fast.env_params(env)
    singles = [fast.pack(state.take(i)) for i in range(n)]
    o, o1 = np.empty((n, 18)), np.empty((1, 18))
    for _ in range(200):
        a, z = rng.normal(0, 0.5, (n, 2)), rng.standard_normal((n, 4))
        u = rng.random((n, dyn.uniform_width(3)))
        fast.step_observe_packed(S, a, z, u, p, o)
        for i, s in enumerate(singles):
            fast.step_observe_packed(s, a[i : i + 1], z[i : i + 1], u[i : i + 1], p, o1)
            np.testing.assert_array_equal(s[0], S[i])
            np.testing.assert_array_equal(o1[0], o[i])


def _vecdot_mean(theta, psi):
    """The NumPy definition the policy kernel replaces (tdlens before issue 7)."""
    return np.vecdot(psi[..., None, :], np.swapaxes(theta, -1, -2)) / math.sqrt(theta.shape[-2])


def _ordered_dot(x, y):
    """The documented summation order, in plain Python floats."""
    n4 = len(x) - len(x) % 4
    t1 = t2 = 0.0
    for i in range(0, n4, 4):
        t1 += float(y[i]) * float(x[i]) + float(y[i + 2]) * float(x[i + 2])
        t2 += float(y[i + 1]) * float(x[i + 1]) + float(y[i + 3]) * float(x[i + 3])
    rest = sum(float(y[i]) * float(x[i]) for i in range(n4, len(x)))
    return t1 + rest + t2 if rest == 0.0 else None


@pytest.mark.parametrize("N", [16, 37, 512])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_policy_mean_kernel_equals_vecdot(N, dtype):
    rng = np.random.default_rng(N)
    psi = rng.uniform(-1, 1, (5, 9, N)).astype(dtype)
    theta = rng.normal(0, 1, (N, 2))
    per_row = rng.normal(0, 1, (5, 9, N, 2))
    for th in (theta, per_row):
        got, ref = policy_mean(th, psi), _vecdot_mean(th, psi)
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)
    # rows do not depend on their neighbours or on the others' theta
    np.testing.assert_array_equal(policy_mean(theta, psi[2, 3]), policy_mean(theta, psi)[2, 3])
    mixed = per_row.copy()
    mixed[2, 3] = theta
    np.testing.assert_array_equal(policy_mean(mixed, psi)[2, 3], policy_mean(theta, psi)[2, 3])
    if N % 4 == 0:
        got = policy_mean(theta, psi)[1, 1, 0] * math.sqrt(N)
        assert got == _ordered_dot(psi[1, 1], theta[:, 0])


def _numpy_chain_features(maps, o, a, next_actions, block=128):
    """chain_features as NumPy calls (tdlens before issue 7): per 128-row block,
    ``C = o W_obs; C += bias``, then ``cos(a W_act + C)`` per action, scaled and summed."""
    S, Dp, dt = a.shape[0], maps.D - 4, maps.dtype
    phi, bar = np.empty((S, maps.D), dt), np.empty((S, maps.D), dt)
    o32 = o.astype(dt)
    for lo in range(0, S, block):
        hi = min(lo + block, S)
        C = o32[lo : hi + 1] @ maps.W_obs
        C += maps.bias

        def cos_arg(rows, act):
            arg = act.astype(dt) @ maps.W_act
            arg += rows
            return np.cos(arg, out=arg)

        phi[lo:hi, :Dp] = cos_arg(C[:-1], a[lo:hi]) * dt.type(maps.base_scale)
        if next_actions.exact:
            w_sq = np.sum(maps.W_act.astype(np.float64) ** 2, axis=0)
            damp = np.exp(-0.5 * next_actions.sigma**2 * w_sq)
            bar[lo:hi, :Dp] = cos_arg(C[1:], next_actions.mean[lo:hi]) * (
                maps.base_scale * damp
            ).astype(dt)
        else:
            draws = next_actions.draws[lo:hi]
            acc = cos_arg(C[1:], draws[:, 0])
            for k in range(1, draws.shape[1]):
                acc += cos_arg(C[1:], draws[:, k])
            bar[lo:hi, :Dp] = acc * dt.type(maps.base_scale / draws.shape[1])
    return phi[:, :Dp], bar[:, :Dp]


def _blas_two_term_product_is_fused() -> bool:
    """Whether this BLAS computes a two-term float32 product as fma(a1, w1, a0 w0)."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (64, 2)).astype(np.float32)
    W = rng.normal(0, 1, (2, 256)).astype(np.float32)
    out = np.empty((1, 64, 256), np.float32)
    action_arguments(np.zeros((64, 256), np.float32), np.zeros(256, np.float32), W,
                     a[:, None, :], 0, out)  # fmt: skip
    return bool(np.array_equal(out[0], a @ W))


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["mc4", "mc1", "exact"])
def test_fused_chain_features_equal_numpy_calls(precision, kind):
    """To rounding always; bit for bit when the BLAS fuses the two-term product (the
    kernels then perform exactly NumPy's operations)."""
    maps = make_feature_maps(small_config(f"precision={precision}", "env.feature_dim=300"))
    rng = np.random.default_rng(11)
    S = 333  # several 128-row blocks and a partial one
    o = rng.uniform(-1, 1, (S + 1, 18))
    o[:, 14:18] = rng.integers(0, 2, (S + 1, 4))
    a = rng.normal(0, 0.4, (S, 2))
    if kind == "exact":
        nxt = NextActions(mean=rng.normal(0, 0.3, (S, 2)), sigma=0.3)
    else:
        nxt = NextActions(draws=rng.normal(0, 0.4, (S, int(kind[2:]), 2)))
    phi, bar = np.empty((S, maps.D), maps.dtype), np.empty((S, maps.D), maps.dtype)
    chain_features(maps, o, a, nxt, phi, bar)
    ref_phi, ref_bar = _numpy_chain_features(maps, o, a, nxt)
    Dp = maps.D - 4
    tol = 1e-6 if precision == "float32" else 1e-14
    np.testing.assert_allclose(phi[:, :Dp], ref_phi, rtol=tol, atol=tol)
    np.testing.assert_allclose(bar[:, :Dp], ref_bar, rtol=tol, atol=tol)
    if precision == "float32" and _blas_two_term_product_is_fused():
        np.testing.assert_array_equal(phi[:, :Dp], ref_phi)
        np.testing.assert_array_equal(bar[:, :Dp], ref_bar)


def test_fused_actor_features_equal_reference():
    cfg = small_config("env.actor_feature_dim=64")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    rngs = [stream(0, "rollout", 0, b) for b in range(3)]
    noise = draw_noise(rngs, 40, cfg)
    paths = roll_out(cfg, maps, params.theta_mu, np.full(3, cfg.sigma_mu), noise)
    assert paths.psi.dtype == maps.dtype
    np.testing.assert_array_equal(paths.psi, actor_features(maps, paths.o))
    np.testing.assert_array_equal(paths.m_mu, policy_mean(params.theta_mu, paths.psi[:-1]))


def test_mixed_policy_rollout_chain_equals_chain_alone():
    """Per-chain policies (probe rounds roll mu and pi chains together): a chain's path
    does not depend on which policy the other chains follow."""
    cfg = small_config("theta_mu_offset_scale=0.3", "env.p_mix=0.2")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    rngs = lambda: [stream(0, "probe_distribution", 0, c) for c in range(3)]  # noqa: E731
    theta_mu = np.stack([params.theta_mu, params.theta_pi, params.theta_mu])
    sigma_mu = np.array([cfg.sigma_mu, cfg.sigma_pi, cfg.sigma_mu])
    mixed = roll_out(cfg, maps, theta_mu, sigma_mu, draw_noise(rngs(), 60, cfg))
    alone = roll_out(cfg, maps, params.theta_mu, sigma_mu, draw_noise(rngs(), 60, cfg))
    for key in ("o", "psi", "m_mu", "u", "a"):
        np.testing.assert_array_equal(getattr(mixed, key)[:, 0], getattr(alone, key)[:, 0])
        np.testing.assert_array_equal(getattr(mixed, key)[:, 2], getattr(alone, key)[:, 2])
    assert not np.array_equal(mixed.m_mu[:, 1], alone.m_mu[:, 1])


def _loop_iterates(A, b, w, eta, steps):
    """w_k = w_{k-1} + eta (b - A w_{k-1}), written from the definition (float64)."""
    out, w_k = [], w.copy()
    for _ in range(steps):
        w_k = w_k + eta * (b - A @ w_k)
        out.append(w_k)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("eta,steps", [(0.08, 200), (0.24, 200), (0.08, 3), (0.5, 1)])
def test_expected_iterates_series_equals_the_loop(eta, steps):
    """Small kappa = steps eta ||A||_F: the binomial series; agreement to float64 rounding
    of the iterates."""
    rng = np.random.default_rng(5)
    D = 60
    A = rng.normal(0, 1e-3 / D, (D, D)) + np.diag(rng.uniform(0, 8e-4, D))
    b, w = rng.normal(0, 1e-3, D), rng.normal(0, 1, D)
    assert steps * eta * np.linalg.norm(A) < 0.5
    got, ref = expected_iterates(A, b, w, eta, steps), _loop_iterates(A, b, w, eta, steps)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-14 * np.abs(w).max())


def test_expected_iterates_fall_back_to_the_loop_for_large_steps():
    rng = np.random.default_rng(6)
    D = 8
    A = np.eye(D) + 0.1 * rng.normal(size=(D, D))
    b, w = rng.normal(size=D), rng.normal(size=D)
    np.testing.assert_array_equal(
        expected_iterates(A, b, w, 0.3, 20), _loop_iterates(A, b, w, 0.3, 20)
    )


def test_limit_threads_holds_blas_to_one_thread():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    with limit_threads(1, "blas"):
        assert blas_threads() <= {1}
    assert blas_threads() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_rows_follows_its_order_and_ignores_the_other_rows(dtype):
    """The actor features' affine map: each product rounded, summed in order of k, then
    the bias; a row alone equals the same row among 257 (no BLAS blocking to differ)."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (257, 18)).astype(dtype)
    W = rng.normal(0, 0.3, (18, 33)).astype(dtype)
    b = rng.normal(0, 0.1, 33).astype(dtype)
    out = np.empty((257, 33), dtype)
    affine_rows(x, W, b, out)
    i, j = 100, 5
    acc = x[i, 0] * W[0, j]
    for k in range(1, 18):
        acc = dtype(acc + dtype(x[i, k] * W[k, j]))
    assert out[i, j] == dtype(acc + b[j])
    exact = x.astype(np.float64) @ W.astype(np.float64) + b
    np.testing.assert_allclose(out, exact, rtol=0, atol=40 * np.finfo(dtype).eps)
    alone = np.empty((1, 33), dtype)
    affine_rows(x[i : i + 1], W, b, alone)
    np.testing.assert_array_equal(alone[0], out[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 2, 4, 5, 6, 18])
def test_affine_rows_equal_the_sequential_sum_for_any_width(dtype, K):
    """affine_rows adds four terms per pass (issue 28): every element still equals
    ``((x_0 W_0 + x_1 W_1) + ...) + b`` summed one rounded term at a time in NumPy."""
    rng = np.random.default_rng(K)
    x = rng.normal(0, 1, (9, K)).astype(dtype)
    W = rng.normal(0, 0.3, (K, 70)).astype(dtype)
    b = rng.normal(0, 0.1, 70).astype(dtype)
    ref = x[:, :1] * W[0]
    for k in range(1, K):
        ref = ref + x[:, k : k + 1] * W[k]
    ref = ref + b
    out = np.empty((9, 70), dtype)
    affine_rows(x, W, b, out)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("J", [1, 2, 3, 4, 5])
def test_block_kernels_equal_the_per_action_kernels(dtype, J):
    """block_arguments (bias added once per state, no pass of its own over C) and
    block_features (phi scale and draw sum in one call) give the bits of action_arguments
    (shifts 0 and 1), scale_rows and mean_rows, which chain_features called before (issue
    28)."""
    rng = np.random.default_rng(J)
    R, D = 37, 301
    C = rng.normal(0, 2, (R + 1, D)).astype(dtype)
    bias = rng.uniform(0, 2 * np.pi, D).astype(dtype)
    W = rng.normal(0, 1, (2, D)).astype(dtype)
    a = rng.normal(0, 0.5, (R, 2)).astype(dtype)
    draws = rng.normal(0, 0.5, (R, J, 2)).astype(dtype)
    ref = np.empty((J + 1, R, D), dtype)
    action_arguments(C, bias, W, a[:, None, :], 0, ref[:1])
    action_arguments(C, bias, W, draws, 1, ref[1:])
    got = np.empty_like(ref)
    block_arguments(C, bias, W, a, draws, got)
    np.testing.assert_array_equal(got, ref)
    cosines = np.cos(ref)
    scale, bar_scale = (rng.uniform(0.5, 1.5, D).astype(dtype) for _ in range(2))
    phi_ref, bar_ref = np.empty((R, D), dtype), np.empty((R, D), dtype)
    scale_rows(cosines[0], scale, phi_ref)
    mean_rows(cosines[1:], bar_scale, bar_ref)
    phi, bar = np.empty((R, D), dtype), np.empty((R, D), dtype)
    block_features(cosines, scale, bar_scale, phi, bar)
    np.testing.assert_array_equal(phi, phi_ref)
    np.testing.assert_array_equal(bar, bar_ref)
    exact = (np.sum(cosines[1:].astype(np.float64), axis=0) * bar_scale).astype(dtype)
    # J draws summed in order: each add rounds a partial sum of at most J cosines
    np.testing.assert_allclose(bar, exact, rtol=0, atol=1.5 * J * J * np.finfo(dtype).eps)


def test_rollout_split_across_threads_equals_one_call():
    """roll_out_threads: chains split in contiguous parts on two threads, per-chain
    policies included, give the paths of one roll_out call bit for bit."""
    from tdlens.rollout import SPLIT_COLUMNS, roll_out_threads

    cfg = small_config("theta_mu_offset_scale=0.3", "env.p_mix=0.2")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    B = 2 * SPLIT_COLUMNS + 3
    noise = draw_noise([stream(0, "probe_stability", 0, c) for c in range(B)], 30, cfg)
    on_pi = np.arange(B) % 3 == 0
    theta_mu = np.stack([params.theta_pi if p else params.theta_mu for p in on_pi])
    sigma_mu = np.where(on_pi, cfg.sigma_pi, cfg.sigma_mu)
    evals = np.stack([params.theta_mu, params.theta_pi])
    one = roll_out(cfg, maps, theta_mu, sigma_mu, noise, theta_eval=evals, keep_psi=False)
    split = roll_out_threads(cfg, maps, theta_mu, sigma_mu, noise, 2, evals, keep_psi=False)
    for key in ("o", "m_mu", "u", "a", "a_unclipped", "m_eval"):
        np.testing.assert_array_equal(getattr(split, key), getattr(one, key), err_msg=key)
    assert split.psi is None


def test_series_readout_equals_the_dense_path():
    """expected.Series.read (each series term read out, then combined) equals the rows
    times the propagated path, on the series branch (fewer terms than steps) and the
    loop branch, in float64."""
    from tdlens.probes import expected as ex

    rng = np.random.default_rng(11)
    D, n, steps = 40, 30, 60
    A = np.diag(rng.uniform(0.1, 1.0, D)) + 0.02 * rng.standard_normal((D, D))
    X, rows = rng.standard_normal((D, 3)), rng.standard_normal((n, D))
    for eta, short in ((1e-4, True), (0.05, False)):
        s = ex.series(A, X, eta, steps)
        assert (s.coefs.shape[1] < steps + 1) == short
        ref = np.einsum("nd,jdk->njk", rows, ex.propagate(A, X, eta, steps))
        np.testing.assert_allclose(s.read(rows), ref, rtol=1e-11, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_allclose(s.read(rows, slice(1, None)), ref[:, :, 1:], rtol=1e-11)


def test_threaded_kernel_sums_and_krylov_runs_equal_one_thread():
    """The MMD kernel sums and the Krylov runs on A and A^T give the same bits on one
    thread and on two (block sums reduced in block order; ARPACK runs whose products are
    paired in fixed halves of A's rows)."""
    from tdlens.probes import distribution as dist
    from tdlens.probes import spectrum as sp

    rng = np.random.default_rng(12)
    X, Y = rng.standard_normal((700, 18)), rng.standard_normal((500, 18)) + 0.1
    assert dist.mmd2(X, Y, 2.5, threads=2) == dist.mmd2(X, Y, 2.5, threads=1)
    D = 900
    B = rng.standard_normal((D, 12))
    A = B @ B.T / D + 1e-3 * rng.standard_normal((D, D))
    v0 = rng.standard_normal(D)
    one, two = (sp.eigenvalues(A, 1e-2, v0, threads=t) for t in (1, 2))
    np.testing.assert_array_equal(one.eigvals, two.eigvals)
    np.testing.assert_array_equal(one.left, two.left)


def test_import_sets_the_openblas_spin_timeout_unless_the_user_did():
    """`import tdlens` sets OPENBLAS_THREAD_TIMEOUT=4 before NumPy loads OpenBLAS; a value
    the user set is kept."""
    import os
    import subprocess
    import sys

    code = "import os, tdlens; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    for preset, expected in ((None, "4"), ("12", "12")):
        run_env = env if preset is None else {**env, "OPENBLAS_THREAD_TIMEOUT": preset}
        out = subprocess.run(
            [sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected
