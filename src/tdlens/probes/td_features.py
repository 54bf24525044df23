"""TD features of the probe batches: ``phi_t`` and ``dphi_t`` straight from the block loop
(docs/model.md §6.1).

The fixed-point and stability probes read a batch as ``phi_t`` and ``dphi_t = phi_t -
gamma bar_phi_tp1`` (``[B, T, D]``, features dtype), never ``bar_phi_tp1`` itself. The
training path (:func:`tdlens.rollout.td_batch`, :func:`tdlens.features.chain_features`)
writes ``bar_phi [B, T, D]`` and the probes formed ``dphi`` from it in two more passes
over memory (:func:`tdlens.probes.fixed_point.td_difference_`). Here each feature block's
cosines, still in cache, are turned into ``phi`` and ``dphi`` in one pass
(:func:`difference_features`), with the operations and rounding of the two-step path:

    bar = (((c_1 + c_2) + ...) + c_J) * bar_scale      (rounded as chain_features does)
    dphi = phi + bar * (-gamma)                        (rounded as td_difference_ does)

so ``phi`` and ``dphi`` are the two-step path's values bit for bit (tests/probes/
test_probe_td_features.py). The cosine arguments are the training kernel's
(:func:`tdlens.kernels.block_arguments`) and the cosines NumPy's, as in training: in
float32 formed, taken (:func:`tdlens.kernels.cos32`, NumPy's float32 cosine bit for bit)
and turned into ``phi`` and ``dphi`` in one pass, never stored
(:func:`block_cos_differences`).

:func:`trainer_differences` writes only ``dphi`` (phi of a block lives in a small
scratch buffer): what the trainer's Monte Carlo TD errors of a batch need, whose ``r_t``
the probe's own batch already has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from tdlens.config import RunConfig
from tdlens.features import (
    _FLAGS,
    NUM_EXTRA,
    FeatureMaps,
    NextActions,
    Workspace,
    next_action_terms,
    reward,
)
from tdlens.features import run_parallel as _run_parallel
from tdlens.kernels import _fma, block_arguments, cos_feature_row
from tdlens.rollout import ChainNoise, Paths, next_actions, td_batch

BLOCK_ROWS = 128
"""Rows whose observation products ``C = o W_obs`` are formed in one call (as training)."""
CACHE_BYTES = 1 << 20
"""Target size of a block's cosine-argument buffer (about one L2 cache)."""
DIFFERENCE_BUFFERS = ("phi", "dphi")
"""Workspace names of a :class:`DifferenceBatch`'s features."""


@dataclass(frozen=True)
class DifferenceBatch:
    """What the critic probes read of B chains of T steps, batch-major: ``phi, dphi [B, T,
    D]`` (features dtype, ``dphi = phi - gamma bar_phi_tp1``), ``r, rho, rho_raw [B, T]``
    (teacher reward, clipped and unclipped ratio; float64)."""

    phi: np.ndarray
    dphi: np.ndarray
    r: np.ndarray
    rho: np.ndarray
    rho_raw: np.ndarray


@njit(cache=True, nogil=True)
def difference_features(
    cosines: np.ndarray,
    scale: np.ndarray,
    bar_scale: np.ndarray,
    neg_gamma: np.floating,
    phi_out: np.ndarray,
    dphi_out: np.ndarray,
) -> None:
    """``phi_out[i, j] = c_0ij scale_j`` and ``dphi_out[i, j] = phi_out[i, j] + ((((c_1ij +
    c_2ij) + ...) + c_Jij) bar_scale_j) neg_gamma`` for j < D', ``cosines [J + 1, R, D']``,
    ``phi_out, dphi_out [R, D]`` (whole rows, so numba sees unit strides), all in the
    features dtype; each operation rounded on its own (no fma): the values of
    :func:`tdlens.kernels.block_features` followed by
    :func:`tdlens.probes.fixed_point.td_difference_` with ``neg_gamma = -gamma``."""
    J1, R, D = cosines.shape
    for i in range(R):
        p, d, c0 = phi_out[i], dphi_out[i], cosines[0, i]
        if J1 == 2:  # one next action: the closed form's mean (or K_mc = 1)
            c1 = cosines[1, i]
            for j in range(D):
                phi = c0[j] * scale[j]
                p[j] = phi
                d[j] = phi + (c1[j] * bar_scale[j]) * neg_gamma
            continue
        if J1 == 5:  # K_mc = 4, the seed runs' Monte Carlo bar_phi
            c1, c2, c3, c4 = cosines[1, i], cosines[2, i], cosines[3, i], cosines[4, i]
            for j in range(D):
                phi = c0[j] * scale[j]
                p[j] = phi
                d[j] = phi + ((((c1[j] + c2[j]) + c3[j]) + c4[j]) * bar_scale[j]) * neg_gamma
            continue
        c = cosines[1, i]
        for j in range(D):
            d[j] = c[j]
        for k in range(2, J1):
            c = cosines[k, i]
            for j in range(D):
                d[j] += c[j]
        for j in range(D):
            phi = c0[j] * scale[j]
            p[j] = phi
            d[j] = phi + (d[j] * bar_scale[j]) * neg_gamma


