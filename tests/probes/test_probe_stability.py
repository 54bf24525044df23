"""Stability probe (docs/model.md §6.2): step scale vs the trainer, power iteration, spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as ssla
from probe_testlib import tiny_config

from tdlens.features import make_feature_maps
from tdlens.learner import collect, gradients, init_params, td_errors, update
from tdlens.probes import fixed_point as fp
from tdlens.probes import spectrum as sp
from tdlens.probes import stability as st
from tdlens.seeding import stream


@pytest.mark.parametrize("normalization", ["mean", "sqrt_batch"])
def test_eta_and_step_scale_equal_the_trainers(normalization):
    """The trainer's critic step on its own batch is exactly eta (b - A w) with A, b of that
    batch (all B T samples), and alpha_w s = train_step_scale."""
    cfg = tiny_config(f"step_normalization={normalization}", "precision=float64")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    rngs = [stream(cfg.seed, "rollout", 0, b) for b in range(cfg.trajectories)]
    batch = collect(cfg, maps, params.theta_mu, params.theta_pi, rngs, cfg.horizon)
    delta = td_errors(batch, params.w, cfg.gamma)
    G_w, G_theta = gradients(batch, delta, cfg.sigma_pi)
    new = update(cfg, params, G_w, G_theta)
    D = maps.D
    phi_t = batch.phi.reshape(-1, D)
    dphi_t = phi_t - cfg.gamma * batch.bar_phi.reshape(-1, D)
    moments = fp.td_moments(phi_t, dphi_t, batch.rho.reshape(-1), batch.r.reshape(-1))
    expected = st.expected_step(cfg) * (moments.b - moments.A @ params.w)
    np.testing.assert_allclose(new.w - params.w, expected, rtol=1e-9, atol=1e-15)
    assert st.probe_step_scale(cfg) == cfg.train_step_scale
    moved = G_w != 0  # features never excited in the batch (event flags) have G_w = 0
    ratio = (new.w - params.w)[moved] / G_w[moved]
    np.testing.assert_allclose(ratio, cfg.train_step_scale, rtol=1e-9)
    assert st.trainer_terms(cfg) == cfg.trajectories * cfg.horizon


def test_matrix_free_apply_equals_explicit_A():
    rng = np.random.default_rng(0)
    phi_t = rng.normal(size=(200, 12)).astype(np.float32)
    dphi_t = (phi_t - 0.9 * rng.normal(size=(200, 12))).astype(np.float32)
    rho_t = rng.uniform(0.5, 1.5, 200)
    r_t = rng.normal(size=200)
    A = fp.td_moments(phi_t, dphi_t, rho_t, r_t, product_dtype=np.float64).A
    v = rng.normal(size=12)
    np.testing.assert_allclose(st.apply_A(phi_t, dphi_t, rho_t, v), A @ v, rtol=1e-5, atol=1e-6)


def test_power_iteration_finds_the_spectral_radius():
    """J = I - eta A with eigenvalues of A in {3, 1, 0.5}, eta = 0.5: radius |1 - 1.5| = 0.5
    vs 0.5, 0.75 -> the dominant |1 - eta l| is 0.75 (l = 0.5)."""
    rng = np.random.default_rng(1)
    V = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
    A = V @ np.diag([3.0, 1.0, 0.5]) @ np.linalg.inv(V)
    radius = st.power_iteration_radius(lambda v: A @ v, 0.5, rng.normal(size=3), 200)
    assert radius == pytest.approx(0.75, rel=1e-6)


def _td_batch(seed: int, n: int = 400, D: int = 24):
    """A float32 TD batch with the layout of the probes (rho >= 0)."""
    rng = np.random.default_rng(seed)
    phi_t = (rng.normal(size=(n, D)) / math.sqrt(D)).astype(np.float32)
    dphi_t = (phi_t - 0.9 * rng.normal(size=(n, D)) / math.sqrt(D)).astype(np.float32)
    rho_t = rng.lognormal(0.0, 0.3, n)
    A = fp.td_moments(phi_t, dphi_t, rho_t, np.zeros(n), product_dtype=np.float64).A
    return phi_t, dphi_t, rho_t, A


def test_norm_bound_bounds_the_operator_norm():
    for seed in range(5):
        phi_t, dphi_t, rho_t, A = _td_batch(seed)
        bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
        assert np.linalg.norm(A, 2) <= bound
        # not vacuous: within the factor the triangle inequality can lose on random rows
        assert bound < 50 * np.linalg.norm(A, 2)


@pytest.mark.parametrize("eta", [1e-3, 0.3, 3.0])
def test_power_series_equals_the_loop(eta):
    """The series (used when iters eta ||A|| < 1/2) gives the loop's number to float64
    rounding with fewer products; past that bound the loop runs (same number, exactly)."""
    phi_t, dphi_t, rho_t, A = _td_batch(1)
    bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
    calls = []

    def apply(v):
        calls.append(1)
        return A @ v

    v0 = np.random.default_rng(2).normal(size=A.shape[0])
    loop = st.power_iteration_radius(apply, eta, v0, 20)
    loop_calls = len(calls)
    calls.clear()
    series = st.power_iteration_radius(apply, eta, v0, 20, norm_bound=bound)
    assert loop_calls == 20
    if 20 * eta * bound < 0.5:
        assert series == pytest.approx(loop, rel=1e-14, abs=0)
        assert len(calls) < 20
    else:
        assert series == loop and len(calls) == 20
    # the float64 brute force: ||J^20 v|| / ||J^19 v||
    J = np.eye(A.shape[0]) - eta * A
    u19 = np.linalg.matrix_power(J, 19) @ (v0 / np.linalg.norm(v0))
    assert series == pytest.approx(np.linalg.norm(J @ u19) / np.linalg.norm(u19), rel=1e-12)


def test_power_series_propagates_non_finite_products():
    """A NaN in the features (a diverged run) gives NaN on both paths, never a number."""
    v0 = np.ones(4)

    def nan_apply(v):
        return np.full_like(v, np.nan)

    assert math.isnan(st.power_iteration_radius(nan_apply, 1e-3, v0, 20))
    assert math.isnan(st.power_iteration_radius(nan_apply, 1e-3, v0, 20, norm_bound=1.0))
    # A = 0: J = I exactly, radius 1 after one term
    zero = st.power_iteration_radius(np.zeros_like, 1e-3, v0, 20, norm_bound=1.0)
    assert zero == 1.0


def test_power_series_at_seed_like_scale_needs_few_products():
    """eta ||A|| ~ 1e-4 (the seed settings): a handful of products replace 20."""
    phi_t, dphi_t, rho_t, A = _td_batch(3)
    eta = 1e-4 / np.linalg.norm(A, 2)
    calls = []

    def apply(v):
        calls.append(1)
        return st.apply_A(phi_t, dphi_t, rho_t, v)

    v0 = np.random.default_rng(4).normal(size=A.shape[0])
    bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
    series = st.power_iteration_radius(apply, eta, v0, 20, norm_bound=bound)
    assert len(calls) <= 7
    loop = st.power_iteration_radius(apply, eta, v0, 20)
    # float32 products (relative error ~1e-6) enter scaled by eta ||A|| ~ 1e-4
    assert series == pytest.approx(loop, rel=1e-9, abs=0)


@pytest.mark.parametrize("tol", [st.PROXY_SERIES_TOL, 1e-6, 1e-3])
@pytest.mark.parametrize("eta_norm", [1e-4, 1e-3])  # kappa 0.04, 0.38: the series
def test_power_series_tolerance_moves_the_radius_at_most_four_tol(tol, eta_norm):
    """A looser series tail (the probe's PROXY_SERIES_TOL) moves the radius by at most
    ``4 tol`` from the float64-exact series (float64 products: only the tail differs),
    with no more products; the loosest tolerances do move it, so the bound is tested."""
    phi_t, dphi_t, rho_t, A = _td_batch(5)
    eta = eta_norm / np.linalg.norm(A, 2)
    bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
    v0 = np.random.default_rng(6).normal(size=A.shape[0])
    counts = []

    def radius(**kwargs):
        calls = []

        def apply(v):
            calls.append(1)
            return A @ v

        r = st.power_iteration_radius(apply, eta, v0, 20, norm_bound=bound, **kwargs)
        counts.append(len(calls))
        return r

    exact, loose = radius(), radius(tol=tol)
    assert abs(loose - exact) <= 4 * tol
    assert counts[1] <= counts[0]
    if tol >= 1e-6:
        assert loose != exact and counts[1] < counts[0]


def test_probe_tolerance_at_seed_like_scale_takes_fewer_products():
    """eta ||A|| ~ 1e-4 with float32 products: PROXY_SERIES_TOL takes three products fewer
    than the float64-rounding tail SERIES_TOL (3 and 6 here, kappa = 0.04; 2 and 5 in a
    seed round) and gives the same radius to 4 tol."""
    phi_t, dphi_t, rho_t, A = _td_batch(3)
    eta = 1e-4 / np.linalg.norm(A, 2)
    bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
    v0 = np.random.default_rng(4).normal(size=A.shape[0])
    counts = []

    def radius(**kwargs):
        calls = []

        def apply(v):
            calls.append(1)
            return st.apply_A(phi_t, dphi_t, rho_t, v)

        r = st.power_iteration_radius(apply, eta, v0, 20, norm_bound=bound, **kwargs)
        counts.append(len(calls))
        return r

    exact, loose = radius(), radius(tol=st.PROXY_SERIES_TOL)
    assert counts[1] <= counts[0] - 3
    assert abs(loose - exact) <= 4 * st.PROXY_SERIES_TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_product_is_apply_A_and_the_norm_bound_in_one_pass(dtype):
    """first_product (one compiled pass) gives apply_A's A v to the features' rounding
    and norm_bound_A's bound, whatever the rows' layout."""
    phi_t, dphi_t, rho_t, A = _td_batch(7, n=600, D=40)
    phi_t, dphi_t = phi_t.astype(dtype), dphi_t.astype(dtype)
    v = np.random.default_rng(8).normal(size=40)
    v /= np.linalg.norm(v)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    for rows in (slice(None), slice(None, None, 2)):  # contiguous and strided rows
        Av, bound = st.first_product(phi_t[rows], dphi_t[rows], rho_t[rows], v)
        ref = st.apply_A(phi_t[rows], dphi_t[rows], rho_t[rows], v)
        np.testing.assert_allclose(Av, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        assert bound == pytest.approx(st.norm_bound_A(phi_t[rows], dphi_t[rows], rho_t[rows]))
    # against the float64 A itself
    Av, bound = st.first_product(phi_t, dphi_t, rho_t, v)
    np.testing.assert_allclose(Av, A @ v, rtol=rtol, atol=rtol * np.abs(A @ v).max())
    assert np.linalg.norm(A, 2) <= bound


def test_power_iteration_with_a_first_pass_equals_the_one_without():
    """first_pass (the probe's matrix-free chains) replaces the bound and the first product
    only: the same number of products with A, the same radius to the float32 rounding of
    one product (the proxies of a seed round moved by <= 5.4e-14); and it is called once,
    with the unit start vector."""
    phi_t, dphi_t, rho_t, A = _td_batch(3)
    eta = 1e-4 / np.linalg.norm(A, 2)
    v0 = np.random.default_rng(4).normal(size=A.shape[0])
    seen = []

    def first_pass(v):
        seen.append(v)
        return st.first_product(phi_t, dphi_t, rho_t, v)

    calls = []

    def apply(v):
        calls.append(1)
        return st.apply_A(phi_t, dphi_t, rho_t, v)

    for iters_eta in (eta, 1e3 * eta):  # the series and (kappa >= 1/2) the loop
        calls.clear()
        bound = st.norm_bound_A(phi_t, dphi_t, rho_t)
        ref = st.power_iteration_radius(apply, iters_eta, v0, 20, bound, tol=1e-12)
        ref_calls = len(calls)
        calls.clear()
        seen.clear()
        got = st.power_iteration_radius(apply, iters_eta, v0, 20, tol=1e-12, first_pass=first_pass)
        assert len(seen) == 1 and np.linalg.norm(seen[0]) == pytest.approx(1.0, abs=1e-15)
        assert len(calls) + 1 == ref_calls
        assert got == pytest.approx(ref, rel=1e-6 * iters_eta * bound, abs=0)


def test_critical_step_hand_values():
    assert sp.critical_step(np.array([2.0 + 0j])) == pytest.approx(1.0)
    assert sp.critical_step(np.array([1 + 1j, 1 - 1j, 4.0])) == pytest.approx(0.5)
    assert sp.critical_step(np.array([-1.0 + 0j])) == math.inf


def test_spectral_noise_is_half_the_operator_norm():
    rng = np.random.default_rng(2)
    A_1, A_2 = rng.normal(size=(80, 80)), rng.normal(size=(80, 80))
    ref = np.linalg.norm(A_1 - A_2, 2) / 2
    assert sp.spectral_noise(A_1, A_2, rng.normal(size=80)) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("D", [300, 800])
def test_spectral_noise_tolerance_costs_fewer_products_not_accuracy(D, monkeypatch):
    """SVDS_TOL / SVDS_NCV: on random differences (clustered top singular values, harder
    than a TD matrix's) the norm stays within 1e-7 relative of the float64 one (the bound
    is SVDS_TOL / 2), with fewer products than scipy's defaults (tol 1e-6, ncv 20)."""
    calls = []
    operator = sp.float32_operator

    def counted(A32):
        op = operator(A32)
        return ssla.LinearOperator(
            op.shape,
            matvec=lambda x: calls.append(1) or op.matvec(x),
            rmatvec=lambda x: calls.append(1) or op.rmatvec(x),
            dtype=op.dtype,
        )

    monkeypatch.setattr(sp, "float32_operator", counted)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        A_1, A_2 = rng.normal(size=(D, D)), rng.normal(size=(D, D))
        ref = np.linalg.norm(A_1 - A_2, 2) / 2
        v0 = rng.normal(size=D)
        calls.clear()
        assert sp.spectral_noise(A_1, A_2, v0) == pytest.approx(ref, rel=1e-7, abs=0)
        ours = len(calls)
        calls.clear()
        E32 = (A_1 - A_2).astype(np.float32)
        ssla.svds(counted(E32), k=1, v0=v0, tol=1e-6, return_singular_vectors=False)
        assert ours < len(calls)


def synthetic_A(D: int = 300, seed: int = 3) -> np.ndarray:
    """Known spectrum: 6 large positive, 3 beyond-noise negative, 2 complex pairs, and
    a bulk near 0; a well-conditioned (non-normal) eigenbasis."""
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(-1e-4, 1e-4, D - 13)
    real = np.concatenate([np.linspace(0.2, 1.0, 6), [-0.05, -0.02, -0.01], bulk])
    blocks = [np.diag(real)]
    for re, im in ((0.3, 0.2), (0.004, 0.3)):
        blocks.append(np.array([[re, im], [-im, re]]))
    Lam = np.zeros((D, D))
    start = 0
    for blk in blocks:
        k = blk.shape[0]
        Lam[start : start + k, start : start + k] = blk
        start += k
    V = np.eye(D) + 0.2 * rng.normal(size=(D, D)) / math.sqrt(D)
    return V @ Lam @ np.linalg.inv(V)


@pytest.mark.parametrize("noise", [1e-3, 3e-3])
def test_krylov_spectrum_matches_dense_float64(noise):
    """Forcing the Krylov path (dense_max=0) reproduces every dense-spectrum number that is
    resolved above the noise, on a matrix with a known spectrum."""
    A = synthetic_A()
    v0 = np.random.default_rng(0).normal(size=A.shape[0])
    dense = sp.spectrum_row(sp.eigenvalues(A, noise, v0), 0.1)
    krylov_spec = sp.eigenvalues(A, noise, v0, dense_max=0)
    krylov = sp.spectrum_row(krylov_spec, 0.1)
    assert dense["spectrum_dense"] == 1.0 and krylov["spectrum_dense"] == 0.0
    assert krylov["spectrum_complete_above_noise"] == 1.0
    keys = (
        "eig_min_real",
        "eig_max_real",
        "eig_max_abs",
        "critical_step",
        "fastest_timescale",
        "slowest_timescale",
        "growth_timescale",
        "modes_above_noise",
    )
    for key in keys:
        assert krylov[key] == pytest.approx(dense[key], rel=1e-5), key
    assert dense["eig_min_real"] == pytest.approx(-0.05, rel=1e-9)
    assert dense["critical_step"] == pytest.approx(2 * 0.004 / (0.004**2 + 0.3**2), rel=1e-9)
    assert dense["growth_timescale"] == pytest.approx(1 / (0.1 * 0.05), rel=1e-9)


def test_incomplete_krylov_spectrum_adds_shift_invert_sets():
    """Noise below the bulk: the largest-modulus set cannot contain every eigenvalue above
    the noise, so LR and shift-invert sets around +-noise are added; the extremes still
    match the dense spectrum and the min-Re bound brackets the dense minimum."""
    A = synthetic_A()
    v0 = np.random.default_rng(0).normal(size=A.shape[0])
    noise = 1e-5
    dense = sp.spectrum_row(sp.eigenvalues(A, noise, v0), 0.1)
    spec = sp.eigenvalues(A, noise, v0, dense_max=0)
    krylov = sp.spectrum_row(spec, 0.1)
    assert krylov["spectrum_complete_above_noise"] == 0.0
    assert spec.count > spec.lm_count
    for key in ("eig_max_real", "eig_max_abs", "critical_step", "eig_min_real"):
        assert krylov[key] == pytest.approx(dense[key], rel=1e-5), key
    assert krylov["eig_min_real_bound"] <= dense["eig_min_real"]
    assert krylov["modes_above_noise"] <= dense["modes_above_noise"]


def test_krylov_spectrum_matches_dense_on_real_td_matrix():
    """A realistic A (D = 256 critic features, 2048 samples) through both paths."""
    cfg = tiny_config("env.feature_dim=256")
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    batch = collect(
        cfg, maps, params.theta_mu, params.theta_pi, [stream(0, "probe_stability", 0, 0)], 2048
    )
    dphi_t = fp.td_difference_(batch.phi[0], batch.bar_phi[0], cfg.gamma)
    moments = fp.td_moments(batch.phi[0], dphi_t, batch.rho[0], batch.r[0])
    v0 = np.random.default_rng(1).normal(size=maps.D)
    noise = sp.spectral_noise(*moments.A_halves, v0=v0)
    dense = sp.spectrum_row(sp.eigenvalues(moments.A, noise, v0), 0.08)
    krylov = sp.spectrum_row(sp.eigenvalues(moments.A, noise, v0, dense_max=0), 0.08)
    for key in ("eig_max_real", "eig_max_abs", "critical_step", "fastest_timescale"):
        assert krylov[key] == pytest.approx(dense[key], rel=1e-5), key
    if krylov["spectrum_complete_above_noise"]:
        for key in ("slowest_timescale", "growth_timescale", "modes_above_noise"):
            assert krylov[key] == pytest.approx(dense[key], rel=1e-5), key
    assert dense["growth_timescale"] == math.inf or dense["eig_min_real"] < -noise
    # eig_min_real above DENSE_MAX is the certified bound over the whole spectrum (never the
    # minimum of the Krylov subset, which only bounds it from above)
    assert krylov["eig_min_real"] == krylov["eig_min_real_bound"]
    assert krylov["eig_min_real_is_bound"] == 1.0 and dense["eig_min_real_is_bound"] == 0.0
    assert krylov["eig_min_real"] <= dense["eig_min_real"] <= krylov["eig_min_real_computed"]
    assert abs(krylov["eig_min_real"] - dense["eig_min_real"]) <= noise
    assert dense["eig_min_real_bound"] == dense["eig_min_real"]
