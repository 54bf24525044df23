"""One outer iteration of the unfixed off-policy actor-critic (docs/model.md §4 and §5).

Given frozen ``theta_mu, theta_pi [N, 2]`` and ``w [D]``:
1. roll out B fresh chains of T steps under mu (chain b of iteration n uses stream
   ``rollout/n/b``);
2. ``delta_t = r_t + gamma Q_w(bar_phi_{t+1}) - Q_w(phi_t)``, ``Q_w(x) = w . x / sqrt(D)``;
3. ``G_w = sum rho_t delta_t phi_t``, ``G_theta = sum rho_t delta_t g_t`` over all B T steps,
   ``g_t = psi_t (u_t - m_pi(s_t))^T / (sigma_pi^2 sqrt(N))``;
4. ``w += alpha_w_n s G_w``, ``theta_pi += alpha_pi_n s G_theta`` (the steps of the
   config's schedules at iteration n, :func:`tdlens.config.eta_t`; alpha_w, alpha_pi under
   the constant default),
   ``theta_mu = (1 - beta) theta_mu + beta theta_pi`` (new theta_pi), both thetas projected
   on the ball of radius theta_radius; ``s = 1/(B T)`` or ``1/(sqrt(B) T)``.
No file I/O, no printing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tdlens.config import RunConfig, SchedulesConfig
from tdlens.features import FeatureMaps, Workspace
from tdlens.rollout import ChainNoise, TDBatch, draw_noise, roll_out, td_batch
from tdlens.seeding import stream
from tdlens.threads import limit_threads, parallel_map

METRIC_COLUMNS: tuple[str, ...] = (
    "iter",
    "td_loss",
    "critic_teacher_error",
    "tracking_gap",
    "w_norm",
    "mean_rho",
    "mean_rho2",
    "min_rho",
    "max_rho",
    "p95_rho",
    "p99_rho",
    "p95_rho2",
    "p99_rho2",
    "max_rho2",
    "delta_mean",
    "delta_std",
    "delta_p95",
    "delta_p99",
    "delta_max",
    "clip_fraction",
    "clip_excess_mean",
    "clip_excess_p95",
    "clip_excess_max",
    "delta_theta_pi_norm",
    "delta_w_norm",
    "alpha_w_t",
    "alpha_pi_t",
    "iter_time_s",
)
"""The per-iteration columns of learning_curves.csv that the learner produces (docs/model.md §5)."""


@dataclass(frozen=True)
class Params:
    """The learned parameters: ``theta_mu, theta_pi [N, 2]``, ``w [D]`` (float64)."""

    theta_mu: np.ndarray
    theta_pi: np.ndarray
    w: np.ndarray

    def is_finite(self) -> bool:
        return bool(
            np.all(np.isfinite(self.w))
            and np.all(np.isfinite(self.theta_pi))
            and np.all(np.isfinite(self.theta_mu))
        )


def project(theta: np.ndarray, radius: float) -> np.ndarray:
    """Project onto the L2 (Frobenius) ball of `radius`; identity when radius <= 0."""
    if radius <= 0:
        return theta
    norm = float(np.sqrt(np.sum(theta**2)))
    return theta * (radius / norm) if norm > radius else theta


def init_params(cfg: RunConfig, maps: FeatureMaps) -> Params:
    """``theta_pi ~ N(0, theta_init_scale^2)``, ``theta_mu = theta_pi + N(0, offset^2)``
    (an exact copy when the offset scale is 0), ``w ~ N(0, w_init_scale^2)``.

    Each draw has its own stream, so no initial value depends on another's scale.
    """
    shape = (maps.N, 2)
    theta_pi = stream(cfg.seed, "init_theta_pi").normal(0.0, 1.0, shape) * cfg.theta_init_scale
    offset = stream(cfg.seed, "init_theta_mu_offset").normal(0.0, 1.0, shape)
    theta_mu = theta_pi.copy()
    if cfg.theta_mu_offset_scale > 0:
        theta_mu = theta_mu + cfg.theta_mu_offset_scale * offset
    w = stream(cfg.seed, "init_w").normal(0.0, 1.0, maps.D) * cfg.w_init_scale
    return Params(
        theta_mu=project(theta_mu, cfg.theta_radius),
        theta_pi=project(theta_pi, cfg.theta_radius),
        w=w,
    )


def collect(
    cfg: RunConfig,
    maps: FeatureMaps,
    theta_mu: np.ndarray,
    theta_pi: np.ndarray,
    rngs: list[np.random.Generator],
    T: int,
    workspace: Workspace | None = None,
    w: np.ndarray | None = None,
    keep_bar_phi: bool = True,
) -> TDBatch:
    """Roll out ``len(rngs)`` chains of T steps under mu and build their TD batch (with
    the critic values of ``w`` when given, and without bar_phi unless `keep_bar_phi`,
    :func:`tdlens.rollout.td_batch`)."""
    noise = draw_noise(rngs, T, cfg)
    return collect_noise(cfg, maps, theta_mu, theta_pi, noise, workspace, w, keep_bar_phi)


def collect_noise(
    cfg: RunConfig,
    maps: FeatureMaps,
    theta_mu: np.ndarray,
    theta_pi: np.ndarray,
    noise: ChainNoise,
    workspace: Workspace | None = None,
    w: np.ndarray | None = None,
    keep_bar_phi: bool = True,
) -> TDBatch:
    """:func:`collect` of chains whose noise is drawn already (``noise``, B chains)."""
    sigma_mu = np.full(noise.z_act.shape[1], cfg.sigma_mu)
    paths = roll_out(cfg, maps, theta_mu, sigma_mu, noise)
    return td_batch(
        cfg,
        maps,
        paths,
        noise,
        theta_pi,
        sigma_mu,
        workspace=workspace,
        w=w,
        keep_bar_phi=keep_bar_phi,
    )


NOISE_AHEAD = "rollout_noise"
"""The :class:`Workspace` slot of the next iteration's noise (:func:`outer_iteration`)."""


