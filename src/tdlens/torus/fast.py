"""Compiled environment step and observation for the rollout hot path (docs/model.md §1, §2).

:mod:`tdlens.torus.dynamics` is the definition; this module computes the same functions
with numba kernels over a packed state, row by row, with the same floating-point
operations in the same order (``x mod L`` as NumPy's ``np.mod``, ``hypot``, ``sin`` and
``cos`` from the C library, no fused multiply-add), so a step reproduces
:func:`tdlens.torus.dynamics.step` bit for bit on the same noise (tests/test_dynamics.py
checks long random rollouts with restarts, catches, picks and both clip settings). The
catch and pick tests ``hypot(d) <= eps`` compare ``d . d`` with ``eps^2`` first and call
``hypot`` only near the threshold, which decides them the same way (:func:`_within`).
Each environment row is stepped by the same scalar code, so a batch of ``n`` rows equals
``n`` single rows exactly.

Packed state ``packed [n, 8 + 3K]`` float64, one row per environment:
``x_a (2), x_g (2), goblets (2K, goblet-major), types (K), caught, picked, picked_type,
restart`` (flags as 0.0/1.0). Environment constants travel as ``params`` (see
:func:`env_params`). Noise rows are the ones :func:`tdlens.torus.dynamics.step` takes:
``z [n, 4]``, ``u [n, uniform_width(K)]``.

The kernels are compiled once per machine (``cache=True``: later processes load them
from ``__pycache__`` in a fraction of a second).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tdlens.config import EnvConfig
from tdlens.torus.dynamics import OBS_DIM, TorusState

_L, _DT, _VMAX, _VGHOST, _SENV, _SGHOST, _ECATCH, _EPICK, _PMIX, _PPOS, _PRESAMPLE, _CLIP = range(
    12
)


def state_width(num_goblets: int) -> int:
    """Columns of a packed state row: positions (4 + 2K), types (K), four event columns."""
    return 8 + 3 * num_goblets


def env_params(env: EnvConfig) -> np.ndarray:
    """The environment constants the kernels read, as one float64 vector."""
    return np.array(
        [
            env.torus_size,
            env.dt,
            env.v_max,
            env.v_ghost,
            env.sigma_env,
            env.sigma_ghost,
            env.eps_catch,
            env.eps_pick,
            env.p_mix,
            env.p_type_positive,
            env.type_resample_p,
            float(env.clip_action),
        ]
    )


def pack(state: TorusState) -> np.ndarray:
    """``packed [n, 8 + 3K]`` from a :class:`TorusState` (a new array)."""
    n, K = state.types.shape
    packed = np.empty((n, state_width(K)))
    packed[:, 0:2] = state.x_a
    packed[:, 2:4] = state.x_g
    packed[:, 4 : 4 + 2 * K] = state.goblets.reshape(n, 2 * K)
    packed[:, 4 + 2 * K : 4 + 3 * K] = state.types
    packed[:, 4 + 3 * K] = state.caught
    packed[:, 5 + 3 * K] = state.picked
    packed[:, 6 + 3 * K] = state.picked_type
    packed[:, 7 + 3 * K] = state.restart
    return packed


def unpack(packed: np.ndarray, num_goblets: int) -> TorusState:
    """The :class:`TorusState` of a packed state (copies)."""
    n, K = packed.shape[0], num_goblets
    return TorusState(
        x_a=packed[:, 0:2].copy(),
        x_g=packed[:, 2:4].copy(),
        goblets=packed[:, 4 : 4 + 2 * K].reshape(n, K, 2).copy(),
        types=packed[:, 4 + 2 * K : 4 + 3 * K].copy(),
        caught=packed[:, 4 + 3 * K] != 0.0,
        picked=packed[:, 5 + 3 * K] != 0.0,
        picked_type=packed[:, 6 + 3 * K].copy(),
        restart=packed[:, 7 + 3 * K] != 0.0,
    )


@njit(cache=True, inline="always")
def _mod(x: float, L: float) -> float:
    """NumPy's ``np.mod`` for floats (Python's float ``%``): the exact ``fmod`` remainder
    moved to the sign of L, +0 for a zero remainder.

    Fast paths for ``-L <= x < 2L`` (L > 0), where that remainder is exactly ``x``,
    ``x - L`` (exact, Sterbenz) or ``x`` moved by ``+L`` (one rounding, as NumPy's).
    """
    if L > 0.0:
        if 0.0 < x < L:
            return x
        if L <= x < 2.0 * L:
            return x - L
        if -L <= x < 0.0:
            return x + L
        if x == 0.0:
            return 0.0
    return x % L


@njit(cache=True, inline="always")
def _delta(a: float, b: float, L: float, half: float) -> float:
    """Shortest signed difference a -> b: ``((b - a + L/2) mod L) - L/2``."""
    return _mod(b - a + half, L) - half


@njit(cache=True, inline="always")
def _within(d0: float, d1: float, eps: float) -> bool:
    """``hypot(d0, d1) <= eps``, calling ``hypot`` only near the threshold.

    ``q = d0 d0 + d1 d1`` is within a few ulp of ``hypot(d0, d1)^2``, and ``hypot`` is
    within one ulp of the exact norm, so outside ``eps^2 (1 -+ 1e-9)`` the comparison of
    ``q`` decides it as ``hypot`` would; a NaN, an underflow to 0 and ``eps = 0`` fall
    through to ``hypot`` itself. Same outcome, bit for bit, for ~1/5 of the cost.
    """
    q = d0 * d0 + d1 * d1
    eps_sq = eps * eps
    if q > eps_sq * (1.0 + 1e-9):
        return False
    if q < eps_sq * (1.0 - 1e-9):
        return True
    return math.hypot(d0, d1) <= eps


@njit(cache=True)
def _step_row(S_i, a_i, z_i, u_i, p) -> None:
    L, K = p[_L], (S_i.shape[0] - 8) // 3
    half = 0.5 * L
    gob, typ, ev = 4, 4 + 2 * K, 4 + 3 * K
    a0, a1 = a_i[0], a_i[1]
    if p[_CLIP] != 0.0:
        vmax = p[_VMAX]
        a0 = min(max(a0, -vmax), vmax)
        a1 = min(max(a1, -vmax), vmax)
    xa0 = _mod(S_i[0] + p[_DT] * a0 + p[_SENV] * z_i[0], L)
    xa1 = _mod(S_i[1] + p[_DT] * a1 + p[_SENV] * z_i[1], L)

    xg0, xg1 = S_i[2], S_i[3]
    d0, d1 = _delta(xg0, xa0, L, half), _delta(xg1, xa1, L, half)
    norm = math.hypot(d0, d1)
    speed = (p[_DT] * p[_VGHOST]) / norm if norm >= 1e-12 else 0.0
    xg0 = _mod(xg0 + d0 * speed + p[_SGHOST] * z_i[2], L)
    xg1 = _mod(xg1 + d1 * speed + p[_SGHOST] * z_i[3], L)

    caught_b = _within(
        _mod(xa0 - xg0 + half, L) - half, _mod(xa1 - xg1 + half, L) - half, p[_ECATCH]
    )
    if caught_b:
        xg0, xg1 = L * u_i[0], L * u_i[1]

    first = -1
    for k in range(K):
        e0 = _mod(S_i[gob + 2 * k] - xa0 + half, L) - half
        e1 = _mod(S_i[gob + 2 * k + 1] - xa1 + half, L) - half
        if _within(e0, e1, p[_EPICK]):
            first = k
            break
    picked_type = 0.0
    if first >= 0:
        picked_type = S_i[typ + first]
        S_i[gob + 2 * first] = L * u_i[2]
        S_i[gob + 2 * first + 1] = L * u_i[3]
        if u_i[4] < p[_PRESAMPLE]:
            S_i[typ + first] = 1.0 if u_i[5] < p[_PPOS] else -1.0

    restart = u_i[6] < p[_PMIX]
    picked = first >= 0
    if restart:
        r = 7
        xa0, xa1, xg0, xg1 = L * u_i[r], L * u_i[r + 1], L * u_i[r + 2], L * u_i[r + 3]
        for j in range(2 * K):
            S_i[gob + j] = L * u_i[r + 4 + j]
        for k in range(K):
            S_i[typ + k] = 1.0 if u_i[r + 4 + 2 * K + k] < p[_PPOS] else -1.0
        caught_b, picked, picked_type = False, False, 0.0
    S_i[0], S_i[1], S_i[2], S_i[3] = xa0, xa1, xg0, xg1
    S_i[ev] = 1.0 if caught_b else 0.0
    S_i[ev + 1] = 1.0 if picked else 0.0
    S_i[ev + 2] = picked_type
    S_i[ev + 3] = 1.0 if restart else 0.0


@njit(cache=True)
def _observe_row(S_i, p, o_i) -> None:
    L, K = p[_L], (S_i.shape[0] - 8) // 3
    half, inv_L = 0.5 * L, 1.0 / L
    gob, typ, ev = 4, 4 + 2 * K, 4 + 3 * K
    xa0, xa1 = S_i[0], S_i[1]
    nearest, best = 0, math.inf
    for k in range(K):
        e0 = (_mod(S_i[gob + 2 * k] - xa0 + half, L) - half) * inv_L
        e1 = (_mod(S_i[gob + 2 * k + 1] - xa1 + half, L) - half) * inv_L
        sq = e0 * e0 + e1 * e1
        if sq < best:
            nearest, best = k, sq
            o_i[10], o_i[11] = e0, e1
    o_i[8] = (_mod(S_i[2] - xa0 + half, L) - half) * inv_L
    o_i[9] = (_mod(S_i[3] - xa1 + half, L) - half) * inv_L
    w = 2.0 * math.pi / L
    for j in range(2):
        for axis in range(2):
            angle = S_i[2 * j + axis] * w
            o_i[4 * j + axis] = math.sin(angle)
            o_i[4 * j + 2 + axis] = math.cos(angle)
    total = 0.0
    for k in range(K):
        total += S_i[typ + k]
    o_i[12] = S_i[typ + nearest]
    o_i[13] = total * (1.0 / K)
    o_i[14] = S_i[ev]
    o_i[15] = 1.0 if S_i[ev + 2] > 0.0 else 0.0
    o_i[16] = 1.0 if S_i[ev + 2] < 0.0 else 0.0
    o_i[17] = S_i[ev + 3]


@njit(cache=True)
def observe_packed(packed: np.ndarray, p: np.ndarray, o: np.ndarray) -> None:
    """``o [n, 18] = o(s)`` of every row of the packed state ``packed`` (in place)."""
    for i in range(packed.shape[0]):
        _observe_row(packed[i], p, o[i])


@njit(cache=True, nogil=True)
def step_observe_packed(
    packed: np.ndarray, a: np.ndarray, z: np.ndarray, u: np.ndarray, p: np.ndarray, o: np.ndarray
) -> None:
    """One transition of every row of ``packed`` in place (:func:`tdlens.torus.dynamics.step`
    with actions ``a [n, 2]``), then ``o [n, 18]`` = the observation of the new state."""
    for i in range(packed.shape[0]):
        _step_row(packed[i], a[i], z[i], u[i], p)
        _observe_row(packed[i], p, o[i])


def step(state: TorusState, a: np.ndarray, z: np.ndarray, u: np.ndarray, env: EnvConfig):
    """:func:`tdlens.torus.dynamics.step` through the kernel (returns a new state)."""
    packed = pack(state)
    o = np.empty((packed.shape[0], OBS_DIM))
    step_observe_packed(packed, np.ascontiguousarray(a, dtype=np.float64), z, u, env_params(env), o)
    return unpack(packed, state.types.shape[1])


def observe(state: TorusState, env: EnvConfig) -> np.ndarray:
    """:func:`tdlens.torus.dynamics.observe` through the kernel."""
    o = np.empty((state.n, OBS_DIM))
    observe_packed(pack(state), env_params(env), o)
    return o
