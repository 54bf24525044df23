"""Paired Arnoldi products (docs/model.md §6.1): ``A x`` and ``A^T y`` in one pass over A
(:func:`tdlens.kernels.pair_products`) and the rendezvous of the two ARPACK runs
(:class:`tdlens.probes.spectrum.PairedProducts`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest

from tdlens.kernels import pair_products
from tdlens.probes import spectrum as sp
from tdlens.threads import parallel_map

EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff u


def _random(D: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D)).astype(np.float32)
    x = rng.standard_normal(D).astype(np.float32)
    y = rng.standard_normal(D).astype(np.float32)
    return A, x, y


@pytest.mark.parametrize("D", [1, 7, 300, 1031])
def test_pair_products_against_float64_brute_force(D):
    """``s = A x`` and ``z = A^T y`` within the summation bound ``gamma_D sum_j |A_ij x_j|``
    (``gamma_D = D u / (1 - D u)``, u the float32 unit roundoff: any order, fma or not) of
    the float64 products of the same float32 values (exact to ~1e-16 relative)."""
    A, x, y = _random(D, D)
    s, z = np.empty(D, np.float32), np.empty(D, np.float32)
    pair_products(A, x, y, s, z, 0, D)
    A64, x64, y64 = A.astype(np.float64), x.astype(np.float64), y.astype(np.float64)
    gamma = D * EPS32 / (1 - D * EPS32)
    assert np.all(np.abs(s - A64 @ x64) <= gamma * (np.abs(A64) @ np.abs(x64)))
    assert np.all(np.abs(z - A64.T @ y64) <= gamma * (np.abs(A64).T @ np.abs(y64)))
    pair = sp.ProductPair(A, x, y)  # two halves of the rows, z = z_0 + z_1
    pair.compute(0)
    pair.compute(1)
    assert np.all(np.abs(pair.result(0) - A64 @ x64) <= gamma * (np.abs(A64) @ np.abs(x64)))
    assert np.all(np.abs(pair.result(1) - A64.T @ y64) <= gamma * (np.abs(A64).T @ np.abs(y64)))
    # and not a bound that anything passes: the error is float32 rounding, not zero
    assert np.abs(s - A64 @ x64).max() > 0 or D == 1


def test_pair_products_one_side_does_not_depend_on_the_other():
    """``s`` from ``(x, y)`` equals ``s`` from ``(x, 0)`` bit for bit, and ``z`` from ``(x,
    y)`` equals ``z`` from ``(0, y)``: a lone product has a pair's bits."""
    D = 517
    A, x, y = _random(D, 1)
    s, z = np.empty(D, np.float32), np.empty(D, np.float32)
    pair_products(A, x, y, s, z, 0, D)
    s_alone, z_alone, junk = (
        np.empty(D, np.float32),
        np.empty(D, np.float32),
        np.empty(D, np.float32),
    )
    pair_products(A, x, np.zeros(D, np.float32), s_alone, junk, 0, D)
    pair_products(A, np.zeros(D, np.float32), y, junk, z_alone, 0, D)
    assert np.array_equal(s, s_alone) and np.array_equal(z, z_alone)


def _lane_products(pair: sp.PairedProducts, lane: int, vs: list[np.ndarray], fail_at: int | None):
    """The products of `vs` on `lane` through the pair (raising before product `fail_at`)."""

    def body(op):
        out = []
        for m, v in enumerate(vs):
            if m == fail_at:
                raise RuntimeError(f"lane {lane} failed")
            out.append(op.matvec(v))
        return out

    return pair.run(lane, body)


def _vectors(D: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(D) for _ in range(count)]


def _alone(A: np.ndarray, lane: int, v: np.ndarray) -> np.ndarray:
    D = A.shape[0]
    zeros = np.zeros(D, np.float32)
    v32 = v.astype(np.float32)
    pair = sp.ProductPair(A, *((v32, zeros) if lane == 0 else (zeros, v32)))
    pair.compute(1)  # the halves in either order
    pair.compute(0)
    return pair.result(lane)


@pytest.mark.parametrize("serial", [True, False])
def test_paired_products_equal_lone_ones_bit_for_bit(serial):
    """Two lanes of unequal length (5 and 9 products: the last 4 of lane 1 alone) give each
    product the bits of the kernel called alone."""
    D = 257
    A, _, _ = _random(D, 2)
    vs = [_vectors(D, 5, 3), _vectors(D, 9, 4)]
    pair = sp.PairedProducts(A, serial=serial)
    got = parallel_map(lambda lane: _lane_products(pair, lane, vs[lane], None), (0, 1), 2)
    for lane in (0, 1):
        assert len(got[lane]) == len(vs[lane])
        for v, out in zip(vs[lane], got[lane], strict=True):
            assert np.array_equal(out, _alone(A, lane, v))


