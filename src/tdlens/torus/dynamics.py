"""Batched Torus Goblet & Ghost dynamics as pure array functions (docs/model.md §1).

Shapes: ``n`` independent environments, ``K`` goblets. A state holds
``x_a [n, 2]``, ``x_g [n, 2]``, ``goblets [n, K, 2]``, ``types [n, K]`` (+1/-1) and the
events of the transition that led to it: ``caught, picked, restart [n]`` (bool) and
``picked_type [n]`` (+1/-1, 0 when nothing was picked).

All randomness enters through explicit noise arrays, so the batched step is a pure
function and ``n`` single environments fed the matching noise rows give identical states:
- ``z [n, 4]`` standard normals: adventurer noise (2), ghost noise (2);
- ``u [n, uniform_width(K)]`` uniforms on [0, 1): ghost respawn (2), goblet respawn (2),
  type-redraw coin (1), new type (1), restart coin (1), restart state (4 + 3K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdlens.config import EnvConfig

NORMAL_WIDTH = 4
OBS_DIM = 18
_GHOST_RESPAWN = slice(0, 2)
_GOBLET_RESPAWN = slice(2, 4)
_TYPE_COIN = 4
_TYPE_NEW = 5
_RESTART_COIN = 6
_RESET = 7


def reset_width(num_goblets: int) -> int:
    """Uniforms needed to draw a state from nu: x_a (2), x_g (2), goblets (2K), types (K)."""
    return 4 + 3 * num_goblets


def uniform_width(num_goblets: int) -> int:
    """Uniforms consumed by one transition of one environment."""
    return _RESET + reset_width(num_goblets)


@dataclass(frozen=True)
class TorusState:
    """A batch of ``n`` environment states (see the module docstring for shapes)."""

    x_a: np.ndarray
    x_g: np.ndarray
    goblets: np.ndarray
    types: np.ndarray
    caught: np.ndarray
    picked: np.ndarray
    picked_type: np.ndarray
    restart: np.ndarray

    @property
    def n(self) -> int:
        return self.x_a.shape[0]

    def take(self, index: int | slice | np.ndarray) -> TorusState:
        """The sub-batch at `index` (an int keeps a batch axis of length 1)."""
        if isinstance(index, int | np.integer):
            index = slice(int(index), int(index) + 1)
        return TorusState(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})


def wrap(x: np.ndarray, L: float) -> np.ndarray:
    """wrap(x) = x mod L, in [0, L)."""
    return np.mod(x, L)


def delta(a: np.ndarray, b: np.ndarray, L: float) -> np.ndarray:
    """Shortest signed difference a -> b on the torus: ((b - a + L/2) mod L) - L/2."""
    return np.mod(b - a + 0.5 * L, L) - 0.5 * L


def reset_from_uniforms(u: np.ndarray, env: EnvConfig) -> TorusState:
    """Draw from the restart distribution nu given ``u [n, reset_width(K)]`` uniforms.

    All positions are uniform on the torus; each type is +1 with probability
    p_type_positive, else -1; all event flags are false.
    """
    n, K, L = u.shape[0], env.num_goblets, env.torus_size
    return TorusState(
        x_a=L * u[:, 0:2],
        x_g=L * u[:, 2:4],
        goblets=L * u[:, 4 : 4 + 2 * K].reshape(n, K, 2),
        types=np.where(u[:, 4 + 2 * K : 4 + 3 * K] < env.p_type_positive, 1.0, -1.0),
        caught=np.zeros(n, dtype=bool),
        picked=np.zeros(n, dtype=bool),
        picked_type=np.zeros(n),
        restart=np.zeros(n, dtype=bool),
    )


def clip_action(a: np.ndarray, env: EnvConfig) -> np.ndarray:
    """The action the environment executes: clipped per component when clip_action."""
    return np.clip(a, -env.v_max, env.v_max) if env.clip_action else a


def step(
    state: TorusState, a: np.ndarray, z: np.ndarray, u: np.ndarray, env: EnvConfig
) -> TorusState:
    """One transition of every environment, in the order of docs/model.md §1.

    ``a [n, 2]`` is the action (clipped first when env.clip_action); ``z`` and ``u`` are
    this step's noise rows. Returns the next state with this transition's events.
    """
    L, K, n = env.torus_size, env.num_goblets, state.n
    half = 0.5 * L
    a = clip_action(a, env)
    x_a = state.x_a + env.dt * a
    x_a += env.sigma_env * z[:, 0:2]
    np.mod(x_a, L, out=x_a)

    d_ga = delta(state.x_g, x_a, L)
    norm = np.hypot(d_ga[:, 0], d_ga[:, 1])
    speed = np.divide(env.dt * env.v_ghost, norm, out=np.zeros(n), where=norm >= 1e-12)
    x_g = state.x_g + d_ga * speed[:, None]
    x_g += env.sigma_ghost * z[:, 2:4]
    np.mod(x_g, L, out=x_g)

    d_ag = x_a - x_g
    d_ag += half
    np.mod(d_ag, L, out=d_ag)
    d_ag -= half
    caught = np.hypot(d_ag[:, 0], d_ag[:, 1]) <= env.eps_catch
    if caught.any():
        x_g = np.where(caught[:, None], L * u[:, _GHOST_RESPAWN], x_g)

    d_gob = state.goblets - x_a[:, None, :]
    d_gob += half
    np.mod(d_gob, L, out=d_gob)
    d_gob -= half
    within = np.hypot(d_gob[..., 0], d_gob[..., 1]) <= env.eps_pick
    picked = within.any(axis=1)
    goblets, types = state.goblets, state.types
    picked_type = np.zeros(n)
    if picked.any():
        rows = np.arange(n)
        first = np.argmax(within, axis=1)
        picked_type = np.where(picked, types[rows, first], 0.0)
        goblets = goblets.copy()
        types = types.copy()
        goblets[rows[picked], first[picked]] = L * u[picked, _GOBLET_RESPAWN]
        redraw = picked & (u[:, _TYPE_COIN] < env.type_resample_p)
        new_type = np.where(u[:, _TYPE_NEW] < env.p_type_positive, 1.0, -1.0)
        types[rows[redraw], first[redraw]] = new_type[redraw]

    restart = u[:, _RESTART_COIN] < env.p_mix
    if restart.any():
        fresh = reset_from_uniforms(u[restart, _RESET : _RESET + reset_width(K)], env)
        x_a[restart] = fresh.x_a
        x_g[restart] = fresh.x_g
        goblets = goblets.copy() if goblets is state.goblets else goblets
        types = types.copy() if types is state.types else types
        goblets[restart] = fresh.goblets
        types[restart] = fresh.types
        caught[restart] = False
        picked[restart] = False
        picked_type[restart] = 0.0
    return TorusState(x_a, x_g, goblets, types, caught, picked, picked_type, restart)


def observe(state: TorusState, env: EnvConfig) -> np.ndarray:
    """Observation vector ``o(s) [n, 18]`` in the order of docs/model.md §2.

    [sin 2pi x_a/L (2), cos 2pi x_a/L (2), sin 2pi x_g/L (2), cos 2pi x_g/L (2),
    delta(x_a -> x_g)/L (2), delta(x_a -> nearest goblet)/L (2), nearest type (1),
    mean type (1), caught (1), picked positive (1), picked negative (1), restart (1)].
    The nearest goblet is the lowest index among equally near ones.
    """
    L = env.torus_size
    n, K = state.n, state.types.shape[1]
    # shortest deltas from the adventurer to the ghost (row 0) and each goblet (rows 1..K)
    others = np.concatenate([state.x_g[:, None, :], state.goblets], axis=1)
    d = others - state.x_a[:, None, :]
    d += 0.5 * L
    np.mod(d, L, out=d)
    d -= 0.5 * L
    d *= 1.0 / L
    nearest = np.argmin(np.vecdot(d[:, 1:], d[:, 1:]), axis=1)
    rows = np.arange(n)
    out = np.empty((n, OBS_DIM))
    angle = np.concatenate([state.x_a, state.x_g], axis=1).reshape(n, 2, 2)
    angle *= 2.0 * np.pi / L
    trig = out[:, 0:8].reshape(n, 2, 2, 2)  # [n, agent, sin/cos, axis]
    np.sin(angle, out=trig[:, :, 0])
    np.cos(angle, out=trig[:, :, 1])
    out[:, 8:10] = d[:, 0]
    out[:, 10:12] = d[rows, nearest + 1]
    out[:, 12] = state.types[rows, nearest]
    np.add.reduce(state.types, axis=1, out=out[:, 13])
    out[:, 13] *= 1.0 / K
    out[:, 14] = state.caught
    np.greater(state.picked_type, 0.0, out=out[:, 15])
    np.less(state.picked_type, 0.0, out=out[:, 16])
    out[:, 17] = state.restart
    return out
