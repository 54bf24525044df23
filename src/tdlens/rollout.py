"""Rollouts under a frozen behaviour policy and their TD features (docs/model.md §3 and §4).

Shapes: ``B`` trajectories (chains), ``T`` steps, ``N`` actor and ``D`` critic features,
``K`` = K_mc next-action draws. Only the environment and the behaviour policy are
sequential in t; everything else (target-policy means, ratios, features, rewards) is
computed afterwards in large batches.

Every chain ``b`` draws all of its noise up front from its own Generator, in a fixed
order: reset uniforms, action normals ``[T, 2]``, environment normals ``[T, 4]``,
environment uniforms ``[T, U]``, next-action normals ``[T, K, 2]``. So a chain's path
depends only on its own stream and policy: chain ``b`` of a batched rollout equals the
same chain rolled out alone; and the next-action normals, last, may be left undrawn
(:func:`draw_noise`'s ``next_draws``) without changing anything else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from tdlens.config import RunConfig
from tdlens.features import FeatureMaps, NextActions, Workspace, chain_features, reward
from tdlens.features import run_parallel as _run_parallel
from tdlens.kernels import (
    affine_rows,
    gaussian_policy_step,
    policy_means_each,
    rescale_rows,
)
from tdlens.policy import importance_ratio, policy_mean, squash
from tdlens.threads import parallel_map
from tdlens.torus import fast
from tdlens.torus.dynamics import (
    NORMAL_WIDTH,
    clip_action,
    reset_from_uniforms,
    reset_width,
    uniform_width,
)


@dataclass(frozen=True)
class ChainNoise:
    """Pre-drawn noise of B chains: leading axes ``[T, B]`` (reset: ``[B, R]``)."""

    reset: np.ndarray  # [B, reset_width]
    z_act: np.ndarray  # [T, B, 2]
    z_env: np.ndarray  # [T, B, 4]
    u_env: np.ndarray  # [T, B, U]
    z_next: np.ndarray  # [T, B, K, 2]

    def take(self, chains: slice | list[int]) -> ChainNoise:
        """The noise of a subset of chains."""
        return ChainNoise(
            reset=self.reset[chains],
            z_act=self.z_act[:, chains],
            z_env=self.z_env[:, chains],
            u_env=self.u_env[:, chains],
            z_next=self.z_next[:, chains],
        )


def draw_noise(
    rngs: list[np.random.Generator],
    T: int,
    cfg: RunConfig,
    next_draws: Sequence[bool] | None = None,
) -> ChainNoise:
    """Draw every chain's noise from its own generator (one generator per chain).

    ``next_draws[b]`` False (default: all True): chain b's next-action normals are not
    drawn and its ``z_next`` is NaN (:func:`next_actions` refuses them). They are the
    last draws of its stream, so its other noise is the same numbers: for chains whose
    bar_phi nobody forms from Monte Carlo draws (half the normals of a step at K_mc = 4).
    """
    K, G = cfg.K_mc, cfg.env.num_goblets
    draws = [True] * len(rngs) if next_draws is None else list(next_draws)
    if len(draws) != len(rngs):
        raise ValueError(f"next_draws has {len(draws)} flags for {len(rngs)} chains")
    z_next = np.empty((T, len(rngs), K, 2)) if all(draws) else np.full((T, len(rngs), K, 2), np.nan)
    parts = []
    for b, rng in enumerate(rngs):
        parts.append(
            (
                rng.random(reset_width(G)),
                rng.standard_normal((T, 2)),
                rng.standard_normal((T, NORMAL_WIDTH)),
                rng.random((T, uniform_width(G))),
            )
        )
        if draws[b]:
            z_next[:, b] = rng.standard_normal((T, K, 2))
    reset, z_act, z_env, u_env = zip(*parts, strict=True)
    return ChainNoise(
        reset=np.stack(reset),
        z_act=np.stack(z_act, axis=1),
        z_env=np.stack(z_env, axis=1),
        u_env=np.stack(u_env, axis=1),
        z_next=z_next,
    )


@dataclass(frozen=True)
class Paths:
    """States and actions of B chains, time-major: ``o [T+1, B, 18]``, ``u [T, B, 2]``."""

    o: np.ndarray  # observations of s_0..s_T
    psi: np.ndarray | None  # [T+1, B, N] actor features (features dtype); None if not kept
    m_mu: np.ndarray  # [T, B, 2] mean of the behaviour policy mu (the one that acts)
    u: np.ndarray  # [T, B, 2] Gaussian draw (the action as sampled, pre-squash)
    a: np.ndarray  # [T, B, 2] executed action (squashed, then clipped if clip_action)
    a_unclipped: np.ndarray  # [T, B, 2] squashed (if squash_action), before the env clips
    theta_eval: np.ndarray | None = None  # [E, N, 2] policies whose means were recorded
    m_eval: np.ndarray | None = None  # [T+1, B, E, 2] their means at s_0..s_T

    def take(self, chains: slice | list[int]) -> Paths:
        """The paths of a subset of chains."""
        return Paths(
            o=self.o[:, chains],
            psi=None if self.psi is None else self.psi[:, chains],
            m_mu=self.m_mu[:, chains],
            u=self.u[:, chains],
            a=self.a[:, chains],
            a_unclipped=self.a_unclipped[:, chains],
            theta_eval=self.theta_eval,
            m_eval=None if self.m_eval is None else self.m_eval[:, chains],
        )

    def mean_under(self, theta: np.ndarray, threads: int = 1) -> np.ndarray:
        """``m [T+1, B, 2] = policy_mean(theta, psi)`` at every state: the recorded means
        when `theta` is one of ``theta_eval`` (the same numbers), else from psi (on up to
        `threads` threads, the same numbers)."""
        if self.theta_eval is not None:
            for e, theta_e in enumerate(self.theta_eval):
                if np.array_equal(theta_e, theta):
                    return self.m_eval[:, :, e]
        if self.psi is None:
            raise ValueError("paths keep neither psi nor the means of this theta")
        return policy_mean(theta, self.psi, threads)


@njit(cache=True, nogil=True)
def rollout_act(
    t: int,
    psi: np.ndarray,
    keep: bool,
    sq: np.ndarray,
    cap: np.floating,
    theta: np.ndarray,
    sigma: np.ndarray,
    z_act: np.ndarray,
    m_mu: np.ndarray,
    u: np.ndarray,
    evals: np.ndarray,
    m_eval: np.ndarray,
) -> None:
    """The behaviour policies' step t of a rollout (:func:`tdlens.rollout.roll_out`), in
    place, on ``psi_t = psi[t]`` (``psi[0]`` unless `keep`), ``[B, N]`` after its tanh:

    with ``sq = psi_t . psi_t`` per row (``np.vecdot``, whose BLAS ``?dot`` the kernels
    do not reproduce), :func:`gaussian_policy_step` (norm cap, ``m_mu[t]``, ``u[t]``) and
    :func:`policy_means_each` of ``evals [E, N, 2]`` (E may be 0) into ``m_eval[t]``.
    """
    psi_t = psi[t if keep else 0]
    gaussian_policy_step(psi_t, sq, cap, theta, sigma, z_act[t], m_mu[t], u[t])
    policy_means_each(psi_t, evals, m_eval[t])


@njit(cache=True, nogil=True)
def rollout_move(
    t: int,
    a_t: np.ndarray,
    packed: np.ndarray,
    z_env: np.ndarray,
    u_env: np.ndarray,
    p: np.ndarray,
    o: np.ndarray,
    o_cast: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    psi: np.ndarray,
    keep: bool,
) -> None:
    """The environment's step t of a rollout, in place: ``packed`` moves under the actions
    ``a_t [B, 2]`` (:func:`fast.step_observe_packed`), ``o[t + 1]`` is its
    observation, and ``psi[t + 1]`` (``psi[0]`` unless `keep`) its actor features' affine
    map ``W^T o + b`` before the tanh (:func:`affine_rows` of ``o[t + 1]`` cast to the
    features dtype through ``o_cast [B, 18]``, as ``np.ascontiguousarray(o, dtype)``)."""
    fast.step_observe_packed(packed, a_t, z_env[t], u_env[t], p, o[t + 1])
    for i in range(o_cast.shape[0]):
        for k in range(o_cast.shape[1]):
            o_cast[i, k] = o[t + 1, i, k]
    affine_rows(o_cast, W, b, psi[t + 1 if keep else 0])


@njit(cache=True, nogil=True)
def rollout_act_move(
    t: int,
    psi: np.ndarray,
    keep: bool,
    sq: np.ndarray,
    cap: np.floating,
    theta: np.ndarray,
    sigma: np.ndarray,
    z_act: np.ndarray,
    m_mu: np.ndarray,
    u: np.ndarray,
    evals: np.ndarray,
    m_eval: np.ndarray,
    packed: np.ndarray,
    z_env: np.ndarray,
    u_env: np.ndarray,
    p: np.ndarray,
    o: np.ndarray,
    o_cast: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
) -> None:
    """:func:`rollout_act` then :func:`rollout_move` with the actions ``u[t]`` (no squash):
    one call for a whole step but its tanh."""
    rollout_act(t, psi, keep, sq, cap, theta, sigma, z_act, m_mu, u, evals, m_eval)
    rollout_move(t, u[t], packed, z_env, u_env, p, o, o_cast, W, b, psi, keep)


def roll_out(
    cfg: RunConfig,
    maps: FeatureMaps,
    theta_mu: np.ndarray,
    sigma_mu: np.ndarray,
    noise: ChainNoise,
    theta_eval: np.ndarray | None = None,
    keep_psi: bool = True,
) -> Paths:
    """Simulate B chains for T steps under per-chain Gaussian policies.

    ``theta_mu`` (``[N, 2]`` shared by all chains, or ``[B, N, 2]``) and ``sigma_mu [B]`` are
    the behaviour parameters; a chain's path is the same whichever policies the other chains
    follow. ``u_t = m(s_t) + sigma z_t``; ``a_t = v_max tanh(u_t)`` with
    squashing, else ``u_t``; the environment clips it when env.clip_action.

    A step is one compiled call (:func:`rollout_act_move`: norm cap,
    policy step, recorded means, environment step and observation on a packed state,
    bit-identical to :mod:`tdlens.torus.dynamics`, and the next state's affine map) and
    NumPy's tanh, whose bits the kernels do not reproduce; with squashing, NumPy's tanh of
    the action between the policy's and the environment's halves of the call. ``psi`` is
    kept in the features dtype (the dtype :func:`tdlens.features.actor_features` computes
    it in), or not at all when ``keep_psi`` is false. The means of the policies
    ``theta_eval [E, N, 2]`` at every state are recorded as ``m_eval`` (see
    :meth:`Paths.mean_under`): what the probes need of psi, in 2E numbers per state
    instead of N.
    """
    env = cfg.env
    T, B = noise.z_act.shape[:2]
    N = maps.N
    o = np.empty((T + 1, B, 18))
    psi = np.empty((T + 1 if keep_psi else 1, B, N), dtype=maps.dtype)
    m_mu = np.empty((T, B, 2))
    u = np.empty((T, B, 2))
    evals = None if theta_eval is None else np.ascontiguousarray(theta_eval, dtype=np.float64)
    m_eval = np.empty((T + 1, B, 0 if evals is None else len(evals), 2))
    z_act, z_env, u_env = (np.ascontiguousarray(x) for x in (noise.z_act, noise.z_env, noise.u_env))
    packed = fast.pack(reset_from_uniforms(noise.reset, env))
    p = fast.env_params(env)
    sigma = np.ascontiguousarray(sigma_mu, dtype=np.float64)
    theta = np.ascontiguousarray(theta_mu.reshape(-1, N, 2), dtype=np.float64)
    cap = maps.dtype.type(maps.c_psi)
    sq = np.empty(B, dtype=maps.dtype)
    o_cast = np.empty((B, 18), dtype=maps.dtype)
    W, b = maps.W_psi_t, maps.b_psi_d
    act = (psi, keep_psi, sq, cap, theta, sigma, z_act, m_mu, u)
    act += (np.empty((0, N, 2)) if evals is None else evals, m_eval)
    move = (packed, z_env, u_env, p, o, o_cast, W, b)
    fast.observe_packed(packed, p, o[0])
    affine_rows(np.ascontiguousarray(o[0], dtype=maps.dtype), W, b, psi[0])
    squash_action, v_max = cfg.squash_action, env.v_max
    step = act + move
    tanh, vecdot, psi_0 = np.tanh, np.vecdot, psi[0]
    for t in range(T):  # a step's fixed cost is these calls' (~3 us): no other Python work
        psi_t = psi[t] if keep_psi else psi_0
        tanh(psi_t, psi_t)
        vecdot(psi_t, psi_t, out=sq)
        if squash_action:
            rollout_act(t, *act)
            rollout_move(t, squash(u[t], v_max), *move, psi, keep_psi)
        else:
            rollout_act_move(t, *step)
    psi_T = psi[T if keep_psi else 0]
    np.tanh(psi_T, out=psi_T)
    rescale_rows(psi_T, np.vecdot(psi_T, psi_T), cap)
    if evals is not None:
        policy_means_each(psi_T, evals, m_eval[T])
    a_unclipped = squash(u, env.v_max) if cfg.squash_action else u
    return Paths(
        o=o,
        psi=psi if keep_psi else None,
        m_mu=m_mu,
        u=u,
        a=clip_action(a_unclipped, env),
        a_unclipped=a_unclipped,
        theta_eval=evals,
        m_eval=None if evals is None else m_eval,
    )


SPLIT_COLUMNS = 32
"""Chains per thread from which :func:`roll_out_threads` splits a rollout across threads."""


def roll_out_threads(
    cfg: RunConfig,
    maps: FeatureMaps,
    theta_mu: np.ndarray,
    sigma_mu: np.ndarray,
    noise: ChainNoise,
    threads: int,
    theta_eval: np.ndarray | None = None,
    keep_psi: bool = True,
) -> Paths:
    """:func:`roll_out` with the chains split into up to `threads` contiguous parts rolled
    out on their own threads (the per-step kernels release the GIL), at least
    SPLIT_COLUMNS chains a part. A chain's path depends only on its own noise and policy
    (module docstring), so the paths are those of one :func:`roll_out` call, bit for bit.
    """
    B = noise.z_act.shape[1]
    parts = max(1, min(threads, B // SPLIT_COLUMNS))
    if parts == 1:
        return roll_out(cfg, maps, theta_mu, sigma_mu, noise, theta_eval, keep_psi)
    bounds = np.linspace(0, B, parts + 1).astype(int)
    cols = [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
    per_chain = theta_mu.ndim == 3

    def part(c: slice) -> Paths:
        theta = theta_mu[c] if per_chain else theta_mu
        return roll_out(cfg, maps, theta, sigma_mu[c], noise.take(c), theta_eval, keep_psi)

    return concat_paths(parallel_map(part, cols, parts))


def concat_paths(parts: list[Paths]) -> Paths:
    """Paths of chain groups side by side (axis 1), in the order given."""

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays, axis=1)

    return Paths(
        o=cat("o"),
        psi=cat("psi"),
        m_mu=cat("m_mu"),
        u=cat("u"),
        a=cat("a"),
        a_unclipped=cat("a_unclipped"),
        theta_eval=parts[0].theta_eval,
        m_eval=cat("m_eval"),
    )


@dataclass(frozen=True)
class TDBatch:
    """Everything TD needs about B chains of T steps, batch-major ``[B, T, ...]``."""

    phi: np.ndarray  # [B, T, D] phi(s_t, a_t), features dtype
    bar_phi: np.ndarray  # [B, T, D] bar_phi(s_{t+1}) under pi
    r: np.ndarray  # [B, T] teacher reward
    rho: np.ndarray  # [B, T] ratio used by the update (clipped)
    rho_raw: np.ndarray  # [B, T] unclipped ratio
    psi: np.ndarray  # [B, T, N] actor features of s_t ([B, T, 0] when the paths kept none)
    u: np.ndarray  # [B, T, 2] the Gaussian draw
    m_mu: np.ndarray  # [B, T, 2] behaviour mean
    m_pi: np.ndarray  # [B, T, 2] target mean
    a_unclipped: np.ndarray  # [B, T, 2] squashed (if squash_action), before the env clips
    o: np.ndarray  # [B, T+1, 18]
    q_t: np.ndarray | None = None  # [B, T] Q_w(phi_t) when td_batch was given w
    q_tp1: np.ndarray | None = None  # [B, T] Q_w(bar_phi_tp1) when td_batch was given w

    @property
    def num_samples(self) -> int:
        return self.r.size


def next_actions(cfg: RunConfig, m_next: np.ndarray, noise: ChainNoise) -> list[NextActions]:
    """Each chain's next actions for bar_phi (docs/model.md §3), from pi's means at the next
    states ``m_next [B, T, 2]``: the closed form at ``m_pi(s_{t+1})`` when ``cfg.bar_phi``
    is exact, else the K_mc draws ``u' = m_pi(s_{t+1}) + sigma_pi z`` (``z`` from
    ``noise.z_next [T, B, K, 2]``) squashed and clipped like a real action."""
    if cfg.bar_phi == "exact":
        return [NextActions(mean=m, sigma=cfg.sigma_pi) for m in m_next]
    if np.isnan(noise.z_next[:1]).any():
        raise ValueError(
            "these chains' next-action normals were not drawn (draw_noise's next_draws)"
        )
    u_next = m_next[:, :, None, :] + cfg.sigma_pi * np.swapaxes(noise.z_next, 0, 1)
    a_next = squash(u_next, cfg.env.v_max) if cfg.squash_action else u_next
    a_next = clip_action(a_next, cfg.env)
    return [NextActions(draws=a) for a in a_next]


def td_batch(
    cfg: RunConfig,
    maps: FeatureMaps,
    paths: Paths,
    noise: ChainNoise,
    theta_pi: np.ndarray,
    sigma_mu: np.ndarray,
    with_features: bool = True,
    workspace: Workspace | None = None,
    w: np.ndarray | None = None,
    keep_bar_phi: bool = True,
) -> TDBatch:
    """Ratios and TD features of rolled-out chains (batched; docs/model.md §3 and §4 step 1).

    ``rho_t = min(exp(log pi(u_t|s_t) - log b(u_t|s_t)), rho_clip)`` on the action as
    sampled; ``bar_phi_{t+1}`` from the K_mc draws ``u' = m_pi(s_{t+1}) + sigma_pi z``
    (squashed/clipped like a real action) or in closed form when ``bar_phi: exact``.

    The reward ``r = w_R . phi / sqrt(D)`` and, given the critic ``w [D]``, the values
    ``q_t = Q_w(phi_t)``, ``q_tp1 = Q_w(bar_phi_tp1)`` (``Q_w(x) = w . x / sqrt(D)``, as
    :func:`tdlens.learner.critic_values`) are taken chain by chain right after each
    chain's features, while they are still in cache: the same ``[T, D] @ [D]`` products
    NumPy makes per chain of a ``[B, T, D]`` array, so the same bits.

    With ``keep_bar_phi=False`` (needs `w`) the batch keeps no bar_phi (``[B, T, 0]``):
    each chain's is made in a ``[T, D]`` scratch buffer of its thread and used for
    ``q_tp1`` while in cache, the same values (the training's runner, which reads only
    the TD errors: ``B T D`` fewer bytes written to memory and resident, 26 MB at the
    seed settings).
    """
    T, B = paths.u.shape[:2]
    bm = lambda x: np.ascontiguousarray(np.swapaxes(x, 0, 1))  # noqa: E731
    # a view (no copy): the actor gradient sums psi in its time-major layout
    psi = None if paths.psi is None else np.swapaxes(paths.psi, 0, 1)
    o = bm(paths.o)
    m_pi_all = bm(paths.mean_under(theta_pi, maps.threads))  # [B, T+1, 2]
    u, m_mu = bm(paths.u), bm(paths.m_mu)
    m_pi = m_pi_all[:, :T]
    rho, rho_raw = _ratios(u, m_pi, cfg.sigma_pi, m_mu, sigma_mu, cfg.effective_rho_clip)
    a_exec = bm(paths.a)
    ws = Workspace() if workspace is None else workspace
    D = maps.D if with_features else 0
    phi = ws.array("phi", (B, T, D), maps.dtype)
    if not keep_bar_phi and (w is None or not with_features):
        raise ValueError("keep_bar_phi=False needs w (q_tp1 is taken from each chain's bar_phi)")
    if keep_bar_phi:
        bar_phi = ws.array("bar_phi", (B, T, D), maps.dtype)
    else:
        ws.release("bar_phi")
        bar_phi = np.empty((B, T, 0), maps.dtype)
    r = np.empty((B, T))
    values = None if w is None or not with_features else (np.empty((B, T)), np.empty((B, T)))
    if with_features:
        w_f = None if w is None else (w / math.sqrt(maps.D)).astype(maps.dtype)
        nexts = next_actions(cfg, m_pi_all[:, 1:], noise)

        def one(b: int) -> None:
            with ws.scratch() as scratch:
                bar_b = bar_phi[b] if keep_bar_phi else _chain_buffer(scratch, (T, D), maps.dtype)
                chain_features(maps, o[b], a_exec[b], nexts[b], phi[b], bar_b, scratch)
                r[b] = reward(maps, phi[b])
                if values is not None:
                    values[0][b] = phi[b] @ w_f
                    values[1][b] = bar_b @ w_f

        _run_parallel(one, range(B), maps.threads)
    return TDBatch(
        phi=phi,
        bar_phi=bar_phi,
        r=r,
        rho=rho,
        rho_raw=rho_raw,
        psi=np.empty((B, T, 0), maps.dtype) if psi is None else psi[:, :T],
        u=u,
        m_mu=m_mu,
        m_pi=m_pi,
        a_unclipped=bm(paths.a_unclipped),
        o=o,
        q_t=None if values is None else values[0],
        q_tp1=None if values is None else values[1],
    )


def _chain_buffer(
    scratch: dict[str, np.ndarray], shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """The thread's ``[T, D]`` buffer for one chain's bar_phi (kept in its scratch dict)."""
    arr = scratch.get("bar_phi_chain")
    if arr is None or arr.shape != shape or arr.dtype != dtype:
        arr = scratch["bar_phi_chain"] = np.empty(shape, dtype=dtype)
    return arr


def _ratios(
    u: np.ndarray,
    m_pi: np.ndarray,
    sigma_pi: float,
    m_mu: np.ndarray,
    sigma_mu: np.ndarray,
    rho_clip: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance ratios with a per-chain behaviour sigma ``sigma_mu [B]``."""
    if np.all(sigma_mu == sigma_mu[0]):
        return importance_ratio(u, m_pi, sigma_pi, m_mu, float(sigma_mu[0]), rho_clip)
    rows = [
        importance_ratio(u[b], m_pi[b], sigma_pi, m_mu[b], float(sigma_mu[b]), rho_clip)
        for b in range(u.shape[0])
    ]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