def iteration_noise(cfg: RunConfig, n: int) -> ChainNoise:
    """The noise of outer iteration n's B chains, chain b from stream ``rollout/n/b``
    (:func:`tdlens.rollout.draw_noise`; it depends on nothing the iteration learns)."""
    rngs = [stream(cfg.seed, "rollout", n, b) for b in range(cfg.trajectories)]
    return draw_noise(rngs, cfg.horizon, cfg)


def _noise_key(cfg: RunConfig, n: int) -> tuple:
    """What iteration n's noise depends on (:func:`iteration_noise`, ``draw_noise``)."""
    return (cfg.seed, n, cfg.trajectories, cfg.horizon, cfg.K_mc, cfg.env.num_goblets)


def critic_values(batch: TDBatch, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Q_w(phi_t), Q_w(bar_phi_{t+1}))`` as ``[B, T]`` float64, ``Q_w(x) = w.x/sqrt(D)``."""
    D = w.shape[0]
    w_f = (w / math.sqrt(D)).astype(batch.phi.dtype)
    q_t = (batch.phi @ w_f).astype(np.float64)
    q_tp1 = (batch.bar_phi @ w_f).astype(np.float64)
    return q_t, q_tp1


def td_errors(batch: TDBatch, w: np.ndarray, gamma: float) -> np.ndarray:
    """``delta [B, T] = r + gamma Q_w(bar_phi_{t+1}) - Q_w(phi_t)`` (float64)."""
    q_t, q_tp1 = critic_values(batch, w)
    return batch.r + gamma * q_tp1 - q_t


@dataclass(frozen=True)
class IterationResult:
    """New parameters, the docs/model.md §5 metrics of the iteration, and its TD errors."""

    params: Params
    metrics: dict[str, float]
    delta: np.ndarray  # [B, T] TD errors (the q_kernel probe's cache)
    batch: TDBatch
    q_t: np.ndarray  # [B, T] Q_w(phi_t) with the critic before the update
    q_tp1: np.ndarray  # [B, T] Q_w(bar_phi_{t+1})


def critic_gradient(batch: TDBatch, rd: np.ndarray) -> np.ndarray:
    """``G_w [D] = sum_t rd_t phi_t`` over the batch's B T steps, ``rd = rho delta [B, T]``
    (one product in the features dtype, summed in float64 afterwards: see :func:`gradients`)."""
    phi_t = batch.phi
    D = phi_t.shape[-1]
    return (rd.reshape(-1).astype(phi_t.dtype) @ phi_t.reshape(-1, D)).astype(np.float64)


def actor_gradient(batch: TDBatch, rd: np.ndarray, sigma_pi: float) -> np.ndarray:
    """``G_theta [N, 2] = sum_t rd_t g_t``, ``g_t = psi_t (u_t - m_pi(s_t))^T / (sigma_pi^2
    sqrt(N))``, ``rd = rho delta [B, T]``, summed over (t, b) in time-major order."""
    N = batch.psi.shape[-1]
    # batch.psi is usually a [B, T, N] view of the rollout's [T + 1, B, N] array, whose
    # first T rows reshape without a copy
    weighted = np.swapaxes(rd[..., None] * (batch.u - batch.m_pi), 0, 1).reshape(-1, 2)
    psi_t = np.swapaxes(batch.psi, 0, 1).reshape(-1, N).astype(np.float64)
    # psi_t^T weighted as (weighted^T psi_t)^T: each entry the same sum in the same
    # order with one BLAS thread (tests/test_learner.py checks the bits), and
    # OpenBLAS's SkylakeX DGEMM takes this orientation twice as fast (0.8 against 1.55
    # ms at the seed settings; Haswell and Prescott kernels: 1.2 against 1.1)
    G_theta = np.ascontiguousarray((weighted.T @ psi_t).T)
    return G_theta / (sigma_pi**2 * math.sqrt(N))


def gradients(
    batch: TDBatch, delta_t: np.ndarray, sigma_pi: float, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``G_w [D] = sum_t rho_t delta_t phi_t`` and ``G_theta [N, 2] = sum_t rho_t delta_t g_t``
    with ``g_t = psi_t (u_t - m_pi(s_t))^T / (sigma_pi^2 sqrt(N))`` (docs/model.md §4,
    step 3; :func:`critic_gradient`, :func:`actor_gradient`); ``psi_t`` is the actor
    features of s_t (in the probes, ``dphi_t = phi_t - gamma bar_phi_tp1``). With
    ``threads >= 2`` the two sums run side by side, one BLAS thread each (the same calls,
    so the same bits); with one, one after the other on one BLAS thread (a threaded
    OpenBLAS product may split a sum and round it otherwise)."""
    rd = batch.rho * delta_t
    G_w, G_theta = parallel_map(
        lambda part: part(),
        [lambda: critic_gradient(batch, rd), lambda: actor_gradient(batch, rd, sigma_pi)],
        threads,
    )
    return G_w, G_theta


