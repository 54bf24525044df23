"""TD-error correlation kernel of the iteration (docs/model.md §6.4).

``delta [B, T]`` are the iteration's TD errors; the cache is
``Delta = delta[:cache_batch_size, :max_horizon]`` of shape ``[B_c, T_c]`` and

    Q_hat(t, t') = (1/B_c) sum_b Delta[b, t] Delta[b, t']        [T_c, T_c]
    C(tau)       = mean_t Q_hat(t, t + tau)                       [T_c]
    td_loss_from_Q = mean over finite diagonal entries of Q_hat(t, t)

with the same convention as td_loss = mean delta^2 (no 1/2). td_loss_from_Q differs
from the iteration's td_loss only by subsampling (the cache holds B_c of B trajectories);
td_loss_cache = mean delta^2 over exactly the cached entries must equal it to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdlens.probes.registry import RoundContext
from tdlens.rundir.read import GRAM_FACTOR


@dataclass(frozen=True)
class QKernel:
    """``Q_hat [T_c, T_c]`` and its lag profile ``C [T_c]`` of a ``[B_c, T_c]`` cache."""

    Q_hat: np.ndarray
    lag: np.ndarray
    cache: np.ndarray


def td_cache(delta: np.ndarray, cache_batch_size: int, max_horizon: int) -> np.ndarray:
    """``Delta = delta[:cache_batch_size, :max_horizon]`` as float64 ``[B_c, T_c]``."""
    return np.asarray(delta[:cache_batch_size, :max_horizon], dtype=np.float64)


def q_kernel(delta_cache: np.ndarray) -> QKernel:
    """``Q_hat = Delta^T Delta / B_c`` and ``C(tau) = mean_t Q_hat(t, t + tau)``."""
    B_c, T_c = delta_cache.shape
    Q_hat = delta_cache.T @ delta_cache / B_c
    lag = np.array([np.mean(np.diagonal(Q_hat, offset=tau)) for tau in range(T_c)])
    return QKernel(Q_hat=Q_hat, lag=lag, cache=delta_cache)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else (0.0 if a == b else float("inf"))


def q_kernel_row(kernel: QKernel, td_loss: float) -> dict[str, float]:
    """The q_kernel_probe columns (without iter)."""
    diag = np.diagonal(kernel.Q_hat)
    valid = np.isfinite(diag)
    from_Q = float(np.mean(diag[valid])) if valid.any() else float("nan")
    cache_loss = float(np.mean(kernel.cache**2))
    return {
        "td_loss": float(td_loss),
        "td_loss_from_Q": from_Q,
        "td_loss_from_Q_abs_diff": abs(from_Q - td_loss),
        "td_loss_from_Q_rel_diff": _rel(from_Q, td_loss),
        "td_loss_cache": cache_loss,
        "td_loss_from_Q_cache_rel_diff": _rel(from_Q, cache_loss),
        "cache_batch_size": float(kernel.cache.shape[0]),
        "cache_horizon": float(kernel.cache.shape[1]),
        "cache_valid_t": float(np.sum(valid)),
    }


def run_round(ctx: RoundContext) -> None:
    """The q_kernel probe of one round (registry ``run``): the kernel of the iteration's
    own TD errors ``delta``, its row, and the kernel (``q_kernel_<iter>.npz``: the cache
    ``Delta`` whose Gram matrix is ``Q_hat``, 25x smaller; ``load_array`` gives ``Q_hat``)
    and lag arrays."""
    conf = ctx.cfg.probes.q_kernel
    kernel = q_kernel(td_cache(ctx.delta, conf.cache_batch_size, conf.max_horizon))
    ctx.out.rows["q_kernel_probe"] = q_kernel_row(kernel, ctx.td_loss)
    # Q_hat = Delta^T Delta / B_c is saved by its factor, the cache (read back as Q_hat)
    ctx.out.arrays[f"q_kernel_{ctx.n:04d}.npz"] = {GRAM_FACTOR: kernel.cache}
    ctx.out.arrays[f"q_kernel_lag_{ctx.n:04d}.npy"] = kernel.lag