@njit(cache=True, nogil=True)
def block_cos_differences(
    C: np.ndarray,
    bias: np.ndarray,
    W_act: np.ndarray,
    a: np.ndarray,
    draws: np.ndarray,
    scale: np.ndarray,
    bar_scale: np.ndarray,
    neg_gamma: np.floating,
    phi: np.ndarray,
    dphi_out: np.ndarray,
    with_phi: bool,
) -> bool:
    """The arguments of :func:`tdlens.kernels.block_arguments` (or :func:`mean_arguments`,
    the same operations), their cosines (:func:`tdlens.kernels.cos32`) and
    :func:`difference_features` in one pass, the arguments never stored, for float32 ``C
    [R + 1, D']``, ``a [R, 2]``, ``draws [R, J, 2]``, ``phi, dphi_out [R, >= D']``:
    ``phi = cos(x_0) scale`` and ``dphi = phi + bar neg_gamma`` with ``bar = (((cos(x_1)
    + cos(x_2)) + ...) + cos(x_J)) bar_scale`` (:func:`tdlens.kernels.cos_feature_row`,
    bar written into dphi's row first), each operation rounded as the three-call path
    rounds it (the same bits). ``with_phi=False``: `phi` is the block's phi already
    formed (the values written here), read and not written; only the next actions'
    cosines are taken. Returns False, its outputs then meaningless, when an argument it
    takes is NaN or beyond :data:`tdlens.kernels.COS_REDUCTION_MAX`: the caller then
    takes the three-call path."""
    D = C.shape[1]
    W0, W1 = W_act[0], W_act[1]
    ok = True
    for i in range(draws.shape[0]):
        p, d = phi[i, :D], dphi_out[i, :D]
        # two inlined copies, each with a constant flag: no branch in the loops over j
        if with_phi:
            ok &= cos_feature_row(
                C[i], C[i + 1], bias, W0, W1, a[i], draws[i], scale, bar_scale, p, d, True
            )
        else:
            ok &= cos_feature_row(
                C[i], C[i + 1], bias, W0, W1, a[i], draws[i], scale, bar_scale, p, d, False
            )
        for j in range(D):
            d[j] = p[j] + d[j] * neg_gamma
    return ok


