"""Fixed-point probe (docs/model.md §6.1): moments, direct/iterative solvers, reductions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from probe_testlib import tiny_config

from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params
from tdlens.probes import fixed_point as fp
from tdlens.probes.common import ChainSpec, roll_chains
from tdlens.threads import limit_threads


def random_batch(n: int = 300, D: int = 24, seed: int = 0):
    """A synthetic probe batch: float32 features, positive ratios, rewards."""
    rng = np.random.default_rng(seed)
    phi_t = rng.normal(size=(n, D)).astype(np.float32)
    bar_phi_tp1 = (0.5 * phi_t + 0.5 * rng.normal(size=(n, D))).astype(np.float32)
    rho_t = rng.uniform(0.5, 1.5, n)
    r_t = rng.normal(size=n)
    return phi_t, bar_phi_tp1, rho_t, r_t


def brute_force_moments(phi_t, bar_phi_tp1, rho_t, r_t, gamma):
    """float64 einsum twin: A = mean rho phi (phi - gamma bar_phi)^T / sqrt(D),
    b = mean rho r phi."""
    phi = phi_t.astype(np.float64)
    psi = phi - gamma * bar_phi_tp1.astype(np.float64)
    D = phi.shape[1]
    A = np.einsum("t,ti,tj->ij", rho_t, phi, psi) / (len(rho_t) * math.sqrt(D))
    b = np.einsum("t,ti->i", rho_t * r_t, phi) / len(rho_t)
    return A, b


def test_moments_match_float64_brute_force():
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch()
    A_ref, b_ref = brute_force_moments(phi_t, bar_phi_tp1, rho_t, r_t, 0.9)
    dphi_ref = phi_t - np.float32(0.9) * bar_phi_tp1
    dphi_t = fp.td_difference_(phi_t, bar_phi_tp1.copy(), 0.9)
    np.testing.assert_array_equal(dphi_t, dphi_ref)
    exact = fp.td_moments(phi_t, dphi_t, rho_t, r_t, block=64, product_dtype=np.float64)
    # float32 psi rounding is the only difference from the float64 twin
    np.testing.assert_allclose(exact.A, A_ref, rtol=1e-5, atol=1e-6 * np.abs(A_ref).max())
    np.testing.assert_allclose(exact.b, b_ref, rtol=1e-12)
    fast = fp.td_moments(phi_t, dphi_t, rho_t, r_t, block=64)
    np.testing.assert_allclose(fast.A, exact.A, rtol=0, atol=1e-6 * np.abs(exact.A).max())
    h = len(rho_t) // 2
    A_1, b_1 = brute_force_moments(phi_t[:h], bar_phi_tp1[:h], rho_t[:h], r_t[:h], 0.9)
    np.testing.assert_allclose(exact.A_halves[0], A_1, rtol=1e-5, atol=1e-6 * np.abs(A_1).max())
    np.testing.assert_allclose(exact.b_halves[0], b_1, rtol=1e-12)
    np.testing.assert_allclose(exact.A, (exact.A_halves[0] + exact.A_halves[1]) / 2, rtol=1e-12)


@pytest.mark.parametrize("n", [301, 300])
def test_moments_scale_their_halves_in_one_pass_with_numpys_bits(n):
    """td_moments' one-pass tail (_scale_halves) against NumPy's four passes on the
    halves' sums: ``A = (A_1 + A_2) scale / n``, ``A_k *= scale / n_k`` and, asked for,
    the float32 ``A_1 - A_2`` (spectral_noise's input, np.subtract into float32), bit for
    bit; n = 301: halves of 150 and 151 samples (two different scales)."""
    D = 96
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch(n=n, D=D, seed=2)
    dphi_t = fp.td_difference_(phi_t, bar_phi_tp1, 0.9)
    h, scale = n // 2, 1.0 / math.sqrt(D)
    sums = []
    with limit_threads(1, "blas"):  # td_moments' products run on one BLAS thread
        for rows in (slice(0, h), slice(h, n)):
            A_k = np.empty((D, D))
            args = (phi_t[rows], dphi_t[rows], rho_t[rows], r_t[rows], 64, phi_t.dtype)
            fp._block_moments(*args, A_k, Workspace())
            sums.append(A_k)
    A_ref = np.add(sums[0], sums[1])
    A_ref *= scale / n
    for A_k, count in zip(sums, (h, n - h), strict=True):
        A_k *= scale / count
    E_ref = np.empty((D, D), np.float32)
    np.subtract(sums[0], sums[1], out=E_ref, casting="same_kind")
    ws = Workspace()
    got = fp.td_moments(phi_t, dphi_t, rho_t, r_t, block=64, workspace=ws, difference="E")
    plain = fp.td_moments(phi_t, dphi_t, rho_t, r_t, block=64)
    assert plain.difference is None and got.difference == "E"
    for m in (got, plain):
        np.testing.assert_array_equal(m.A, A_ref)
        for k in (0, 1):
            np.testing.assert_array_equal(m.A_halves[k], sums[k])
    np.testing.assert_array_equal(ws.array("E", (D, D), np.dtype(np.float32)), E_ref)
    assert np.abs(E_ref).max() > 0


@pytest.mark.parametrize(
    ("block", "product_dtype"), [(2048, None), (128, None), (2048, np.float64)]
)
def test_moments_lanes_give_the_same_bits_on_any_thread_and_blas_count(block, product_dtype):
    """td_moments' two half-batch lanes (threads=2) against the halves summed one after
    the other by _block_moments in its own workspace buffers, each product on one BLAS
    thread: bit for bit at threads 1 and 2 under BLAS limits of one and two threads (at
    n = 1000, D = 384 a two-threaded OpenBLAS sgemm sums in another order: the earlier
    td_moments, with its product on the BLAS threads, gave other last bits there). The
    three cases: the lanes' scratch in A's and the halves' bytes (one block a half, float32
    products), the weighted rows in workspace buffers (four blocks a half), and float64
    products (no room in A: workspace buffers); none is left in the workspace. The tail
    (the scaled halves, A and the float32 ``A_1 - A_2``) runs in two row blocks at
    threads=2: the same bits as NumPy's whole-array operations."""
    n, D = 1000, 384
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch(n=n, D=D, seed=4)
    dphi_t = fp.td_difference_(phi_t, bar_phi_tp1, 0.9)
    dtype = np.dtype(product_dtype or phi_t.dtype)
    h, scale = n // 2, 1.0 / math.sqrt(D)
    sums, b_sums = [], []
    with limit_threads(1, "blas"):
        for rows in (slice(0, h), slice(h, n)):
            A_k = np.empty((D, D))
            args = (phi_t[rows], dphi_t[rows], rho_t[rows], r_t[rows], block, dtype)
            b_sums.append(fp._block_moments(*args, A_k, Workspace()))
            sums.append(A_k)
    A_ref = np.add(sums[0], sums[1])
    A_ref *= scale / n
    E_ref = np.empty((D, D), np.float32)
    np.subtract(sums[0] * (scale / h), sums[1] * (scale / (n - h)), out=E_ref, casting="same_kind")
    for blas in (1, 2):
        for threads in (1, 2):
            ws = Workspace()
            with limit_threads(blas, "blas"):
                got = fp.td_moments(
                    phi_t, dphi_t, rho_t, r_t, block, product_dtype, ws, "E", threads=threads
                )
            E = ws.array("E", (D, D), np.dtype(np.float32))
            np.testing.assert_array_equal(E, E_ref, err_msg=f"BLAS {blas}, threads {threads}")
            ws.release("E")
            np.testing.assert_array_equal(got.A, A_ref, err_msg=f"BLAS {blas}, threads {threads}")
            np.testing.assert_array_equal(got.A_halves[1], sums[1] * (scale / (n - h)))
            np.testing.assert_array_equal(got.b, (b_sums[0] + b_sums[1]) / n)
            assert ws.held_bytes() == 3 * D * D * 8  # A and its halves only


