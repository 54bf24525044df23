"""TD fixed point of the frozen pair (mu, pi) on a probe batch (docs/model.md §6.1).

Shapes: one probe batch of ``n`` steps, ``phi_t, bar_phi_tp1 [n, D]`` (features dtype),
``rho_t, r_t [n]``. With ``dphi_t = phi_t - gamma bar_phi_tp1``:

    A = (1/n) sum_t rho_t phi_t dphi_t^T / sqrt(D)        [D, D]
    b = (1/n) sum_t rho_t r_t phi_t                       [D]

so the expected TD update is ``b - A w`` (the trainer's ``mean rho delta phi``). The
ridge fixed point solves ``(A + lam I) w# = b + lam w`` with ``lam = ridge * max|eig(A)|``:
directions whose eigenvalues are below lam stay where the critic is (docs/model.md §6.1).

Moments are accumulated in float64 over blocks of at most ``block`` samples; each block's
product runs in ``product_dtype`` (default: the features dtype, float32 on the fast path,
whose partial sums over <= 2048 samples agree with float64 to ~1e-7 relative; pass
float64 for an all-float64 product at ~3x the cost). Memory is O(D^2 + block D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from numba import njit

from tdlens.features import Workspace
from tdlens.probes.binomial import KAPPA_MAX, binomial_terms
from tdlens.threads import parallel_map

DIRECT_TOL = 1e-8
"""Relative residual the direct solver refines to (docs/model.md §6.1)."""
MAX_REFINE = 10
TRACE_PROBES = 64


MOMENT_BUFFERS = ("moments.A", "moments.A_1", "moments.A_2")
"""Workspace names of :func:`td_moments`' results (A and its halves)."""


def block_buffers(name: str) -> tuple[str, ...]:
    """Workspace names of :func:`_block_moments`' block buffers under `name` (td_moments
    releases each half's, ``moments.half<k>``, once its sum is done)."""
    return f"{name}.weighted", f"{name}.product"


def lu_buffers(name: str) -> tuple[str, ...]:
    """Workspace names of the LU factors :func:`solve_direct` keeps under `name`."""
    return tuple(f"{name}.lu_{dtype}" for dtype in ("float32", "float64"))


@dataclass(frozen=True)
class TDMoments:
    """``A [D, D]``, ``b [D]`` (float64) of a batch, and of its first and second half."""

    A: np.ndarray
    b: np.ndarray
    A_halves: tuple[np.ndarray, np.ndarray]
    b_halves: tuple[np.ndarray, np.ndarray]
    n: int
    difference: str | None = None
    """The workspace buffer holding ``A_1 - A_2`` in float32 when asked for
    (:func:`td_moments`' `difference`): its name, not the array, so that releasing the
    buffer frees it."""


def td_difference_(phi_t: np.ndarray, bar_phi_tp1: np.ndarray, gamma: float) -> np.ndarray:
    """``dphi_t = phi_t - gamma bar_phi_tp1`` written IN PLACE into `bar_phi_tp1` [n, D]."""
    bar_phi_tp1 *= -bar_phi_tp1.dtype.type(gamma)
    bar_phi_tp1 += phi_t
    return bar_phi_tp1


def _block_moments(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    r_t: np.ndarray,
    block: int,
    dtype: np.dtype,
    A_sum: np.ndarray,
    ws: Workspace,
    product: np.ndarray | None = None,
    weighted: np.ndarray | None = None,
    name: str = "moments",
) -> np.ndarray:
    """``A_sum [D, D] = sum_t rho_t phi_t dphi_t^T`` (in place, float64); returns
    ``b_sum [D] = sum_t rho_t r_t phi_t``. Block products run in `dtype`, into `product`
    (``[D, D]`` of `dtype`), from the weighted rows ``rho_t phi_t`` in `weighted`
    (``[min(block, n), D]`` of `dtype`); by default both are workspace buffers,
    ``<name>.product`` and ``<name>.weighted``. `weighted` may share A_sum's memory when
    the batch is one block (its product is copied into A_sum after it is read)."""
    n, D = phi_t.shape
    b_sum = np.zeros(D)
    weighted_buf = weighted
    if weighted_buf is None:
        weighted_buf = ws.array(f"{name}.weighted", (min(block, n), D), dtype)
    if product is None:
        product = ws.array(f"{name}.product", (D, D), dtype)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        phi_b = phi_t[rows].astype(dtype, copy=False)
        dphi_b = dphi_t[rows].astype(dtype, copy=False)
        weighted = weighted_buf[: phi_b.shape[0]]
        np.multiply(phi_b, rho_t[rows].astype(dtype)[:, None], out=weighted)
        np.matmul(weighted.T, dphi_b, out=product)
        if start == 0:  # 0 + x is x: the first block is copied, not added to zeros
            np.copyto(A_sum, product)
        else:
            A_sum += product
        b_sum += phi_b.T @ (rho_t[rows] * r_t[rows]).astype(dtype)
    if n == 0:
        A_sum.fill(0.0)
    return b_sum


