"""The rollout's compiled step (issue 28) reproduces the step-by-step NumPy loop it replaced.

Reference: :func:`_reference_roll_out`, the loop of ``tdlens.rollout.roll_out`` before
issue 28's session 8 (one NumPy or compiled call per operation: affine map, ``np.tanh``,
``np.vecdot``, policy step, recorded means, squash, environment step, with the old
``features.actor_features_into`` inlined), built from the same kernels and run at test
time. The paths must equal it bit for bit, under
whichever BLAS kernel OpenBLAS picked (CI runs this file again under
``OPENBLAS_CORETYPE=Haswell`` and ``Prescott``).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import small_config
from tdlens.config import RunConfig
from tdlens.features import FeatureMaps, make_feature_maps
from tdlens.kernels import (
    affine_rows,
    gaussian_policy_step,
    policy_means_each,
    rescale_rows,
)
from tdlens.learner import init_params
from tdlens.policy import squash
from tdlens.rollout import ChainNoise, draw_noise, roll_out
from tdlens.seeding import stream
from tdlens.torus import fast
from tdlens.torus.dynamics import reset_from_uniforms

PATH_KEYS = ("o", "psi", "m_mu", "u", "a", "a_unclipped", "m_eval")


def _reference_roll_out(
    cfg: RunConfig,
    maps: FeatureMaps,
    theta_mu: np.ndarray,
    sigma_mu: np.ndarray,
    noise: ChainNoise,
    theta_eval: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The per-step loop of roll_out as it was (keep_psi=True), returning its paths."""
    env = cfg.env
    T, B = noise.z_act.shape[:2]
    N = maps.N
    o = np.empty((T + 1, B, 18))
    psi = np.empty((T + 1, B, N), dtype=maps.dtype)
    m_mu, u = np.empty((T, B, 2)), np.empty((T, B, 2))
    evals = None if theta_eval is None else np.ascontiguousarray(theta_eval, dtype=np.float64)
    m_eval = None if evals is None else np.empty((T + 1, B, len(evals), 2))
    z_act, z_env, u_env = (np.ascontiguousarray(x) for x in (noise.z_act, noise.z_env, noise.u_env))
    packed = fast.pack(reset_from_uniforms(noise.reset, env))
    p = fast.env_params(env)
    sigma = np.ascontiguousarray(sigma_mu, dtype=np.float64)
    theta = np.ascontiguousarray(theta_mu.reshape(-1, N, 2), dtype=np.float64)
    cap = maps.dtype.type(maps.c_psi)
    fast.observe_packed(packed, p, o[0])

    def actor_features_into(t: int) -> np.ndarray:  # the old features.actor_features_into
        o_t = np.ascontiguousarray(o[t], dtype=maps.dtype)
        affine_rows(o_t, maps.W_psi_t, maps.b_psi_d, psi[t])
        return np.tanh(psi[t], out=psi[t])

    for t in range(T):
        psi_t = actor_features_into(t)
        gaussian_policy_step(
            psi_t, np.vecdot(psi_t, psi_t), cap, theta, sigma, z_act[t], m_mu[t], u[t]
        )
        if evals is not None:
            policy_means_each(psi_t, evals, m_eval[t])
        a_t = squash(u[t], env.v_max) if cfg.squash_action else u[t]
        fast.step_observe_packed(packed, a_t, z_env[t], u_env[t], p, o[t + 1])
    psi_T = actor_features_into(T)
    rescale_rows(psi_T, np.vecdot(psi_T, psi_T), cap)
    if evals is not None:
        policy_means_each(psi[T], evals, m_eval[T])
    a_unclipped = squash(u, env.v_max) if cfg.squash_action else u
    a = np.clip(a_unclipped, -env.v_max, env.v_max) if env.clip_action else a_unclipped
    paths = {"o": o, "psi": psi, "m_mu": m_mu, "u": u, "a": a, "a_unclipped": a_unclipped}
    return paths | ({} if m_eval is None else {"m_eval": m_eval})