def test_moments_lane_error_propagates():
    """An error inside a half's lane (here: rows of another length) is raised by
    td_moments at two threads as at one."""
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch(n=200, D=32, seed=5)
    for threads in (1, 2):
        with pytest.raises(ValueError):
            fp.td_moments(phi_t, bar_phi_tp1[:150], rho_t, r_t, threads=threads)


@pytest.mark.parametrize("lu_dtype", [np.float64, np.float32])
def test_direct_solution_satisfies_its_equation(lu_dtype):
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch(seed=1)
    A, b = brute_force_moments(phi_t, bar_phi_tp1, rho_t, r_t, 0.95)
    w = np.random.default_rng(2).normal(size=A.shape[0])
    lam = 1e-3 * np.max(np.abs(np.linalg.eigvals(A)))
    solve = fp.solve_direct(A, b, w, lam, lu_dtype=lu_dtype)
    lhs = (A + lam * np.eye(len(b))) @ solve.w_sharp
    rel = np.linalg.norm(lhs - (b + lam * w)) / np.linalg.norm(b + lam * w)
    assert rel <= 1e-8 and solve.residual <= 1e-8 and solve.converged
    assert solve.condition == pytest.approx(np.linalg.cond(A + lam * np.eye(len(b)), 1), rel=0.5)


