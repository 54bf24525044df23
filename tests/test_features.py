"""Feature maps and teacher (docs/model.md §2)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from helpers import small_config
from tdlens.features import (
    NUM_EXTRA,
    NextActions,
    actor_features,
    chain_features,
    critic_features,
    expected_critic_features_exact,
    make_feature_maps,
    reward,
)


def _obs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible observation vectors: trig parts in [-1, 1], flags 0/1."""
    o = rng.uniform(-1, 1, (n, 18))
    o[:, 8:12] *= 0.5
    o[:, 12] = rng.choice([-1.0, 1.0], n)
    o[:, 14:18] = rng.integers(0, 2, (n, 4))
    return o


@given(arrays(np.float64, (5, 18), elements=st.floats(-3, 3)), st.floats(0.05, 2.0))
@settings(max_examples=50, deadline=None)
def test_actor_features_norm_is_bounded(o, c_psi):
    maps = make_feature_maps(small_config(f"env.c_psi={c_psi}", "precision=float64"))
    psi = actor_features(maps, o)
    assert psi.shape == (5, maps.N)
    assert np.all(np.linalg.norm(psi, axis=1) <= c_psi * (1 + 1e-12))
    raw = np.tanh(o @ maps.W_psi.T + maps.b_psi)
    short = np.linalg.norm(raw, axis=1) <= c_psi
    np.testing.assert_allclose(psi[short], raw[short], rtol=1e-12)


def test_phi_layout_scale_and_reward():
    cfg = small_config("env.feature_dim=512", "precision=float64")
    maps = make_feature_maps(cfg)
    rng = np.random.default_rng(0)
    o, a = _obs(rng, 4000), rng.normal(0, 0.3, (4000, 2))
    phi = critic_features(maps, o, a)
    D_base = maps.D - NUM_EXTRA
    # E ||phi_base||^2 = (2/D') * D' * E cos^2 = 1 when b_phi ~ U(0, 2 pi)
    sq = np.sum(phi[:, :D_base] ** 2, axis=1)
    assert abs(sq.mean() - 1.0) < 5 * sq.std() / math.sqrt(len(sq)) + 0.02
    np.testing.assert_array_equal(phi[:, D_base : D_base + 3], o[:, 14:17])
    np.testing.assert_allclose(phi[:, -1], np.sum(a**2, axis=1))
    # the teacher's last entries and the reward definition
    assert maps.w_R[-4:].tolist() == [-1.0, 1.0, -1.0, -cfg.env.lambda_action_penalty]
    np.testing.assert_allclose(reward(maps, phi), phi @ maps.w_R / math.sqrt(maps.D), rtol=1e-12)
    # hand check of one random-Fourier entry from the definition phi = sqrt(2/D') cos(W x + b)
    W = np.concatenate([maps.W_obs.T, maps.W_act.T], axis=1)
    x = np.concatenate([o[0], a[0]])
    assert np.isclose(phi[0, 7], math.sqrt(2 / D_base) * math.cos(W[7] @ x + maps.bias[7]))


def test_teacher_scale_matches_config():
    cfg = small_config("env.feature_dim=4000", "env.teacher_base_scale=0.05")
    w = make_feature_maps(cfg).w_R[:-NUM_EXTRA]
    # sample std of 3996 normals: relative standard error ~ 1/sqrt(2 n)
    assert abs(w.std() / 0.05 - 1) < 5 / math.sqrt(2 * w.size)


def _chain_inputs(rng, S, K):
    return _obs(rng, S + 1), rng.normal(0, 0.3, (S, 2)), rng.normal(0, 0.3, (S, K, 2))


def test_fused_chain_features_equal_reference_float64():
    maps = make_feature_maps(small_config("precision=float64"))
    rng = np.random.default_rng(3)
    S, K = 300, 3  # S > block size: crosses block boundaries
    o, a, draws = _chain_inputs(rng, S, K)
    phi = np.empty((S, maps.D))
    bar = np.empty((S, maps.D))
    chain_features(maps, o, a, NextActions(draws=draws), phi, bar)
    np.testing.assert_allclose(phi, critic_features(maps, o[:-1], a), rtol=1e-10, atol=1e-13)
    ref_bar = np.mean([critic_features(maps, o[1:], draws[:, k]) for k in range(K)], axis=0)
    np.testing.assert_allclose(bar, ref_bar, rtol=1e-10, atol=1e-13)
    # K = 0 means phi(s', 0)
    chain_features(maps, o, a, NextActions(draws=np.zeros((S, 0, 2))), phi, bar)
    np.testing.assert_allclose(bar, critic_features(maps, o[1:], np.zeros((S, 2))), atol=1e-13)
    # exact path equals the reference closed form
    m = rng.normal(0, 0.2, (S, 2))
    chain_features(maps, o, a, NextActions(mean=m, sigma=0.3), phi, bar)
    np.testing.assert_allclose(
        bar, expected_critic_features_exact(maps, o[1:], m, 0.3), rtol=1e-10, atol=1e-13
    )


def test_float32_chain_features_close_to_float64_twin():
    maps32 = make_feature_maps(small_config("precision=float32"))
    rng = np.random.default_rng(4)
    S, K = 200, 4
    o, a, draws = _chain_inputs(rng, S, K)
    phi = np.empty((S, maps32.D), np.float32)
    bar = np.empty_like(phi)
    chain_features(maps32, o, a, NextActions(draws=draws), phi, bar)
    # float32 argument rounding ~ |arg| * 6e-8 with |arg| <~ 20, times the scale sqrt(2/D')
    np.testing.assert_allclose(
        phi, critic_features(maps32, o[:-1], a).astype(np.float64), atol=3e-6
    )


def test_exact_bar_phi_equals_monte_carlo_within_standard_error():
    maps = make_feature_maps(small_config("precision=float64"))
    rng = np.random.default_rng(7)
    o = _obs(rng, 3)
    m = rng.normal(0, 0.2, (3, 2))
    sigma = 0.3
    exact = expected_critic_features_exact(maps, o, m, sigma)
    for K in (100, 10000):
        draws = m[:, None, :] + sigma * rng.standard_normal((3, K, 2))
        samples = critic_features(maps, np.repeat(o[:, None, :], K, axis=1), draws)
        mc = samples.mean(axis=1)
        se = samples.std(axis=1) / math.sqrt(K) + 1e-15
        z = np.abs(mc - exact) / se
        # D * 3 = 192 comparisons: |z| < 4.5 holds with probability ~0.999 under the null
        assert z.max() < 4.5, (K, z.max())
    err_small = np.abs(
        critic_features(
            maps,
            np.repeat(o[:, None], 100, 1),
            m[:, None] + sigma * rng.standard_normal((3, 100, 2)),
        ).mean(1)
        - exact
    ).max()
    err_large = np.abs(mc - exact).max()
    assert err_large < err_small  # the Monte Carlo error shrinks as K grows


def test_seed_reaches_every_feature_stream():
    m0 = make_feature_maps(small_config("seed=0"))
    m1 = make_feature_maps(small_config("seed=1"))
    for key in ("W_psi", "b_psi", "W_obs", "W_act", "bias", "w_R"):
        assert not np.array_equal(getattr(m0, key), getattr(m1, key)), key
    again = make_feature_maps(small_config("seed=0"))
    for key in ("W_psi", "b_psi", "W_obs", "W_act", "bias", "w_R"):
        np.testing.assert_array_equal(getattr(m0, key), getattr(again, key))