CASES = {
    "default": (),
    "squash_and_clip": ("squash_action=true", "env.clip_action=true", "env.v_max=0.3"),
    "clip": ("env.clip_action=true", "env.v_max=0.3"),
    "float64": ("precision=float64",),
    "eventful_wide": ("env.actor_feature_dim=517", "env.p_mix=0.2", "env.eps_pick=0.2"),
    "uncapped_norm": ("env.c_psi=100.0",),
}


@pytest.mark.parametrize("per_chain", [False, True], ids=["shared_theta", "per_chain_theta"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_rollout_equals_the_numpy_loop_bit_for_bit(case, per_chain):
    """o, psi, m_mu, u, a and the recorded means m_eval equal the old loop's, for both
    feature dtypes, with squashing and clipping, an actor width that is no multiple of
    the BLAS blocks, a norm cap that binds or not and per-chain policies; keep_psi=False
    gives the same paths without psi."""
    cfg = small_config("theta_mu_offset_scale=0.3", *CASES[case])
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    B, T = 5, 120
    noise = draw_noise([stream(0, "rollout", 2, b) for b in range(B)], T, cfg)
    theta_mu = np.stack([params.theta_mu, params.theta_pi] * 2 + [params.theta_mu])
    theta_mu = theta_mu if per_chain else params.theta_mu
    sigma_mu = np.linspace(0.2, 0.5, B)
    evals = np.stack([params.theta_mu, params.theta_pi])
    ref = _reference_roll_out(cfg, maps, theta_mu, sigma_mu, noise, evals)
    kept = roll_out(cfg, maps, theta_mu, sigma_mu, noise, theta_eval=evals)
    lean = roll_out(cfg, maps, theta_mu, sigma_mu, noise, theta_eval=evals, keep_psi=False)
    for key in PATH_KEYS:
        np.testing.assert_array_equal(getattr(kept, key), ref[key], err_msg=key)
        if key != "psi":
            np.testing.assert_array_equal(getattr(lean, key), ref[key], err_msg=key)
    assert lean.psi is None
    assert roll_out(cfg, maps, theta_mu, sigma_mu, noise).m_eval is None
    if case == "eventful_wide":
        events = ref["o"][..., 14:18].reshape(-1, 4).max(axis=0)
        assert events.tolist() == [1.0, 1.0, 1.0, 1.0]  # catches, picks of both types, restarts


def test_pick_and_catch_threshold_test_equals_hypot():
    """The environment kernel's ``_within(d0, d1, eps)`` (hypot only near the threshold)
    equals ``hypot(d0, d1) <= eps`` on random pairs, on pairs whose hypot is eps or one
    ulp either side, at eps = 0 and on NaN, infinite, tiny and subnormal components."""
    from tdlens.torus.fast import _within

    rng = np.random.default_rng(4)
    eps = rng.uniform(0.0, 0.5, 20_000)
    angle = rng.uniform(0.0, 2 * np.pi, eps.size)
    radius = eps * np.exp(rng.normal(0.0, 1e-8, eps.size))
    d0, d1 = radius * np.cos(angle), radius * np.sin(angle)
    on = np.hypot(d0, d1)
    cases = [
        (d0, d1, eps),
        (d0, d1, on),
        (d0, d1, np.nextafter(on, 0.0)),
        (d0, d1, np.nextafter(on, 1.0)),
        (rng.normal(0, 0.3, eps.size), rng.normal(0, 0.3, eps.size), eps),
    ]
    specials = np.array([0.0, -0.0, 5e-324, 1e-310, 1e-160, np.nan, np.inf, -np.inf, 0.04])
    grid = np.array(np.meshgrid(specials, specials, [0.0, 5e-324, 1e-160, 0.04])).reshape(3, -1)
    cases.append(tuple(grid))
    for c0, c1, e in cases:
        got = [_within(a, b, c) for a, b, c in zip(c0, c1, e, strict=True)]
        np.testing.assert_array_equal(got, np.hypot(c0, c1) <= e)
