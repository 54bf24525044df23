"""Eigenvalues of the expected-TD matrix A and their sampling noise (docs/model.md §6.1, §6.2).

``A [D, D]`` float64 (see :mod:`tdlens.probes.fixed_point`), ``A_1, A_2`` the same matrix
from the first and second half of the batch.

spectral_noise = ``||A_1 - A_2||_2 / 2``. ``(A_1 - A_2) / 2`` has the covariance of the
sampling error ``A - E[A]``, so its operator norm is a Weyl-type (Bauer-Fike with a
well-conditioned eigenbasis) bound on how far sampling moves any eigenvalue: eigenvalues
farther than that from a threshold are resolved; closer ones may be noise. It is
conservative: the typical shift of one eigenvalue is much smaller than this norm.

Eigenvalues. For ``D <= DENSE_MAX`` all of them (``scipy.linalg.eigvals`` of the float64
A). Above that (dense nonsymmetric eigvals costs ~2-3 s at D = 2048) implicitly restarted
Arnoldi (ARPACK, ``scipy.sparse.linalg.eigs``) on the explicit A, whose products run on a
float32 copy (16 MB at D = 2048: half the memory traffic of float64 and cache-friendly;
the product error ~1e-7 |A| moves eigenvalues by ~1e-7 max|l|, far below the spectral
noise; the Krylov-vs-dense tests bound it). The LM runs on A and on ``A^T`` (left
eigenvectors) take their products in pairs, ``A x`` and ``A^T y`` in one pass over the
float32 A (:class:`PairedProducts`):
- ``LM``: the KRYLOV_K eigenvalues of largest modulus. If the smallest modulus in this
  set is <= spectral_noise, the set contains EVERY eigenvalue with ``|l| > noise`` and so
  every eigenvalue whose real part is beyond the noise on either side
  (``complete_above_noise``): max Re, min Re below -noise and the smallest Re above
  +noise are then exact.
- ``LR`` (KRYLOV_K / 2 eigenvalues) when max Re is not resolved by the LM set.
- otherwise (not complete): shift-invert around ``+noise`` and ``-noise`` (the eigenvalues
  nearest those points) for the slowest resolved mode and for growing modes.
Every number derived from a Krylov spectrum is taken over the union of the computed
eigenvalues; ``count`` says how many that is.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as ssla

from tdlens.kernels import pair_products
from tdlens.threads import limit_threads, parallel_map

R = TypeVar("R")

DENSE_MAX = 768
KRYLOV_K = 32
KRYLOV_TOL = 1e-6
"""ARPACK's relative residual ``||A x - l x|| <= tol |l|``. An eigenvalue moves by at most
``tol |l| / |y^T x|`` (``|x| = |y| = 1``) and in practice by far less: at the seed settings
(D = 2048) 1e-6 moves the computed eigenvalues by <= 4.4e-9 max|l| from 1e-8 (the
spectral noise is ~0.1 max|l|, the float32 products ~1e-7 max|l|) and takes ~9% fewer
products (167 and 166 instead of 183 and 182 on A and A^T)."""

SVDS_TOL = 1e-3
"""ARPACK's relative residual for spectral_noise's largest singular value (Lanczos on
``E^T E``, ``E = A_1 - A_2``): it moves the singular value by at most ``tol / 2`` relative
and in practice by far less. On four seed-settings rounds (D = 2048, two start vectors
each) 1e-3 gave spectral_noise within 7e-9 relative of 1e-6 (the float32 products alone
move it by up to 6e-8 from the float64 norm) with 23 products instead of 43 (SVDS_NCV)."""
SVDS_NCV = 10
"""Lanczos vectors of spectral_noise's svds (scipy's default for one value is 20): a
shorter restart cycle stops sooner once the value has converged; with SVDS_TOL 19-27
products at ncv = 8 or 12, 35 at 16, 43 at 20."""


@dataclass(frozen=True)
class Spectrum:
    """Computed eigenvalues of A (all when ``dense``) and the spectral noise.

    ``right [D, lm_count]`` and ``left [D, lm_count]`` (complex, or None) are right and
    left eigenvectors of ``eigvals[:lm_count]``: ``A x = l x`` and ``A^T y = l y`` (so
    ``y^T A = l y^T``); a column of NaN where ARPACK's transposed run found no match.
    """

    eigvals: np.ndarray  # complex, the computed eigenvalues (may repeat across Krylov sets)
    noise: float
    dense: bool
    complete_above_noise: bool
    lm_count: int  # how many of `eigvals` come from the largest-modulus set (dense: all)
    right: np.ndarray | None = None
    left: np.ndarray | None = None

    @property
    def count(self) -> int:
        return int(self.eigvals.size)

    @property
    def max_abs(self) -> float:
        return float(np.max(np.abs(self.eigvals)))

    @property
    def min_real_bound(self) -> float:
        """A guaranteed lower bound on the smallest real part of ALL eigenvalues: every
        eigenvalue outside the largest-modulus set has ``|l| <= m``, the smallest modulus
        in that set, so ``min Re l >= min(computed min Re, -m)`` (dense: exact)."""
        min_re = float(self.eigvals.real.min())
        if self.dense:
            return min_re
        return min(min_re, -float(np.min(np.abs(self.eigvals[: self.lm_count]))))


def float32_operator(A32: np.ndarray) -> ssla.LinearOperator:
    """``x -> A x`` (and ``A^T x``) on the float32 matrix ``A32 [D, D]``, float64 in and out."""

    def matvec(x: np.ndarray) -> np.ndarray:
        return (A32 @ x.astype(np.float32)).astype(np.float64)

    def rmatvec(x: np.ndarray) -> np.ndarray:
        return (A32.T @ x.astype(np.float32)).astype(np.float64)

    return ssla.LinearOperator(A32.shape, matvec=matvec, rmatvec=rmatvec, dtype=np.float64)


def spectral_noise(
    A_1: np.ndarray,
    A_2: np.ndarray,
    v0: np.ndarray,
    out: np.ndarray | None = None,
    difference: np.ndarray | None = None,
) -> float:
    """``||A_1 - A_2||_2 / 2`` (largest singular value; ARPACK svds to SVDS_TOL with SVDS_NCV
    Lanczos vectors on a float32 copy of the difference, written to `out` when given, above
    D = 64). `difference`: that float32 copy already formed (:func:`tdlens.probes.
    fixed_point.td_moments`' `difference`)."""
    if A_1.shape[0] <= 64:
        return float(np.linalg.norm(A_1 - A_2, 2)) / 2.0
    if difference is not None:
        E32 = difference
    else:
        E32 = np.empty(A_1.shape, np.float32) if out is None else out
        np.subtract(A_1, A_2, out=E32, casting="same_kind")
    with limit_threads(1, "blas"):
        s = ssla.svds(
            float32_operator(E32),
            k=1,
            ncv=min(SVDS_NCV, A_1.shape[0] - 1),
            v0=v0,
            tol=SVDS_TOL,
            return_singular_vectors=False,
        )
    return float(s[0]) / 2.0


def _eigs(A, k: int, v0: np.ndarray, vectors: bool = False, **kwargs):
    """ARPACK eigenvalues (and right eigenvectors when `vectors`), keeping the converged
    ones when it stops early.

    BLAS runs on one thread: hundreds of small sequential products gain little from two
    threads and collapse when another process holds a core.
    """
    k = min(k, A.shape[0] - 2)
    with limit_threads(1, "blas"):
        try:
            return ssla.eigs(A, k=k, v0=v0, tol=KRYLOV_TOL, return_eigenvectors=vectors, **kwargs)
        except ssla.ArpackNoConvergence as err:
            if vectors:
                return np.asarray(err.eigenvalues), np.asarray(err.eigenvectors)
            return np.asarray(err.eigenvalues)


def match_left(vals: np.ndarray, vals_t: np.ndarray, vecs_t: np.ndarray) -> np.ndarray:
    """Left eigenvectors ``[D, len(vals)]`` of `vals` from the eigenpairs ``(vals_t,
    vecs_t)`` of ``A^T``: the nearest eigenvalue within ``1e-6 max|l|`` (else NaN)."""
    out = np.full((vecs_t.shape[0], vals.size), np.nan, dtype=np.complex128)
    if vals_t.size == 0:
        return out
    tol = 1e-6 * float(np.max(np.abs(vals)))
    for m, l in enumerate(vals):
        j = int(np.argmin(np.abs(vals_t - l)))
        if abs(vals_t[j] - l) <= tol:
            out[:, m] = vecs_t[:, j]
    return out


class ProductPair:
    """One pair of products ``s = A x``, ``z = A^T y`` on ``A32 [D, D]``, in two halves of
    A's rows (:func:`tdlens.kernels.pair_products` on rows ``[0, D/2)`` and ``[D/2, D)``):
    ``s`` row by row, ``z = z_0 + z_1`` (the halves' parts, added in that order)."""

    def __init__(self, A32: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        D = A32.shape[0]
        self.A32, self.x, self.y = A32, x, y
        self.bounds = ((0, D // 2), (D // 2, D))
        self.s = np.empty(D, np.float32)
        self.z = (np.empty(D, np.float32), np.empty(D, np.float32))
        self.done = [False, False]

    def compute(self, half: int) -> None:
        """Rows ``bounds[half]`` of ``s`` and their part ``z[half]`` of ``z``."""
        lo, hi = self.bounds[half]
        pair_products(self.A32, self.x, self.y, self.s, self.z[half], lo, hi)
        self.done[half] = True

    def result(self, lane: int) -> np.ndarray:
        """``A x`` (lane 0) or ``A^T y`` (lane 1), float64."""
        out = self.s if lane == 0 else self.z[0] + self.z[1]
        return out.astype(np.float64)


class PairedProducts:
    """``A x`` and ``A^T y`` for two Arnoldi runs, one on A (lane 0) and one on ``A^T``
    (lane 1), a pair in one pass over ``A32 [D, D]`` (:class:`ProductPair`).

    A rendezvous: a lane's product waits for the other lane's next one; a lane whose
    partner has finished (returned or raised: :meth:`finish`) computes alone, with zeros
    for the other vector. ``serial``: the lanes take turns (one holds the lock except
    while it waits for its partner), so two Python threads use one core, and the second
    to arrive computes both halves of the pair; otherwise they run side by side and each
    computes one half (lane 0 the first rows, lane 1 the others). Either way each product
    comes from the same kernel calls in the same order, so its bits do not depend on the
    pairing, the timing or the thread count.
    """

    def __init__(self, A32: np.ndarray, serial: bool) -> None:
        self.A32 = np.ascontiguousarray(A32, dtype=np.float32)
        self.serial = serial
        self._cond = threading.Condition()
        self._waiting: list[np.ndarray | None] = [None, None]
        self._handed: list[ProductPair | None] = [None, None]
        self._finished = [False, False]
        self._zeros = np.zeros(self.A32.shape[0], np.float32)

    def _pair(self, lane: int, v: np.ndarray, partner: np.ndarray | None) -> ProductPair:
        other = self._zeros if partner is None else partner
        return ProductPair(self.A32, *((v, other) if lane == 0 else (other, v)))

    def _meet(self, lane: int, v: np.ndarray) -> tuple[ProductPair, bool]:
        """The pair that holds lane `lane`'s product of `v`, and whether the partner is in
        it (else it is this lane's alone)."""
        other = 1 - lane
        with self._cond:
            partner = self._waiting[other]
            if partner is not None:
                self._waiting[other] = None
                pair = self._handed[other] = self._pair(lane, v, partner)
                self._cond.notify_all()
                return pair, True
            if self._finished[other]:
                return self._pair(lane, v, None), False
            self._waiting[lane] = v
            self._cond.wait_for(lambda: self._handed[lane] is not None or self._finished[other])
            pair, self._handed[lane] = self._handed[lane], None
            if pair is None:  # the partner finished before it took this product
                self._waiting[lane] = None
                return self._pair(lane, v, None), False
            return pair, True

    def product(self, lane: int, v: np.ndarray) -> np.ndarray:
        """``A v`` (lane 0) or ``A^T v`` (lane 1), float64 in and out."""
        pair, shared = self._meet(lane, v.astype(np.float32))
        if shared and not self.serial:
            pair.compute(lane)
            other = 1 - lane
            with self._cond:
                self._cond.notify_all()
                self._cond.wait_for(lambda: pair.done[other] or self._finished[other])
        for half in (0, 1):  # serial, alone, or a partner that raised before its half
            if not pair.done[half]:
                pair.compute(half)
        return pair.result(lane)

    def finish(self, lane: int) -> None:
        """Lane `lane` makes no more products (a waiting partner computes alone)."""
        with self._cond:
            self._finished[lane] = True
            self._cond.notify_all()

    def run(self, lane: int, body: Callable[[ssla.LinearOperator], R]) -> R:
        """``body(operator)`` on lane `lane`'s operator, holding the turn when serial;
        :meth:`finish` however it ends."""
        op = ssla.LinearOperator(
            self.A32.shape, matvec=lambda v: self.product(lane, v), dtype=np.float64
        )
        try:
            if self.serial:
                with self._cond:
                    return body(op)
            return body(op)
        finally:
            self.finish(lane)


def eigenvalues(
    A: np.ndarray,
    noise: float,
    v0: np.ndarray,
    dense_max: int = DENSE_MAX,
    A32: np.ndarray | None = None,
    threads: int = 1,
) -> Spectrum:
    """The eigenvalues of A needed by the probes (see the module docstring).

    `A32` is an optional float32 copy of A for the Krylov products (made when None). The
    LM runs on A and on ``A^T`` (left eigenvectors) run on two Python threads whose
    products meet in pairs (:class:`PairedProducts`): side by side when `threads` allows,
    else taking turns on one core; the same numbers either way.
    """
    D = A.shape[0]
    if D <= dense_max:
        vals, left, right = sla.eig(A, left=True, right=True, check_finite=False)
        return Spectrum(
            vals,
            noise,
            dense=True,
            complete_above_noise=True,
            lm_count=vals.size,
            right=right,
            left=left.conj(),
        )
    A32 = np.asarray(A, dtype=np.float32) if A32 is None else A32
    op = float32_operator(A32)
    pair = PairedProducts(A32, serial=threads <= 1)
    (lm, right), (lm_t, vecs_t) = parallel_map(
        lambda lane: pair.run(lane, lambda M: _eigs(M, KRYLOV_K, v0, vectors=True, which="LM")),
        (0, 1),
        2,
    )
    left = match_left(lm, lm_t, vecs_t)
    complete = bool(lm.size and np.min(np.abs(lm)) <= noise)
    parts = [lm]
    if not (complete and lm.real.max() > noise):
        parts.append(_eigs(op, KRYLOV_K // 2, v0, which="LR"))
    if not complete:
        for sigma in (noise, -noise):
            parts.append(_eigs(A, KRYLOV_K // 2, v0, sigma=sigma, which="LM"))
    vals = np.concatenate(parts)
    return Spectrum(
        vals,
        noise,
        dense=False,
        complete_above_noise=complete,
        lm_count=lm.size,
        right=right,
        left=left,
    )


def step_limits(eigvals: np.ndarray) -> np.ndarray:
    """``2 Re(l) / |l|^2`` per eigenvalue (inf where ``Re(l) <= 0``): the largest eta for
    which that mode of ``J = I - eta A`` has ``|1 - eta l| < 1``."""
    lam = np.asarray(eigvals)
    pos = lam.real > 0
    safe = np.where(pos, lam, 1.0)
    return np.where(pos, 2.0 * safe.real / np.abs(safe) ** 2, np.inf)


def critical_step(eigvals: np.ndarray) -> float:
    """``min over Re(l) > 0 of 2 Re(l) / |l|^2`` (:func:`step_limits`; inf when no
    eigenvalue has Re > 0)."""
    return float(np.min(step_limits(eigvals), initial=np.inf))


def timescale(eta: float, rate: np.ndarray | float) -> np.ndarray:
    """``1 / (eta rate)`` iterations where ``eta rate > 0``, else inf (elementwise)."""
    rate = np.asarray(rate, dtype=np.float64)
    ok = eta * rate > 0
    return np.where(ok, 1.0 / (eta * np.where(ok, rate, 1.0)), np.inf)


def _timescale(eta: float, rate: float) -> float:
    return float(timescale(eta, rate))


def spectrum_row(spectrum: Spectrum, eta: float) -> dict[str, float]:
    """Spectral stability columns (docs/model.md §6.2), timescales in iterations of ``w += eta(b -
    Aw)``.

    eig_min_real is the smallest real part over the WHOLE spectrum: exact when dense,
    otherwise the guaranteed lower bound :attr:`Spectrum.min_real_bound` (then
    eig_min_real_is_bound = 1; never the minimum of the computed subset, which is kept as
    eig_min_real_computed). eig_min_real_bound equals the bound in both cases.
    fastest = ``1/(eta max Re l)``; slowest = ``1/(eta min{Re l : Re l > noise})`` (inf
    when no mode decays beyond the noise); growth = ``1/(eta (-min Re l))`` when
    ``min Re l < -noise``, else inf. modes_above_noise counts ``Re l > noise`` in the
    largest-modulus set (exact when the spectrum is complete above the noise, else a
    lower bound).
    """
    vals, noise = spectrum.eigvals, spectrum.noise
    re = vals.real
    resolved = re[re > noise]
    min_re = float(re.min()) if spectrum.dense else spectrum.min_real_bound
    modes_above = np.sum(vals[: spectrum.lm_count].real > noise)
    return {
        "eig_min_real": min_re,
        "eig_min_real_bound": spectrum.min_real_bound,
        "eig_min_real_is_bound": float(not spectrum.dense),
        "eig_min_real_computed": float(re.min()),
        "eig_max_real": float(re.max()),
        "eig_max_abs": spectrum.max_abs,
        "critical_step": critical_step(vals),
        "fastest_timescale": _timescale(eta, float(re.max())),
        "slowest_timescale": _timescale(eta, float(resolved.min())) if resolved.size else math.inf,
        "growth_timescale": _timescale(eta, -min_re) if min_re < -noise else math.inf,
        "spectral_noise": noise,
        "modes_above_noise": float(modes_above),
        "spectrum_dense": float(spectrum.dense),
        "spectrum_count": float(spectrum.count),
        "spectrum_complete_above_noise": float(spectrum.complete_above_noise),
    }