def update(
    cfg: RunConfig, params: Params, G_w: np.ndarray, G_theta: np.ndarray, n: int = 0
) -> Params:
    """Apply docs/model.md §4 step 4 at outer iteration n: ``w += alpha_w_n s G_w``, ``theta_pi +=
    alpha_pi_n s G_theta`` (``cfg.step_sizes(n)``), mu tracking, projection."""
    s = cfg.step_scale
    alpha_w_n, alpha_pi_n = cfg.step_sizes(n)
    w = params.w + alpha_w_n * s * G_w
    theta_pi = params.theta_pi + alpha_pi_n * s * G_theta
    theta_mu = (1.0 - cfg.beta) * params.theta_mu + cfg.beta * theta_pi
    return Params(
        theta_mu=project(theta_mu, cfg.theta_radius),
        theta_pi=project(theta_pi, cfg.theta_radius),
        w=w,
    )


def outer_iteration(
    cfg: RunConfig,
    maps: FeatureMaps,
    params: Params,
    n: int,
    workspace: Workspace | None = None,
    keep_bar_phi: bool = True,
) -> IterationResult:
    """Run outer iteration `n` (0-based) from `params`; see the module docstring.

    With a `workspace`, the returned batch's feature arrays are reused by the next call,
    and on two threads or more it keeps the noise of iteration n + 1 (drawn beside this
    iteration's gradients; :func:`iteration_noise` depends on no parameter), which the
    call for n + 1 takes instead of drawing it: the same draws, ~1.3 ms off its serial
    start at the seed settings.
    With ``keep_bar_phi=False`` the returned batch has no bar_phi (``[B, T, 0]``; each
    chain's is used for ``Q_w(bar_phi_tp1)`` as it is made and dropped): the same
    numbers, ``B T D`` fewer bytes written and resident, for callers that read no
    bar_phi.
    """
    start = time.perf_counter()
    ahead = workspace is not None and maps.threads > 1 and n + 1 < cfg.outer_iters
    noise = None if workspace is None else workspace.take_ahead(NOISE_AHEAD, _noise_key(cfg, n))
    with limit_threads(1, "blas"):
        if noise is None:
            noise = iteration_noise(cfg, n)
        batch = collect_noise(
            cfg, maps, params.theta_mu, params.theta_pi, noise, workspace, params.w, keep_bar_phi
        )
    r_t = batch.r
    # q_t = Q_w(phi_t), q_tp1 = Q_w(bar_phi_tp1): bar_phi under pi, never the sampled a'
    # (critic_values(batch, params.w), taken chain by chain as the features were made)
    q_t, q_tp1 = batch.q_t, batch.q_tp1
    delta_t = r_t + cfg.gamma * q_tp1 - q_t
    rd = batch.rho * delta_t
    # the gradients' two products, the batch's metrics and (with a workspace) the next
    # iteration's noise are independent: side by side on two threads, each the call it is
    # on one (so the same bits), the serial stretch of an iteration shortened by ~2 ms
    jobs = [
        lambda: critic_gradient(batch, rd),
        lambda: actor_gradient(batch, rd, cfg.sigma_pi),
        lambda: batch_metrics(cfg, batch, delta_t),
    ]
    if ahead:
        jobs.append(lambda: iteration_noise(cfg, n + 1))
    G_w, G_theta, metrics, *next_noise = parallel_map(lambda job: job(), jobs, maps.threads)
    if next_noise:
        workspace.keep_ahead(NOISE_AHEAD, _noise_key(cfg, n + 1), next_noise[0])
    # n only when a schedule reads it: the constant update keeps its four-argument call
    scheduled = cfg.schedules != SchedulesConfig()
    new = update(cfg, params, G_w, G_theta, n) if scheduled else update(cfg, params, G_w, G_theta)
    metrics.update(parameter_metrics(maps, params, new))
    metrics["iter"] = n
    metrics["alpha_w_t"], metrics["alpha_pi_t"] = cfg.step_sizes(n)
    metrics["iter_time_s"] = time.perf_counter() - start
    return IterationResult(new, metrics, delta_t, batch, q_t, q_tp1)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q))


