"""Is the expected critic update contracting? (SPEC 6.2)

In expectation over a probe batch the trainer's critic step is
``w <- w + eta (b - A w)`` with ``eta = alpha_w s M``: ``s`` the step scale
(``1/(B T)`` or ``1/(sqrt(B) T)``) and ``M = B T`` the number of terms ``rho delta phi``
the trainer sums (its gradient is ``M (b - A w)`` on its own batch). The Jacobian is
``J = I - eta A``.

stability_proxy (the seed's number) = spectral radius of J by power iteration, per batch
``k`` of k_mc: ``v <- J v / ||J v||`` for power_iters steps from a random unit vector,
estimate ``||J v||`` at the last step. ``A v`` is applied matrix-free,
``A v = Phi^T (rho * (Psi v)) / (n sqrt(D))`` with ``Phi, Psi = Phi - gamma BarPhi [n, D]``.
Because ``eta |l| ~ 1e-4`` at the seed settings this is ~1 whatever A is; the spectrum
of A (:mod:`tdlens.probes.spectrum`) says more: critical step and timescales.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tdlens.config import RunConfig


def trainer_terms(cfg: RunConfig) -> int:
    """M = B T, the number of terms the trainer sums into one critic step (SPEC 4)."""
    return cfg.trajectories * cfg.horizon


def probe_step_scale(cfg: RunConfig) -> float:
    """stability_probe_step_scale = ``alpha_w s``; must equal cfg.train_step_scale."""
    return cfg.alpha_w * cfg.step_scale


def expected_step(cfg: RunConfig) -> float:
    """``eta = alpha_w s M``: the step of the expected update ``w += eta (b - A w)``."""
    return probe_step_scale(cfg) * trainer_terms(cfg)


def apply_A(phi_t: np.ndarray, psi_t: np.ndarray, rho_t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``A v = Phi^T (rho * (Psi v)) / (n sqrt(D))`` for ``phi_t, psi_t [n, D]``, ``v [D]``.

    Two passes over the batch in the features dtype; the result is float64.
    """
    n, D = phi_t.shape
    y = psi_t @ v.astype(psi_t.dtype)
    y *= rho_t.astype(y.dtype)
    return (phi_t.T @ y).astype(np.float64) / (n * math.sqrt(D))


def dense_apply(A32: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> A v`` with a float32 copy ``A32 [D, D]`` of the explicit A (16 MB at D = 2048,
    cache-resident; its rounding, ~1e-7 |A v|, is far below what ``||J v||`` resolves)."""
    return lambda v: (A32 @ v.astype(np.float32)).astype(np.float64)


def power_iteration_radius(
    apply: Callable[[np.ndarray], np.ndarray], eta: float, v0: np.ndarray, iters: int
) -> float:
    """Spectral radius estimate of ``J = I - eta A``: ``||J v||`` after `iters` steps of
    ``v <- J v / ||J v||`` from ``v0 / ||v0||`` (vector arithmetic in float64)."""
    v = v0 / np.linalg.norm(v0)
    estimate = math.nan
    for _ in range(iters):
        u = v - eta * apply(v)
        estimate = float(np.linalg.norm(u))
        if not np.isfinite(estimate) or estimate == 0.0:
            break
        v = u / estimate
    return estimate


def proxy_row(proxies: list[float], cfg: RunConfig) -> dict[str, float]:
    """stability_proxy (= mean over the k_mc batches), _mean, _std and the step scales."""
    values = np.asarray(proxies, dtype=np.float64)
    return {
        "stability_proxy": float(values.mean()),
        "stability_proxy_mean": float(values.mean()),
        "stability_proxy_std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "eta": expected_step(cfg),
        "stability_probe_step_scale": probe_step_scale(cfg),
        "trainer_terms": float(trainer_terms(cfg)),
        "batch_size": float(cfg.probes.stability.batch_size),
        "k_mc": float(cfg.probes.stability.k_mc),
        "power_iters": float(cfg.probes.stability.power_iters),
    }


def critical_alpha_w(critical_step: float, cfg: RunConfig) -> float:
    """The alpha_w whose eta equals critical_step: ``critical_step / (s M)``."""
    return critical_step / (cfg.step_scale * trainer_terms(cfg))
