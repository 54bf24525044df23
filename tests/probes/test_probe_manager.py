"""Probe manager (docs/model.md §6): rows and summaries, resume identity, isolation from
training."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from probe_testlib import snapshot, tiny_config

from tdlens.features import make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes import registry
from tdlens.probes.common import RHO_COLUMNS, plan_chains
from tdlens.probes.manager import ProbeManager


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    maps, result = snapshot(cfg)
    return cfg, maps, result


def run_round(manager, result, n, reason="every"):
    return manager.run(n, result.params, result.delta, result.metrics["td_loss"], reason)


def test_round_rows_summary_and_arrays(tiny):
    cfg, maps, result = tiny
    out = run_round(ProbeManager(cfg, maps), result, 4)
    assert set(out.rows) == set(registry.names())
    for name, row in out.rows.items():
        assert next(iter(row)) == "iter" and row["iter"] == 4.0, name
        assert all(isinstance(v, float) for v in row.values()), name
    for name in ("fixed_point_probe", "stability_probe", "distribution_probe", "rho_audit"):
        assert set(RHO_COLUMNS) <= set(out.rows[name]), name
    assert set(out.summary) == set(registry.summary_columns()[1:])
    assert out.summary["fixed_point_drift_defined"] == 0.0
    assert out.summary["fixed_point_drift"] == 0.0
    fixed = out.rows["fixed_point_probe"]
    assert fixed["converged"] == 1.0 and fixed["residual"] <= 1e-8
    assert fixed["modes_below_lam_exact"] == 1.0
    stab = out.rows["stability_probe"]
    assert stab["stability_probe_step_scale"] == cfg.train_step_scale
    assert stab["eta"] == pytest.approx(cfg.alpha_w * cfg.step_scale * 4 * 32)
    assert out.rows["rho_audit"]["passed"] == 1.0
    assert out.rows["q_kernel_probe"]["td_loss_from_Q_cache_rel_diff"] < 1e-12
    assert set(out.arrays) == {
        "q_kernel_0004.npz",
        "q_kernel_lag_0004.npy",
        "rho_hist_0004.npy",
        "stability_eigs_0004.npy",
        "expected_dynamics_0004.npz",
        "counterfactuals_0004.npz",  # the run's first fixed-point round only
    }
    pred = out.arrays["expected_dynamics_0004.npz"]
    steps = cfg.outer_iters - 4
    assert pred["iters"].tolist() == list(range(4, 4 + steps))
    assert pred["value_gap_pred"].shape == (steps,) and np.all(pred["value_gap_pred"] >= 0)
    assert pred["value_gap_pred"][0] == pytest.approx(fixed["value_gap"], rel=1e-5)
    assert np.all(pred["value_gap_lo"] <= pred["value_gap_hi"])
    assert np.all(pred["value_gap_pred"] <= pred["value_gap_hi"])
    assert out.rows["fixed_point_probe"]["value_noise_floor"] > 0
    factor = out.arrays["q_kernel_0004.npz"]["gram_factor"]
    assert factor.shape == (cfg.probes.q_kernel.cache_batch_size, 20)
    # the saved factor is the cache itself: its Gram matrix is the kernel the row came from
    assert np.mean(factor**2) == out.rows["q_kernel_probe"]["td_loss_cache"]
    assert out.arrays["rho_hist_0004.npy"].shape == (cfg.probes.rho_audit.batch_size,)
    assert out.timings["total"] >= out.timings["rollout"] > 0


def test_common_random_numbers(tiny):
    """CRN on: the same snapshot probed at two iterations gives identical rows (and drift 0);
    CRN off: fresh draws."""
    cfg, maps, result = tiny
    manager = ProbeManager(cfg, maps)
    a, b = run_round(manager, result, 4), run_round(manager, result, 9)
    for name in registry.names():
        assert {
            k: v for k, v in a.rows[name].items() if k not in ("iter", "w_sharp_drift_defined")
        } == {k: v for k, v in b.rows[name].items() if k not in ("iter", "w_sharp_drift_defined")}
    assert b.summary["fixed_point_drift"] == 0.0 and b.summary["fixed_point_drift_defined"] == 1.0
    fresh = ProbeManager(tiny_config("probes.common_random_numbers=false"), maps)
    c, d = run_round(fresh, result, 4), run_round(fresh, result, 9)
    assert c.rows["distribution_probe"]["mmd2"] != d.rows["distribution_probe"]["mmd2"]
    assert d.summary["fixed_point_drift"] > 0


def test_resumed_manager_gives_identical_rows(tiny):
    cfg, maps, result = tiny
    params = result.params
    snapshots = [params]
    for n in range(1, 4):
        snapshots.append(outer_iteration(cfg, maps, snapshots[-1], n).params)
    deltas = [result.delta * (1 + 0.1 * n) for n in range(4)]

    def run(manager, n):
        return manager.run(n, snapshots[n], deltas[n], float(np.mean(deltas[n] ** 2)), "every")

    straight = ProbeManager(cfg, maps)
    reference = [run(straight, n) for n in range(4)]
    first = ProbeManager(cfg, maps)
    for n in range(2):
        run(first, n)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in first.state_dict().items()})
    buffer.seek(0)
    resumed = ProbeManager(cfg, maps)
    with np.load(buffer, allow_pickle=False) as stored:
        resumed.load_state_dict(dict(stored))
    for n in range(2, 4):
        out = run(resumed, n)
        assert out.rows == reference[n].rows
        assert out.summary == reference[n].summary
        for key, array in out.arrays.items():
            ref = reference[n].arrays[key]
            if isinstance(array, dict):  # an .npz: several named arrays
                assert array.keys() == ref.keys()
                for name in array:
                    np.testing.assert_array_equal(array[name], ref[name])
            else:
                np.testing.assert_array_equal(array, ref)
    assert resumed.state_dict()["schedule_rounds"] == 4
    assert reference[3].summary["fixed_point_drift_defined"] == 1.0
    # the drift's own noise needs the previous round's split w#_1 - w#_2: restored bit for bit
    assert first.state_dict()["w_sharp_split_prev_defined"] == 1
    assert reference[3].rows["fixed_point_probe"]["w_sharp_drift_noise"] > 0
    assert reference[0].rows["fixed_point_probe"]["w_sharp_drift_noise"] == 0.0
    # a checkpoint written before the split was kept: the drift is defined, its own
    # noise is 0 for one round (the label then falls back to noise_floor), the rest equal
    older = {k: v for k, v in first.state_dict().items() if "split" not in k}
    old = ProbeManager(cfg, maps)
    old.load_state_dict(older)
    row = run(old, 2).rows["fixed_point_probe"]
    assert row["w_sharp_drift_noise"] == 0.0 and row["w_sharp_drift_defined"] == 1.0
    ref = reference[2].rows["fixed_point_probe"]
    assert {k: v for k, v in row.items() if k != "w_sharp_drift_noise"} == {
        k: v for k, v in ref.items() if k != "w_sharp_drift_noise"
    }
    assert run(old, 3).rows == reference[3].rows


def test_probes_leave_training_bit_identical():
    """Learner metrics and parameters with the manager running between iterations equal a
    run without probes (docs/model.md §6)."""
    cfg = tiny_config()
    maps = make_feature_maps(cfg)

    def train(with_probes):
        params, manager, history, metrics = init_params(cfg, maps), ProbeManager(cfg, maps), [], []
        for n in range(3):
            result = outer_iteration(cfg, maps, params, n)
            history.append(result.metrics["td_loss"])
            if with_probes:
                run_round(manager, result, n, manager.due(n, history) or "every")
            metrics.append({k: v for k, v in result.metrics.items() if k != "iter_time_s"})
            params = result.params
        return params, metrics

    plain, probed = train(False), train(True)
    assert plain[1] == probed[1]
    for a, b in zip(
        (plain[0].w, plain[0].theta_pi, plain[0].theta_mu),
        (probed[0].w, probed[0].theta_pi, probed[0].theta_mu),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_disabled_probes_are_skipped(tiny):
    _, maps, result = tiny
    off = ("stability", "distribution", "rho_audit")
    cfg = tiny_config(*(f"probes.{s}.enabled=false" for s in off))
    out = run_round(ProbeManager(cfg, maps), result, 0)
    assert set(out.rows) == {s.name for s in registry.specs() if s.section not in off}
    assert {"fixed_point_probe", "q_kernel_probe"} <= set(out.rows)
    assert "stability_proxy" not in out.summary and "dist_mmd2" not in out.summary
    assert "fixed_point_gap" in out.summary and "td_loss_from_Q" in out.summary
    nothing = tiny_config(*(f"probes.{p}.enabled=false" for p in registry.sections()))
    empty = run_round(ProbeManager(nothing, maps), result, 0)
    assert empty.rows == {} and empty.summary == {}


def test_unshared_batches_and_iterate_solver(tiny):
    _, maps, result = tiny
    cfg = tiny_config(
        "probes.stability.batch_size=128",
        "probes.fixed_point.solver=iterate",
        "probes.fixed_point.max_iters=7",
    )
    plan = plan_chains(cfg)
    assert not plan.shared and plan.stability[0].stream == "probe_stability"
    out = run_round(ProbeManager(cfg, maps), result, 0)
    fixed = out.rows["fixed_point_probe"]
    assert fixed["num_iters"] == 7 and fixed["converged"] == 0.0
    assert fixed["lam"] == 0.0 and math.isnan(fixed["condition_est"])
    assert out.rows["stability_probe"]["batch_size"] == 128
    assert math.isfinite(out.rows["stability_probe"]["stability_proxy"])


def test_round_is_the_same_on_one_thread_and_on_two():
    """threads is not part of a run's numbers: one probe round with threads=1 and with
    threads=2 (the fixed-point solves, the Krylov runs on A and A^T (D = 800 > DENSE_MAX),
    the expected-dynamics series, the MMD sums and the split 64-trajectory rollout then
    run side by side) gives the same rows and arrays, bit for bit (LAPACK's condition
    estimate too: it is rounded to 6 significant digits, issue 26). The first round (with
    the counterfactuals) and a later one (the drift and its noise from the previous w#);
    at threads=2 the full solve's lane counts modes_below_lam by Hutchinson on its LU
    (D > DENSE_MAX), forms U from the trainer's TD errors (probes.bar_phi: exact under
    bar_phi: mc) and runs the spectral intervals, beside the half-batch solves."""
    common = ("env.feature_dim=800", "probes.stability.k_mc=8")
    rounds = []
    for threads in (1, 2):
        cfg = tiny_config(*common, f"threads={threads}")
        maps, result = snapshot(cfg)
        assert maps.threads == threads
        assert sum(c.columns for c in plan_chains(cfg).stability) >= 64
        assert cfg.probe_bar_phi != cfg.bar_phi and plan_chains(cfg).shared
        manager = ProbeManager(cfg, maps)
        rounds.append([run_round(manager, result, 1), run_round(manager, result, 2)])
    for one, two in zip(*rounds, strict=True):
        _assert_same_round(one, two)


def _assert_same_round(one, two):
    """Rows, arrays and timings of two rounds in the same order (registry order), every
    row and array bit for bit."""
    assert list(one.rows) == list(two.rows) == list(registry.names())
    assert list(one.arrays) == list(two.arrays)
    assert list(one.timings) == list(two.timings)
    for name, row in one.rows.items():
        other = dict(two.rows[name])
        assert list(row) == list(other), name
        # NaN-aware (rho_clip is NaN without a clip)
        np.testing.assert_array_equal(list(row.values()), list(other.values()), name)
    assert set(one.arrays) == set(two.arrays)
    for name, value in one.arrays.items():
        pairs = value.items() if isinstance(value, dict) else [(name, value)]
        for key, array in pairs:
            other = two.arrays[name][key] if isinstance(value, dict) else two.arrays[name]
            np.testing.assert_array_equal(array, other, err_msg=f"{name} {key}")