@njit(cache=True, nogil=True)
def mean_arguments(
    C: np.ndarray,
    bias: np.ndarray,
    W_act: np.ndarray,
    a: np.ndarray,
    mean: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`tdlens.kernels.block_arguments` with one next action (the closed-form
    bar_phi's mean ``mean [R, 1, 2]``), ``out [2, R, D']``: ``out[0, i] = fma(a_i1, W_1,
    a_i0 W_0) + (C[i] + bias)`` and ``out[1, i] = fma(m_i1, W_1, m_i0 W_0) + (C[i + 1] +
    bias)``, the same operations (so the same bits) in one pass over ``W_act`` and bias
    per row instead of two."""
    _, R, D = out.shape
    W0, W1 = W_act[0], W_act[1]
    for i in range(R):
        c, c_next, o, o_next = C[i], C[i + 1], out[0, i], out[1, i]
        a0, a1, m0, m1 = a[i, 0], a[i, 1], mean[i, 0, 0], mean[i, 0, 1]
        for j in range(D):
            w0, w1, b = W0[j], W1[j], bias[j]
            o[j] = _fma(a1, w1, a0 * w0) + (c[j] + b)
            o_next[j] = _fma(m1, w1, m0 * w0) + (c_next[j] + b)


def _buffer(scratch: dict[str, np.ndarray], key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A scratch array of at least `shape` (first axis), reused across calls."""
    arr = scratch.get(key)
    if arr is None or arr.shape[0] < shape[0] or arr.shape[1:] != shape[1:] or arr.dtype != dtype:
        arr = scratch[key] = np.empty(shape, dtype=dtype)
    return arr[: shape[0]]


def chain_differences(
    maps: FeatureMaps,
    o_chain: np.ndarray,
    a: np.ndarray,
    next_actions: NextActions,
    gamma: float,
    phi_out: np.ndarray | None,
    dphi_out: np.ndarray,
    scratch: dict[str, np.ndarray],
    phi_in: np.ndarray | None = None,
) -> None:
    """``phi_out[t] = phi(s_t, a_t)`` and ``dphi_out[t] = phi(s_t, a_t) - gamma
    bar_phi(s_{t+1})`` along one chain, ``o_chain [L+1, 18]``, ``a [L, 2]``, outputs
    ``[L, D]``: the block loop of :func:`tdlens.features.chain_features` (same
    arguments, by :func:`mean_arguments` for the closed form, same cosines) with
    :func:`difference_features` in place of its ``block_features`` (in float32
    :func:`block_cos_differences` in place of all three calls, as chain_features does),
    so the values of chain_features followed by td_difference_.
    ``phi_out=None``: phi is not kept (each block's goes to a scratch buffer).
    ``phi_in [L, D]``: this chain's phi already formed (by this function, e.g. for a batch
    with another bar_phi estimator; `phi_out` must then be None): in float32 only the
    next actions' cosines are taken (:func:`block_cos_differences` without phi), the same
    dphi."""
    L = a.shape[0]
    D, D_base, dtype = maps.D, maps.D - NUM_EXTRA, maps.dtype
    o32 = o_chain.astype(dtype)
    scale = maps.constant("phi_scale", maps.base_scale)
    draws, bar_scale, sq = next_action_terms(maps, next_actions, L)
    a32, draws32 = a.astype(dtype), draws.astype(dtype)
    J = draws32.shape[1]
    neg_gamma = -dtype.type(gamma)
    sub = max(1, CACHE_BYTES // ((J + 1) * D_base * dtype.itemsize))
    for start in range(0, L, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, L)
        C = _buffer(scratch, "C", (stop - start + 1, D_base), dtype)
        np.matmul(o32[start : stop + 1], maps.W_obs, out=C)
        block = slice(start, stop)
        if phi_in is not None:
            phi_block = phi_in[block]
        elif phi_out is not None:
            phi_block = phi_out[block]
        else:
            phi_block = _buffer(scratch, "phi", (stop - start, D), dtype)
        if dtype == np.float32 and block_cos_differences(
            C, maps.bias, maps.W_act, a32[block], draws32[block], scale, bar_scale, neg_gamma,
            phi_block, dphi_out[block], phi_in is None,
        ):  # fmt: skip
            continue
        for lo in range(start, stop, sub):
            hi = min(lo + sub, stop)
            rows, C_lo = hi - lo, C[lo - start : hi - start + 1]
            args = _buffer(scratch, "args", ((J + 1) * rows, D_base), dtype)
            args = args.reshape(J + 1, rows, D_base)
            arguments = mean_arguments if next_actions.exact else block_arguments
            arguments(C_lo, maps.bias, maps.W_act, a32[lo:hi], draws32[lo:hi], args)
            np.cos(args, out=args)
            phi_b = (
                phi_out[lo:hi] if phi_out is not None else _buffer(scratch, "phi", (rows, D), dtype)
            )
            difference_features(args, scale, bar_scale, neg_gamma, phi_b, dphi_out[lo:hi])
    extra = np.empty((2, L, NUM_EXTRA), dtype=dtype)  # phi's and bar_phi's last 4 columns
    extra[0, :, :-1] = o_chain[:L, _FLAGS]
    extra[0, :, -1] = np.sum(a**2, axis=-1)
    extra[1, :, :-1] = o_chain[1 : L + 1, _FLAGS]
    extra[1, :, -1] = sq
    if phi_out is not None:
        phi_out[:, D_base:] = extra[0]
    extra[1] *= neg_gamma
    np.add(extra[0], extra[1], out=dphi_out[:, D_base:])


def difference_batch(
    cfg: RunConfig,
    maps: FeatureMaps,
    paths: Paths,
    noise: ChainNoise,
    theta_pi: np.ndarray,
    sigma_mu: np.ndarray,
    workspace: Workspace | None = None,
    rewards: bool = True,
) -> DifferenceBatch:
    """:class:`DifferenceBatch` of rolled-out chains (``paths`` time-major ``[T(+1), B,
    ...]``), with ``cfg.bar_phi``'s estimator and ``cfg.gamma``: the phi, r, rho and
    rho_raw of :func:`tdlens.rollout.td_batch` and ``dphi = phi - gamma bar_phi``, bit for
    bit, chains on ``maps.threads`` threads. With a `workspace` phi and dphi live in its
    buffers :data:`DIFFERENCE_BUFFERS` (valid until their next request).
    ``rewards=False``: r is NaN, not formed (a product over phi, ~1 ms a 4000-sample
    batch at D = 2048): for batches whose b nobody forms (the matrix-free stability
    batches)."""
    T, B = paths.u.shape[:2]
    base = td_batch(cfg, maps, paths, noise, theta_pi, sigma_mu, with_features=False)
    o, a_exec = base.o, np.ascontiguousarray(np.swapaxes(paths.a, 0, 1))
    m_next = np.ascontiguousarray(np.swapaxes(paths.mean_under(theta_pi)[1:], 0, 1))
    nexts = next_actions(cfg, m_next, noise)
    ws = Workspace() if workspace is None else workspace
    phi = ws.array(DIFFERENCE_BUFFERS[0], (B, T, maps.D), maps.dtype)
    dphi = ws.array(DIFFERENCE_BUFFERS[1], (B, T, maps.D), maps.dtype)
    r = np.empty((B, T)) if rewards else np.full((B, T), np.nan)

    def one(b: int) -> None:
        with ws.scratch() as scratch:
            chain_differences(maps, o[b], a_exec[b], nexts[b], cfg.gamma, phi[b], dphi[b], scratch)
        if rewards:
            r[b] = reward(maps, phi[b])

    _run_parallel(one, range(B), maps.threads)
    return DifferenceBatch(phi=phi, dphi=dphi, r=r, rho=base.rho, rho_raw=base.rho_raw)


def trainer_differences(
    cfg: RunConfig,
    maps: FeatureMaps,
    paths: Paths,
    noise: ChainNoise,
    theta_pi: np.ndarray,
    dphi_out: np.ndarray,
    workspace: Workspace,
    phi: np.ndarray | None = None,
) -> None:
    """``dphi_out [B, T, D] = phi - gamma bar_phi`` of the chains of `paths` with
    ``cfg.bar_phi``'s estimator (the trainer's), phi itself not kept: the dphi of
    :func:`difference_batch`, bit for bit, chains on ``maps.threads`` threads. `phi [B,
    T, D]`: the chains' phi when a batch of them already has it (the probes' own, whose
    bar_phi estimator differs; phi does not depend on it): its cosines are not taken
    again (:func:`chain_differences`' ``phi_in``)."""
    o, a_exec = (np.ascontiguousarray(np.swapaxes(x, 0, 1)) for x in (paths.o, paths.a))
    m_next = np.ascontiguousarray(np.swapaxes(paths.mean_under(theta_pi)[1:], 0, 1))
    nexts = next_actions(cfg, m_next, noise)

    def one(b: int) -> None:
        with workspace.scratch() as scratch:
            dphi_b = dphi_out[b]
            phi_b = None if phi is None else phi[b]
            chain_differences(
                maps, o[b], a_exec[b], nexts[b], cfg.gamma, None, dphi_b, scratch, phi_b
            )

    _run_parallel(one, range(dphi_out.shape[0]), maps.threads)
