"""Expected critic dynamics over the rest of the run, with the minibatch noise (docs/model.md §6.1,
docs/model.md §10 theory overlay).

The trainer's critic step is ``w_{k+1} = w_k + eta g(w_k)``, ``g(w) = mean_M g_i(w)`` over
its M = B T samples, ``g_i(w) = rho_i (r_i - dphi_i . w / sqrt(D)) phi_i = b_i - A_i w``
(:mod:`tdlens.probes.fixed_point`). With ``e = w - w#`` and ``A w# = b``:

    e_{k+1} = J e_k + eta xi_k,     J = I - eta A,     xi_k = g(w_k) - (b - A w_k)

so ``E e_j = J^j e_0`` (the mean path) and, with xi of covariance ``S / B`` (S the
covariance of one trajectory's mean update ``gbar_c = (1/T) sum_t g_t(w#)``, the B
trajectories independent), the accumulated noise has covariance
``Sigma_j = (eta^2 / B) sum_{i<j} J^i S J^iT``. In value space (``Q = w . phi / sqrt(D)``,
RMS over the probe batch) that is

    gap_mid_j   = RMS_i phi_i . J^j e_0 / sqrt(D)
    gap_noise_j = sqrt(eta^2 / B sum_{i<j} ||Phi_s J^i U||_F^2 / (n_s D))

with ``U [D, C] = (gbar_c - mean_c gbar_c) / sqrt(C - 1)`` over the C trajectories (or
``horizon``-step blocks of a continuing chain) of the probe batch (``S ~ U U^T``; its
``[D, D]`` QR factor when C > D, :func:`update_noise_factor`) and
``Phi_s`` the batch rows at a stride of ``n // NOISE_ROWS`` of the batch. The measured value_gap at
iteration ``n + j`` is ``|Phi (J^j e_0 + eps) / sqrt(D)|`` with ``|eps|`` of RMS size
``s_j = sqrt(gap_noise_j^2 + est^2)``, ``est`` the w# estimation error of a probe
(value_noise_floor / 2: the half-batch solutions differ by twice a full batch's error).
So (triangle inequality, ``|eps|`` between s/2 and 2 s) the predicted band is

    lo_j = max(gap_mid_j - 2 s_j, s_j / 2 - gap_mid_j, 0),   hi_j = gap_mid_j + 2 s_j.

value_gap_floor = gap_noise over ``outer_iters`` iterations (the floor the training noise
holds value_gap at once the modes that move within a run have relaxed) when that noise
settles, and inf when it grows (:attr:`Prediction.floor`): the variance a kick adds
``i`` steps after it was injected is ``(eta^2 / B) ||Phi_s J^i U||_F^2 / (n_s D)``, which
falls with i when every mode it loads has ``|1 - eta l| < 1`` (the sum converges: a floor)
and grows like ``|1 - eta l|^(2 i)`` when one has ``|1 - eta l| > 1`` (eta beyond the
probe's own critical step, or an eigenvalue with Re l < 0): then ``Sigma_j`` has no limit
and gap_noise over the run is the size of a divergence, not a floor. The floor is inf
when the first kick's contribution grows by more than ``FLOOR_GROWTH`` over the run
(docs/model.md §6.1); and
effective_timescale = the iterations in which gap_mid falls by e, ``j_e / ln(gap_mid_0 /
gap_mid_{j_e})`` with ``j_e`` the first such j or the horizon when it never does (the
initial error projected on every mode, not the fastest mode's ``1/(eta max Re l)``).

``J^j X`` for all j comes from the binomial series ``sum_m C(j, m) (-eta A)^m X`` when
``kappa = steps eta ||A||_F < 1/2`` (:mod:`tdlens.probes.binomial`)
and otherwise from the step-by-step loop (:class:`Series`); a batch's rows read the
series term by term, M products instead of one per step. The series stops where its
neglected tail is below what the readout's dtype resolves (:func:`read_tol`: float32
features read a tail of ``2^-36 ||X||`` as rounding noise), so float32 features take 3-4
products with A at the seed settings instead of 6. The mean path is debiased for
the sampling noise of A by a Richardson extrapolation over the two half batches
(:func:`debiased_path`).

Under a step-size schedule (docs/model.md §4) the steps differ per iteration, ``J_i = I -
eta_i A``, and :func:`predict_scheduled` propagates with their ordered product ``Phi(j, i)
= J_{j-1} ... J_i``: ``mid_j`` from ``Phi(j, 0) e_0`` and ``gap_noise_j^2 = (1 / B)
sum_{i<j} eta_i^2 ||Phi_s Phi(j, i + 1) U||_F^2 / (n_s D)``. The series terms are those of
the constant step ``eta = max eta_i`` with elementary symmetric polynomials of ``eta_i /
eta`` as coefficients; past kappa = 1/2 the mean path steps explicitly and the noise
follows its covariance ``Sigma_{j+1} = J_j Sigma_j J_j^T + eta_j^2 / B U U^T`` (or, while
``steps C < 4 D``, its factor ``L_{j+1} = [J_j L_j, eta_j U]``, the cheaper of the two).
The constant path above is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from tdlens.probes.binomial import KAPPA_MAX, SERIES_TOL, binomial_terms
from tdlens.threads import limit_threads, parallel_map

NOISE_ROWS = 256
FLOOR_GROWTH = math.e
"""value_gap_floor is inf when one noise kick's RMS contribution grows by more than this
factor over the run (:attr:`Prediction.floor`): one e-fold, ``|1 - eta l|^steps > e``. A
mode whose growth stays below it within the run (``|1 - eta l| = 1 + eps``, ``eps steps <
1``: a near-zero eigenvalue of a sampled A) accumulates noise like a random walk, as a
mode that has not relaxed does, and the sum over the run stays the floor."""
READ_TOL = {np.dtype(np.float32): 2.0**-36}
"""The tail of a series read out in a dtype that the readout cannot resolve, relative to
``||X||`` (:func:`read_tol`). A float32 readout rounds X itself by ~2^-24 per component,
which moves ``row . x`` by ~``2^-24 ||row|| ||X|| / sqrt(D)`` (>= 2^-30.5 of ``||row||
||X||`` for D <= 8192): a neglected tail of at most ``2^-36 ||X||`` is 45 times smaller.
float64 keeps SERIES_TOL (2^-60)."""


def read_tol(dtype: np.dtype) -> float:
    """The tail, relative to ``||X||``, that a series read out through rows of `dtype` may
    neglect: READ_TOL's entry, SERIES_TOL for float64 and every other dtype."""
    return READ_TOL.get(np.dtype(dtype), SERIES_TOL)


