"""What a probe round keeps alive (issue 28, peak memory): the critic probes' feature
groups and released buffers, and the counterfactual predictions' reduced reads."""

from __future__ import annotations

import numpy as np
import pytest
from probe_testlib import snapshot, tiny_config

from tdlens.features import Workspace
from tdlens.probes import common, critic
from tdlens.probes import expected as ex
from tdlens.probes import fixed_point as fp
from tdlens.probes.common import plan_chains, roll_chains


@pytest.fixture(scope="module")
def round_inputs():
    cfg = tiny_config("threads=2", "probes.stability.k_mc=4")
    maps, result = snapshot(cfg)
    plan = plan_chains(cfg)
    rolled = roll_chains(cfg, maps, result.params, plan.specs(), 0)
    return cfg, maps, result, plan, rolled


def test_critic_round_keeps_nothing(round_inputs):
    """The features, the float32 A, the block products, every LU factor, and A and its
    halves are released once used: none stays resident beside the matrix-free chains'
    features, the later probes and the training iterations until the next round (A and
    its halves, 3 x 8 D^2 bytes, made the seed run's peak there)."""
    cfg, maps, result, plan, rolled = round_inputs
    ws = Workspace()
    out = critic.critic_probes(cfg, maps, rolled, plan, result.params, 0, None, ws)
    assert "fixed_point_probe" in out.rows and "stability_probe" in out.rows
    assert ws.held_bytes() == 0


def test_solves_run_without_the_float32_A(round_inputs, monkeypatch):
    """The float32 copy of A is released before the fixed-point solves (the power
    iteration on it runs first): during the solves the workspace holds the explicit
    chain's features, A and its halves, nothing more (docs/model.md §6.1)."""
    cfg, maps, result, plan, rolled = round_inputs
    held: list[int] = []
    solve = critic.solve_fixed_point

    def spy(cfg, moments, spectrum, w, workspace, *args, **kwargs):
        held.append(workspace.held_bytes())
        return solve(cfg, moments, spectrum, w, workspace, *args, **kwargs)

    monkeypatch.setattr(critic, "solve_fixed_point", spy)
    critic.critic_probes(cfg, maps, rolled, plan, result.params, 0, None, Workspace())
    D, n = cfg.env.feature_dim, plan.fixed.samples
    features = 2 * n * D * np.dtype(maps.dtype).itemsize
    assert held == [features + 3 * 8 * D * D]


def test_full_solve_lane_hands_its_w_sharp_to_beside_without_its_factor(round_inputs):
    """The full solve's lane of solve_fixed_point runs `beside` with the full w#, after
    modes_below_lam is counted and its LU factor released (so at most the half-batch
    lane's factor is alive beside it), and every number is the same on one thread and
    on two; the workspace holds after the solves what it held before."""
    cfg, maps, result, plan, rolled = round_inputs
    ws = Workspace()
    probe_cfg = critic.probe_config(cfg)
    batch = rolled.difference_batch(probe_cfg, maps, [plan.fixed], result.params.theta_pi, ws)
    view = critic.batch_view(cfg, batch, slice(0, plan.fixed.columns), plan.fixed)
    moments = fp.td_moments(view.phi_t, view.dphi_t, view.rho_t, view.r_t, workspace=ws)
    spectrum, _ = critic.spectrum_of(cfg, moments, 0, ws)
    ws.release(critic.A32_BUFFER)
    held, D = ws.held_bytes(), cfg.env.feature_dim
    seen = {}
    solves = {}
    for threads in (1, 2):

        def beside(w_sharp, threads=threads):
            seen[threads] = (w_sharp.copy(), ws.held_bytes())
            return threads

        solves[threads] = critic.solve_fixed_point(
            cfg, moments, spectrum, result.params.w, ws, threads, n=0, beside=beside
        )
        assert solves[threads].beside == threads
        assert solves[threads].full.lu is None
        np.testing.assert_array_equal(seen[threads][0], solves[threads].full.w_sharp)
        assert ws.held_bytes() == held
    assert seen[1][1] == held  # one thread: the full lane first, the halves after it
    assert seen[2][1] <= held + 8 * D * D  # two: a half's factor at most
    one, two = solves[1], solves[2]
    np.testing.assert_array_equal(one.full.w_sharp, two.full.w_sharp)
    for k in (0, 1):
        np.testing.assert_array_equal(one.halves[k], two.halves[k])
    assert one.modes == two.modes and one.full.residual == two.full.residual


def test_explicit_chain_has_its_feature_group_alone(round_inputs, monkeypatch):
    """The chain whose A is formed (the fixed-point batch, also stability batch 0) gets
    its features alone; the matrix-free chains come ``threads`` at a time after it, a
    short group first (its features reuse the explicit chain's buffers)."""
    cfg, maps, result, plan, rolled = round_inputs
    calls: list[int] = []
    difference_batch = common.RolledChains.difference_batch

    def spy(self, cfg, maps, specs, *args, **kwargs):
        calls.append(len(specs))
        return difference_batch(self, cfg, maps, specs, *args, **kwargs)

    monkeypatch.setattr(common.RolledChains, "difference_batch", spy)
    critic.critic_probes(cfg, maps, rolled, plan, result.params, 0, None, Workspace())
    assert plan.shared and len(plan.stability) == 4
    assert calls == [1, 1, 2]  # chain 0 alone, then chain 3, then chains 1 and 2


@pytest.mark.parametrize("deflates", [False, True])
def test_reduced_reads_equal_the_reduction_of_the_reads(deflates):
    """predict_many reduces each read as it is made (so the reads of all steps are never
    held together): bit for bit what reducing the kept reads gives, in the series regime
    and past it (the deflated series)."""
    rng = np.random.default_rng(3)
    D, C, n, steps = 48, 5, 96, 60
    V = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    lam = np.concatenate([[1.0, 0.7], np.geomspace(1e-3, 0.05, D - 2)])
    A = V @ np.diag(lam) @ np.linalg.inv(V)
    X = rng.standard_normal((D, 1 + C))
    phi = rng.standard_normal((n, D)).astype(np.float32)
    kappa_eta = steps * float(np.linalg.norm(A))
    etas = [0.05 / kappa_eta, 0.3 / kappa_eta] + ([0.5, 1.2] if deflates else [])
    reads = [(phi, slice(0, 1)), (phi[::4], slice(1, None))]
    reduce = (ex.path_square_mean, ex.square_sum)
    if deflates:
        assert ex._deflated_reads(A, X, etas, steps, reads) is not None
    full = ex._reads_many(A, X, etas, steps, reads)
    kept = ex._reads_many(A, X, etas, steps, reads, reduce)
    for per_full, per_kept in zip(full, kept, strict=True):
        for r, (got, small) in enumerate(zip(per_full, per_kept, strict=True)):
            assert small.shape == (steps + 1,)
            assert np.array_equal(reduce[r](got), small)
