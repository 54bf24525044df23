"""Fixed point and stability probes over their probe batches (docs/model.md §6.1, §6.2).

The two probes share their most expensive pieces. Their chains (the fixed-point batch and
the k_mc stability batches, the fixed-point batch doubling as stability batch 0 when the
batch sizes agree, see :class:`tdlens.probes.common.RoundPlan`) get their features in
groups, one group alive at a time (``phi, dphi [g, T, D]`` in the workspace, written
straight from the feature blocks, :mod:`tdlens.probes.td_features`): a chain
whose A is formed explicitly alone (``g = 1``; its A, halves, factorisations and
predictions are the round's largest arrays, all released when it is done), the
matrix-free chains ``maps.threads`` at a time. Per chain:

- the fixed-point batch: ``A, b`` and their halves (float64), the spectrum of A with its
  spectral noise, the ridge solve and the half-batch solves (noise floor);
- stability batch 0: the spectrum (shared with the fixed point when it is the same
  batch) and the power iteration on the explicit A;
- stability batches 1..k_mc-1: the power iteration applied matrix-free, the chains of a
  group in parallel threads with single-threaded BLAS each.

Random start vectors come from the probes' auxiliary streams (purpose 0: ARPACK start
vector of the spectrum; purpose 1 + k: power iteration of stability batch k; fixed point
purpose 0: Hutchinson probes), so a round is a pure function of (config, maps, params, n)
and the previous w#.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from tdlens.config import RunConfig, eta_t
from tdlens.features import FeatureMaps, Workspace
from tdlens.learner import Params
from tdlens.probes import counterfactual as cf
from tdlens.probes import expected as ex
from tdlens.probes import fixed_point as fp
from tdlens.probes import spectrum as sp
from tdlens.probes import stability as st
from tdlens.probes import td_features as td
from tdlens.probes.common import (
    ChainSpec,
    RolledChains,
    RoundPlan,
    aux_rng,
    batch_slices,
    plan_chains,
    rho_summary,
    truncate_noise,
    truncate_paths,
)
from tdlens.probes.registry import RoundContext
from tdlens.probes.spectral_ci import spectral_intervals
from tdlens.threads import limit_threads, parallel_map

BOOTSTRAP_PURPOSE = 500_000
"""Auxiliary-stream purpose of the spectral bootstrap (power iterations use 1 + k)."""
A32_BUFFER = "critic.A32"
"""Workspace name of the float32 copy of A (:func:`spectrum_of`)."""
FEATURE_BUFFERS = td.DIFFERENCE_BUFFERS
"""Workspace names of a probe batch's features (:func:`tdlens.probes.td_features.
difference_batch`)."""


@dataclass(frozen=True)
class BatchView:
    """One probe batch flattened to samples: ``phi_t, dphi_t [n, D]`` (views of the
    batch's arrays; ``dphi_t = phi_t - gamma bar_phi_tp1``), ``rho_t, rho_raw_t, r_t [n]``,
    and the samples per cluster (trajectory, or ``horizon``-step block of a continuing
    chain) for intervals and the update noise. ``trainer_delta(w) [n]``: the per-sample
    TD errors at ``w`` with the trainer's bar_phi estimator when the batch's own differs
    (``probes.bar_phi: exact`` under ``bar_phi: mc``, :func:`trainer_td_errors`), None
    when they are ``r_t - dphi_t . w / sqrt(D)``."""

    phi_t: np.ndarray
    dphi_t: np.ndarray
    rho_t: np.ndarray
    rho_raw_t: np.ndarray
    r_t: np.ndarray
    cluster_size: int
    trainer_delta: Callable[[np.ndarray], np.ndarray] | None = None


def batch_view(
    cfg: RunConfig, batch: td.DifferenceBatch, cols: slice, spec: ChainSpec
) -> BatchView:
    """The samples of `spec` (columns `cols` of `batch`), trajectory-major (views)."""
    D = batch.phi.shape[-1]
    n = spec.samples
    if spec.trajectories:
        cluster = spec.T
    else:
        cluster = n // max(2, n // cfg.horizon)
    phi_t = batch.phi[cols].reshape(n, D)
    return BatchView(
        phi_t=phi_t,
        dphi_t=batch.dphi[cols].reshape(n, D),
        rho_t=batch.rho[cols].reshape(n),
        rho_raw_t=batch.rho_raw[cols].reshape(n),
        r_t=batch.r[cols].reshape(n),
        cluster_size=cluster,
    )


def probe_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with the probes' bar_phi estimator (:attr:`tdlens.config.RunConfig.
    probe_bar_phi`) in place of the trainer's: the config the fixed-point and stability
    batches are featurised with. `cfg` itself when the two agree."""
    if cfg.probe_bar_phi == cfg.bar_phi:
        return cfg
    return cfg.model_copy(update={"bar_phi": cfg.probe_bar_phi})


def trainer_td_errors(
    cfg: RunConfig,
    maps: FeatureMaps,
    rolled: RolledChains,
    spec: ChainSpec,
    theta_pi: np.ndarray,
    w: np.ndarray,
    r_t: np.ndarray,
    threads: int | None = None,
    phi_t: np.ndarray | None = None,
) -> np.ndarray:
    """``delta_t [n] = r_t - dphi_t . w / sqrt(D)`` of batch `spec` (trajectory-major, as
    :func:`batch_view`, whose ``r_t [n]`` is given: phi, so r, is the same under either
    bar_phi estimator) with the TRAINER's bar_phi estimator ``cfg.bar_phi``: its K_mc
    draws ``u' = m_pi(s_{t+1}) + sigma_pi z`` from the batch's own ``z_next``, so the
    per-sample updates ``rho_t delta_t phi_t`` carry the Monte Carlo noise the trainer's
    do (docs/model.md §6.1, the update noise). Only dphi is formed
    (:func:`tdlens.probes.td_features.trainer_differences`), `threads` (default
    ``maps.threads``) columns at a time in a private buffer ``[threads, T, D]``; the
    products run one column (``[T, D]``) at a time, so their rounding does not depend on
    the threads. `phi_t [n, D]`: the batch's phi (:func:`batch_view`'s, the same under
    either estimator) when at hand: only the next actions' cosines are then taken (a
    fifth fewer cosines at K_mc = 4, the same delta bit for bit)."""
    group, cols, T = rolled.group(spec), rolled.columns(spec), spec.T
    paths = truncate_paths(group.paths.take(cols), T)
    noise = truncate_noise(group.noise.take(cols), T)
    w_f = (w / math.sqrt(maps.D)).astype(maps.dtype)
    if threads is not None and threads != maps.threads:
        maps = replace(maps, threads=threads)
    workspace, step = Workspace(), max(1, maps.threads)
    dphi = workspace.array("trainer.dphi", (min(step, spec.columns), T, maps.D), maps.dtype)
    delta = np.empty(spec.samples)
    for lo in range(0, spec.columns, step):
        sl = slice(lo, min(lo + step, spec.columns))
        chunk = dphi[: sl.stop - lo]
        paths_sl, noise_sl = paths.take(sl), noise.take(sl)
        phi = None if phi_t is None else phi_t[lo * T : sl.stop * T].reshape(chunk.shape)
        td.trainer_differences(cfg, maps, paths_sl, noise_sl, theta_pi, chunk, workspace, phi)
        for b in range(chunk.shape[0]):
            rows = slice((lo + b) * T, (lo + b + 1) * T)
            delta[rows] = r_t[rows] - (chunk[b] @ w_f)
    return delta


def sampling_columns(spec: ChainSpec) -> dict[str, float]:
    """Which sampling a batch used: sampling_trainer (1 = trainer-style trajectories from
    reset, 0 = one continuing chain) and batch_trajectories (its trajectories, 1 for a
    chain)."""
    return {
        "sampling_trainer": float(spec.trajectories > 0),
        "batch_trajectories": float(spec.columns),
    }


@dataclass
class CriticOutput:
    """Rows, arrays and timings of the two probes, and the new w# (None if not run)."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    w_sharp: np.ndarray | None = None
    w_sharp_split: np.ndarray | None = None
    """``w#_1 - w#_2``, the two half-batch w# apart (``[D]``; next round's
    w_sharp_drift_noise)."""

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


def feature_groups(chains: list[ChainSpec], size: int) -> list[list[ChainSpec]]:
    """Consecutive groups of at most `size` chains that share one length T."""
    groups: list[list[ChainSpec]] = []
    for spec in chains:
        if groups and len(groups[-1]) < size and groups[-1][0].T == spec.T:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def spectrum_of(
    cfg: RunConfig, moments: fp.TDMoments, n: int, workspace: Workspace, threads: int = 1
) -> tuple[sp.Spectrum, np.ndarray]:
    """Eigenvalues of A with the spectral noise of its halves (docs/model.md §6.2), and the float32
    copy of A (a workspace buffer) used for the Krylov and power-iteration products."""
    D = moments.A.shape[0]
    v0 = aux_rng(cfg, "probe_stability", n, 0).standard_normal(D)
    A32 = workspace.array(A32_BUFFER, (D, D), np.dtype(np.float32))
    E32 = None
    if moments.difference is not None:  # td_moments formed A_1 - A_2 there (A32 here)
        E32 = workspace.array(moments.difference, (D, D), np.dtype(np.float32))
    noise = sp.spectral_noise(*moments.A_halves, v0=v0, out=A32, difference=E32)
    np.copyto(A32, moments.A, casting="same_kind")
    return sp.eigenvalues(moments.A, noise, v0, A32=A32, threads=threads), A32


def power_proxy(
    cfg: RunConfig,
    apply,
    n: int,
    k: int,
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    matrix_free: bool = False,
) -> float:
    """stability_proxy of batch k: power iteration on ``J = I - eta A`` (summed as a series
    to PROXY_SERIES_TOL when eta ||A|| is small,
    :func:`tdlens.probes.stability.power_iteration_radius`). `matrix_free` (`apply` is
    :func:`tdlens.probes.stability.apply_A` on this batch): the first product and the norm
    bound come from one pass over the batch (:func:`tdlens.probes.stability.first_product`)."""
    v0 = aux_rng(cfg, "probe_stability", n, 1 + k).standard_normal(phi_t.shape[1])
    iters = cfg.probes.stability.power_iters
    eta = st.expected_step(cfg)
    tol = st.PROXY_SERIES_TOL
    if matrix_free:
        first = partial(st.first_product, phi_t, dphi_t, rho_t)
        return st.power_iteration_radius(apply, eta, v0, iters, tol=tol, first_pass=first)
    bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
    return st.power_iteration_radius(apply, eta, v0, iters, bound, tol=tol)


@dataclass(frozen=True)
class FrozenModes:
    """modes_below_lam: the count of eigenvalues of A with ``|l| < lam`` (``exact``: from a
    dense spectrum, or 0 for the iterate solver), else the Hutchinson estimate on the full
    solve's LU (:func:`tdlens.probes.fixed_point.frozen_modes_soft`)."""

    count: float
    exact: bool


@dataclass(frozen=True)
class FixedPointSolves:
    """The full-batch solve (its w# is the probe's; its LU factor dropped once
    ``modes`` is counted on it) and the two half-batch w# (``halves``, whose difference
    is the noise floor), all with ``lam``; ``beside``: what the full solve's lane
    computed after it (:func:`solve_fixed_point`)."""

    full: fp.FixedPointSolve
    halves: tuple[np.ndarray, np.ndarray]
    lam: float
    modes: FrozenModes
    beside: object = None


@dataclass(frozen=True)
class FixedPointResult:
    """What :func:`fixed_point_probe` hands back: its row (without iter and rho), the new
    w#, its arrays (file name -> arrays of ``expected_dynamics_<n>.npz``) and its
    timings (seconds by key)."""

    row: dict[str, float]
    w_sharp: np.ndarray
    arrays: dict[str, dict[str, np.ndarray]]
    timings: dict[str, float]
    halves: tuple[np.ndarray, np.ndarray]
    beside: dict[str, float] | None = None


def count_frozen_modes(
    cfg: RunConfig, solve: fp.FixedPointSolve, spectrum: sp.Spectrum, lam: float, n: int
) -> FrozenModes:
    """modes_below_lam of the full solve `solve` with ridge `lam` (:class:`FrozenModes`);
    the Hutchinson probes come from the fixed point's auxiliary purpose 0."""
    if cfg.probes.fixed_point.solver == "iterate":
        return FrozenModes(0.0, True)
    if spectrum.dense:
        return FrozenModes(float(np.sum(np.abs(spectrum.eigvals) < lam)), True)
    rng = aux_rng(cfg, "probe_fixed_point", n, 0)
    return FrozenModes(fp.frozen_modes_soft(solve.lu, lam, rng), False)


def solve_fixed_point(
    cfg: RunConfig,
    moments: fp.TDMoments,
    spectrum: sp.Spectrum,
    w: np.ndarray,
    workspace: Workspace,
    threads: int = 1,
    *,
    n: int,
    beside: Callable[[np.ndarray], object] | None = None,
) -> FixedPointSolves:
    """The three solves with ``lam = ridge max|eig(A)|``: the full batch by the config's
    solver, and the two half-batch systems by direct ridge solves also when the solver is
    `iterate`. Every direct solve factors in float32 and refines in float64 to the config's
    tol (falling back to a float64 LU when refinement does not get there): at D = 2048 the
    float32 LU costs half the float64 one and the refined w# agrees with the float64
    solve to ~1e-11 relative at tol 1e-8 (BENCHMARKS.md, "The probe round, issue
    28").

    Two lanes run side by side on `threads` threads (one BLAS thread each, so the same
    bits on one thread or two): the two half-batch solves one after the other, and the
    full batch's solve followed by what needs only its w#: modes_below_lam of round `n`
    on its LU (:func:`count_frozen_modes`; the factor is released then) and
    ``beside(w#)`` (its result in ``FixedPointSolves.beside``), which would otherwise
    run alone after the solves while the other lane did its second LU."""
    conf = cfg.probes.fixed_point
    lam = fp.ridge_lambda(conf.ridge, spectrum.max_abs)
    tol = conf.tol

    def solve_one(k: int) -> fp.FixedPointSolve | np.ndarray:
        """k = 0, 1: half batch k's w# (float32 LU, refined; its factor is released as
        soon as it is solved); 2: the full batch (its factor is kept)."""
        if k < 2:
            A_k, b_k = moments.A_halves[k], moments.b_halves[k]
            name = f"half{k}"
            half = fp.solve_direct(
                A_k, b_k, w, lam, tol, np.float32, workspace, condition=False, name=name
            )
            workspace.release(*fp.lu_buffers(name))
            return half.w_sharp
        if conf.solver == "iterate":
            return fp.solve_iterate(moments.A, moments.b, w, cfg.alpha_w, conf.max_iters, tol)
        return fp.solve_direct(moments.A, moments.b, w, lam, tol, np.float32, workspace)

    def full_lane() -> tuple[fp.FixedPointSolve, FrozenModes, object]:
        solve = solve_one(2)
        modes = count_frozen_modes(cfg, solve, spectrum, lam, n)
        workspace.release(*fp.lu_buffers("solve"))
        solve = replace(solve, lu=None)  # its factor (16 MB at D = 2048) is not read again
        return solve, modes, None if beside is None else beside(solve.w_sharp)

    def halves_lane() -> tuple[np.ndarray, np.ndarray]:
        return solve_one(0), solve_one(1)

    # three independent factorisations, one BLAS thread each side by side, beat three
    # two-threaded ones in a row (a 2048 LU scales poorly from one core to two); the
    # halves one after the other beside the full batch, so that at most two factors are
    # alive (a third half's beside the kept full one: 16 MB more at D = 2048)
    (solve, modes, after), halves = parallel_map(
        lambda lane: lane(), (full_lane, halves_lane), threads
    )
    return FixedPointSolves(full=solve, halves=halves, lam=lam, modes=modes, beside=after)


def measure_fixed_point(
    cfg: RunConfig,
    solves: FixedPointSolves,
    spectrum: sp.Spectrum,
    phi_t: np.ndarray,
    w: np.ndarray,
    w_sharp_prev: np.ndarray | None,
    split_prev: np.ndarray | None = None,
) -> dict[str, float]:
    """The fixed_point_probe columns of `solves` on the batch ``phi_t [n, D]`` (without
    iter, rho and the expected dynamics): gaps, noise floors (``||w#_1 - w#_2||`` and its
    value-space twin), the drift's own noise from the previous round's ``w#_1 - w#_2``
    `split_prev` (:func:`tdlens.probes.fixed_point.drift_noise`), and the modes below lam
    (``solves.modes``, :func:`count_frozen_modes`)."""
    conf = cfg.probes.fixed_point
    solve, halves = solves.full, solves.halves
    row = fp.fixed_point_row(
        solve,
        w,
        w_sharp_prev,
        fp.value_gap(phi_t, w, solve.w_sharp),
        float(np.linalg.norm(halves[0] - halves[1])),
        conf.ridge if conf.solver == "direct" else 0.0,
        solves.modes.count,
        solves.modes.exact,
        conf.batch_size,
        conf.tol,
    )
    row["eig_max_abs"] = spectrum.max_abs
    row["value_noise_floor"] = fp.value_gap(phi_t, halves[0], halves[1])
    row["w_sharp_drift_noise"] = fp.drift_noise(halves[0] - halves[1], split_prev)
    return row


@dataclass(frozen=True)
class PredictionInputs:
    """What the expected dynamics start from: ``e_0 = w - w# [D]``, the update-noise factor
    ``U [D, C]`` at w# and the two half batches (each with its own w#) that debias the
    mean path (:mod:`tdlens.probes.expected`)."""

    e0: np.ndarray
    U: np.ndarray
    halves: tuple[ex.HalfBatch, ex.HalfBatch]


def noise_factor(view: BatchView, w_sharp: np.ndarray) -> np.ndarray:
    """The update-noise factor ``U [D, C]`` of this probe's batch at `w_sharp`
    (:func:`tdlens.probes.expected.update_noise_factor`, with the trainer's TD errors
    when the batch's bar_phi estimator is not the trainer's)."""
    delta = None if view.trainer_delta is None else view.trainer_delta(w_sharp)
    return ex.update_noise_factor(
        view.phi_t, view.dphi_t, view.rho_t, view.r_t, w_sharp, view.cluster_size, delta
    )


def prediction_inputs(
    moments: fp.TDMoments,
    solves: FixedPointSolves,
    view: BatchView,
    w: np.ndarray,
    U: np.ndarray | None = None,
) -> PredictionInputs:
    """:class:`PredictionInputs` of this probe's batch and solves (`U`: the batch's
    :func:`noise_factor` at the full w#, computed when None)."""
    phi_t, w_sharp = view.phi_t, solves.full.w_sharp
    if U is None:
        U = noise_factor(view, w_sharp)
    halves = tuple(
        ex.HalfBatch(A_k, w - w_k, phi_t[rows])
        for A_k, w_k, rows in zip(
            moments.A_halves,
            solves.halves,
            (slice(0, moments.n // 2), slice(moments.n // 2, None)),
            strict=True,
        )
    )
    return PredictionInputs(e0=w - w_sharp, U=U, halves=halves)


def predict_dynamics(
    cfg: RunConfig,
    moments: fp.TDMoments,
    inputs: PredictionInputs,
    phi_t: np.ndarray,
    est: float,
    threads: int = 1,
) -> ex.Prediction:
    """The expected dynamics over ``outer_iters`` iterations of the constant step from this
    probe (:func:`tdlens.probes.expected.predict`) on the batch ``phi_t [n, D]``, debiased
    with the two half batches, with the w# estimation error `est`."""
    return ex.predict(
        moments.A,
        inputs.e0,
        inputs.U,
        phi_t,
        st.expected_step(cfg),
        cfg.trajectories,
        cfg.outer_iters,
        est,
        inputs.halves,
        threads,
    )


def pack_prediction(pred: ex.Prediction, n: int, outer_iters: int) -> dict[str, np.ndarray]:
    """``expected_dynamics_<n>.npz``: the band for the iterations the run has left
    (``iters`` n..outer_iters-1)."""
    left = outer_iters - n
    return {
        "iters": n + np.arange(left),
        "value_gap_pred": pred.mid[:left],
        "value_gap_noise": pred.noise[:left],
        "value_gap_lo": pred.lo[:left],
        "value_gap_hi": pred.hi[:left],
        "value_gap_est": np.array([pred.est]),
    }


def fixed_point_probe(
    cfg: RunConfig,
    moments: fp.TDMoments,
    spectrum: sp.Spectrum,
    view: BatchView,
    w: np.ndarray,
    w_sharp_prev: np.ndarray | None,
    n: int,
    workspace: Workspace,
    threads: int = 1,
    split_prev: np.ndarray | None = None,
    beside: Callable[[], dict[str, float]] | None = None,
) -> FixedPointResult:
    """The fixed-point probe of one round (docs/model.md §6.1): :func:`solve_fixed_point`
    (whose full-solve lane also forms U, :func:`noise_factor`, and runs `beside`, the
    stability probe's spectral intervals when this batch is stability batch 0: its
    result in ``FixedPointResult.beside``),
    :func:`measure_fixed_point`, :func:`prediction_inputs` and :func:`predict_dynamics`
    (value_gap_floor and effective_timescale; the band follows a non-constant alpha_w
    schedule) and :func:`pack_prediction`; at the run's first round (no previous w#) also
    ``counterfactuals_<n>.npz``: the final value_gap under each intervention and the
    advice grid (:mod:`tdlens.probes.counterfactual`). The config's tol is the one used
    and the one the row reports. `split_prev`: the previous round's ``w#_1 - w#_2``
    (w_sharp_drift_noise); the result hands back this round's."""
    start = time.perf_counter()

    def after_full(w_sharp: np.ndarray) -> tuple[np.ndarray, dict[str, float] | None]:
        return noise_factor(view, w_sharp), None if beside is None else beside()

    solves = solve_fixed_point(
        cfg, moments, spectrum, w, workspace, threads, n=n, beside=after_full
    )
    U, beside_out = solves.beside
    row = measure_fixed_point(cfg, solves, spectrum, view.phi_t, w, w_sharp_prev, split_prev)
    timings = {"fixed_point.solve": time.perf_counter() - start}
    start = time.perf_counter()
    inputs = prediction_inputs(moments, solves, view, w, U)
    w_sharp, halves = solves.full.w_sharp, solves.halves
    est = row["value_noise_floor"] / 2.0
    pred = predict_dynamics(cfg, moments, inputs, view.phi_t, est, threads)
    row["value_gap_floor"] = pred.floor
    row["effective_timescale"] = pred.effective_timescale
    schedule = cfg.schedules.alpha_w
    if not schedule.is_constant:
        # the band follows the schedule over the iterations left: the step of iteration
        # n + 1 + j takes j to j + 1; the two columns above stay those of the constant
        # base step (docs/metrics.md)
        t = n + 1 + np.arange(cfg.outer_iters - n - 1)
        etas = eta_t(schedule, st.expected_step(cfg), t)
        pred = ex.predict_scheduled(
            moments.A,
            inputs.e0,
            inputs.U,
            view.phi_t,
            etas,
            cfg.trajectories,
            est,
            inputs.halves,
            threads,
        )
    arrays = {f"expected_dynamics_{n:04d}.npz": pack_prediction(pred, n, cfg.outer_iters)}
    if w_sharp_prev is None:  # the run's first round: ~15 predictions, once (cf module)
        ing = cf.Ingredients(
            moments.A, inputs.e0, inputs.U, view.phi_t, pred.est, inputs.halves, threads
        )
        cfs = cf.counterfactuals(ing, cfg, n, sp.critical_step(spectrum.eigvals), base=pred)
        arrays[f"{cf.PREFIX}_{n:04d}.npz"] = cf.to_arrays(cfs)
    timings["fixed_point.prediction"] = time.perf_counter() - start
    return FixedPointResult(row, w_sharp, arrays, timings, halves, beside_out)


def critic_probes(
    cfg: RunConfig,
    maps: FeatureMaps,
    rolled: RolledChains,
    plan: RoundPlan,
    params: Params,
    n: int,
    w_sharp_prev: np.ndarray | None,
    workspace: Workspace,
    split_prev: np.ndarray | None = None,
) -> CriticOutput:
    """Run the enabled fixed-point and stability probes of one round (module docstring);
    `split_prev`: the previous round's ``w#_1 - w#_2`` (w_sharp_drift_noise)."""
    out = CriticOutput()
    chains = list(dict.fromkeys(c for c in (plan.fixed, *plan.stability) if c is not None))
    parts = _StabilityParts()
    probe_cfg = probe_config(cfg)
    # an explicit chain's features are alone in their group: its A, factorisations and
    # predictions are the round's largest arrays, and another chain's features beside
    # them would only wait (the matrix-free chains run `threads` at a time after it)
    explicit_chains = [[c] for c in chains if _explicit(c, plan)]
    free_chains = [c for c in chains if not _explicit(c, plan)]
    free_groups = feature_groups(free_chains, max(1, maps.threads))
    if len(free_groups) > 1 and len(free_groups[-1]) < len(free_groups[0]):
        # a short last group goes first: its features take the explicit chain's buffers
        # (same shape) instead of being allocated afresh after the full groups'
        free_groups.insert(0, free_groups.pop())
    for group in explicit_chains + free_groups:
        start = time.perf_counter()
        rewards = any(_explicit(spec, plan) for spec in group)  # only an explicit b reads r
        batch = rolled.difference_batch(probe_cfg, maps, group, params.theta_pi, workspace, rewards)
        share = (time.perf_counter() - start) / len(group)
        views = [
            batch_view(cfg, batch, cols, spec)
            for cols, spec in zip(batch_slices(group), group, strict=True)
        ]
        if probe_cfg is not cfg and plan.fixed in group:
            # the update noise U is the trainer's: its TD errors with the trainer's bar_phi,
            # on one thread in the full solve's lane beside the half-batch solves
            j = group.index(plan.fixed)
            trainer = partial(
                trainer_td_errors,
                cfg,
                maps,
                rolled,
                plan.fixed,
                params.theta_pi,
                r_t=views[j].r_t,
                threads=1,
                phi_t=views[j].phi_t,
            )
            views[j] = replace(views[j], trainer_delta=trainer)
        explicit = [j for j, spec in enumerate(group) if _explicit(spec, plan)]
        for j in explicit:
            name = "fixed_point" if group[j] == plan.fixed else "stability"
            out.add_time(f"{name}.features", share)
            _explicit_chain(
                out,
                cfg,
                views[j],
                group[j],
                plan,
                params,
                n,
                w_sharp_prev,
                workspace,
                parts,
                share,
                maps.threads,
                split_prev,
            )
        free = [j for j in range(len(group)) if j not in explicit]
        if free:
            start = time.perf_counter()
            _matrix_free_chains(
                cfg,
                [views[j] for j in free],
                [plan.stability.index(group[j]) for j in free],
                n,
                parts,
                maps.threads,
            )
            elapsed = time.perf_counter() - start
            out.add_time("stability.features", share * len(free))
            out.add_time("stability.power", elapsed)
            out.add_time("stability", elapsed + share * len(free))
        del batch, views  # the next group's features replace these (not beside them)
    workspace.release(*FEATURE_BUFFERS)  # the later probes draw their own
    if plan.stability:
        start = time.perf_counter()
        out.rows["stability_probe"] = stability_row(cfg, parts.proxies, parts.spectrum, parts.rho)
        out.rows["stability_probe"].update(parts.intervals)
        out.rows["stability_probe"].update(sampling_columns(plan.stability[0]))
        out.arrays[f"stability_eigs_{n:04d}.npy"] = parts.spectrum.eigvals
        out.add_time("stability", time.perf_counter() - start)
    return out


@dataclass
class _StabilityParts:
    """What the stability row collects across chains: proxies and rho by batch index k."""

    proxies: dict[int, float] = field(default_factory=dict)
    rho: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    spectrum: sp.Spectrum | None = None
    intervals: dict[str, float] = field(default_factory=dict)


def _explicit(spec: ChainSpec, plan: RoundPlan) -> bool:
    """Chains whose A is formed explicitly: the fixed-point batch and stability batch 0."""
    return spec == plan.fixed or (bool(plan.stability) and spec == plan.stability[0])


def _explicit_chain(
    out: CriticOutput,
    cfg: RunConfig,
    view: BatchView,
    spec: ChainSpec,
    plan: RoundPlan,
    params: Params,
    n: int,
    w_sharp_prev: np.ndarray | None,
    workspace: Workspace,
    parts: _StabilityParts,
    share: float,
    threads: int,
    split_prev: np.ndarray | None = None,
) -> None:
    """Moments, spectrum, fixed point (when it is the fixed-point batch) and the power
    iteration and spectral intervals on the explicit A (when it is stability batch 0) of
    one batch. When it is both, the intervals run in the full solve's lane of
    :func:`solve_fixed_point`, beside the second half-batch solve."""
    start = time.perf_counter()
    name = "fixed_point" if spec == plan.fixed else "stability"
    phi_t, dphi_t, rho_t = view.phi_t, view.dphi_t, view.rho_t
    # the halves' difference (spectral_noise's) in the moments' last pass, into the
    # buffer that then takes the float32 A
    moments = fp.td_moments(
        phi_t, dphi_t, rho_t, view.r_t, workspace=workspace, difference=A32_BUFFER, threads=threads
    )
    out.add_time(f"{name}.moments", time.perf_counter() - start)
    t_spec = time.perf_counter()
    spectrum, A32 = spectrum_of(cfg, moments, n, workspace, threads)
    out.add_time(f"{name}.spectrum", time.perf_counter() - t_spec)
    power_time = 0.0
    intervals = None
    if plan.stability and spec == plan.stability[0]:
        t_power = time.perf_counter()
        parts.spectrum = spectrum
        parts.proxies[0] = power_proxy(cfg, st.dense_apply(A32), n, 0, phi_t, dphi_t, rho_t)
        parts.rho[0] = (rho_t.copy(), view.rho_raw_t.copy())
        rng = aux_rng(cfg, "probe_stability", n, BOOTSTRAP_PURPOSE)
        eta = st.expected_step(cfg)
        intervals = partial(
            spectral_intervals, spectrum, phi_t, dphi_t, rho_t, view.cluster_size, eta, rng
        )
        if spec != plan.fixed:
            parts.intervals = intervals()
        power_time = time.perf_counter() - t_power
        out.add_time("stability.power", power_time)
        out.add_time("stability", power_time)
    # the float32 A (for the power iteration, done) goes before the solves, which hold
    # two LU factors beside A and its halves: 16 MB off the round's peak
    workspace.release(A32_BUFFER)
    del A32
    if spec == plan.fixed:
        result = fixed_point_probe(
            cfg,
            moments,
            spectrum,
            view,
            params.w,
            w_sharp_prev,
            n,
            workspace,
            threads,
            split_prev,
            intervals,
        )
        if intervals is not None:
            parts.intervals = result.beside
        out.w_sharp, row = result.w_sharp, result.row
        out.w_sharp_split = result.halves[0] - result.halves[1]
        out.arrays.update(result.arrays)
        for key, seconds in result.timings.items():
            out.add_time(key, seconds)
        row.update(rho_summary(rho_t, view.rho_raw_t, cfg.effective_rho_clip))
        row.update(sampling_columns(spec))
        out.rows["fixed_point_probe"] = row
    # A and its halves go too: beside the matrix-free chains' features and the training
    # iteration's they made the run's peak (96 MB at D = 2048); mapped afresh next round,
    # their first touch costs ~10 ms a round (BENCHMARKS.md, "Issue 28, session 9")
    workspace.release(*fp.MOMENT_BUFFERS)
    out.add_time(name, time.perf_counter() - start + share - power_time)


def _matrix_free_chains(
    cfg: RunConfig,
    views: list[BatchView],
    ks: list[int],
    n: int,
    parts: _StabilityParts,
    threads: int,
) -> None:
    """Power iterations of stability batches ``ks`` (their batch views), one chain
    per thread with single-threaded BLAS: two independent memory-bound matvec streams are
    as fast as one two-threaded stream on an idle machine and do not collapse, as
    two-threaded BLAS does, when another process holds a core."""

    def one(i: int) -> None:
        view, k = views[i], ks[i]
        phi_t, dphi_t, rho_t = view.phi_t, view.dphi_t, view.rho_t
        apply = partial(st.apply_A, phi_t, dphi_t, rho_t)
        parts.proxies[k] = power_proxy(cfg, apply, n, k, phi_t, dphi_t, rho_t, matrix_free=True)
        parts.rho[k] = (rho_t.copy(), view.rho_raw_t.copy())

    with limit_threads(1, "blas"):
        if threads <= 1 or len(views) <= 1:
            for i in range(len(views)):
                one(i)
        else:
            with ThreadPoolExecutor(max_workers=min(threads, len(views))) as pool:
                list(pool.map(one, range(len(views))))


def stability_row(
    cfg: RunConfig,
    proxies: dict[int, float],
    spectrum: sp.Spectrum,
    stab_rho: dict[int, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """stability_probe columns (docs/model.md §6.2, without iter): proxies, spectrum, rho of all
    k_mc batches pooled."""
    eta = st.expected_step(cfg)
    row = st.proxy_row([proxies[k] for k in sorted(proxies)], cfg)
    row.update(sp.spectrum_row(spectrum, eta))
    row["critical_alpha_w"] = st.critical_alpha_w(row["critical_step"], cfg)
    rho = np.concatenate([stab_rho[k][0] for k in sorted(stab_rho)])
    rho_raw = np.concatenate([stab_rho[k][1] for k in sorted(stab_rho)])
    row.update(rho_summary(rho, rho_raw, cfg.effective_rho_clip))
    return row


def run_round(ctx: RoundContext) -> None:
    """The fixed-point and stability probes of one round (the registry ``run`` of both:
    the manager calls it once). Keeps the new w# in ``ctx.state["w_sharp_prev"]`` and its
    two half-batch w# apart, ``w#_1 - w#_2``, in ``ctx.state["w_sharp_split_prev"]``
    (``[D]``, for w_sharp_drift_noise; checkpointed with the rest of the probe state)."""
    plan = plan_chains(ctx.cfg)
    if plan.fixed is None and not plan.stability:
        return
    critic = critic_probes(
        ctx.cfg,
        ctx.maps,
        ctx.rolled,
        plan,
        ctx.params,
        ctx.n,
        ctx.state.get("w_sharp_prev"),
        ctx.workspace,
        ctx.state.get("w_sharp_split_prev"),
    )
    ctx.out.rows.update(critic.rows)
    ctx.out.arrays.update(critic.arrays)
    ctx.out.timings.update(critic.timings)
    if critic.w_sharp is not None:
        ctx.state["w_sharp_prev"] = critic.w_sharp.copy()
    if critic.w_sharp_split is not None:
        ctx.state["w_sharp_split_prev"] = critic.w_sharp_split