@pytest.mark.parametrize("serial", [True, False])
@pytest.mark.parametrize("failing", [0, 1])
def test_rendezvous_survives_one_run_raising(serial, failing):
    """A lane that raises after 3 products lets the other finish its 8 alone (no deadlock:
    the call returns within a timeout), and the error reaches the caller."""
    D = 129
    A, _, _ = _random(D, 5)
    vs = [_vectors(D, 8, 6), _vectors(D, 8, 7)]
    pair = sp.PairedProducts(A, serial=serial)
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def lane_job(lane: int) -> None:
        results[lane] = _lane_products(pair, lane, vs[lane], 3 if lane == failing else None)

    def call() -> None:
        try:
            parallel_map(lane_job, (0, 1), 2)
        except RuntimeError as err:
            errors.append(err)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the surviving lane deadlocked"
    assert len(errors) == 1 and f"lane {failing} failed" in str(errors[0])
    survivor = 1 - failing
    assert len(results[survivor]) == 8
    for v, out in zip(vs[survivor], results[survivor], strict=True):
        assert np.array_equal(out, _alone(A, survivor, v))


def _test_matrix(D: int) -> np.ndarray:
    """A nonsymmetric matrix with a spread spectrum: diagonal 1..D/10 plus a small random
    part (eigenvalues near the diagonal, some complex pairs)."""
    rng = np.random.default_rng(11)
    return np.diag(np.linspace(0.1, D / 10, D)) + 0.3 * rng.standard_normal((D, D))


def test_spectrum_threads_one_equals_threads_two_bit_for_bit():
    """The Krylov path (dense_max below D) gives the same eigenvalues and eigenvectors, to
    the bit, with its two runs taking turns on one core (threads=1) or side by side (2)."""
    D = 200
    A = _test_matrix(D)
    v0 = np.random.default_rng(12).standard_normal(D)
    one = sp.eigenvalues(A, 0.05, v0, dense_max=64, threads=1)
    two = sp.eigenvalues(A, 0.05, v0, dense_max=64, threads=2)
    assert not one.dense and one.lm_count == sp.KRYLOV_K
    assert np.array_equal(one.eigvals, two.eigvals)
    assert np.array_equal(one.right, two.right)
    assert np.array_equal(one.left, two.left, equal_nan=True)
    assert not np.isnan(one.left).any()  # every left vector paired (match_left)


def test_krylov_pairs_are_eigenpairs_of_A():
    """The paired runs' right and left vectors satisfy ``A x = l x`` and ``A^T y = l y`` to
    the float32 products' accuracy (relative residuals <= 1e-4 of max|l|), and the
    eigenvalues are dense float64 ones (to 1e-5 max|l|) of the largest moduli."""
    D = 200
    A = _test_matrix(D)
    v0 = np.random.default_rng(13).standard_normal(D)
    spec = sp.eigenvalues(A, 0.05, v0, dense_max=64, threads=1)
    lm = spec.eigvals[: spec.lm_count]
    scale = np.abs(lm).max()
    for vecs, M in ((spec.right, A), (spec.left, A.T)):
        res = np.linalg.norm(M @ vecs - vecs * lm, axis=0) / np.linalg.norm(vecs, axis=0)
        assert res.max() <= 1e-4 * scale
    dense = np.linalg.eigvals(A)
    assert max(np.abs(dense - l).min() for l in lm) <= 1e-5 * scale
    kth = np.sort(np.abs(dense))[-spec.lm_count]
    assert np.abs(lm).min() >= kth - 1e-5 * scale


def test_pair_products_do_not_depend_on_the_openblas_core_type():
    """The kernel's bits are the same in processes with OPENBLAS_CORETYPE Haswell and
    Prescott as here (no BLAS inside; ARPACK's own BLAS calls still follow the core type)."""
    script = (
        "import numpy as np; from tdlens.kernels import pair_products\n"
        "rng = np.random.default_rng(21); D = 333\n"
        "A = rng.standard_normal((D, D)).astype(np.float32)\n"
        "x, y = (rng.standard_normal(D).astype(np.float32) for _ in range(2))\n"
        "s, z = np.empty(D, np.float32), np.empty(D, np.float32)\n"
        "pair_products(A, x, y, s, z, 0, D)\n"
        "print((s.tobytes() + z.tobytes()).hex())\n"
    )
    outputs = set()
    for core in ("", "Haswell", "Prescott"):
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_eigenvalues_raises_when_one_arnoldi_run_fails(monkeypatch):
    """The call site: the A^T run failing at its 5th product makes `eigenvalues` raise that
    error once the A run has finished alone (no deadlock), at either thread count."""
    D = 200
    A = _test_matrix(D)
    v0 = np.random.default_rng(14).standard_normal(D)
    product = sp.PairedProducts.product
    calls = {1: 0}

    def failing(self, lane, v):
        if lane == 1:
            calls[1] += 1
            if calls[1] == 5:
                raise FloatingPointError("A^T run failed")
        return product(self, lane, v)

    monkeypatch.setattr(sp.PairedProducts, "product", failing)
    for threads in (1, 2):
        calls[1] = 0
        err = _error_within_timeout(
            lambda t=threads: sp.eigenvalues(A, 0.05, v0, dense_max=64, threads=t)
        )
        assert isinstance(err, FloatingPointError) and "A^T run failed" in str(err)


def _error_within_timeout(call: Callable[[], object], timeout: float = 60.0) -> BaseException:
    """The exception `call` raises, on a thread that must end within `timeout` seconds."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except Exception as err:
            errors.append(err)

    caller = threading.Thread(target=target, daemon=True)
    caller.start()
    caller.join(timeout=timeout)
    assert not caller.is_alive(), "deadlocked"
    assert len(errors) == 1, "no error"
    return errors[0]
