"""Gymnasium wrapper of one Torus Goblet & Ghost environment (docs/model.md §1 and §2).

The wrapper is a batch of ``n = 1`` around the pure dynamics in
:mod:`tdlens.torus.dynamics`; all randomness comes from ``self.np_random`` in a fixed
order, so a generator seeded like the env's replays it exactly:

- ``reset``: ``u [reset_width(K)]`` uniforms, then ``reset_from_uniforms``;
- ``step``: ``z [NORMAL_WIDTH]`` standard normals, then ``u [uniform_width(K)]`` uniforms,
  then ``dynamics.step``.

Observation: ``o(s_t) [18]`` (docs/model.md §2). Reward: the teacher ``r_t = w_R . phi(s_t, a_t) /
sqrt(D)`` on the CURRENT state and the executed action (clipped when env.clip_action),
before anything moves (docs/model.md §1 step 1). The task is continuing: ``terminated`` and
``truncated`` are always False; the registered id truncates after 200 steps through
Gymnasium's TimeLimit.

``info`` of ``step``: ``phi = phi(s_t, a_t) [D]``, ``psi = psi(s_t) [N]``,
``obs_vec = o(s_t) [18]``, ``next_phi = phi(s_{t+1}, 0) [D]`` (the K_mc = 0 estimate of
bar_phi, docs/model.md §2), ``next_psi = psi(s_{t+1})``, ``next_obs_vec = o(s_{t+1})``, the executed
``action [2]`` and the events of the transition: ``caught``, ``picked``, ``picked_type``
(+1/-1, 0 when nothing was picked), ``restart``. Features are computed in float64 (the
reference path of :mod:`tdlens.features`), whatever the config's precision.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from tdlens import _register_env
from tdlens.config import RunConfig
from tdlens.features import FeatureMaps, actor_features, critic_features, make_feature_maps
from tdlens.features import reward as teacher_reward
from tdlens.torus.dynamics import (
    NORMAL_WIDTH,
    OBS_DIM,
    TorusState,
    clip_action,
    observe,
    reset_from_uniforms,
    reset_width,
    step,
    uniform_width,
)

MAX_EPISODE_STEPS = 200
ACTION_DIM = 2


def observation_bounds() -> tuple[np.ndarray, np.ndarray]:
    """``(low, high) [18]`` of o(s): sin/cos in [-1, 1], deltas / L in [-0.5, 0.5], types
    in [-1, 1], event flags in [0, 1] (docs/model.md §2 order)."""
    low = np.concatenate([-np.ones(8), np.full(4, -0.5), -np.ones(2), np.zeros(4)])
    high = np.concatenate([np.ones(8), np.full(4, 0.5), np.ones(2), np.ones(4)])
    return low, high


class TorusGobletGhostEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One Torus Goblet & Ghost environment with the teacher reward (see module docstring).

    The action space is ``Box(-v_max, v_max, (2,))``, the clip and squash bound, but the
    dynamics are defined on all of R^2: finite actions outside the box are executed as
    given (clipped only when env.clip_action), as the Gaussian policies of docs/model.md §3 need.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, config: RunConfig | None = None, render_mode: str | None = None) -> None:
        if config is not None and not isinstance(config, RunConfig):
            raise ValueError(f"config: expected a RunConfig or None, got {type(config).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.config = RunConfig() if config is None else config
        self.env_config = self.config.env
        self.render_mode = render_mode
        self.maps: FeatureMaps = make_feature_maps(
            RunConfig.model_validate({**self.config.to_dict(), "precision": "float64"})
        )
        v_max = self.env_config.v_max
        self.action_space = spaces.Box(-v_max, v_max, shape=(ACTION_DIM,), dtype=np.float64)
        low, high = observation_bounds()
        self.observation_space = spaces.Box(low, high, shape=(OBS_DIM,), dtype=np.float64)
        self._state: TorusState | None = None
        self._obs: np.ndarray | None = None
        self._last_action: np.ndarray | None = None

    @property
    def state(self) -> TorusState | None:
        """The current state (a TorusState batch of n = 1; None before the first reset)."""
        return self._state

    @property
    def last_action(self) -> np.ndarray | None:
        """The last executed action ``[2]`` (None right after a reset)."""
        return None if self._last_action is None else self._last_action.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw ``s_0 ~ nu`` from ``reset_width(K)`` uniforms of ``self.np_random``.

        ``info`` carries ``obs_vec = o(s_0)``, ``psi = psi(s_0)`` and the (false) events.
        No options are supported.
        """
        super().reset(seed=seed)
        if options:
            raise ValueError(f"options: this environment takes no reset options, got {options}")
        u = self.np_random.random((1, reset_width(self.env_config.num_goblets)))
        self._set_state(reset_from_uniforms(u, self.env_config))
        self._last_action = None
        obs = self._obs_vec()
        info = {"obs_vec": obs.copy(), "psi": self._psi(obs), **self._events()}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One transition (docs/model.md §1): reward on ``(s_t, a_t)``, then ``dynamics.step``."""
        if self._state is None:
            raise RuntimeError("step: call reset() before step()")
        a_t = clip_action(_check_action(action), self.env_config)
        o_t = self._obs_vec()
        phi_t = critic_features(self.maps, o_t, a_t)
        r_t = float(teacher_reward(self.maps, phi_t))
        z = self.np_random.standard_normal((1, NORMAL_WIDTH))
        u = self.np_random.random((1, uniform_width(self.env_config.num_goblets)))
        self._set_state(step(self._state, a_t[None, :], z, u, self.env_config))
        self._last_action = a_t
        o_tp1 = self._obs_vec()
        info = {
            "phi": phi_t,
            "psi": self._psi(o_t),
            "obs_vec": o_t,
            "next_phi": critic_features(self.maps, o_tp1, np.zeros(ACTION_DIM)),
            "next_psi": self._psi(o_tp1),
            "next_obs_vec": o_tp1.copy(),
            "action": a_t.copy(),
            **self._events(),
        }
        return o_tp1, r_t, False, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: an ``[H, W, 3]`` uint8 picture of the current state (render.py)."""
        if self.render_mode is None:
            gymnasium.logger.warn(
                "render: no render_mode was given; use TorusGobletGhostEnv(render_mode="
                "'rgb_array') or gymnasium.make(..., render_mode='rgb_array')"
            )
            return None
        if self._state is None:
            raise RuntimeError("render: call reset() before render()")
        from tdlens.torus.draw import render_rgb

        return render_rgb(self._state, self.env_config, action=self._last_action)

    def _set_state(self, state: TorusState) -> None:
        self._state = state
        self._obs = observe(state, self.env_config)[0]

    def _obs_vec(self) -> np.ndarray:
        """A fresh copy of ``o(s_t) [18]`` (callers keep what they are given)."""
        assert self._obs is not None
        return self._obs.copy()

    def _psi(self, o: np.ndarray) -> np.ndarray:
        return np.asarray(actor_features(self.maps, o), dtype=np.float64)

    def _events(self) -> dict[str, Any]:
        s = self._state
        assert s is not None
        return {
            "caught": bool(s.caught[0]),
            "picked": bool(s.picked[0]),
            "picked_type": float(s.picked_type[0]),
            "restart": bool(s.restart[0]),
        }


def _check_action(action: Any) -> np.ndarray:
    """``action`` as a float64 ``[2]`` array; ValueError naming it when malformed."""
    try:
        a = np.array(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action: expected 2 finite numbers, got {action!r} ({exc})") from None
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action: expected shape ({ACTION_DIM},), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action: expected finite values, got {a.tolist()}")
    return a


register_envs = _register_env
