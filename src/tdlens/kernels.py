"""Small compiled kernels of the rollout loop (numba, ``cache=True``).

Each kernel replaces a handful of NumPy calls on ``[B, ...]`` rows whose cost is call
overhead, with the same correctly rounded IEEE operations (``+ - * /``, ``sqrt``, ``max``)
in the same order and dtype, so results are bit-identical to the NumPy expressions named
in the docstrings. Dot products, matrix products and transcendental functions stay in
NumPy/BLAS (their summation order and SIMD polynomials are not reproducible here).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def rescale_rows(psi: np.ndarray, sq_norm: np.ndarray, cap: np.floating) -> None:
    """``psi *= cap / maximum(sqrt(sq_norm), cap)`` per row (in place).

    ``psi [B, N]``, ``sq_norm [B]`` (``vecdot(psi, psi)``) and ``cap`` all in the features
    dtype: the norm cap of :func:`tdlens.features.actor_features`. NaN norms propagate as
    in ``np.maximum``.
    """
    for i in range(psi.shape[0]):
        norm = np.sqrt(sq_norm[i])
        scale = cap / (norm if not norm <= cap else cap)
        for j in range(psi.shape[1]):
            psi[i, j] *= scale


@njit(cache=True)
def gaussian_actions(m: np.ndarray, sigma: np.ndarray, z: np.ndarray, u: np.ndarray) -> None:
    """``u [B, 2] = m + sigma[:, None] * z`` (in place; the Gaussian draw of the action)."""
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            u[i, j] = m[i, j] + sigma[i] * z[i, j]
