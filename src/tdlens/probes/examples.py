"""Textbook off-policy linear TD(0) problems with known instability (Sutton & Barto 2nd
ed., section 11.1 and Example 11.1): ground truth for the spectrum and growth columns of
the stability probe (docs/model.md §6.2).

A problem over ``S`` states with features ``Phi [S, D]``, state weighting ``d_mu [S]``
(the behaviour policy's state distribution), target transitions ``P_pi [S, S]`` and
rewards ``r [S]`` has the expected off-policy TD(0) update (importance ratios folded into
``P_pi``: ``E_mu[rho f(s')] = E_pi[f(s')]``)

    ``w <- w + eta (b - A w)``,  ``A = Phi^T D_mu (I - gamma P_pi) Phi``,
    ``b = Phi^T D_mu r``,  ``D_mu = diag(d_mu)``,

the same form the probes estimate from a batch (:mod:`tdlens.probes.fixed_point`). An
eigenvalue ``l`` of A with ``Re l < 0`` makes ``|1 - eta l| > 1`` for EVERY ``eta > 0``:
TD diverges at any step size, with growth timescale ``1 / (eta (-Re l))`` iterations for
small ``eta`` (exactly ``1 / log|1 - eta l|``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearTDProblem:
    """A small linear TD(0) problem (module docstring), float64 throughout."""

    Phi: np.ndarray  # [S, D]
    d_mu: np.ndarray  # [S], sums to 1
    P_pi: np.ndarray  # [S, S], rows sum to 1
    r: np.ndarray  # [S]
    gamma: float

    @property
    def A(self) -> np.ndarray:
        """``Phi^T D_mu (I - gamma P_pi) Phi`` ``[D, D]``."""
        S = self.P_pi.shape[0]
        M = np.eye(S) - self.gamma * self.P_pi
        return self.Phi.T @ (self.d_mu[:, None] * (M @ self.Phi))

    @property
    def b(self) -> np.ndarray:
        """``Phi^T D_mu r`` ``[D]``."""
        return self.Phi.T @ (self.d_mu * self.r)


BAIRD_STATES = 7
BAIRD_FEATURES = 8
BAIRD_W0 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 1.0])
"""Sutton & Barto's initial weights for Figure 11.2."""


def baird_features() -> np.ndarray:
    """``Phi [7, 8]``: state i < 6 has ``2 e_i + e_7``; the lower state has ``e_6 + 2 e_7``
    (0-based; the book's ``v(s_i) = 2 w_i + w_8`` and ``v(s_7) = w_7 + 2 w_8``)."""
    Phi = np.zeros((BAIRD_STATES, BAIRD_FEATURES))
    Phi[np.arange(6), np.arange(6)] = 2.0
    Phi[:6, 7] = 1.0
    Phi[6, 6], Phi[6, 7] = 1.0, 2.0
    return Phi


def baird(gamma: float = 0.99) -> LinearTDProblem:
    """Baird's counterexample (Sutton & Barto Example 11.1).

    Behaviour: dashed w.p. 6/7 (to one of the six upper states uniformly), solid w.p. 1/7
    (to the lower state), from every state, so ``d_mu`` is uniform over the 7 states.
    Target: always solid, ``P_pi[:, 6] = 1``. All rewards 0, so the true values are 0 and
    ``w = 0`` is a TD fixed point; semi-gradient TD(0) diverges from any other ``w``.
    """
    P_pi = np.zeros((BAIRD_STATES, BAIRD_STATES))
    P_pi[:, 6] = 1.0
    d_mu = np.full(BAIRD_STATES, 1.0 / BAIRD_STATES)
    return LinearTDProblem(baird_features(), d_mu, P_pi, np.zeros(BAIRD_STATES), gamma)


def baird_transition(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` behaviour transitions of Baird's MDP from ``d_mu``: ``(s, s', rho)``.

    The state ``s`` is uniform; the action is solid w.p. 1/7 (``s' = 6``, ``rho = 1 /
    (1/7) = 7``), else dashed (``s'`` uniform over the upper six, ``rho = 0``).
    """
    s = rng.integers(0, BAIRD_STATES, size=n)
    solid = rng.random(n) < 1.0 / BAIRD_STATES
    s_next = np.where(solid, 6, rng.integers(0, 6, size=n))
    rho = np.where(solid, float(BAIRD_STATES), 0.0)
    return s, s_next, rho


def two_state(gamma: float = 0.99) -> LinearTDProblem:
    """The ``w -> 2w`` example (Sutton & Barto section 11.1): one feature, values ``w`` and
    ``2w``; the behaviour only ever updates the transition from the first state to the
    second (``d_mu = [1, 0]``), reward 0. ``A = 1 (1 - 2 gamma)``, negative for
    ``gamma > 1/2``: each update multiplies ``w`` by ``1 + eta (2 gamma - 1)``."""
    Phi = np.array([[1.0], [2.0]])
    P_pi = np.array([[0.0, 1.0], [0.0, 1.0]])
    return LinearTDProblem(Phi, np.array([1.0, 0.0]), P_pi, np.zeros(2), gamma)


def growth_per_iteration(eigvals: np.ndarray, eta: float) -> float:
    """``max_l log|1 - eta l|``: the asymptotic rate of ``log ||w_k||`` under
    ``w_k = w_{k-1} + eta (b - A w_{k-1})`` (its slope per iteration once the dominant
    mode dominates). ``~ eta (-min Re l)`` for small eta when ``min Re l < 0``."""
    return float(np.max(np.log(np.abs(1.0 - eta * eigvals))))


def log_norm_slope(norms: np.ndarray) -> float:
    """Least-squares slope of ``log norms[k]`` against k (per iteration)."""
    k = np.arange(norms.size, dtype=np.float64)
    return float(np.polyfit(k, np.log(norms), 1)[0])


def timescale_of(rate: float) -> float:
    """``1 / rate`` (inf when rate <= 0): iterations per e-fold of growth."""
    return 1.0 / rate if rate > 0 else math.inf