def update_noise_factor(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    r_t: np.ndarray,
    w_sharp: np.ndarray,
    cluster_size: int,
    delta_t: np.ndarray | None = None,
) -> np.ndarray:
    """``U [D, min(C, D)]`` with ``U U^T`` the sample covariance of the per-cluster mean
    updates ``gbar_c`` at ``w#`` (module docstring); ``phi_t, dphi_t [n, D]``.

    The per-sample updates are ``g_t = rho_t delta_t phi_t`` with ``delta_t = r_t - dphi_t
    . w# / sqrt(D)``, or the given ``delta_t [n]``: the trainer's TD errors at w# when the
    batch's dphi_t used another bar_phi estimator than the trainer (the closed form
    instead of the trainer's Monte Carlo draws, whose noise is part of the trainer's
    update noise; :func:`tdlens.probes.critic.trainer_td_errors`).

    With more clusters than features (C > D) the centred ``G^T [D, C]`` is replaced by
    ``R^T [D, D]`` from its QR decomposition ``G = Q R`` (``G^T G = R^T R``): the same
    covariance, and every ``||rows J^j U||_F`` the prediction reads is unchanged
    (``Q`` has orthonormal columns), but the series carry D + 1 columns instead of C + 1."""
    n, D = phi_t.shape
    C = n // cluster_size
    rows = C * cluster_size
    if delta_t is None:
        delta = r_t[:rows] - (dphi_t[:rows] @ (w_sharp / math.sqrt(D)).astype(dphi_t.dtype))
    else:
        delta = np.asarray(delta_t, dtype=np.float64)[:rows]
    weights = (rho_t[:rows] * delta).reshape(C, cluster_size) / cluster_size
    phi_c = phi_t[:rows].reshape(C, cluster_size, D)
    gbar = np.einsum("ct,ctd->cd", weights.astype(phi_t.dtype), phi_c).astype(np.float64)
    centred = (gbar - gbar.mean(axis=0)) / math.sqrt(max(C - 1, 1))
    if C > D:
        return np.linalg.qr(centred, mode="r").T
    return centred.T


