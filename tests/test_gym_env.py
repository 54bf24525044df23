"""Gymnasium wrapper and renderer of Torus Goblet & Ghost (docs/model.md §1 and §2).

References: the teacher reward is recomputed in float64 from features.critic_features;
transitions are replayed through dynamics.step with a generator seeded like the env's
(gymnasium's ``np_random(seed)``) and the draw order documented in gym_env.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.seeding import np_random
from PIL import Image

from tdlens import ENV_ID
from tdlens.config import load_config
from tdlens.features import critic_features, make_feature_maps
from tdlens.render import render_episode_gif
from tdlens.torus import dynamics
from tdlens.torus.draw import render_rgb
from tdlens.torus.gym_env import TorusGobletGhostEnv, register_envs

SMALL = ["env.feature_dim=32", "env.actor_feature_dim=8"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, SMALL)


@pytest.fixture
def env(cfg):
    return TorusGobletGhostEnv(cfg)


def test_check_env_passes_without_warnings(cfg):
    made = gymnasium.make(ENV_ID, config=cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(made.unwrapped)


def test_check_env_on_a_bare_instance(env):
    check_env(env, skip_render_check=True)


def test_make_registers_time_limit(cfg):
    register_envs()
    register_envs()
    made = gymnasium.make(ENV_ID, config=cfg)
    assert isinstance(made.unwrapped, TorusGobletGhostEnv)
    assert made.spec.max_episode_steps == 200
    made.reset(seed=0)
    truncated = [made.step(np.zeros(2))[3] for _ in range(200)]
    assert not any(truncated[:-1]) and truncated[-1]


def test_make_in_a_fresh_interpreter():
    code = (
        "import gymnasium, tdlens\n"
        "env = gymnasium.make('tdlens/TorusGobletGhost-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert obs.shape == (18,)\n"
        "env = gymnasium.make('tdlens.torus.gym_env:tdlens/TorusGobletGhost-v0')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_info_keys_and_shapes(env, cfg):
    obs, info = env.reset(seed=3)
    assert obs.shape == (18,) and obs.dtype == np.float64
    np.testing.assert_array_equal(info["obs_vec"], obs)
    a = np.array([0.1, -0.2])
    obs1, r, terminated, truncated, info = env.step(a)
    D, N = cfg.env.feature_dim, cfg.env.actor_feature_dim
    shapes = {"phi": (D,), "next_phi": (D,), "psi": (N,), "next_psi": (N,)}
    shapes |= {"obs_vec": (18,), "next_obs_vec": (18,), "action": (2,)}
    for key, shape in shapes.items():
        assert info[key].shape == shape, key
    np.testing.assert_array_equal(info["obs_vec"], obs)
    np.testing.assert_array_equal(info["next_obs_vec"], obs1)
    assert {"caught", "picked", "picked_type", "restart"} <= info.keys()
    assert terminated is False and truncated is False
    assert isinstance(r, float)


def test_reward_is_teacher_on_current_state_and_action(cfg):
    """r_t = w_R . phi(s_t, a_t) / sqrt(D) in float64, before the move (docs/model.md §1 step 1)."""
    cfg64 = load_config(None, [*SMALL, "precision=float64"])
    maps = make_feature_maps(cfg64)
    env = TorusGobletGhostEnv(cfg)
    obs, _ = env.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(0.0, 0.3, size=2)
        phi_ref = critic_features(maps, obs, a).astype(np.float64)
        r_ref = float(maps.w_R @ phi_ref) / math.sqrt(maps.D)
        next_obs, r, _, _, info = env.step(a)
        np.testing.assert_allclose(info["phi"], phi_ref, rtol=0, atol=1e-12)
        assert r == pytest.approx(r_ref, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(
            info["next_phi"], critic_features(maps, next_obs, np.zeros(2)), atol=1e-12
        )
        obs = next_obs


def test_reward_uses_the_clipped_action():
    cfg = load_config(None, [*SMALL, "env.clip_action=true"])
    maps = make_feature_maps(
        load_config(None, [*SMALL, "env.clip_action=true", "precision=float64"])
    )
    env = TorusGobletGhostEnv(cfg)
    obs, _ = env.reset(seed=2)
    _, r, _, _, info = env.step(np.array([5.0, -5.0]))
    v = cfg.env.v_max
    np.testing.assert_array_equal(info["action"], [v, -v])
    assert info["phi"][-1] == pytest.approx(2 * v**2)
    phi_ref = critic_features(maps, obs, np.array([v, -v]))
    assert r == pytest.approx(float(maps.w_R @ phi_ref) / math.sqrt(maps.D), rel=1e-12)


def test_transitions_equal_dynamics_step_on_the_same_noise(cfg):
    """Replay the env's np_random draws (reset uniforms; per step z then u)."""
    env_cfg = cfg.env
    env = TorusGobletGhostEnv(cfg)
    env.reset(seed=123)
    rng, _ = np_random(123)
    K = env_cfg.num_goblets
    state = dynamics.reset_from_uniforms(rng.random((1, dynamics.reset_width(K))), env_cfg)
    actions = np.random.default_rng(5).normal(0.0, 0.4, size=(50, 2))
    for a in actions:
        obs, _, _, _, info = env.step(a)
        z = rng.standard_normal((1, dynamics.NORMAL_WIDTH))
        u = rng.random((1, dynamics.uniform_width(K)))
        state = dynamics.step(state, a[None], z, u, env_cfg)
        for field in state.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(env.state, field), getattr(state, field))
        np.testing.assert_array_equal(obs, dynamics.observe(state, env_cfg)[0])
        assert info["restart"] == bool(state.restart[0])


def _trajectory(cfg, seed: int, steps: int = 30) -> list[np.ndarray]:
    env = TorusGobletGhostEnv(cfg)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for t in range(steps):
        obs, r, _, _, _ = env.step(np.array([0.2 * np.cos(t), 0.2 * np.sin(t)]))
        out += [obs, np.array([r])]
    return out


def test_same_seed_same_trajectory(cfg):
    first, second = _trajectory(cfg, 7), _trajectory(cfg, 7)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)
    other = _trajectory(cfg, 8)
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize(
    "bad",
    [np.zeros(3), np.zeros((1, 2)), 0.5, np.array([np.nan, 0.0]), [np.inf, 0.0], ["a", "b"]],
)
def test_bad_action_raises_value_error_naming_action(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


def test_step_before_reset_raises(env):
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_render_rgb_array(cfg):
    env = TorusGobletGhostEnv(cfg, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.array([0.3, 0.1]))
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.min() < img.max()
    assert render_rgb(env.state, cfg.env, size_px=64).shape == (64, 64, 3)


def test_bad_render_mode_raises(cfg):
    with pytest.raises(ValueError, match="render_mode"):
        TorusGobletGhostEnv(cfg, render_mode="human")


def test_render_episode_gif_writes_steps_frames(cfg, tmp_path):
    out = render_episode_gif(cfg, 4, tmp_path / "sub" / "episode.gif")
    assert out == tmp_path / "sub" / "episode.gif"
    with Image.open(out) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 4
    assert [p.name for p in out.parent.iterdir()] == ["episode.gif"]


def test_render_episode_gif_rejects_no_steps(cfg, tmp_path):
    with pytest.raises(ValueError, match="steps"):
        render_episode_gif(cfg, 0, tmp_path / "x.gif")
    assert not list(tmp_path.iterdir())