def _p95_p99(x: np.ndarray) -> tuple[float, float]:
    """``(_pct(x, 95), _pct(x, 99))`` from one partition of x (the same numbers: NumPy
    interpolates each q alike whether asked one at a time or together)."""
    p95, p99 = np.percentile(x, (95, 99))
    return float(p95), float(p99)


def iteration_metrics(
    cfg: RunConfig,
    maps: FeatureMaps,
    old: Params,
    new: Params,
    batch: TDBatch,
    delta: np.ndarray,
) -> dict[str, float]:
    """docs/model.md §5 columns. Parameter metrics are of the parameters after the update; batch
    metrics of the rollout that produced it; rho of the ratio the update used."""
    return {**batch_metrics(cfg, batch, delta), **parameter_metrics(maps, old, new)}


def parameter_metrics(maps: FeatureMaps, old: Params, new: Params) -> dict[str, float]:
    """The docs/model.md §5 columns of the parameters: after the update (`new`) and its
    step from `old`."""
    D, N = maps.D, maps.N
    return {
        "critic_teacher_error": float(np.sum((new.w - maps.w_R) ** 2) / D),
        "tracking_gap": float(np.sum((new.theta_pi - new.theta_mu) ** 2) / N),
        "w_norm": float(np.linalg.norm(new.w)),
        "delta_theta_pi_norm": float(np.linalg.norm(new.theta_pi - old.theta_pi)),
        "delta_w_norm": float(np.linalg.norm(new.w - old.w)),
    }


def batch_metrics(cfg: RunConfig, batch: TDBatch, delta: np.ndarray) -> dict[str, float]:
    """The docs/model.md §5 columns of the batch: its TD errors ``delta [B, T]``, the ratio
    rho the update used and the executed actions' clipping."""
    rho = batch.rho.reshape(-1)
    rho2 = rho**2
    abs_delta = np.abs(delta).reshape(-1)
    a = batch.a_unclipped.reshape(-1, 2)
    excess = np.sqrt(np.sum((a - np.clip(a, -cfg.env.v_max, cfg.env.v_max)) ** 2, axis=1))
    (p95_rho, p99_rho), (p95_rho2, p99_rho2) = _p95_p99(rho), _p95_p99(rho2)
    delta_p95, delta_p99 = _p95_p99(abs_delta)
    return {
        "td_loss": float(np.mean(delta**2)),
        "mean_rho": float(rho.mean()),
        "mean_rho2": float(rho2.mean()),
        "min_rho": float(rho.min()),
        "max_rho": float(rho.max()),
        "p95_rho": p95_rho,
        "p99_rho": p99_rho,
        "p95_rho2": p95_rho2,
        "p99_rho2": p99_rho2,
        "max_rho2": float(rho2.max()),
        "delta_mean": float(delta.mean()),
        "delta_std": float(delta.std()),
        "delta_p95": delta_p95,
        "delta_p99": delta_p99,
        "delta_max": float(abs_delta.max()),
        "clip_fraction": float(np.mean(excess > 0)),
        "clip_excess_mean": float(excess.mean()),
        "clip_excess_p95": _pct(excess, 95),
        "clip_excess_max": float(excess.max()),
    }
