"""Small compiled kernels of the rollout loop (numba, ``cache=True``).

Each kernel replaces a handful of NumPy calls on ``[B, ...]`` rows whose cost is call
overhead, with correctly rounded IEEE operations (``+ - * /``, ``sqrt``, ``max``, ``fma``)
in an order written down in its docstring. Sums that decide a chain's path (the actor
features' affine map, the policy means) are computed here, row by row in that documented
order, never by BLAS: which BLAS kernel OpenBLAS picks depends on the CPU, and its
blocking (so its rounding) can depend on how many rows are multiplied together. A row's
value therefore depends only on that row, whatever the batch and whatever the CPU's BLAS
kernel, which is what makes a chain rolled out alone equal the same chain in a batch.
Transcendental functions stay in NumPy (elementwise, so row-independent too), except the
float32 cosine of the critic features: :func:`cos32` is NumPy's own SIMD algorithm,
written out so that it fuses into the feature kernels, bit for bit the same values.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, x, y, z):
    """``x * y + z`` with one rounding (LLVM ``fma``), in the type of x."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return x(x, y, z), codegen


@njit(cache=True, nogil=True)
def affine_rows(x: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j] = (((x[i, 0] W[0, j] + x[i, 1] W[1, j]) + ...) + x[i, K-1] W[K-1, j]) + b[j]``

    for ``x [R, K]``, ``W [K, J]``, ``b [J]``, ``out [R, J]``, all in one dtype: each product
    rounded, then added in order of k (no fma), then the bias. The affine map
    ``W_psi o + b_psi`` of the actor features, without BLAS (module docstring). Four
    terms are added per pass over the row (``o = (((o + p_k) + p_{k+1}) + p_{k+2}) +
    p_{k+3}``, each add rounded as before): a quarter of the loads and stores of ``o``;
    two rows share each pass over ``W`` (half its loads: ``W`` outgrows the L1 cache).
    Each row's operations are the same whatever its neighbour, so the same bits.
    """
    R = x.shape[0]
    for i in range(0, R - 1, 2):
        _affine_row_pair(x[i], x[i + 1], W, b, out[i], out[i + 1])
    if R % 2:
        _affine_row(x[R - 1], W, b, out[R - 1])


@njit(cache=True, nogil=True, inline="always")
def _affine_row(xi: np.ndarray, W: np.ndarray, b: np.ndarray, o: np.ndarray) -> None:
    """One row of :func:`affine_rows`."""
    K = xi.shape[0]
    K4 = 1 + (K - 1) // 4 * 4
    for j in range(o.shape[0]):
        o[j] = xi[0] * W[0, j]
    for k in range(1, K4, 4):
        x0, x1, x2, x3 = xi[k], xi[k + 1], xi[k + 2], xi[k + 3]
        W0, W1, W2, W3 = W[k], W[k + 1], W[k + 2], W[k + 3]
        for j in range(o.shape[0]):
            o[j] = (((o[j] + x0 * W0[j]) + x1 * W1[j]) + x2 * W2[j]) + x3 * W3[j]
    for k in range(K4, K):
        xk = xi[k]
        Wk = W[k]
        for j in range(o.shape[0]):
            o[j] += xk * Wk[j]
    for j in range(o.shape[0]):
        o[j] += b[j]


@njit(cache=True, nogil=True, inline="always")
def _affine_row_pair(
    xi: np.ndarray, yi: np.ndarray, W: np.ndarray, b: np.ndarray, o: np.ndarray, p: np.ndarray
) -> None:
    """Two rows of :func:`affine_rows` (``xi -> o``, ``yi -> p``), each with the
    operations of :func:`_affine_row`, sharing the loads of ``W``."""
    K = xi.shape[0]
    K4 = 1 + (K - 1) // 4 * 4
    W0 = W[0]
    for j in range(o.shape[0]):
        o[j] = xi[0] * W0[j]
        p[j] = yi[0] * W0[j]
    for k in range(1, K4, 4):
        x0, x1, x2, x3 = xi[k], xi[k + 1], xi[k + 2], xi[k + 3]
        y0, y1, y2, y3 = yi[k], yi[k + 1], yi[k + 2], yi[k + 3]
        W0, W1, W2, W3 = W[k], W[k + 1], W[k + 2], W[k + 3]
        for j in range(o.shape[0]):
            w0, w1, w2, w3 = W0[j], W1[j], W2[j], W3[j]
            o[j] = (((o[j] + x0 * w0) + x1 * w1) + x2 * w2) + x3 * w3
            p[j] = (((p[j] + y0 * w0) + y1 * w1) + y2 * w2) + y3 * w3
    for k in range(K4, K):
        xk, yk = xi[k], yi[k]
        Wk = W[k]
        for j in range(o.shape[0]):
            o[j] += xk * Wk[j]
            p[j] += yk * Wk[j]
    for j in range(o.shape[0]):
        o[j] += b[j]
        p[j] += b[j]


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


@njit(cache=True, inline="always")
def _strided_dots(x: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
    """``(x . theta[:, 0], x . theta[:, 1])`` in float64, each summed in our fixed order: two
    partial sums ``s1, s2`` over blocks of four, ``s1 += t_i x_i + t_{i+2} x_{i+2}`` and
    ``s2 += t_{i+1} x_{i+1} + t_{i+3} x_{i+3}``, the remainder fused into ``s1``
    (``fma``), then ``s1 + s2``. (It is the order OpenBLAS's SkylakeX ddot uses for a
    strided operand, so older runs keep their bits there; it no longer depends on it.)
    Both columns in one loop (four independent sums: the loop is latency-bound)."""
    n = x.shape[0]
    a1, a2, b1, b2 = 0.0, 0.0, 0.0, 0.0
    n4 = n - n % 4
    for i in range(0, n4, 4):
        x0, x1 = np.float64(x[i]), np.float64(x[i + 1])
        x2, x3 = np.float64(x[i + 2]), np.float64(x[i + 3])
        a1 += theta[i, 0] * x0 + theta[i + 2, 0] * x2
        a2 += theta[i + 1, 0] * x1 + theta[i + 3, 0] * x3
        b1 += theta[i, 1] * x0 + theta[i + 2, 1] * x2
        b2 += theta[i + 1, 1] * x1 + theta[i + 3, 1] * x3
    for i in range(n4, n):
        a1 = _fma(theta[i, 0], np.float64(x[i]), a1)
        b1 = _fma(theta[i, 1], np.float64(x[i]), b1)
    return a1 + a2, b1 + b2


@njit(cache=True, nogil=True)
def policy_means(psi: np.ndarray, theta: np.ndarray, m: np.ndarray) -> None:
    """``m [R, 2] = psi theta / sqrt(N)`` per row of ``psi [R, N]``, with ``theta [1, N, 2]``
    shared or ``[R, N, 2]`` per row (:func:`tdlens.policy.policy_mean`)."""
    R, N = psi.shape
    root_n = np.sqrt(np.float64(N))
    for i in range(R):
        dot0, dot1 = _strided_dots(psi[i], theta[i if theta.shape[0] > 1 else 0])
        m[i, 0], m[i, 1] = dot0 / root_n, dot1 / root_n


@njit(cache=True, nogil=True)
def policy_means_each(psi: np.ndarray, thetas: np.ndarray, m: np.ndarray) -> None:
    """``m [B, E, 2]``: :func:`policy_means` of ``psi [B, N]`` under each of ``thetas
    [E, N, 2]`` (the per-state means a rollout records for the probes)."""
    B, N = psi.shape
    root_n = np.sqrt(np.float64(N))
    for i in range(B):
        for e in range(thetas.shape[0]):
            dot0, dot1 = _strided_dots(psi[i], thetas[e])
            m[i, e, 0], m[i, e, 1] = dot0 / root_n, dot1 / root_n


@njit(cache=True, nogil=True)
def gaussian_policy_step(
    psi: np.ndarray,
    sq_norm: np.ndarray,
    cap: np.floating,
    theta: np.ndarray,
    sigma: np.ndarray,
    z: np.ndarray,
    m: np.ndarray,
    u: np.ndarray,
) -> None:
    """One rollout step of the behaviour policies, in place, for ``B`` rows:

    1. ``psi *= cap / max(sqrt(sq_norm), cap)`` (the norm cap of ``actor_features``);
    2. ``m = policy_mean(theta, psi)``, with ``theta [N, 2]`` shared (passed as
       ``[1, N, 2]``) or one per row ``[B, N, 2]``;
    3. ``u = m + sigma[:, None] * z`` (the Gaussian draw).
    """
    B, N = psi.shape
    root_n = np.sqrt(np.float64(N))
    for i in range(B):
        norm = np.sqrt(sq_norm[i])
        scale = cap / (norm if not norm <= cap else cap)
        row = psi[i]
        for j in range(N):
            row[j] *= scale
        dot0, dot1 = _strided_dots(row, theta[i if theta.shape[0] > 1 else 0])
        m[i, 0], m[i, 1] = dot0 / root_n, dot1 / root_n
        u[i, 0] = m[i, 0] + sigma[i] * z[i, 0]
        u[i, 1] = m[i, 1] + sigma[i] * z[i, 1]


@njit(cache=True, nogil=True)
def action_arguments(
    C: np.ndarray,
    bias: np.ndarray,
    W_act: np.ndarray,
    actions: np.ndarray,
    shift: int,
    out: np.ndarray,
) -> None:
    """``out[k, i] = actions[i, k] W_act + (C[i + shift] + bias)`` for ``C [R + shift, D']``,
    ``actions [R, J, 2]``, ``out [J, R, D']`` (k < J), all in the features dtype.

    The same roundings as ``np.matmul(a, W_act) + (C + bias)`` with OpenBLAS's two-term
    product ``fma(a_1, W_1, a_0 W_0)`` (tests/test_features.py checks the bits against
    NumPy): the cosine arguments of phi (shift 0) and of the next-state draws (shift 1).
    """
    J, R, D = out.shape
    W0, W1 = W_act[0], W_act[1]
    for k in range(J):
        for i in range(R):
            a0, a1 = actions[i, k, 0], actions[i, k, 1]
            c = C[i + shift]
            o = out[k, i]
            for j in range(D):
                o[j] = _fma(a1, W1[j], a0 * W0[j]) + (c[j] + bias[j])


@njit(cache=True, nogil=True)
def block_arguments(
    C: np.ndarray,
    bias: np.ndarray,
    W_act: np.ndarray,
    a: np.ndarray,
    draws: np.ndarray,
    out: np.ndarray,
) -> None:
    """The cosine arguments of a feature block in one call, for ``C [R + 1, D'] = o
    W_obs``, ``bias [D']``, ``a [R, 2]``, ``draws [R, J, 2]``, ``out [J + 1, R, D']``: with
    ``c_i = C[i] + bias`` (rounded once, as ``np.add`` would),

    ``out[0, i] = fma(a_i1, W_1, a_i0 W_0) + c_i`` (phi of s_i, a_i) and ``out[1 + k, i]
    = fma(d_ik1, W_1, d_ik0 W_0) + c_{i+1}`` (the k-th next action on s_{i+1}): the
    operations of :func:`action_arguments` with shifts 0 and 1, so the same bits, with
    ``c_{i+1}`` formed once for all draws of a state and no pass of its own over C; with
    K_mc = 4 draws (the seed runs') the four share one pass over ``W_act`` and ``C[i + 1]``.
    """
    J1, R, D = out.shape
    W0, W1 = W_act[0], W_act[1]
    for i in range(R):
        c = C[i]
        a0, a1 = a[i, 0], a[i, 1]
        o = out[0, i]
        for j in range(D):
            o[j] = _fma(a1, W1[j], a0 * W0[j]) + (c[j] + bias[j])
        c = C[i + 1]
        if J1 == 5:
            d00, d01, d10, d11 = draws[i, 0, 0], draws[i, 0, 1], draws[i, 1, 0], draws[i, 1, 1]
            d20, d21, d30, d31 = draws[i, 2, 0], draws[i, 2, 1], draws[i, 3, 0], draws[i, 3, 1]
            o1, o2, o3, o4 = out[1, i], out[2, i], out[3, i], out[4, i]
            for j in range(D):
                w0, w1, c_j = W0[j], W1[j], c[j] + bias[j]
                o1[j] = _fma(d01, w1, d00 * w0) + c_j
                o2[j] = _fma(d11, w1, d10 * w0) + c_j
                o3[j] = _fma(d21, w1, d20 * w0) + c_j
                o4[j] = _fma(d31, w1, d30 * w0) + c_j
            continue
        for k in range(J1 - 1):
            d0, d1 = draws[i, k, 0], draws[i, k, 1]
            o = out[1 + k, i]
            for j in range(D):
                o[j] = _fma(d1, W1[j], d0 * W0[j]) + (c[j] + bias[j])


@njit(cache=True, nogil=True)
def block_features(
    cosines: np.ndarray,
    scale: np.ndarray,
    bar_scale: np.ndarray,
    phi_out: np.ndarray,
    bar_out: np.ndarray,
) -> None:
    """``phi_out[i, :D'] = c_0i * scale`` and ``bar_out[i, :D'] = (((c_1i + c_2i) + ...) +
    c_Ji) * bar_scale`` for ``cosines [J + 1, R, D']``: :func:`scale_rows` and
    :func:`mean_rows` in one call (the same operations in the same order, so the same
    bits); with K_mc = 4 (the seed runs') the four draws are summed and scaled in one
    pass over the row instead of five."""
    J1, R, D = cosines.shape
    for i in range(R):
        p = phi_out[i]
        c = cosines[0, i]
        for j in range(D):
            p[j] = c[j] * scale[j]
        o = bar_out[i]
        if J1 == 5:
            c1, c2, c3, c4 = cosines[1, i], cosines[2, i], cosines[3, i], cosines[4, i]
            for j in range(D):
                o[j] = (((c1[j] + c2[j]) + c3[j]) + c4[j]) * bar_scale[j]
            continue
        c = cosines[1, i]
        for j in range(D):
            o[j] = c[j]
        for k in range(2, J1):
            c = cosines[k, i]
            for j in range(D):
                o[j] += c[j]
        for j in range(D):
            o[j] *= bar_scale[j]


@njit(cache=True, nogil=True)
def scale_rows(cos_arg: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """``out[i, :D'] = cos_arg[i] * scale`` for ``cos_arg [R, D']``, ``scale [D']``."""
    R, D = cos_arg.shape
    for i in range(R):
        for j in range(D):
            out[i, j] = cos_arg[i, j] * scale[j]


@njit(cache=True, nogil=True)
def mean_rows(cos_args: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """``out[i, :D'] = (((c_0 + c_1) + c_2) + ...) * scale`` over ``cos_args [K, R, D']``,
    ``scale [D']``: the Monte Carlo sum of :func:`tdlens.features.chain_features`, summed
    in the features dtype in draw order."""
    K, R, D = cos_args.shape
    for i in range(R):
        o = out[i]
        for j in range(D):
            o[j] = cos_args[0, i, j]
        for k in range(1, K):
            c = cos_args[k, i]
            for j in range(D):
                o[j] += c[j]
        for j in range(D):
            o[j] *= scale[j]


COS_REDUCTION_MAX = np.float32(71476.0625)
"""Largest ``|x|`` whose float32 cosine :func:`cos32` takes through the Cody-Waite
reduction (NumPy's limit for the cosine); beyond it, and for inf, the C library's
``cosf``."""
_TWO_OVER_PI = np.float32(float.fromhex("0x1.45f306p-1"))
_RINT_MAGIC = np.float32(float.fromhex("0x1.8p+23"))
_PIO2_HIGH = np.float32(-float.fromhex("0x1.921fb0p+0"))
_PIO2_MED = np.float32(-float.fromhex("0x1.5110b4p-22"))
_PIO2_LOW = np.float32(-float.fromhex("0x1.846988p-48"))
_COS_COEFS = tuple(
    np.float32(float.fromhex(h))
    for h in ("0x1.98e616p-16", "-0x1.6c06dcp-10", "0x1.55553cp-5", "-0x1p-1", "0x1p+0")
)
_SIN_COEFS = tuple(
    np.float32(float.fromhex(h))
    for h in ("0x1.7d3bbcp-19", "-0x1.a06bbap-13", "0x1.11119ap-7", "-0x1.555556p-3")
)
_C8, _C6, _C4, _C2, _C0 = _COS_COEFS
_S9, _S7, _S5, _S3 = _SIN_COEFS
_ZERO32 = np.float32(0.0)
_NAN32 = np.float32(np.nan)


@intrinsic
def _float32_bits(typingctx, x):
    """The IEEE 754 bits of a float32 as an int32 (a bitcast, defined for every input)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@njit(cache=True, nogil=True, inline="always")
def cos32_reduced(x: np.float32) -> np.float32:
    """``cos x`` for float32 ``|x| <= COS_REDUCTION_MAX``: NumPy 2.x's SIMD float32 cosine
    (``simd_sincos_f32`` of numpy/_core/src/umath/loops_trigonometric.dispatch.cpp, the
    loop of every x86 machine with FMA), operation for operation, so the same bits:

    - quadrant ``q = fma(x, 2/pi, 1.5 2^23) - 1.5 2^23`` (x 2/pi rounded to an integer;
      NumPy's compiler fuses its multiply and add);
    - Cody-Waite reduction ``r = fma(q, -p_3, fma(q, -p_2, fma(q, -p_1, x)))`` with
      ``p_1 + p_2 + p_3 ~ pi/2`` (``r`` in [-pi/4, pi/4]), ``r2 = r r``;
    - ``cos r ~ (((c_8 r2 + c_6) r2 + c_4) r2 + c_2) r2 + c_0`` and ``sin r ~ s r + r``
      with ``s = (((s_9 r2 + s_7) r2 + s_5) r2 + s_3) r2``, each step one ``fma``;
    - with ``k = q + 1``: ``sin r`` when k is even, else ``cos r``, negated as ``0 - v``
      when ``k & 2``. k is read from the bits of ``t = fma(x, 2/pi, 1.5 2^23)``, which
      are those of 1.5 2^23 plus q (t = 1.5 2^23 + q exactly for ``|q| < 2^22``; 1.5
      2^23's bits are a multiple of 4): the low bits of q, with no float-to-int
      conversion, which would be undefined for the huge q of an argument out of range.

    Both polynomials are evaluated and one is selected, so the loops that call it vectorise.
    Outside the range the value is meaningless but defined (callers check the range)."""
    t = _fma(x, _TWO_OVER_PI, _RINT_MAGIC)
    q = t - _RINT_MAGIC
    r = _fma(q, _PIO2_HIGH, x)
    r = _fma(q, _PIO2_MED, r)
    r = _fma(q, _PIO2_LOW, r)
    r2 = r * r
    cos_r = _fma(_fma(_fma(_fma(_C8, r2, _C6), r2, _C4), r2, _C2), r2, _C0)
    sin_r = _fma(_fma(_fma(_fma(_S9, r2, _S7), r2, _S5), r2, _S3), r2, _ZERO32)
    sin_r = _fma(sin_r, r, r)
    k = _float32_bits(t) + np.int32(1)
    v = sin_r if (k & 1) == 0 else cos_r
    return (_ZERO32 - v) if (k & 2) == 2 else v


@njit(cache=True, nogil=True, inline="always")
def cos32(x: np.float32) -> np.float32:
    """NumPy's float32 ``np.cos`` on x86 machines with FMA, bit for bit, for every float32
    (checked over all 2^32 by ``benchmarks/check_cosine.py``): :func:`cos32_reduced`
    within ``|x| <= COS_REDUCTION_MAX``, NaN (0x7fc00000, whatever the input's payload)
    for NaN, the C library's ``cosf`` beyond (as NumPy's loop does)."""
    if abs(x) <= COS_REDUCTION_MAX:
        return cos32_reduced(x)
    if x != x:
        return _NAN32
    return math.cos(x)


@njit(cache=True, nogil=True, inline="always")
def cos32_checked(x: np.float32) -> tuple[np.float32, bool]:
    """``(cos32_reduced(x), |x| <= COS_REDUCTION_MAX)``: the cosine and whether it is
    NumPy's (False for NaN and beyond the reduction range, where the value is
    meaningless)."""
    return cos32_reduced(x), abs(x) <= COS_REDUCTION_MAX


@njit(cache=True, nogil=True, inline="always")
def cos_feature_row(
    c: np.ndarray,
    c_next: np.ndarray,
    bias: np.ndarray,
    W0: np.ndarray,
    W1: np.ndarray,
    a_i: np.ndarray,
    draws_i: np.ndarray,
    scale: np.ndarray,
    bar_scale: np.ndarray,
    p: np.ndarray,
    o: np.ndarray,
    with_phi: bool,
) -> bool:
    """One row of phi and bar_phi, the cosine arguments never stored: for ``j < len(c)``

    ``p_j = cos32(x_0j) scale_j`` and ``o_j = (((cos32(x_1j) + cos32(x_2j)) + ...) +
    cos32(x_Jj)) bar_scale_j``,

    ``x_0j = fma(a_1, W1_j, a_0 W0_j) + (c_j + bias_j)``, ``x_kj = fma(d_k1, W1_j, d_k0
    W0_j) + (c_next_j + bias_j)`` for the J next actions ``draws_i [J, 2]``, each
    operation rounded as :func:`block_arguments`, ``np.cos`` and :func:`block_features`
    round it. `with_phi` False: p is not written (its cosines not taken). J = 4 (K_mc = 4)
    and J = 1 (the closed form's mean) take one loop over j for all cosines; callers
    inline it with `with_phi` a constant, so that loop carries no branch. Returns False
    when an argument is NaN or beyond :data:`COS_REDUCTION_MAX` (the row is then
    meaningless)."""
    J, D = draws_i.shape[0], c.shape[0]
    a0, a1 = a_i[0], a_i[1]
    ok = True
    if J == 4:
        d00, d01, d10, d11 = draws_i[0, 0], draws_i[0, 1], draws_i[1, 0], draws_i[1, 1]
        d20, d21, d30, d31 = draws_i[2, 0], draws_i[2, 1], draws_i[3, 0], draws_i[3, 1]
        for j in range(D):
            w0, w1, b = W0[j], W1[j], bias[j]
            if with_phi:
                cos0, ok0 = cos32_checked(_fma(a1, w1, a0 * w0) + (c[j] + b))
                ok &= ok0
                p[j] = cos0 * scale[j]
            c_j = c_next[j] + b
            cos1, ok1 = cos32_checked(_fma(d01, w1, d00 * w0) + c_j)
            cos2, ok2 = cos32_checked(_fma(d11, w1, d10 * w0) + c_j)
            cos3, ok3 = cos32_checked(_fma(d21, w1, d20 * w0) + c_j)
            cos4, ok4 = cos32_checked(_fma(d31, w1, d30 * w0) + c_j)
            ok &= ok1 & ok2 & ok3 & ok4
            o[j] = (((cos1 + cos2) + cos3) + cos4) * bar_scale[j]
        return ok
    if J == 1:
        m0, m1 = draws_i[0, 0], draws_i[0, 1]
        for j in range(D):
            w0, w1, b = W0[j], W1[j], bias[j]
            if with_phi:
                cos0, ok0 = cos32_checked(_fma(a1, w1, a0 * w0) + (c[j] + b))
                ok &= ok0
                p[j] = cos0 * scale[j]
            cos1, ok1 = cos32_checked(_fma(m1, w1, m0 * w0) + (c_next[j] + b))
            ok &= ok1
            o[j] = cos1 * bar_scale[j]
        return ok
    if with_phi:
        for j in range(D):
            cos_x, in_range = cos32_checked(_fma(a1, W1[j], a0 * W0[j]) + (c[j] + bias[j]))
            ok &= in_range
            p[j] = cos_x * scale[j]
    for k in range(J):
        d0, d1 = draws_i[k, 0], draws_i[k, 1]
        for j in range(D):
            cos_x, in_range = cos32_checked(_fma(d1, W1[j], d0 * W0[j]) + (c_next[j] + bias[j]))
            ok &= in_range
            o[j] = cos_x if k == 0 else o[j] + cos_x
    for j in range(D):
        o[j] *= bar_scale[j]
    return ok


@njit(cache=True, nogil=True)
def block_cos_features(
    C: np.ndarray,
    bias: np.ndarray,
    W_act: np.ndarray,
    a: np.ndarray,
    draws: np.ndarray,
    scale: np.ndarray,
    bar_scale: np.ndarray,
    phi_out: np.ndarray,
    bar_out: np.ndarray,
) -> bool:
    """:func:`block_arguments`, ``np.cos`` and :func:`block_features` in one pass, the
    cosine arguments never stored: for ``C [R + 1, D']``, ``a [R, 2]``, ``draws [R, J,
    2]``, ``phi_out, bar_out [R, >= D']``, row i is :func:`cos_feature_row` of ``C[i]``,
    ``C[i + 1]``, ``a_i`` and ``draws[i]``:

    ``phi_out[i, j] = cos32(x_0) scale_j`` and ``bar_out[i, j] = (((cos32(x_1) + cos32(x_2))
    + ...) + cos32(x_J)) bar_scale_j``,

    each operation rounded as the three-call path rounds it, and :func:`cos32_reduced` is
    NumPy's cosine: the same bits. Returns False, its outputs then meaningless, when an
    argument is NaN or beyond :data:`COS_REDUCTION_MAX` (NumPy takes those through the C
    library): the caller then takes the three-call path."""
    D = C.shape[1]
    W0, W1 = W_act[0], W_act[1]
    ok = True
    for i in range(draws.shape[0]):
        p, o = phi_out[i, :D], bar_out[i, :D]
        ok &= cos_feature_row(
            C[i], C[i + 1], bias, W0, W1, a[i], draws[i], scale, bar_scale, p, o, True
        )
    return ok


@njit(cache=True, nogil=True)
def cosines(x: np.ndarray, out: np.ndarray) -> None:
    """``out = cos(x)`` elementwise over float32 ``x, out [n]`` (:func:`cos32`; ``out`` may
    be ``x``). A vectorised pass writes :func:`cos32_reduced` where ``|x| <=
    COS_REDUCTION_MAX`` and copies x elsewhere (NaN included); only when some x was
    copied does a second, scalar pass replace those by :func:`cos32` (a copied value is
    still out of range, a cosine never is)."""
    ok = True
    for i in range(x.shape[0]):
        cos_x, in_range = cos32_checked(x[i])
        ok &= in_range
        out[i] = cos_x if in_range else x[i]
    if not ok:
        for i in range(x.shape[0]):
            if not abs(out[i]) <= COS_REDUCTION_MAX:
                out[i] = cos32(out[i])


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def pair_products(
    A: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    z: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """Rows ``lo <= i < hi`` of ``s = A x`` and their part of ``z = A^T y`` in one pass over
    those rows of ``A [D, D]`` (float32, C-contiguous; ``x, y, s, z [D]`` float32):
    ``s_i = A_i . x`` and ``z = sum_{lo <= i < hi} y_i A_i``, each row read once for both
    products.

    Summation order: ``A_i . x`` is a float32 sum reassociated by LLVM's vectoriser (lanes
    of strided partial sums, fixed per compiled kernel); ``z`` adds the rows in row order,
    element by element (fused multiply-adds where the CPU has them). No BLAS, so the same
    bits under every OPENBLAS_CORETYPE and thread count. ``s`` does not depend on ``y``,
    nor ``z`` on ``x``: a caller that wants one product passes zeros for the other vector
    and gets the same bits as from a pair (:class:`tdlens.probes.spectrum.PairedProducts`).
    """
    D = A.shape[1]
    for j in range(D):
        z[j] = np.float32(0.0)
    for i in range(lo, hi):
        a = A[i]
        y_i = y[i]
        acc = np.float32(0.0)
        for j in range(D):
            acc += a[j] * x[j]
            z[j] += y_i * a[j]
        s[i] = acc
