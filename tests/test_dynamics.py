"""Torus Goblet & Ghost dynamics (docs/model.md §1) and observation layout (docs/model.md §2)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tdlens.config import EnvConfig
from tdlens.torus.dynamics import (
    NORMAL_WIDTH,
    TorusState,
    delta,
    observe,
    reset_from_uniforms,
    reset_width,
    step,
    uniform_width,
    wrap,
)

ENV = EnvConfig()


def _noise(rng: np.random.Generator, n: int, env: EnvConfig = ENV):
    return rng.standard_normal((n, NORMAL_WIDTH)), rng.random((n, uniform_width(env.num_goblets)))


def _state(**kw) -> TorusState:
    """A one-environment state with goblets far away unless given."""
    base = {
        "x_a": np.array([[0.5, 0.5]]),
        "x_g": np.array([[0.1, 0.1]]),
        "goblets": np.array([[[0.9, 0.9], [0.8, 0.2], [0.2, 0.8]]]),
        "types": np.array([[1.0, -1.0, 1.0]]),
        "caught": np.zeros(1, bool),
        "picked": np.zeros(1, bool),
        "picked_type": np.zeros(1),
        "restart": np.zeros(1, bool),
    }
    base.update(kw)
    return TorusState(**base)


QUIET = EnvConfig(sigma_env=0.0, sigma_ghost=0.0, p_mix=0.0)
NO_RESTART_U = np.full((1, uniform_width(3)), 0.99)  # coins >= every probability used


def test_wrap_and_shortest_delta_across_the_seam():
    L = 1.0
    assert np.allclose(wrap(np.array([1.25, -0.25, 0.5]), L), [0.25, 0.75, 0.5])
    # 0.95 -> 0.05 is +0.1 across the seam, not -0.9
    assert np.allclose(delta(np.array([0.95]), np.array([0.05]), L), [0.1])
    assert np.allclose(delta(np.array([0.05]), np.array([0.95]), L), [-0.1])
    assert np.allclose(delta(np.array([0.2]), np.array([0.6]), L), [0.4])


@given(
    a=st.floats(-5, 5, allow_nan=False),
    b=st.floats(-5, 5, allow_nan=False),
    L=st.floats(0.5, 3.0),
)
@settings(max_examples=200, deadline=None)
def test_delta_is_shortest_and_consistent(a, b, L):
    d = float(delta(np.array(a), np.array(b), L))
    assert -L / 2 - 1e-12 <= d < L / 2 + 1e-12
    # a + d lands on b modulo L
    r = math.remainder(a + d - b, L)
    assert abs(r) < 1e-9


def test_batched_step_equals_single_envs():
    rng = np.random.default_rng(1)
    n = 7
    env = EnvConfig(p_mix=0.2, eps_pick=0.15, eps_catch=0.15, clip_action=True)
    state = reset_from_uniforms(rng.random((n, reset_width(env.num_goblets))), env)
    singles = [state.take(i) for i in range(n)]
    for _ in range(60):
        a = rng.normal(0, 0.5, (n, 2))
        z, u = _noise(rng, n, env)
        state = step(state, a, z, u, env)
        singles = [
            step(s, a[i : i + 1], z[i : i + 1], u[i : i + 1], env) for i, s in enumerate(singles)
        ]
        for i, s in enumerate(singles):
            for key in TorusState.__dataclass_fields__:
                np.testing.assert_array_equal(getattr(state, key)[i], getattr(s, key)[0])
        np.testing.assert_array_equal(
            observe(state, env), np.concatenate([observe(s, env) for s in singles])
        )


def test_adventurer_and_ghost_moves():
    s = _state(x_a=np.array([[0.98, 0.5]]), x_g=np.array([[0.5, 0.5]]))
    nxt = step(s, np.array([[1.0, 0.0]]), np.zeros((1, 4)), NO_RESTART_U, QUIET)
    # wraps across the seam: 0.98 + 0.05 * 1.0 = 1.03 -> 0.03
    assert np.allclose(nxt.x_a, [[0.03, 0.5]])
    # ghost moves dt * v_ghost = 0.015 toward the adventurer's new position (shortest way:
    # from 0.5 to 0.03 is -0.47, so it moves left)
    assert np.allclose(nxt.x_g, [[0.5 - 0.015, 0.5]])


def test_catch_respawns_ghost_and_sets_event():
    s = _state(x_a=np.array([[0.5, 0.5]]), x_g=np.array([[0.53, 0.5]]))
    u = NO_RESTART_U.copy()
    u[0, 0:2] = [0.25, 0.75]
    nxt = step(s, np.zeros((1, 2)), np.zeros((1, 4)), u, QUIET)
    assert nxt.caught[0]
    assert np.allclose(nxt.x_g, [[0.25, 0.75]])
    o = observe(nxt, QUIET)
    assert o[0, 14] == 1.0


def test_pick_takes_lowest_index_and_resamples_type():
    # goblets 1 and 2 are both within eps_pick; goblet 1 (lower index) is picked
    gob = np.array([[[0.9, 0.9], [0.51, 0.5], [0.49, 0.5]]])
    s = _state(goblets=gob, types=np.array([[1.0, -1.0, 1.0]]))
    u = NO_RESTART_U.copy()
    u[0, 2:4] = [0.1, 0.2]  # respawn position
    u[0, 4] = 0.0  # type coin < type_resample_p: redraw
    u[0, 5] = 0.0  # new type draw < p_type_positive: +1
    nxt = step(s, np.zeros((1, 2)), np.zeros((1, 4)), u, QUIET)
    assert nxt.picked[0] and nxt.picked_type[0] == -1.0
    assert np.allclose(nxt.goblets[0, 1], [0.1, 0.2])
    assert np.allclose(nxt.goblets[0, [0, 2]], gob[0, [0, 2]])
    assert nxt.types[0, 1] == 1.0
    o = observe(nxt, QUIET)
    assert o[0, 15] == 0.0 and o[0, 16] == 1.0  # picked a negative goblet


def test_pick_without_type_redraw_keeps_type():
    gob = np.array([[[0.5, 0.5], [0.9, 0.9], [0.2, 0.2]]])
    s = _state(goblets=gob)
    u = NO_RESTART_U.copy()  # type coin 0.99 >= type_resample_p: keep
    nxt = step(s, np.zeros((1, 2)), np.zeros((1, 4)), u, QUIET)
    assert nxt.picked[0] and nxt.picked_type[0] == 1.0 and nxt.types[0, 0] == 1.0


def test_restart_redraws_state_and_clears_events():
    env = EnvConfig(sigma_env=0.0, sigma_ghost=0.0, p_mix=0.5)
    # a catch and a pick both happen, then the restart coin fires
    s = _state(
        x_g=np.array([[0.52, 0.5]]), goblets=np.array([[[0.5, 0.5], [0.9, 0.9], [0.2, 0.2]]])
    )
    u = NO_RESTART_U.copy()
    u[0, 6] = 0.1  # restart coin < p_mix
    u[0, 7:] = np.linspace(0.05, 0.95, reset_width(3))
    nxt = step(s, np.zeros((1, 2)), np.zeros((1, 4)), u, env)
    fresh = reset_from_uniforms(u[:, 7:], env)
    assert nxt.restart[0] and not nxt.caught[0] and not nxt.picked[0]
    assert nxt.picked_type[0] == 0.0
    for key in ("x_a", "x_g", "goblets", "types"):
        np.testing.assert_array_equal(getattr(nxt, key), getattr(fresh, key))
    assert observe(nxt, env)[0, 14:18].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_clip_action_limits_the_move():
    env = EnvConfig(sigma_env=0.0, sigma_ghost=0.0, p_mix=0.0, clip_action=True)
    s = _state()
    nxt = step(s, np.array([[5.0, -5.0]]), np.zeros((1, 4)), NO_RESTART_U, env)
    assert np.allclose(nxt.x_a, [[0.5 + 0.05 * 0.4, 0.5 - 0.05 * 0.4]])


def test_observation_layout():
    env = EnvConfig()
    s = _state(
        x_a=np.array([[0.25, 0.0]]),
        x_g=np.array([[0.95, 0.5]]),
        goblets=np.array([[[0.2, 0.1], [0.3, 0.05], [0.9, 0.9]]]),
        types=np.array([[1.0, -1.0, -1.0]]),
        caught=np.array([True]),
        picked=np.array([True]),
        picked_type=np.array([-1.0]),
    )
    o = observe(s, env)[0]
    assert o.shape == (18,)
    assert np.allclose(o[0:2], [1.0, 0.0])  # sin(2 pi x_a)
    assert np.allclose(o[2:4], [0.0, 1.0])  # cos(2 pi x_a)
    assert np.allclose(o[4:6], [np.sin(2 * np.pi * 0.95), 0.0], atol=1e-12)
    assert np.allclose(o[6:8], [np.cos(2 * np.pi * 0.95), -1.0])
    assert np.allclose(o[8:10], [-0.3, -0.5])  # shortest x_a -> x_g (0.5 maps to -L/2)
    # nearest goblet: (0.3, 0.05) at distance sqrt(0.0025+0.0025) < (0.2, 0.1)
    assert np.allclose(o[10:12], [0.05, 0.05])
    assert o[12] == -1.0
    assert np.isclose(o[13], -1.0 / 3.0)
    assert o[14:18].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_reset_distribution_is_uniform_and_types_follow_p():
    env = EnvConfig(p_type_positive=0.3)
    rng = np.random.default_rng(5)
    n = 20000
    s = reset_from_uniforms(rng.random((n, reset_width(3))), env)
    assert s.x_a.min() >= 0 and s.x_a.max() < 1
    # mean of U(0,1) is 0.5 with standard error 1/sqrt(12 n)
    se = 1 / math.sqrt(12 * n)
    assert abs(s.x_g.mean() - 0.5) < 5 * se
    frac = (s.types > 0).mean()
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / (3 * n))
    assert not s.caught.any() and not s.picked.any() and not s.restart.any()