def test_gamma_zero_is_ridge_regression_on_real_features():
    """gamma = 0: w# = (Sigma + lam I)^-1 (E[rho r phi] + lam w), Sigma = E[rho phi phi^T]/sqrt(D),
    computed by numpy from the raw probe batch (brute-force twin)."""
    cfg = tiny_config("gamma=0", "sigma_mu=0.4")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    spec = ChainSpec("probe_fixed_point", 0, 256)
    batch = roll_chains(cfg, maps, params, [spec], 0).td_batch(cfg, maps, [spec], params.theta_pi)
    phi = batch.phi[0].astype(np.float64)
    rho, r = batch.rho[0], batch.r[0]
    D = maps.D
    Sigma = (phi.T * rho) @ phi / (len(rho) * math.sqrt(D))
    lam = 1e-3 * np.max(np.abs(np.linalg.eigvals(Sigma)))
    ref = np.linalg.solve(Sigma + lam * np.eye(D), (phi.T @ (rho * r)) / len(rho) + lam * params.w)
    psi = fp.td_difference_(batch.phi[0], batch.bar_phi[0], 0.0)
    moments = fp.td_moments(batch.phi[0], psi, rho, r)
    solve = fp.solve_direct(moments.A, moments.b, params.w, lam)
    np.testing.assert_allclose(solve.w_sharp, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert solve.residual <= 1e-8


def test_ridge_zero_is_the_exact_solve():
    phi_t, bar_phi_tp1, rho_t, r_t = random_batch(n=400, D=16, seed=3)
    A, b = brute_force_moments(phi_t, bar_phi_tp1, rho_t, r_t, 0.5)
    solve = fp.solve_direct(A, b, np.zeros(16), fp.ridge_lambda(0.0, 1.0))
    np.testing.assert_allclose(A @ solve.w_sharp, b, rtol=1e-10, atol=1e-12)


def test_iterate_solver_reports_convergence_honestly():
    rng = np.random.default_rng(4)
    Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    A = Q @ np.diag(np.linspace(0.5, 1.5, 8)) @ Q.T
    b = rng.normal(size=8)
    w0 = rng.normal(size=8)
    done = fp.solve_iterate(A, b, w0, 0.5, 10_000, 1e-12)
    assert done.converged and done.num_iters < 10_000
    np.testing.assert_allclose(done.w_sharp, np.linalg.solve(A, b), rtol=1e-9)
    capped = fp.solve_iterate(A, b, w0, 0.5, 5, 1e-12)
    assert capped.num_iters == 5 and not capped.converged


def test_soft_mode_count_is_exact_for_diagonal_and_close_otherwise():
    """Re tr(lam (A + lam I)^-1) = sum_i Re lam/(l_i + lam); Rademacher probes are exact
    for a diagonal matrix (z^T diag(d) z = sum d)."""
    eig = np.concatenate([np.full(30, 1e-6), np.linspace(0.1, 1.0, 20)])
    lam = 1e-3
    solve = fp.solve_direct(np.diag(eig), np.ones(50), np.zeros(50), lam)
    exact = float(np.sum(lam / (eig + lam)))
    assert fp.frozen_modes_soft(solve.lu, lam, np.random.default_rng(0)) == pytest.approx(exact)
    rng = np.random.default_rng(5)
    V = np.eye(50) + 0.05 * rng.normal(size=(50, 50))
    A = V @ np.diag(eig) @ np.linalg.inv(V)
    solve = fp.solve_direct(A, np.ones(50), np.zeros(50), lam)
    estimate = fp.frozen_modes_soft(solve.lu, lam, rng)
    assert estimate == pytest.approx(np.sum((lam / (np.linalg.eigvals(A) + lam)).real), abs=3.0)


def test_value_gap_and_row():
    phi_t, *_ = random_batch(n=50, D=8, seed=6)
    w, w_sharp = np.ones(8), np.zeros(8)
    q = phi_t.astype(np.float64) @ (w - w_sharp) / math.sqrt(8)
    assert fp.value_gap(phi_t, w, w_sharp) == pytest.approx(math.sqrt(np.mean(q**2)), rel=1e-6)
    solve = fp.FixedPointSolve(w_sharp, 0.1, 1e-12, 1, True, 10.0)
    first = fp.fixed_point_row(solve, w, None, 0.5, 0.2, 1e-3, 3, True, 50, 1e-8)
    assert first["w_sharp_drift"] == 0.0 and first["w_sharp_drift_defined"] == 0.0
    assert first["w_gap"] == pytest.approx(math.sqrt(8))
    later = fp.fixed_point_row(solve, w, np.full(8, 0.5), 0.5, 0.2, 1e-3, 3, True, 50, 1e-8)
    assert later["w_sharp_drift"] == pytest.approx(math.sqrt(2))
    assert later["w_sharp_drift_defined"] == 1.0


def test_one_norm_of_M_without_forming_it():
    """||A + lam I||_1 from row blocks of A (block not dividing D, negative diagonal
    entries that lam moves across zero) equals the norm of the formed matrix."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((70, 70))
    A[np.diag_indices(70)] = rng.uniform(-0.5, 0.5, 70)
    for lam in (0.0, 0.3, 2.0):
        got = fp.one_norm_M(A, lam, block=16)
        assert got == pytest.approx(np.linalg.norm(A + lam * np.eye(70), 1), rel=1e-13)


def test_drift_noise_by_hand():
    """``||d_1 - d_2|| / 2`` with ``d_h = w#_h(k) - w#_h(k-1)``, from the splits ``s = w#_1 -
    w#_2`` of two rounds with known halves; 0 at the first round (no previous split)."""
    prev = (np.array([1.0, 0.0, 2.0]), np.array([1.0, 1.0, 2.0]))
    now = (np.array([2.0, 0.0, 2.0]), np.array([1.0, 1.0, 5.0]))

    def split(h):
        return h[0] - h[1]

    # d_1 = (1, 0, 0), d_2 = (0, 0, 3): ||(1, 0, -3)|| / 2
    assert fp.drift_noise(split(now), split(prev)) == pytest.approx(math.sqrt(10) / 2)
    assert fp.drift_noise(split(now), None) == 0.0
    assert fp.drift_noise(split(now), split(now)) == 0.0
    # a common move of both halves (a true drift) is no noise
    moved = (now[0] + 7.0, now[1] + 7.0)
    assert fp.drift_noise(split(moved), split(now)) == pytest.approx(0.0, abs=1e-15)


def _solves(X: np.ndarray, y: np.ndarray):
    """Least-squares w# of a batch (rows X, targets y) and of its two halves."""
    h = len(y) // 2

    def solve(rows):
        return np.linalg.solve(X[rows].T @ X[rows], X[rows].T @ y[rows])

    return solve(slice(None)), (solve(slice(0, h)), solve(slice(h, None)))


def _mean_and_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


@pytest.mark.parametrize("crn", [False, True])
def test_drift_noise_is_the_rms_error_of_the_drift(crn):
    """docs/model.md §6.1: E drift_noise^2 = E||w#(k) - w#(k-1) - Delta*||^2, the drift's
    own error, with fresh draws every round (then also = E noise_floor^2 / 2) and with
    common random numbers (the same draws, a target whose noise scale moves between rounds:
    the errors are shared and the drift's noise is far below noise_floor). Monte Carlo over
    2000 replications of linear regressions (n = 400, D = 4), means compared within 4
    combined standard errors."""
    rng = np.random.default_rng(11)
    D, n, reps = 4, 400, 2000
    w_prev, w_now = rng.normal(size=D), rng.normal(size=D)
    err2, noise2, floor2 = (np.empty(reps) for _ in range(3))
    for i in range(reps):
        X0 = rng.normal(size=(n, D))
        e0 = rng.standard_t(5, size=n)
        X1, e1 = (X0, e0) if crn else (rng.normal(size=(n, D)), rng.standard_t(5, size=n))
        scale0, scale1 = (1.0, 1.3) if crn else (1.0, 1.0)
        full0, halves0 = _solves(X0, X0 @ w_prev + scale0 * e0)
        full1, halves1 = _solves(X1, X1 @ w_now + scale1 * e1)
        err2[i] = np.sum((full1 - full0 - (w_now - w_prev)) ** 2)
        noise2[i] = fp.drift_noise(halves1[0] - halves1[1], halves0[0] - halves0[1]) ** 2
        floor2[i] = np.sum((halves1[0] - halves1[1]) ** 2)
    (m_err, se_err), (m_noise, se_noise) = _mean_and_se(err2), _mean_and_se(noise2)
    # the full batch's error is the mean of its halves' only to first order: O(1/n) slack
    assert abs(m_noise - m_err) < 4 * math.hypot(se_err, se_noise) + 0.02 * m_err
    m_floor, se_floor = _mean_and_se(floor2)
    if crn:
        assert m_noise < 0.1 * m_floor / 2  # (scale1 - scale0)^2 = 0.09 of a fresh draw's
    else:
        assert abs(m_noise - m_floor / 2) < 4 * math.hypot(se_noise, se_floor / 2) + 0.02 * m_err