@dataclass(frozen=True)
class Series:
    """``J^j X`` for j = 0..steps as ``sum_m coefs[j, m] terms[m]`` (``coefs [steps + 1,
    M]``, ``terms [M, D, k]``): the binomial series, or the explicit path with
    ``coefs = I``. Reading the path out through a batch's rows costs M products instead of
    ``steps + 1`` (:meth:`read`)."""

    coefs: np.ndarray
    terms: np.ndarray
    explicit: bool = False
    """``coefs`` is the identity: ``terms`` is the path itself (the step-by-step loop)."""

    def dense(self) -> np.ndarray:
        """``[steps + 1, D, k]``: the path itself."""
        M, D, k = self.terms.shape
        # one product [steps + 1, M] x [M, D k] instead of M passes over the output
        return (self.coefs @ self.terms.reshape(M, -1)).reshape(-1, D, k)

    def read(self, rows: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        """``[n, steps + 1, k']``: ``rows @ J^j X[:, cols]`` for ``rows [n, D]`` (features
        dtype), from the terms' readouts ``rows @ terms[m]`` (:func:`readout`) combined
        in float64. With kappa < 1/2 the terms' magnitudes sum to at most ``e^kappa
        |X|`` and ``|J^j X| >= (2 - e^kappa) |X|``, so the float32 rounding of the
        readout stays within a few eps of the path's own."""
        terms = self.terms[:, :, cols]
        M, D, k = terms.shape
        flat = readout(rows, terms.transpose(1, 0, 2).reshape(D, M * k))
        if self.explicit and np.isfinite(flat).all():
            # the identity's sum over m is the term itself, bit for bit (a non-finite
            # term would spread NaN through 0 * inf: left to the einsum), without its
            # n (steps + 1)^2 products
            return flat.reshape(-1, M, k)
        return np.einsum("jm,nmk->njk", self.coefs, flat.reshape(-1, M, k))


def series(
    A: np.ndarray,
    X: np.ndarray,
    eta: float,
    steps: int,
    tol: float = SERIES_TOL,
    float32_products: bool = False,
) -> Series:
    """:class:`Series` of ``J^j X``, j = 0..steps, ``J = I - eta A``, ``X [D, k]``.

    With ``kappa = steps eta ||A||_F < 1/2``: ``J^j X = sum_m C(j, m) q_m``, ``q_m =
    (-eta A)^m X`` (:func:`tdlens.probes.binomial.binomial_terms`, tail below ``tol
    ||X||``; :func:`read_tol` of the rows that read it). Otherwise the step-by-step loop.
    `float32_products` (a series read out through float32 rows): the terms' products ``A
    q_m`` run on a float32 copy of A (float32 in, float64 out; the loop keeps A). Their
    rounding, ~2^-24 of ``|A| |q_m|`` per product, enters ``J^j X`` through the terms m >= 1,
    whose magnitudes sum to at most ``(e^kappa - 1) |X| < 0.65 |X|``: at most the float32
    readout's own rounding of X (:func:`read_tol`), at half the product's cost (a 2048 x
    2048 by 21-column product: 3.8 CPU-ms against 8.5, one thread).
    """
    D, k = X.shape
    kappa = steps * eta * float(np.linalg.norm(A))
    if not kappa < KAPPA_MAX:
        out = np.empty((steps + 1, D, k))
        out[0] = X
        for j in range(steps):
            out[j + 1] = out[j] - eta * (A @ out[j])
        return Series(coefs=np.eye(steps + 1), terms=out, explicit=True)
    j = np.arange(steps + 1, dtype=np.float64)
    coef = np.ones(steps + 1)  # C(j, 0)
    # binomial_terms neglects a tail below SERIES_TOL scale
    scale = max(float(np.linalg.norm(X)), np.finfo(float).tiny) * (tol / SERIES_TOL)
    A32 = A.astype(np.float32) if float32_products else None

    def step(q: np.ndarray, _: float) -> np.ndarray:
        product = A @ q if A32 is None else (A32 @ q.astype(np.float32)).astype(np.float64)
        return -eta * product

    terms = binomial_terms(step, X.astype(np.float64), steps, kappa, scale)
    coefs = [coef]
    for m in range(1, len(terms)):
        coef = coef * np.maximum(j - (m - 1), 0.0) / m  # C(j, m)
        coefs.append(coef)
    return Series(coefs=np.stack(coefs, axis=1), terms=np.stack(terms))


def propagate(A: np.ndarray, X: np.ndarray, eta: float, steps: int) -> np.ndarray:
    """``[steps + 1, D, k]``: ``J^j X`` for j = 0..steps, ``J = I - eta A``, ``X [D, k]``
    (:func:`series`)."""
    return series(A, X, eta, steps).dense()


@dataclass(frozen=True)
class HalfBatch:
    """One half of the probe batch: its ``A [D, D]``, ``e0 = w - w#_h [D]`` with its own
    ridge solution, and its rows ``phi_t [n/2, D]``."""

    A: np.ndarray
    e0: np.ndarray
    phi_t: np.ndarray


@dataclass(frozen=True)
class Prediction:
    """Predicted value_gap from one probe, j = 0..steps iterations ahead (module docstring)."""

    mid: np.ndarray  # [steps + 1]
    noise: np.ndarray  # [steps + 1]
    est: float

    @property
    def spread(self) -> np.ndarray:
        """``s_j = sqrt(noise_j^2 + est^2)``."""
        return np.sqrt(self.noise**2 + self.est**2)

    @property
    def lo(self) -> np.ndarray:
        s = self.spread
        return np.maximum.reduce([self.mid - 2.0 * s, s / 2.0 - self.mid, np.zeros_like(s)])

    @property
    def hi(self) -> np.ndarray:
        return self.mid + 2.0 * self.spread

    @property
    def floor(self) -> float:
        """value_gap_floor: ``noise[-1]`` when the noise settles, inf when it grows
        (module docstring). The variance a kick adds ``i`` steps after its injection is
        ``d_i = noise_{i+1}^2 - noise_i^2 = (eta^2 / B) ||Phi_s J^i U||_F^2 / (n_s D)``;
        with ``d_last > FLOOR_GROWTH^2 d_0`` a kick grows more than FLOOR_GROWTH-fold over
        the run (a mode with ``|1 - eta l|^steps > FLOOR_GROWTH`` that the noise loads),
        ``Sigma_j`` has no limit and there is no floor. A non-finite ``noise[-1]``
        (overflow) is inf too; no noise (``d_0 = 0``) is a floor of 0."""
        noise = self.noise
        end = float(noise[-1]) if noise.size else 0.0
        if not math.isfinite(end):
            return math.inf
        if noise.size < 3:
            return end
        first = float(noise[1]) ** 2
        last = end**2 - float(noise[-2]) ** 2
        return math.inf if first > 0 and last > FLOOR_GROWTH**2 * first else end

    @property
    def effective_timescale(self) -> float:
        """Iterations in which mid falls by e (module docstring); inf if it never falls."""
        mid = self.mid
        if mid.size < 2 or not mid[0] > 0:
            return math.inf
        below = np.flatnonzero(mid <= mid[0] / math.e)
        j = int(below[0]) if below.size else mid.size - 1
        ratio = mid[0] / mid[j] if mid[j] > 0 else math.inf
        return j / math.log(ratio) if ratio > 1.0 else math.inf


def readout(rows: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``rows @ X`` (float64 out) in the features dtype, each column of ``X [D, k]`` scaled
    to a maximum of 1 first so a diverging path never overflows float32."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scale = np.max(np.abs(X), axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        out = (rows @ (X / scale).astype(rows.dtype)).astype(np.float64)
        return out * scale


def mean_path(path_series: Series, phi_t: np.ndarray) -> np.ndarray:
    """``mid_j = sqrt(mean_t (phi_t . J^j e_0)^2 / D)`` for j = 0..steps (float64), ``e_0``
    the first column of the series' X, ``phi_t [n, D]``."""
    path = path_series.read(phi_t, slice(0, 1))[:, :, 0]
    return np.sqrt(np.mean(path**2, axis=0) / phi_t.shape[1])


def debiased_path(mid: np.ndarray, mid_halves: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Richardson extrapolation of the decay ``ln(mid_j / mid_0)`` to an infinite batch.

    w#, A and the readout all come from one batch, and the decay of the path propagated
    with them is biased by O(1/n) (too fast: at regime_plateau's settings its rate falls
    from 6.3e-3 over 6.0e-3 to 5.6e-3 per iteration for 20, 40 and 160 trajectories while
    training decays at 5.4e-3). Each half batch, with its own w#, A and rows
    (``mid_halves``), carries twice that bias, so
    ``ln(mid_j / mid_0) <- 2 ln(mid_j / mid_0) - mean_h ln(mid_h,j / mid_h,0)``, anchored
    at ``mid_0`` (the measured value_gap). mid itself where a half path is not positive
    and finite."""
    if mid_halves is None:
        return mid
    m1, m2 = mid_halves
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = mid * (mid / mid[0]) / np.sqrt((m1 / m1[0]) * (m2 / m2[0]))
    ok = np.isfinite(out) & (m1 > 0) & (m2 > 0)
    return np.where(ok, out, mid)


def predict(
    A: np.ndarray,
    e0: np.ndarray,
    U: np.ndarray,
    phi_t: np.ndarray,
    eta: float,
    trajectories: int,
    steps: int,
    est: float,
    halves: tuple[HalfBatch, HalfBatch] | None = None,
    threads: int = 1,
) -> Prediction:
    """The :class:`Prediction` from ``e_0 = w - w# [D]``, noise factor ``U [D, C]`` and the
    probe batch ``phi_t [n, D]`` over `steps` iterations of the trainer's step eta with B =
    `trajectories` trajectories per iteration. With the two `halves` the mean path is
    debiased (:func:`debiased_path`). The three series (the batch's, the halves') are
    independent and run side by side on `threads` threads; each stops at the tail its
    readout resolves (:func:`read_tol` of phi_t's dtype); with float32 rows the batch's
    series (21 columns at the seed settings) takes its products in float32
    (:func:`series`' `float32_products`), the halves' (one column each, memory-bound
    matrix-vector products that a float32 copy would not repay) in float64. Each series'
    readouts (its mean path; the batch's also the noise rows'), a few columns each, run
    in its own job right after it, on one BLAS thread: a second one only spins (predict's
    CPU 90 -> 65 ms at the seed settings, its wall time no longer), and beside the other
    jobs they no longer run alone after the three series (the same numbers)."""
    n, D = phi_t.shape
    C = U.shape[1]
    X0 = np.concatenate([e0[:, None], U], axis=1)
    float32 = phi_t.dtype == np.float32
    tol = read_tol(phi_t.dtype)
    rows = phi_t[:: max(1, n // NOISE_ROWS)]

    def path_job() -> tuple[np.ndarray, np.ndarray | None]:
        """The batch's mean path and, with noise columns, ``per_step [steps + 1]``: the
        mean over the noise rows and columns of ``(rows J^j U)^2 / D``."""
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: set in the job
            path_series = series(A, X0, eta, steps, tol, float32)
            mid = mean_path(path_series, phi_t)
            if C == 0:
                return mid, None
            sq = path_series.read(rows, slice(1, None)) ** 2  # [rows, steps + 1, C]
            return mid, sq.sum(axis=(0, 2)) / (rows.shape[0] * D)

    def half_job(h: HalfBatch) -> np.ndarray:
        """Half batch `h`'s mean path (its own A, e0 and rows)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return mean_path(series(h.A, h.e0[:, None], eta, steps, tol, False), h.phi_t)

    jobs = [path_job, *(partial(half_job, h) for h in halves or ())]
    with np.errstate(over="ignore", invalid="ignore"), limit_threads(1, "blas"):
        (mid, per_step), *half_paths = parallel_map(lambda job: job(), jobs, threads)
        mid = debiased_path(mid, tuple(half_paths) if halves is not None else None)
        if per_step is None:
            return Prediction(mid=mid, noise=np.zeros_like(mid), est=est)
        var = eta**2 / trajectories * np.concatenate([[0.0], np.cumsum(per_step[:-1])])
    return Prediction(mid=mid, noise=np.sqrt(var), est=est)


# ------------------------------------------------------------------ time-varying steps
#
# Under a step-size schedule the propagator from j to j' is the ordered product
# ``Phi(j', j) = J_{j'-1} ... J_j`` with ``J_i = I - eta_i A``; the constant path above is
# its special case ``J^(j' - j)``, kept as it is, bit for bit.


def _elementary(f: np.ndarray, M: int) -> np.ndarray:
    """``[len(f) + 1, M]``: row j holds the elementary symmetric polynomials ``e_m(f_0, ...,
    f_{j-1})``, m = 0..M-1 (``e_0 = 1``), from ``e_m <- e_m + f_j e_{m-1}``."""
    out = np.zeros((f.size + 1, M))
    out[0, 0] = 1.0
    for j, fj in enumerate(f):
        out[j + 1] = out[j]
        out[j + 1, 1:] += fj * out[j, :-1]
    return out


def scheduled_series(
    A: np.ndarray, X: np.ndarray, etas: np.ndarray, tol: float = SERIES_TOL
) -> Series:
    """:class:`Series` of ``Phi(j, 0) X = J_{j-1} ... J_0 X``, j = 0..len(etas), ``J_i = I
    - etas[i] A``, ``X [D, k]``.

    Since the J_i commute, ``Phi(j, 0) = sum_m e_m(f_0..f_{j-1}) (-eta A)^m`` with ``eta =
    max etas`` and ``f = etas / eta`` in [0, 1]: the terms of :func:`series` at step eta,
    with ``e_m <= C(j, m)`` as coefficients, so the same tail bound (``tol ||X||``)
    truncates them when ``kappa = steps eta ||A||_F < 1/2``. Otherwise the step-by-step
    loop.
    """
    steps = etas.size
    eta = float(np.max(etas)) if steps else 0.0
    if eta <= 0.0:
        return Series(coefs=np.ones((steps + 1, 1)), terms=X.astype(np.float64)[None])
    if _binomial(A, eta, steps):
        terms = series(A, X, eta, steps, tol).terms
        return Series(coefs=_elementary(etas / eta, terms.shape[0]), terms=terms)
    out = np.empty((steps + 1, *X.shape))
    out[0] = X
    for j in range(steps):
        out[j + 1] = out[j] - etas[j] * (A @ out[j])
    return Series(coefs=np.eye(steps + 1), terms=out, explicit=True)


def _binomial(A: np.ndarray, eta: float, steps: int) -> bool:
    """Does :func:`series` take the binomial series (``kappa = steps eta ||A||_F < 1/2``)?"""
    return steps * eta * float(np.linalg.norm(A)) < 0.5


def scheduled_noise(
    A: np.ndarray, U: np.ndarray, rows: np.ndarray, etas: np.ndarray, trajectories: int
) -> np.ndarray:
    """``[steps + 1]``: ``gap_noise_j^2 = (1 / B) sum_{i<j} eta_i^2 ||rows Phi(j, i + 1)
    U||_F^2 / (n_s D)``, the noise injected by step i carried through the later steps.

    With the series terms ``q_m = (-eta A)^m U`` (``kappa < 1/2``): ``||rows Phi U||_F^2 =
    c^T K c``, ``K[m, m'] = <rows q_m, rows q_m'>_F`` and ``c = e(f_{i+1}..f_{j-1})``,
    every (i, j) pair read from one readout. Otherwise the covariance itself, ``Sigma_{j+1}
    = J_j Sigma_j J_j^T + eta_j^2 / B U U^T``, ``[D, D]`` (two D^3 products per step), or
    while ``steps C < 4 D`` its factor (:func:`_noise_factored`, ``D^2 j C`` per step).
    """
    steps = etas.size
    n_s, D = rows.shape
    var = np.zeros(steps + 1)
    eta = float(np.max(etas)) if steps else 0.0
    if eta <= 0.0 or U.shape[1] == 0:
        return var
    if _binomial(A, eta, steps):
        noise_series = series(A, U, eta, steps, read_tol(rows.dtype))
        f = etas / eta
        M, _, k = noise_series.terms.shape
        flat = readout(rows, noise_series.terms.transpose(1, 0, 2).reshape(D, M * k)).reshape(
            n_s, M, k
        )
        K = np.einsum("nmk,npk->mp", flat, flat) / (n_s * D)
        E = np.zeros((steps, M))
        for j in range(steps):
            E[:j, 1:] += f[j] * E[:j, :-1].copy()
            E[j, 0] = 1.0
            c = E[: j + 1]
            var[j + 1] = np.sum(etas[: j + 1] ** 2 * np.einsum("im,mp,ip->i", c, K, c))
        return var / trajectories
    C = U.shape[1]
    if steps * C < 4 * D:  # the factor's columns stay few: cheaper than D^3 per step
        return _noise_factored(A, U, rows, etas) / trajectories
    sigma = np.zeros((D, D))
    noise = U @ U.T / trajectories
    for j in range(steps):
        half = sigma - etas[j] * (A @ sigma)
        sigma = half - etas[j] * (half @ A.T) + etas[j] ** 2 * noise
        var[j + 1] = float(np.sum(readout(rows, sigma) * rows)) / (n_s * D)
    return var


def _noise_factored(A: np.ndarray, U: np.ndarray, rows: np.ndarray, etas: np.ndarray) -> np.ndarray:
    """``B gap_noise_j^2`` from the factor ``L_{j+1} = [J_j L_j, eta_j U]`` (``Sigma_j = L_j
    L_j^T / B``): ``||rows L_j||_F^2 / (n_s D)``; ``D j C`` per step instead of ``D^3``."""
    n_s, D = rows.shape
    C = U.shape[1]
    L = np.zeros((D, etas.size * C))
    var = np.zeros(etas.size + 1)
    for j, eta_j in enumerate(etas):
        k = j * C
        L[:, :k] -= eta_j * (A @ L[:, :k])
        L[:, k : k + C] = eta_j * U
        var[j + 1] = float(np.sum(readout(rows, L[:, : k + C]) ** 2)) / (n_s * D)
    return var


def predict_scheduled(
    A: np.ndarray,
    e0: np.ndarray,
    U: np.ndarray,
    phi_t: np.ndarray,
    etas: np.ndarray,
    trajectories: int,
    est: float,
    halves: tuple[HalfBatch, HalfBatch] | None = None,
    threads: int = 1,
) -> Prediction:
    """:func:`predict` under a step-size schedule: ``etas [steps]`` the expected steps of
    the iterations after the probe (``etas[j]`` takes prediction j to j + 1). The mean
    path is ``Phi(j, 0) e_0`` (:func:`scheduled_series`, debiased as in :func:`predict`),
    the noise :func:`scheduled_noise` on the same strided rows."""
    n = phi_t.shape[0]
    etas = np.asarray(etas, dtype=np.float64)
    jobs = [(A, e0[:, None]), *((h.A, h.e0[:, None]) for h in halves or ())]
    tol = read_tol(phi_t.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        path_series, *half_series = parallel_map(
            lambda job: scheduled_series(*job, etas, tol), jobs, threads
        )
        half_paths = None
        if halves is not None:
            half_paths = tuple(
                mean_path(s, h.phi_t) for s, h in zip(half_series, halves, strict=True)
            )
        mid = debiased_path(mean_path(path_series, phi_t), half_paths)
        rows = phi_t[:: max(1, n // NOISE_ROWS)]
        var = scheduled_noise(A, U, rows, etas, trajectories)
    return Prediction(mid=mid, noise=np.sqrt(np.maximum(var, 0.0)), est=est)


# ------------------------------------------------------------------ many steps at once
#
# The counterfactuals (:mod:`tdlens.probes.counterfactual`) need :func:`predict` at ~15
# steps eta on the same probe. Two identities make them cost little more than one:
# - series regime (``kappa(eta) < 1/2``): ``(-eta A)^m X = (eta / eta_0)^m (-eta_0 A)^m
#   X``, so the terms and their readouts ``rows @ q_m`` at the largest such step eta_0
#   serve every smaller one, only the coefficients ``C(j, m) (eta / eta_0)^m`` change;
# - loop regime: the steps' paths ``X_{j+1} = X_j - eta (A @ X_j)`` are columns of one
#   product ``A @ [X_j(eta_1), X_j(eta_2), ...]`` per step (A read once, not once per eta),
#   each read out as it is made (nothing of size ``steps D k`` is kept).
# Both give predict's numbers up to float rounding (tests/test_counterfactual.py).


Reduce = Callable[[np.ndarray], np.ndarray]
"""What a caller keeps of one read ``[n, steps + 1, k]`` (applied as soon as it is made,
so only the reduced arrays of all the steps eta are kept, not their reads)."""


def _keep(reduce: Sequence[Reduce] | None, r: int, got: np.ndarray) -> np.ndarray:
    """Read `r` as the caller keeps it: ``reduce[r](got)``, or `got` without reducers."""
    if reduce is None:
        return got
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging path squared
        return reduce[r](got)


def path_square_mean(got: np.ndarray) -> np.ndarray:
    """``[steps + 1]``: ``mean_t (rows_t . e_j)^2`` of a read of the path column."""
    return np.mean(got[:, :, 0] ** 2, axis=0)


def square_sum(got: np.ndarray) -> np.ndarray:
    """``[steps + 1]``: the squares of a read summed over its rows and columns."""
    return (got**2).sum(axis=(0, 2))


def _combine(coefs: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``[n, J, k]``: ``sum_m coefs[j, m] flat[:, m, :]`` as one matrix product
    (``coefs [J, M]``, ``flat [n, M, k]``)."""
    n, M, k = flat.shape
    return (coefs @ flat.transpose(1, 0, 2).reshape(M, n * k)).reshape(-1, n, k).transpose(1, 0, 2)


def _series_reads(
    A: np.ndarray,
    X: np.ndarray,
    etas: list[float],
    steps: int,
    reads: list[tuple[np.ndarray, slice]],
    reduce: Sequence[Reduce] | None = None,
) -> list[list[np.ndarray]]:
    """``out[e][r] [n_r, steps + 1, k_r]``: ``rows_r @ J(eta_e)^j X[:, cols_r]`` for
    ``reads = [(rows_r, cols_r)]``, every eta in the series regime of A (module
    comment): one set of terms at ``eta_0 = max etas`` (to the finest :func:`read_tol` of
    the reads' rows), one readout per read; with `reduce` (one per read), ``reduce[r]`` of
    it (:data:`Reduce`)."""
    eta0 = max(etas)
    S = series(A, X, eta0, steps, min(read_tol(rows.dtype) for rows, _ in reads))
    M, D, _ = S.terms.shape
    flats = []
    for rows, cols in reads:
        terms = S.terms[:, :, cols]
        k = terms.shape[2]
        flat = readout(rows, terms.transpose(1, 0, 2).reshape(D, M * k))
        flats.append(flat.reshape(-1, M, k))
    out = []
    for eta in etas:
        coefs = S.coefs * (eta / eta0 if eta0 > 0 else 0.0) ** np.arange(M)
        out.append([_keep(reduce, r, _combine(coefs, flat)) for r, flat in enumerate(flats)])
    return out


def _loop_reads(
    A: np.ndarray,
    X: np.ndarray,
    etas: list[float],
    steps: int,
    reads: list[tuple[np.ndarray, slice]],
    reduce: Sequence[Reduce] | None = None,
) -> list[list[np.ndarray]]:
    """:func:`_series_reads` by the step-by-step loop: all etas' paths as column blocks of
    one ``[D, len(etas) k]`` matrix, one product with A per step, read out per step."""
    k = X.shape[1]
    L = len(etas)
    step = np.repeat(np.asarray(etas, dtype=np.float64), k)
    cur = np.tile(X.astype(np.float64), (1, L))
    idx = [np.arange(k)[cols] for _, cols in reads]
    sel = [np.concatenate([e * k + i for e in range(L)]) for i in idx]
    out = [
        [
            np.empty((rows.shape[0], steps + 1, i.size))
            for (rows, _), i in zip(reads, idx, strict=True)
        ]
        for _ in range(L)
    ]
    for j in range(steps + 1):
        for r, ((rows, _), s, i) in enumerate(zip(reads, sel, idx, strict=True)):
            got = readout(rows, cur[:, s])
            for e in range(L):
                out[e][r][:, j, :] = got[:, e * i.size : (e + 1) * i.size]
        if j < steps:
            cur = cur - step * (A @ cur)
    return [[_keep(reduce, r, got) for r, got in enumerate(per)] for per in out]


def _reads_many(
    A: np.ndarray,
    X: np.ndarray,
    etas: list[float],
    steps: int,
    reads: list[tuple[np.ndarray, slice]],
    reduce: Sequence[Reduce] | None = None,
    deflate: bool = True,
) -> list[list[np.ndarray]]:
    """``rows @ J(eta)^j X`` per eta of `etas` (in that order) and read (``reduce[r]`` of
    read r with `reduce`): all of them by
    one :func:`_deflated_reads` when some eta is past the series regime of A (the choice
    :func:`series` makes) and A deflates (not tried without `deflate`: known not to),
    else :func:`_series_reads` for the etas in the series regime and :func:`_loop_reads`
    for the others."""
    kappa_per_eta = steps * float(np.linalg.norm(A))
    small = [e for e in etas if e * kappa_per_eta < KAPPA_MAX]
    large = [e for e in etas if not e * kappa_per_eta < KAPPA_MAX]
    if large and deflate:
        deflated = _deflated_reads(A, X, etas, steps, reads, reduce)
        if deflated is not None:
            return deflated
    got: dict[float, list[np.ndarray]] = {}
    if small:
        got.update(zip(small, _series_reads(A, X, small, steps, reads, reduce), strict=True))
    if large:
        got.update(zip(large, _loop_reads(A, X, large, steps, reads, reduce), strict=True))
    return [got[e] for e in etas]


def predict_many(
    A: np.ndarray,
    e0: np.ndarray,
    U: np.ndarray,
    phi_t: np.ndarray,
    etas: list[float],
    trajectories: int,
    steps: int,
    est: float,
    halves: tuple[HalfBatch, HalfBatch] | None = None,
    threads: int = 1,
) -> list[Prediction]:
    """``[predict(..., eta, ...) for eta in etas]`` (same arguments otherwise) up to float
    rounding, sharing the work between the steps (the comment above). The three matrices
    (the batch's A, the halves') share `threads` threads. When the batch's A deflates
    (its dominant subspace found first, its products split on the threads), the halves
    run side by side, then the batch's deflated series, the longest job (D + 1 columns
    against one), with its products, readouts and etas split on the threads
    (:func:`_deflated_reads`); otherwise (the series regime, or the loop) the three run
    side by side on one thread each. The bits do not depend on `threads`. Both stages
    use the process's kept thread pool: a split nested inside a job beside the halves
    would start threads at each of its ~50 products (~1 ms each)."""
    n, D = phi_t.shape
    C = U.shape[1]
    etas = [float(e) for e in etas]
    rows = phi_t[:: max(1, n // NOISE_ROWS)]
    X0 = np.concatenate([e0[:, None], U], axis=1)
    main_reads = [(phi_t, slice(0, 1))] + ([(rows, slice(1, None))] if C else [])
    # each read [n, steps + 1, k] is reduced to the squares the band needs as it is made
    reducers = (path_square_mean, square_sum)

    def half_job(h: HalfBatch) -> list[list[np.ndarray]]:
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: set in the job
            return _reads_many(
                h.A, h.e0[:, None], etas, steps, [(h.phi_t, slice(0, 1))], (path_square_mean,)
            )

    def batch_job(_: None) -> list[list[np.ndarray]]:  # the series regime or the loop
        with np.errstate(over="ignore", invalid="ignore"):
            return _reads_many(A, X0, etas, steps, main_reads, reducers, deflate=False)

    # BLAS on one thread throughout: the calling thread's small products between the
    # split ones would otherwise wake OpenBLAS's threads (they spin, taking a core)
    with np.errstate(over="ignore", invalid="ignore"), limit_threads(1, "blas"):
        dom = None
        kappa_per_eta = steps * float(np.linalg.norm(A))  # some eta past the series regime:
        if any(not e * kappa_per_eta < KAPPA_MAX for e in etas):  # as in _reads_many
            dom = _dominant_subspace(A, threads)
        if dom is None:  # the series regime or the loop: the three jobs side by side
            jobs = [(batch_job, None)] + [(half_job, h) for h in halves or ()]
            main, *half_reads = parallel_map(lambda job: job[0](job[1]), jobs, threads)
        else:
            half_reads = parallel_map(half_job, halves or (), threads)
            main = _deflated_reads(A, X0, etas, steps, main_reads, reducers, threads, dom)
            if main is None:  # the rest's series did not converge: the loop
                main = batch_job(None)
        out = []
        for e, eta in enumerate(etas):
            mid = np.sqrt(main[e][0] / D)
            half_paths = None
            if halves is not None:
                half_paths = tuple(
                    np.sqrt(h_reads[e][0] / h.phi_t.shape[1])
                    for h_reads, h in zip(half_reads, halves, strict=True)
                )
            mid = debiased_path(mid, half_paths)
            if C == 0:
                out.append(Prediction(mid=mid, noise=np.zeros_like(mid), est=est))
                continue
            per_step = main[e][1] / (rows.shape[0] * D)
            var = eta**2 / trajectories * np.concatenate([[0.0], np.cumsum(per_step[:-1])])
            out.append(Prediction(mid=mid, noise=np.sqrt(var), est=est))
    return out


DEFLATE_BLOCK = 12
"""Subspace-iteration block of :func:`_dominant_subspace`."""
DEFLATE_GAP = 3.0
"""Deflate the leading Ritz values down to the largest gap in modulus among the first
DEFLATE_BLOCK - 4, when that gap is at least this ratio (the rest of the spectrum then
moves at least this much slower)."""
DEFLATE_RESIDUAL = 1e-11
"""The invariant-subspace residual ``||A Q - Q T||_F / ||A||_F`` accepted."""
DEFLATE_ITERS = 40
SERIES_REL = 2.0**-52
"""The deflated series stops at the first term below this fraction of its largest."""
"""Subspace iterations before giving up on the deflation (the loop is used)."""


def _dominant_subspace(A: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """``(Q [D, k], T = Q^T A Q [k, k])``: an orthonormal basis of the invariant subspace of
    the k eigenvalues of A of largest modulus, k where the Ritz values' moduli fall by
    the largest ratio, at least DEFLATE_GAP (a complex pair kept whole), by subspace iteration
    with a real Schur reordering; None when no such gap shows within the block or the
    residual ``||A Q - Q T||_F`` stays above DEFLATE_RESIDUAL ``||A||_F``. The products
    with A run on `threads` threads (:func:`split_product`)."""
    import scipy.linalg as sla

    D = A.shape[0]
    p = min(DEFLATE_BLOCK, D - 1)
    if p < 5 or not np.all(np.isfinite(A)):
        return None  # too small to show a gap (the loop is cheap there), or not finite
    rng = np.random.default_rng(0)
    V, _ = np.linalg.qr(rng.standard_normal((D, p)))
    norm = float(np.linalg.norm(A))
    if not norm > 0:
        return None
    AV = split_product(A, V, threads)
    for _ in range(DEFLATE_ITERS):
        H = V.T @ AV
        mods = np.sort(np.abs(np.linalg.eigvals(H)))[::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            gaps = mods[: p - 4] / mods[1 : p - 3]
        k = int(np.argmax(np.where(np.isfinite(gaps), gaps, 0.0))) + 1
        if gaps[k - 1] >= DEFLATE_GAP:
            thr = 0.5 * (mods[k - 1] + mods[k])
            _, Z, sdim = sla.schur(
                H, output="real", sort=lambda x, y, thr=thr: math.hypot(x, y) > thr
            )
            if sdim == k:
                Q, AQ = V @ Z[:, :k], AV @ Z[:, :k]
                T = Q.T @ AQ
                if np.linalg.norm(AQ - Q @ T) <= DEFLATE_RESIDUAL * norm:
                    return Q, T
        V, _ = np.linalg.qr(AV)
        AV = split_product(A, V, threads)
    return None


ROW_BLOCK = 256
"""Rows :func:`products64` converts to float64 at a time."""


def products64(rows: np.ndarray, *mats: np.ndarray, threads: int = 1) -> list[np.ndarray]:
    """``[rows @ M for M in mats]`` in float64 (``rows [n, D]`` of any float dtype, each
    ``M [D, k]`` float64), the rows converted ROW_BLOCK at a time: a ``[ROW_BLOCK, D]``
    float64 copy instead of one of all rows (64 MB at the seed's n = 4096, D = 2048;
    two such reads side by side were the first round's peak), the blocks on `threads`
    threads (one such copy each). Each output row is its own dot products, so the
    numbers are those of converting all rows at once, whatever `threads`."""
    n = rows.shape[0]
    outs = [np.empty((n, M.shape[1])) for M in mats]

    def block_products(start: int) -> None:
        block = rows[start : start + ROW_BLOCK].astype(np.float64, copy=False)
        for out, M in zip(outs, mats, strict=True):
            np.matmul(block, M, out=out[start : start + ROW_BLOCK])

    parallel_map(block_products, range(0, n, ROW_BLOCK), threads)
    return outs


SPLIT_ALIGN = 128
""":func:`split_product` splits ``A [D, D]`` into two row blocks when D is a multiple of
this (and at least twice it). The seed's products (D = 2048 by 1, 12 and 21 columns)
then have the bits of the whole product under OpenBLAS's default (SkylakeX), Haswell,
Prescott and Zen kernels, as do D = 256-4096 by up to 40 columns under Haswell and
Prescott; the SkylakeX kernels round a few other shapes' rows differently (last bits:
D = 512 by 5 columns, D = 384 by 12, any D by ~300 columns), and unaligned splits
differ more often, so those D stay whole. The bits never depend on the thread count."""


def split_product(A: np.ndarray, X: np.ndarray, threads: int = 1) -> np.ndarray:
    """``A @ X`` (``A [D, D']``, ``X [D', k]``) as two row blocks ``A[:D/2] @ X`` and
    ``A[D/2:] @ X`` side by side on `threads` threads when D is a multiple of
    SPLIT_ALIGN (:data:`SPLIT_ALIGN`), else one product. The blocks do not depend on
    `threads`, so neither do the bits; where D splits they are those of ``A @ X``
    (tests/test_counterfactual.py)."""
    D = A.shape[0]
    if D % SPLIT_ALIGN or D < 2 * SPLIT_ALIGN:
        return A @ X
    out = np.empty((D, X.shape[1]), dtype=np.result_type(A, X))
    blocks = (slice(0, D // 2), slice(D // 2, D))
    parallel_map(lambda b: np.matmul(A[b], X, out=out[b]), blocks, threads)
    return out


def _deflated_reads(
    A: np.ndarray,
    X: np.ndarray,
    etas: list[float],
    steps: int,
    reads: list[tuple[np.ndarray, slice]],
    reduce: Sequence[Reduce] | None = None,
    threads: int = 1,
    dom: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[list[np.ndarray]] | None:
    """:func:`_loop_reads` for steps past the series regime, by deflation; None when A
    shows no dominant invariant subspace (:func:`_dominant_subspace`) or the rest's
    series does not converge within `steps` terms. The series' products with A
    (:func:`split_product`), the readouts' row blocks (:func:`products64`) and the etas
    run on `threads` threads, each piece computed as on one, so the bits do not depend
    on `threads`. `dom`: A's ``(Q, T)`` when already found.

    With ``Q [D, k]`` an orthonormal basis of the invariant subspace of A's k largest
    eigenvalues (``A Q = Q T``) split ``e = Q a + r``, ``r`` orthogonal to Q: then ``A e =
    Q (T a + G r) + A_22 r`` with ``G = Q^T A`` and ``A_22 = (I - Q Q^T) A`` on the
    complement, so ``e_{j+1} = e_j - eta A e_j`` is

        r_j = sum_m C(j, m) (eta / eta_0)^m s_m,    s_m = (-eta_0 A_22)^m r_0,
        a_{j+1} = a_j - eta (T a_j + G r_j),

    the series in the slow rest (its eigenvalues at least DEFLATE_GAP times smaller,
    so its terms fall once ``m > steps eta_0 rho_rest``; they stop where ``C(steps, m)
    ||s_m||`` is below SERIES_REL of their largest) and a k-dimensional loop for the
    fast modes. ``rows @ e_j = (rows Q) a_j + sum_m coef[j, m] (rows s_m)`` in float64 (the
    series cancels up to ``(1 + eta_0 rho_rest)^steps``, too much for a float32
    readout). The same numbers as the loop up to rounding (tests/test_counterfactual.py
    bounds them at 1e-6)."""
    if dom is None:
        dom = _dominant_subspace(A, threads)
    if dom is None:
        return None
    Q, T = dom
    eta0 = max(etas)
    X = X.astype(np.float64)
    a0 = Q.T @ X
    s = X - Q @ a0
    terms, gs = [s], []
    j = np.arange(steps + 1, dtype=np.float64)
    coef = 1.0
    peak = 0.0
    for m in range(steps + 1):
        size = coef * float(np.linalg.norm(terms[-1]))
        peak = max(peak, size)
        if not math.isfinite(size):
            return None
        if m > 0 and size <= SERIES_REL * peak:
            break
        As = split_product(A, terms[-1], threads)
        gs.append(Q.T @ As)
        if m == steps:
            break
        nxt = -eta0 * (As - Q @ (Q.T @ As))
        terms.append(nxt)
        coef = coef * (steps - m) / (m + 1)
    M = len(gs)
    if M > steps:
        return None  # did not converge: the loop
    terms = terms[:M]
    S = np.stack(terms)  # [M, D, k]
    G = np.stack(gs)  # [M, kq, k]
    binom = [np.ones(steps + 1)]
    for m in range(1, M):
        binom.append(binom[-1] * np.maximum(j - (m - 1), 0.0) / m)
    binom = np.stack(binom, axis=1)  # C(j, m)
    flats = []
    D = X.shape[0]
    for rows, cols in reads:
        Sc = S[:, :, cols]
        k = Sc.shape[2]
        flat, RQ = products64(rows, Sc.transpose(1, 0, 2).reshape(D, M * k), Q, threads=threads)
        flats.append((flat.reshape(-1, M, k), RQ))

    def eta_reads(eta: float) -> list[np.ndarray]:
        coefs = binom * (eta / eta0) ** np.arange(M)  # [steps + 1, M]
        Gr = np.einsum("jm,mqk->jqk", coefs, G)  # G r_j
        a = np.empty((steps + 1, *a0.shape))
        a[0] = a0
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: a diverging eta
            for t in range(steps):
                a[t + 1] = a[t] - eta * (T @ a[t] + Gr[t])
            per = []
            for r, ((flat, RQ), (_, cols)) in enumerate(zip(flats, reads, strict=True)):
                got = _combine(coefs, flat) + np.matmul(RQ, a[:, :, cols]).transpose(1, 0, 2)
                per.append(_keep(reduce, r, got))
        return per

    return parallel_map(eta_reads, etas, threads)
