"""The shared binomial series of (I - eta A)^j (tdlens.probes.binomial) against float64
matrix powers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdlens.probes.binomial import SERIES_TOL, binomial_terms


def _problem(D: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((D, D)) / math.sqrt(D) + 0.5 * np.eye(D), rng.standard_normal(D)


@pytest.mark.parametrize(("eta", "steps"), [(1e-3, 50), (1e-2, 10), (1e-5, 1000)])
def test_terms_are_the_powers_and_their_binomial_sum_is_J_to_the_steps(eta, steps):
    """``q_m = (-eta A)^m x0`` (float64 matrix powers), and ``sum_m C(steps, m) q_m``
    equals ``(I - eta A)^steps x0`` (numpy.linalg.matrix_power) to the tail bound plus
    float64 rounding of the steps products."""
    A, x0 = _problem()
    kappa = steps * eta * float(np.linalg.norm(A))
    terms = binomial_terms(lambda q, _: -eta * (A @ q), x0, steps, kappa, float(np.linalg.norm(x0)))
    assert 1 < len(terms) < 20  # a handful of products instead of `steps`
    for m, q in enumerate(terms):
        np.testing.assert_allclose(q, np.linalg.matrix_power(-eta * A, m) @ x0, rtol=1e-12)
    total = sum(math.comb(steps, m) * q for m, q in enumerate(terms))
    exact = np.linalg.matrix_power(np.eye(len(x0)) - eta * A, steps) @ x0
    tol = (SERIES_TOL + 1e-15 * steps) * np.linalg.norm(x0)
    assert np.linalg.norm(total - exact) <= tol


def test_stops_at_steps_minus_shift_zero_and_non_finite_terms():
    A, x0 = _problem()
    step = lambda q, _: -0.01 * (A @ q)  # noqa: E731
    assert len(binomial_terms(step, x0, 3, 0.1, 1e-300)) == 4  # q_0..q_3
    assert len(binomial_terms(step, x0, 3, 0.1, 1e-300, shift=1)) == 3  # q_0..q_2
    assert len(binomial_terms(lambda q, _: 0 * q, x0, 10, 0.1, 1.0)) == 2
    nan = binomial_terms(lambda q, _: q * np.nan, x0, 10, 0.1, 1.0)
    assert len(nan) == 2 and np.all(np.isnan(nan[-1]))
    with pytest.raises(ValueError, match=r"kappa < 0\.5"):
        binomial_terms(step, x0, 10, 0.5, 1.0)