def _scratch(buffer: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """An uninitialised array of `shape` and `dtype` over the first bytes of the
    C-contiguous `buffer`, or None when it does not fit there."""
    size = math.prod(shape) * dtype.itemsize
    if size > buffer.nbytes or not buffer.flags.c_contiguous:
        return None
    return buffer.reshape(-1).view(np.uint8)[:size].view(dtype).reshape(shape)


@njit(cache=True, nogil=True)
def _scale_halves(
    A_1: np.ndarray,
    A_2: np.ndarray,
    A: np.ndarray,
    c: float,
    c_1: float,
    c_2: float,
    E: np.ndarray,
    difference: bool,
) -> None:
    """In place, ``[D, D]`` float64: ``A = (A_1 + A_2) c``, then ``A_k <- A_k c_k`` and,
    with `difference`, ``E = A_1 - A_2`` of the scaled halves (rounded to E's dtype):
    each operation rounded on its own as NumPy's ``np.add``, ``*=`` and ``np.subtract``
    round them (the same bits), in one pass over memory instead of four."""
    rows, cols = A.shape
    for i in range(rows):
        a, x, y = A[i], A_1[i], A_2[i]
        if difference:
            e = E[i]
            for j in range(cols):
                u, v = x[j], y[j]
                a[j] = (u + v) * c
                u, v = u * c_1, v * c_2
                x[j], y[j] = u, v
                e[j] = u - v
            continue
        for j in range(cols):
            u, v = x[j], y[j]
            a[j] = (u + v) * c
            x[j], y[j] = u * c_1, v * c_2


def td_moments(
    phi_t: np.ndarray,
    dphi_t: np.ndarray,
    rho_t: np.ndarray,
    r_t: np.ndarray,
    block: int = 2048,
    product_dtype: np.dtype | None = None,
    workspace: Workspace | None = None,
    difference: str | None = None,
    threads: int = 1,
) -> TDMoments:
    """A and b of the batch and of its halves ``[0, n//2)``, ``[n//2, n)`` (module docstring).

    ``dphi_t = phi_t - gamma bar_phi_tp1`` (see :func:`td_difference_`). The full-batch
    moments are the sample-weighted mean of the halves, so the halves cost nothing extra.
    The two halves' sums are independent products: two lanes on `threads` threads
    (:func:`tdlens.threads.parallel_map`), each product on ONE BLAS thread, so A's bits
    are the same whatever `threads` and the BLAS thread count (a two-threaded GEMM sums in
    another order); the tail that scales them runs in two row blocks on the same threads.
    With a `workspace` the ``[D, D]`` results live in its buffers (valid until the next
    call with the same workspace): fresh 32 MB arrays cost page faults on every round.
    The two lanes' block products and weighted rows live in A's and the halves' own
    buffers before those are written (when they fit: float32 products, one block a half),
    else in workspace buffers released as soon as their half is done, so that a probe
    round's later stages do not find them still resident. `difference`: the workspace
    name of a float32 ``[D, D]`` buffer (requested once those are released) that receives
    ``A_1 - A_2`` in the same pass (the input of
    :func:`tdlens.probes.spectrum.spectral_noise`; ``TDMoments.difference`` names it).
    """
    n, D = phi_t.shape
    ws = Workspace() if workspace is None else workspace
    dtype = np.dtype(product_dtype or phi_t.dtype)
    h = n // 2
    scale = 1.0 / math.sqrt(D)
    A = ws.array(MOMENT_BUFFERS[0], (D, D), np.dtype(np.float64))
    A_halves = [ws.array(name, (D, D), np.dtype(np.float64)) for name in MOMENT_BUFFERS[1:]]
    halves = (slice(0, h), slice(h, n))
    # the lanes' scratch in memory not yet written (no 32 MB more beside the two lanes at
    # D = 2048): the two block products in A's bytes (A is written last, by
    # _scale_halves) and a one-block half's weighted rows in its own A_k's bytes
    products = _scratch(A, (2, D, D), dtype)
    sizes = (h, n - h)
    weighted = [
        _scratch(A_k, (size, D), dtype) if size <= block else None
        for A_k, size in zip(A_halves, sizes, strict=True)
    ]

    def half_sum(half: int) -> np.ndarray:
        """Half `half`'s ``A_k`` sum (in place) and its ``b`` sum; its buffers released."""
        rows, name = halves[half], f"moments.half{half}"
        args = (phi_t[rows], dphi_t[rows], rho_t[rows], r_t[rows], block, dtype)
        product = None if products is None else products[half]
        b_sum = _block_moments(*args, A_halves[half], ws, product, weighted[half], name)
        ws.release(*block_buffers(name))  # what had no room above (16-32 MB at D = 2048)
        return b_sum

    b_sums = parallel_map(half_sum, (0, 1), threads)
    E = np.empty((0, 0), np.float32)
    if difference is not None:
        E = ws.array(difference, (D, D), np.dtype(np.float32))
    c, c_1, c_2 = scale / n, scale / h, scale / (n - h)
    with_difference = difference is not None

    def scale_rows(rows: slice) -> None:
        """The tail on rows `rows` (each entry its own operations: any split, same bits)."""
        A_1, A_2 = (A_k[rows] for A_k in A_halves)
        E_rows = E[rows] if with_difference else E
        _scale_halves(A_1, A_2, A[rows], c, c_1, c_2, E_rows, with_difference)

    # a memory-bound pass over four [D, D] arrays: two row blocks side by side
    parallel_map(scale_rows, (slice(0, D // 2), slice(D // 2, D)), threads)
    b_halves = (b_sums[0] / h, b_sums[1] / (n - h))
    b = (b_sums[0] + b_sums[1]) / n
    return TDMoments(
        A=A,
        b=b,
        A_halves=tuple(A_halves),
        b_halves=b_halves,
        n=n,
        difference=difference,
    )


def ridge_lambda(ridge: float, eig_max_abs: float) -> float:
    """``lam = ridge * max|eig(A)|`` (ridge 0: the exact solve)."""
    return float(ridge) * float(eig_max_abs)


@dataclass(frozen=True)
class FixedPointSolve:
    """A solution w# with its diagnostics; ``lu`` factors ``(A + lam I)^T`` (direct solver,
    use :func:`lu_solve_M`)."""

    w_sharp: np.ndarray
    lam: float
    residual: float
    num_iters: int
    converged: bool
    condition: float
    lu: tuple[np.ndarray, np.ndarray] | None = None


def _apply_M(A: np.ndarray, lam: float, x: np.ndarray) -> np.ndarray:
    """``M x = A x + lam x`` (float64), without forming ``M = A + lam I``."""
    return A @ x + lam * x


def _relative_residual(A: np.ndarray, lam: float, x: np.ndarray, rhs: np.ndarray) -> float:
    """``||M x - rhs|| / ||rhs||``, ``M = A + lam I``."""
    denom = max(float(np.linalg.norm(rhs)), np.finfo(float).tiny)
    return float(np.linalg.norm(_apply_M(A, lam, x) - rhs)) / denom


def solve_direct(
    A: np.ndarray,
    b: np.ndarray,
    w: np.ndarray,
    lam: float,
    tol: float = DIRECT_TOL,
    lu_dtype: type = np.float64,
    workspace: Workspace | None = None,
    condition: bool = True,
    name: str = "solve",
) -> FixedPointSolve:
    """Solve ``M w# = b + lam w``, ``M = A + lam I``, by LU with iterative refinement.

    Refinement ``x <- x + LU^{-1}(rhs - M x)`` (residual in float64, ``M x = A x + lam
    x``) stops when the relative residual ``||M x - rhs|| / ||rhs||`` is <= tol; num_iters
    counts the LU solves. ``lu_dtype=np.float32`` factors in single precision (~1.8x
    faster); refinement still reaches tol whenever ``cond(M) eps_32 << 1`` and the solve
    falls back to a float64 LU when it does not. The factor is that of ``M^T`` (M written
    in C order into the factor buffer, whose Fortran-order view is ``M^T``, so LAPACK needs
    no transposed copy; its entries are those of M rounded to lu_dtype); ``trans=1``
    solves with M. condition is LAPACK's estimate of the 1-norm condition number of M
    (xGECON, infinity norm of M^T). With a `workspace` the factor lives in its buffer
    named ``<name>.lu_<dtype>`` (valid until the next call with that name: solves under
    different names may run at once). ``condition=False`` skips the estimate (NaN).
    """
    ws = Workspace() if workspace is None else workspace
    D = A.shape[0]
    rhs = b + lam * w
    factor = ws.array(f"{name}.lu_{np.dtype(lu_dtype).name}", (D, D), np.dtype(lu_dtype))
    np.copyto(factor, A, casting="same_kind")
    factor.flat[:: D + 1] = np.diagonal(A) + lam  # M's diagonal, rounded once to lu_dtype
    lu = sla.lu_factor(factor.T, overwrite_a=True, check_finite=False)
    x = lu_solve_M(lu, rhs)
    # one product with A per refinement step: the residual vector r = rhs - M x both
    # measures the solve and corrects it (||M x - rhs|| = ||r||)
    denom = max(float(np.linalg.norm(rhs)), np.finfo(float).tiny)
    r = rhs - _apply_M(A, lam, x)
    residual, iters = float(np.linalg.norm(r)) / denom, 1
    while residual > tol and iters < MAX_REFINE and np.isfinite(residual):
        x = x + lu_solve_M(lu, r)
        r = rhs - _apply_M(A, lam, x)
        residual, iters = float(np.linalg.norm(r)) / denom, iters + 1
    if residual > tol and lu_dtype != np.float64:
        return solve_direct(A, b, w, lam, tol, np.float64, ws, condition, name)
    return FixedPointSolve(
        w_sharp=x,
        lam=lam,
        residual=residual,
        num_iters=iters,
        converged=bool(residual <= tol),
        condition=condition_estimate(A, lam, lu) if condition else math.nan,
        lu=lu,
    )


def one_norm_M(A: np.ndarray, lam: float, block: int = 256) -> float:
    """``||A + lam I||_1`` (largest column sum of magnitudes), from row blocks of A (no
    ``[D, D]`` temporary)."""
    col = np.zeros(A.shape[1])
    for start in range(0, A.shape[0], block):
        col += np.abs(A[start : start + block]).sum(axis=0)
    diag = np.diagonal(A)
    col += np.abs(diag + lam) - np.abs(diag)
    return float(col.max())


CONDITION_DIGITS = 6
"""Significant digits condition_est keeps: xGECON runs BLAS on work arrays the SciPy
wrapper allocates, and its last bit has differed between two identical runs with the LU
factor identical; rounded, two identical runs agree bit for bit (the estimate itself is
only good to a small factor)."""


def condition_estimate(A: np.ndarray, lam: float, lu: tuple[np.ndarray, np.ndarray]) -> float:
    """LAPACK's 1-norm condition estimate of ``M = A + lam I`` from the LU factor of
    ``M^T`` (xGECON with the infinity norm of ``M^T``, which is the 1-norm of M), rounded
    to :data:`CONDITION_DIGITS` significant digits (reproducible)."""
    gecon = sla.get_lapack_funcs("gecon", (lu[0],))
    rcond, _ = gecon(lu[0], one_norm_M(A, lam), norm="I")
    if not rcond > 0:
        return math.inf
    return float(f"{1.0 / float(rcond):.{CONDITION_DIGITS - 1}e}")


def lu_solve_M(lu: tuple[np.ndarray, np.ndarray], rhs: np.ndarray) -> np.ndarray:
    """Solve ``M x = rhs`` (float64 out) with the LU factor of ``M^T`` from solve_direct."""
    x = sla.lu_solve(lu, rhs.astype(lu[0].dtype), trans=1, check_finite=False)
    return x.astype(np.float64)


def solve_iterate(
    A: np.ndarray, b: np.ndarray, w: np.ndarray, alpha_w: float, max_iters: int, tol: float
) -> FixedPointSolve:
    """The seed's solver: ``w <- w + alpha_w (b - A w)`` from w, at most max_iters steps.

    Stops when ``||step|| / ||w|| < tol``; converged is 0 whenever it stopped at max_iters.
    residual is ``||A w - b|| / ||b||`` (no ridge); condition is not estimated (NaN).
    """
    x = np.array(w, dtype=np.float64)
    iters, stopped = 0, False
    while iters < max_iters:
        step = alpha_w * (b - A @ x)
        x += step
        iters += 1
        if np.linalg.norm(step) < tol * max(np.linalg.norm(x), np.finfo(float).tiny):
            stopped = True
            break
    return FixedPointSolve(
        w_sharp=x,
        lam=0.0,
        residual=_relative_residual(A, 0.0, x, b),
        num_iters=iters,
        converged=stopped and bool(np.all(np.isfinite(x))),
        condition=math.nan,
    )


def frozen_modes_soft(
    lu: tuple[np.ndarray, np.ndarray], lam: float, rng: np.random.Generator
) -> float:
    """Hutchinson estimate of ``Re tr(lam (A + lam I)^{-1}) = sum_i Re lam / (l_i + lam)``.

    Each mode with ``|l_i| << lam`` counts ~1 and each with ``|l_i| >> lam`` ~0 (a soft
    count of the modes below lam; the trace is similarity invariant, so this holds for
    non-normal A). Uses TRACE_PROBES Rademacher vectors on the existing LU factor.
    """
    if lam <= 0:
        return 0.0
    D = lu[0].shape[0]
    z = rng.choice(np.array([-1.0, 1.0]), size=(D, TRACE_PROBES))
    x = lu_solve_M(lu, z)
    return float(lam * np.mean(np.einsum("ij,ij->j", z, x)))


def value_gap(phi_t: np.ndarray, w: np.ndarray, w_sharp: np.ndarray) -> float:
    """RMS over the batch of ``Q_w - Q_w# = (w - w#) . phi_t / sqrt(D)``, ``phi_t [n, D]``."""
    D = phi_t.shape[1]
    diff = ((w - w_sharp) / math.sqrt(D)).astype(phi_t.dtype)
    q_diff = (phi_t @ diff).astype(np.float64)
    return float(np.sqrt(np.mean(q_diff**2)))


def expected_iterates(
    A: np.ndarray, b: np.ndarray, w: np.ndarray, eta: float, steps: int
) -> np.ndarray:
    """``[w_1, ..., w_steps]`` as ``[D, steps]`` for ``w_k = w_{k-1} + eta (b - A w_{k-1})``.

    With ``r_0 = b - A w`` and ``q_m = (-eta A)^m r_0``, the iterates are the finite sum
    ``w_k = w + eta sum_{m=0}^{k-1} C(k, m+1) q_m`` (binomial expansion of
    ``sum_{j<k} (I - eta A)^j``). When ``kappa = steps eta ||A||_F < 1/2`` the sum stops
    at the first m whose tail bound ``eta C(steps, m+1) ||q_m|| kappa / (1 - kappa)`` is
    below ``SERIES_TOL`` times the scale of w (:mod:`tdlens.probes.binomial`: at the seed
    settings kappa ~ 0.02 and 8 products replace 200). Otherwise the loop itself.
    """
    D = w.shape[0]
    kappa = steps * eta * float(np.linalg.norm(A))
    if not kappa < KAPPA_MAX:
        traj = np.empty((D, steps))
        w_k = w.astype(np.float64, copy=True)
        for k in range(steps):
            w_k = w_k + eta * (b - A @ w_k)
            traj[:, k] = w_k
        return traj
    k = np.arange(1, steps + 1, dtype=np.float64)
    coef = k.copy()  # C(k, 1)
    q = b - A @ w
    scale = max(float(np.linalg.norm(w)), float(np.linalg.norm(q)) * eta, np.finfo(float).tiny)
    terms = binomial_terms(lambda q, _: -eta * (A @ q), q, steps, kappa, scale, 1, eta)
    coefs = [coef]
    for m in range(1, len(terms)):
        coef = coef * np.maximum(k - m, 0.0) / (m + 1)  # C(k, m + 1)
        coefs.append(coef)
    increments = np.stack(terms, axis=1) @ (eta * np.stack(coefs))
    return w[:, None] + increments


def fixed_point_row(
    solve: FixedPointSolve,
    w: np.ndarray,
    w_sharp_prev: np.ndarray | None,
    value_gap_: float,
    noise_floor: float,
    ridge: float,
    modes_below_lam: float,
    modes_below_lam_exact: bool,
    batch_size: int,
    tol: float,
) -> dict[str, float]:
    """The fixed_point_probe columns (without iter and the rho summary)."""
    defined = w_sharp_prev is not None
    drift = float(np.linalg.norm(solve.w_sharp - w_sharp_prev)) if defined else 0.0
    return {
        "w_gap": float(np.linalg.norm(w - solve.w_sharp)),
        "value_gap": value_gap_,
        "w_sharp_drift": drift,
        "w_sharp_drift_defined": float(defined),
        "noise_floor": noise_floor,
        "w_norm": float(np.linalg.norm(w)),
        "w_sharp_norm": float(np.linalg.norm(solve.w_sharp)),
        "lam": solve.lam,
        "ridge": ridge,
        "modes_below_lam": float(modes_below_lam),
        "modes_below_lam_exact": float(modes_below_lam_exact),
        "converged": float(solve.converged),
        "num_iters": float(solve.num_iters),
        "residual": solve.residual,
        "condition_est": solve.condition,
        "batch_size": float(batch_size),
        "tol": tol,
    }


def drift_noise(split: np.ndarray, split_prev: np.ndarray | None) -> float:
    """``w_sharp_drift_noise = ||d_1 - d_2|| / 2`` with ``d_h = w#_h(k) - w#_h(k-1)`` the
    drift of half batch h between rounds k-1 and k (docs/model.md §6.1), computed as
    ``d_1 - d_2 = s(k) - s(k-1)`` from ``split = s(k) = w#_1(k) - w#_2(k)`` (the vector
    whose norm is noise_floor) and the previous round's `split_prev`, so a round keeps one
    ``[D]`` vector for the next; 0 without it (the first round).

    Derivation: write each half's solve as ``w#_h(k) = w*(k) + e_h(k)`` (w* the exact fixed
    point of round k, e_h the error of half h) and the full batch's as ``w#(k) ~ w*(k) +
    (e_1(k) + e_2(k)) / 2`` (to first order, the full batch's moments are the mean of its
    halves'). With ``u_h = e_h(k) - e_h(k-1)`` the error of half h's drift, the full drift
    ``w#(k) - w#(k-1) = Delta* + (u_1 + u_2) / 2`` carries the error ``eps = (u_1 + u_2) / 2``
    while ``d_1 - d_2 = u_1 - u_2`` is free of the true drift Delta*. The halves are
    disjoint samples, so u_1, u_2 are independent with a common covariance S_u and

        E||eps||^2 = tr(S_u) / 2 = E||d_1 - d_2||^2 / 4:

    ``||d_1 - d_2|| / 2`` is a one-draw estimate of the RMS error of w_sharp_drift (each
    half's drift error is sqrt(2) a full batch's; their difference doubles the variance
    again). Without common random numbers e(k) and e(k-1) are independent, each with
    covariance S = S_h / 2 (S_h a half's), so ``E||eps||^2 = 2 tr(S)`` while
    ``E noise_floor^2 = E||e_1 - e_2||^2 = 2 tr(S_h) = 4 tr(S)``: the drift's noise is
    then ``noise_floor / sqrt(2)``. With common random numbers (the same draws every
    round) e_h(k) and e_h(k-1) share most of their error and the drift's noise is far
    below noise_floor: it is what w_sharp_drift reads when the policies do not move.
    """
    if split_prev is None:
        return 0.0
    return float(np.linalg.norm(split - split_prev)) / 2.0
