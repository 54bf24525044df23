"""The binomial series of the expected critic step's powers (docs/model.md §6.1, §6.2).

The probes need powers of ``J = I - eta A`` applied to a few vectors: the expected path
``J^j X`` (:mod:`tdlens.probes.expected`), the expected iterates ``sum_{j<k} J^j r_0``
(:func:`tdlens.probes.fixed_point.expected_iterates`) and the power iteration's
``J^P v_0`` (:mod:`tdlens.probes.stability`). With ``q_m = (-eta A)^m x_0`` each is a
finite sum ``sum_m c_m q_m`` with binomial coefficients ``c_m <= C(steps, m + shift)``,
and when ``kappa = steps eta ||A|| < KAPPA_MAX`` the terms fall at least geometrically:
``||q_m|| <= (eta ||A||)^m ||x_0||``, so the tail after term m is at most
``C(steps, m + shift) ||q_m|| kappa / (1 - kappa)``. :func:`binomial_terms` produces the
q_m up to the first whose tail bound is below ``SERIES_TOL`` times the caller's scale: a
handful of products with A instead of `steps` (8 instead of 200 at the seed settings),
with float64 rounding no larger than the step-by-step loop's. Each caller combines the
terms with its own coefficients and keeps the loop for ``kappa >= KAPPA_MAX``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SERIES_TOL = 2.0**-60
"""Neglected tail of a series, relative to the caller's scale (float64 rounding)."""
KAPPA_MAX = 0.5
"""The series is used when ``kappa = steps eta ||A|| < KAPPA_MAX``, else the loop."""


def binomial_terms(
    step: Callable[[np.ndarray, float], np.ndarray],
    x0: np.ndarray,
    steps: int,
    kappa: float,
    scale: float,
    shift: int = 0,
    weight: float = 1.0,
    x0_norm: float | None = None,
    tol: float = SERIES_TOL,
) -> list[np.ndarray]:
    """``[q_0, ..., q_M]`` with ``q_0 = x0`` and ``q_{m+1} = step(q_m, ||q_m||)`` (the
    caller's ``-eta A q_m``; the norm lets it apply A to a normalised vector).

    M is the first m whose tail bound ``weight C(steps, m + shift) ||q_m|| kappa / (1 -
    kappa)`` is at most ``tol scale`` (tol: SERIES_TOL unless the caller needs less), at
    most ``steps - shift``; the terms stop early at the first non-finite or zero ``q_m``
    (included). ``x0_norm`` replaces ``||x0||`` when the caller knows it (a unit vector).
    Needs ``kappa < KAPPA_MAX``.
    """
    if not kappa < KAPPA_MAX:
        raise ValueError(f"binomial series needs kappa < {KAPPA_MAX}, got {kappa}")
    ratio = kappa / (1.0 - kappa)
    coef = 1.0
    for i in range(shift):  # C(steps, shift)
        coef = coef * max(steps - i, 0) / (i + 1)
    q = x0
    q_norm = float(np.linalg.norm(x0)) if x0_norm is None else x0_norm
    terms = [x0]
    for m in range(steps - shift):
        if not weight * coef * q_norm * ratio > tol * scale:
            break
        q = step(q, q_norm)
        q_norm = float(np.linalg.norm(q))
        terms.append(q)
        if not math.isfinite(q_norm) or q_norm == 0.0:
            break
        coef = coef * max(steps - (m + shift), 0) / (m + shift + 1)  # C(steps, m + 1 + shift)
    return terms
