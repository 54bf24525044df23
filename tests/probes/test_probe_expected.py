"""Expected dynamics with minibatch noise (tdlens.probes.expected) and the spectral
intervals (tdlens.probes.spectral_ci): float64 brute-force twins and exact identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdlens.probes import expected as ex
from tdlens.probes import spectrum as sp
from tdlens.probes.spectral_ci import cluster_means, spectral_intervals
from tdlens.threads import limit_threads


def small_system(D=12, seed=0):
    rng = np.random.default_rng(seed)
    A = np.diag(rng.uniform(0.2, 1.0, D)) + 0.05 * rng.standard_normal((D, D))
    return rng, A


@pytest.mark.parametrize("eta", [1e-3, 0.5])
def test_propagate_equals_the_step_by_step_loop(eta):
    """Both branches (series for small kappa, loop otherwise) against a float64 loop."""
    rng, A = small_system()
    X = rng.standard_normal((A.shape[0], 3))
    steps = 25
    out = ex.propagate(A, X, eta, steps)
    ref = [X]
    for _ in range(steps):
        ref.append(ref[-1] - eta * (A @ ref[-1]))
    np.testing.assert_allclose(out, np.stack(ref), rtol=1e-12, atol=1e-14)


def test_prediction_noise_matches_the_lyapunov_sum():
    """noise_j^2 = eta^2 / B sum_{i<j} tr(G J^i S J^iT) / D with G = Phi^T Phi / n (all
    rows used: n <= NOISE_ROWS), brute force in float64."""
    rng, A = small_system()
    D, n, B, eta, steps = A.shape[0], 64, 4, 0.3, 10
    phi = rng.standard_normal((n, D))
    U = rng.standard_normal((D, 5))
    e0 = rng.standard_normal(D)
    pred = ex.predict(A, e0, U, phi, eta, B, steps, est=0.0)
    G = phi.T @ phi / n
    J = np.eye(D) - eta * A
    var, Ji = [0.0], np.eye(D)
    for _ in range(steps):
        var.append(var[-1] + eta**2 / B * np.trace(G @ Ji @ U @ U.T @ Ji.T) / D)
        Ji = J @ Ji
    np.testing.assert_allclose(pred.noise**2, var, rtol=1e-10, atol=1e-15)
    mids = [
        math.sqrt(np.linalg.matrix_power(J, j) @ e0 @ G @ np.linalg.matrix_power(J, j) @ e0 / D)
        for j in range(steps + 1)
    ]
    np.testing.assert_allclose(pred.mid, mids, rtol=1e-10)
    assert np.all(pred.lo <= pred.hi)


def test_effective_timescale_of_one_mode_is_its_relaxation_time():
    """A = a I: mid_j = (1 - eta a)^j mid_0, so the e-folding time is -1/ln(1 - eta a)."""
    D, a, eta = 6, 0.05, 1.0
    A = a * np.eye(D)
    phi = np.random.default_rng(1).standard_normal((32, D))
    pred = ex.predict(A, np.ones(D), np.zeros((D, 0)), phi, eta, 1, 100, 0.0)
    assert pred.effective_timescale == pytest.approx(-1.0 / math.log(1 - eta * a), rel=1e-9)


def test_update_noise_factor_is_the_cluster_covariance():
    """U U^T equals the sample covariance (ddof 1) of the per-cluster mean updates
    gbar_c = mean_t rho_t (r_t - dphi_t . w# / sqrt(D)) phi_t, computed in float64."""
    rng = np.random.default_rng(2)
    n, D, size = 60, 5, 10
    phi, dphi = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    rho, r, w = rng.uniform(0.5, 2, n), rng.standard_normal(n), rng.standard_normal(D)
    U = ex.update_noise_factor(phi, dphi, rho, r, w, size)
    g = (rho * (r - dphi @ w / math.sqrt(D)))[:, None] * phi
    gbar = g.reshape(n // size, size, D).mean(axis=1)
    np.testing.assert_allclose(U @ U.T, np.cov(gbar.T, ddof=1), rtol=1e-10, atol=1e-14)


def test_cluster_means_average_to_the_eigenvalue_and_intervals_bracket_it():
    """mean_c L_c = l exactly (y^T A x / y^T x with A the mean of the sample terms), and
    the bootstrap intervals contain the point values."""
    rng = np.random.default_rng(3)
    n, D, size = 400, 8, 20
    phi = rng.standard_normal((n, D))
    dphi = phi - 0.5 * rng.standard_normal((n, D))
    rho = rng.uniform(0.5, 1.5, n)
    A = (phi * rho[:, None]).T @ dphi / (n * math.sqrt(D))
    spec = sp.eigenvalues(A, 1e-3, rng.standard_normal(D))
    L = cluster_means(phi, dphi, rho, spec.right, spec.left, size)
    np.testing.assert_allclose(L.mean(axis=0), spec.eigvals, rtol=1e-9, atol=1e-12)
    row = sp.spectrum_row(spec, 0.5)
    ci = spectral_intervals(spec, phi, dphi, rho, size, 0.5, np.random.default_rng(0))
    for key in ("critical_step", "eig_max_real", "eig_min_real", "fastest_timescale"):
        assert ci[f"{key}_lo"] <= row[key] <= ci[f"{key}_hi"], key


def test_debiased_path_extrapolates_the_decay_rate():
    """Hand calculation: full-batch rate r + c/n, half batches r + 2c/n give rate r,
    anchored at the full path's first value."""
    j = np.arange(30.0)
    r, c_n = 0.01, 0.004
    mid = 0.5 * np.exp(-(r + c_n) * j)
    halves = (0.7 * np.exp(-(r + 2 * c_n) * j), 0.6 * np.exp(-(r + 2 * c_n) * j))
    np.testing.assert_allclose(ex.debiased_path(mid, halves), 0.5 * np.exp(-r * j), rtol=1e-12)
    assert ex.debiased_path(mid, None) is mid


def test_explicit_series_read_is_the_einsum_bit_for_bit():
    """Past kappa = 1/2 the series is the path itself (identity coefs): read skips the
    identity's einsum and returns exactly what it returned."""
    rng = np.random.default_rng(5)
    D, steps = 6, 40
    A = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    S = ex.series(A, rng.standard_normal((D, 3)), 0.05, steps)
    assert S.explicit and S.coefs.shape == (steps + 1, steps + 1)
    rows = rng.standard_normal((50, D)).astype(np.float32)
    M, _, k = S.terms.shape
    flat = ex.readout(rows, S.terms.transpose(1, 0, 2).reshape(D, M * k))
    expected = np.einsum("jm,nmk->njk", S.coefs, flat.reshape(-1, M, k))
    np.testing.assert_array_equal(S.read(rows), expected)
    assert not ex.series(A, rng.standard_normal((D, 3)), 1e-4, 10).explicit  # binomial


@pytest.mark.parametrize("kappa", [0.01, 0.1, 0.4])
def test_float32_reads_stop_the_series_inside_their_own_rounding(kappa):
    """A series read through float32 rows stops at read_tol(float32) (fewer terms than
    float64's SERIES_TOL); what it leaves out moves the readout by less than a tenth of
    the float32 readout's own rounding (measured against the float64 readout)."""
    rng = np.random.default_rng(9)
    D, steps = 256, 80
    A = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    eta = kappa / (steps * float(np.linalg.norm(A)))
    X = rng.standard_normal((D, 5))
    rows = rng.standard_normal((300, D))
    full = ex.series(A, X, eta, steps)
    short = ex.series(A, X, eta, steps, ex.read_tol(np.float32))
    assert ex.read_tol(np.float64) == ex.SERIES_TOL
    assert short.terms.shape[0] < full.terms.shape[0]
    exact = full.read(rows)
    rounding = np.max(np.abs(full.read(rows.astype(np.float32)) - exact))
    left_out = np.max(
        np.abs(short.read(rows.astype(np.float32)) - full.read(rows.astype(np.float32)))
    )
    assert 0 < rounding < 1e-5 * np.max(np.abs(exact))
    assert left_out < 0.1 * rounding


@pytest.mark.parametrize("kappa", [0.01, 0.1, 0.4])
def test_float32_products_move_a_float32_read_series_within_the_readout_rounding(kappa):
    """A series read through float32 rows may take its products in float32: what that
    moves the readout by is at most the float32 readout's own rounding (both measured
    against the float64 products' and the float64 readout), and it does move it."""
    rng = np.random.default_rng(12)
    D, steps = 256, 80
    A = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    eta = kappa / (steps * float(np.linalg.norm(A)))
    X = rng.standard_normal((D, 5))
    rows = rng.standard_normal((300, D))
    rows32 = rows.astype(np.float32)
    tol = ex.read_tol(np.float32)
    exact = ex.series(A, X, eta, steps).read(rows)
    f64 = ex.series(A, X, eta, steps, tol).read(rows32)
    f32 = ex.series(A, X, eta, steps, tol, float32_products=True).read(rows32)
    rounding = np.max(np.abs(f64 - exact))
    moved = np.max(np.abs(f32 - f64))
    assert 0 < moved <= 0.1 * rounding


def test_predict_takes_float32_products_for_the_batch_series_of_float32_rows(monkeypatch):
    """The call site: with float32 rows predict's batch series takes float32 products and
    the halves' (one column each) float64; with float64 rows none does. The band moves
    from the float64 rows' by far less than its width."""
    rng, A = small_system(D=64, seed=3)
    e0, U = rng.standard_normal(64), rng.standard_normal((64, 5))
    phi = rng.standard_normal((200, 64))
    halves = tuple(ex.HalfBatch(A, e0, phi[h]) for h in (slice(0, 100), slice(100, None)))
    flags = []
    series = ex.series

    def recorded(*args, **kwargs):
        flags.append(bool(args[5] if len(args) > 5 else kwargs.get("float32_products")))
        return series(*args, **kwargs)

    monkeypatch.setattr(ex, "series", recorded)
    ref = ex.predict(A, e0, U, phi, 1e-3, 4, 40, 0.01, halves)
    assert flags == [False, False, False]
    flags.clear()
    got = ex.predict(A, e0, U, phi.astype(np.float32), 1e-3, 4, 40, 0.01, halves)
    assert flags == [True, False, False]
    np.testing.assert_allclose(got.mid, ref.mid, rtol=1e-5)
    np.testing.assert_allclose(got.noise, ref.noise, rtol=1e-5)


@pytest.mark.parametrize("C", [5, 0])
def test_predict_reads_each_series_in_its_own_job_with_the_serial_numbers(C):
    """predict's three jobs (each series with its own readouts) on 1 and 2 threads give
    the numbers of the serial composition (the three series, then the mean paths, the
    debiasing and the noise rows' readout), bit for bit, with float32 rows; C = 0: no
    noise columns (zero noise)."""
    D, n, eta, steps, B = 96, 300, 2e-3, 40, 4
    rng, A = small_system(D=D, seed=4)
    A_h = [A + 0.01 * rng.standard_normal((D, D)) for _ in range(2)]
    e0, U = rng.standard_normal(D), rng.standard_normal((D, C))
    phi = rng.standard_normal((n, D)).astype(np.float32)
    halves = tuple(
        ex.HalfBatch(A_h[k], e0 + 0.1 * k, phi[k * n // 2 : (k + 1) * n // 2]) for k in (0, 1)
    )
    tol = ex.read_tol(phi.dtype)
    X0 = np.concatenate([e0[:, None], U], axis=1)
    with limit_threads(1, "blas"):  # as predict's products (their bits depend on it)
        path = ex.series(A, X0, eta, steps, tol, True)
        half_paths = tuple(
            ex.mean_path(ex.series(h.A, h.e0[:, None], eta, steps, tol, False), h.phi_t)
            for h in halves
        )
        mid = ex.debiased_path(ex.mean_path(path, phi), half_paths)
        var = np.zeros(steps + 1)
        if C:
            rows = phi[:: max(1, n // ex.NOISE_ROWS)]
            sq = path.read(rows, slice(1, None)) ** 2
            per_step = sq.sum(axis=(0, 2)) / (rows.shape[0] * D)
            var = eta**2 / B * np.concatenate([[0.0], np.cumsum(per_step[:-1])])
    assert np.all(np.diff(mid) != 0) and (C == 0 or var[-1] > 0)
    for threads in (1, 2):
        got = ex.predict(A, e0, U, phi, eta, B, steps, 0.01, halves, threads)
        np.testing.assert_array_equal(got.mid, mid)
        np.testing.assert_array_equal(got.noise, np.sqrt(var))


def test_qr_noise_factor_leaves_the_predicted_noise_unchanged():
    """With more clusters than features (C = 40 > D = 5) the factor is R^T [D, D] of the
    centred cluster means; the predicted noise from it equals the one from the full
    centred [D, C] factor up to float rounding, on both paths (binomial and explicit)."""
    rng = np.random.default_rng(6)
    n, D, size = 400, 5, 10
    phi, dphi = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    rho, r, w = rng.uniform(0.5, 2, n), rng.standard_normal(n), rng.standard_normal(D)
    U = ex.update_noise_factor(phi, dphi, rho, r, w, size)
    assert U.shape == (D, D)
    g = (rho * (r - dphi @ w / math.sqrt(D)))[:, None] * phi
    gbar = g.reshape(n // size, size, D).mean(axis=1)
    full = (gbar - gbar.mean(axis=0)).T / math.sqrt(n // size - 1)
    A = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    e0 = rng.standard_normal(D)
    for eta, steps in ((1e-3, 20), (0.05, 60)):  # kappa < 1/2, then the loop
        a = ex.predict(A, e0, U, phi, eta, 4, steps, 0.0)
        b = ex.predict(A, e0, full, phi, eta, 4, steps, 0.0)
        assert b.noise[-1] > 0
        np.testing.assert_allclose(a.noise, b.noise, rtol=1e-10, atol=0)
        np.testing.assert_array_equal(a.mid, b.mid)


def _lyapunov_noise(A, U, phi, eta, B, steps):
    """noise_steps^2 = eta^2 / B sum_{i<steps} tr(G J^i U U^T J^iT) / D, float64 brute force."""
    D = A.shape[0]
    G = phi.T @ phi / phi.shape[0]
    J, Ji, var = np.eye(D) - eta * A, np.eye(D), 0.0
    for _ in range(steps):
        var += eta**2 / B * np.trace(G @ Ji @ U @ U.T @ Ji.T) / D
        Ji = J @ Ji
    return math.sqrt(var)


@pytest.mark.parametrize(
    ("block", "eta", "finite"),
    [
        # real eigenvalues 0.5 ... 0.02: critical step 2 / 0.5 = 4
        (None, 0.95 * 4.0, True),  # |1 - eta l| = 0.9 at most: a floor
        (None, 1.15 * 4.0, False),  # |1 - eta l| = 1.3: grows 1.3^60-fold
        # a complex pair 0.1 +- 0.3i: critical step 2 Re l / |l|^2 = 2, Re(eta l) far below 2
        ([[0.1, 0.3], [-0.3, 0.1]], 1.8, True),  # |1 - eta l| = 0.98
        ([[0.1, 0.3], [-0.3, 0.1]], 2.4, False),  # |1 - eta l| = 1.047 by the imaginary part
        # a slightly negative eigenvalue (a sampled A's): |1 - eta l|^60 = 1.006, a random walk
        ([[-1e-4]], 1.0, True),
    ],
    ids=["below-critical", "beyond-critical", "complex-stable", "complex-growing", "marginal"],
)
def test_floor_is_the_lyapunov_sum_when_the_noise_settles_and_inf_when_it_grows(block, eta, finite):
    """value_gap_floor (docs/model.md §6.1): the Lyapunov sum over the run when every mode
    the noise loads has |1 - eta l|^steps <= e, inf when one grows beyond it, matching
    eta against the probe's own critical step (sp.critical_step). Before, noise[-1] was
    reported as the floor also beyond the critical step: a finite 1e9 that made the run
    look "at its floor" (issue 23, atlas_tracking at alpha_w 300, alpha_pi 200)."""
    rng = np.random.default_rng(7)
    D, n, B, steps = 6, 64, 4, 60
    lam = np.diag([0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
    if block is not None:
        k = len(block)
        lam[D - k :, D - k :] = block
    Q = np.eye(D) + 0.2 * rng.standard_normal((D, D))
    A = Q @ lam @ np.linalg.inv(Q)
    phi, U, e0 = rng.standard_normal((n, D)), rng.standard_normal((D, 3)), rng.standard_normal(D)
    l = np.linalg.eigvals(A)
    grows = np.max(np.abs(1.0 - eta * l)) ** steps
    assert (grows <= math.e) == finite and (eta < sp.critical_step(l)) == finite
    pred = ex.predict(A, e0, U, phi, eta, B, steps, est=0.0)
    brute = [_lyapunov_noise(A, U, phi, eta, B, j) for j in (1, steps - 1, steps)]
    assert pred.noise[-1] == pytest.approx(brute[-1], rel=1e-9)  # the truncated sum itself
    # the last kick's variance against the first's, brute force: grown e-fold (RMS) or not
    assert (brute[2] ** 2 - brute[1] ** 2 > math.e**2 * brute[0] ** 2) == (not finite)
    assert pred.floor == (pred.noise[-1] if finite else math.inf)


def test_floor_without_noise_or_past_overflow():
    """No noise factor: a floor of 0; a non-finite noise path (overflow): inf."""
    p = ex.Prediction(mid=np.ones(4), noise=np.zeros(4), est=0.1)
    assert p.floor == 0.0
    p = ex.Prediction(mid=np.ones(4), noise=np.array([0.0, 1.0, 1e200, np.inf]), est=0.1)
    assert p.floor == math.inf
