"""Every health check PASSes on a healthy synthetic run and FAILs (critic_frozen: WARNs)
when the one behaviour it observes is broken (docs/model.md §8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report_fixtures import EVERY, N_ITERS, frozen_run, healthy_run

from tdlens.pages.fmt import fmt
from tdlens.report import build_report, probe_checks, sanity_checks
from tdlens.report import checks as general_checks
from tdlens.report.checks import RHO2_SANE_MAX, expected_rho2_equal_means
from tdlens.report.health import HEALTH_CHECKS
from tdlens.report.probe_checks import (
    LOSS_CV_FALLBACK,
    subsample_rel_se,
    trajectory_cv,
)
from tdlens.report.verdicts import FAIL, PASS, WARN, overall_status


def checks_of(run, tmp_path):
    report = build_report(run.write(tmp_path / "run"))
    return {c.name: c for c in report.checks}


def verdict(run, tmp_path, name):
    return checks_of(run, tmp_path)[name]


def test_healthy_run_passes_every_check(tmp_path):
    checks = checks_of(healthy_run(), tmp_path)
    assert list(checks) == [c.name for c in HEALTH_CHECKS]  # each returns its own name
    assert {n: c.verdict for n, c in checks.items()} == {n: PASS for n in checks}
    assert overall_status(list(checks.values())) == (PASS, [])


def test_every_check_function_is_registered_once():
    """A ``check_*`` function the registry lacks would never run in a report."""
    defined = {
        fn
        for module in (general_checks, probe_checks, sanity_checks)
        for name, fn in vars(module).items()
        if name.startswith("check_") and callable(fn) and fn.__module__ == module.__name__
    }
    registered = [c.run for c in HEALTH_CHECKS]
    assert len(set(registered)) == len(registered) and set(registered) == defined


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_no_nan_inf_fails_on_a_non_finite_core_value(tmp_path, bad):
    run = healthy_run()
    run.curves[3]["delta_std"] = bad
    c = verdict(run, tmp_path, "no_nan_inf")
    assert c.verdict == FAIL and "delta_std@3" in c.detail and c.observed["non_finite"] == 1


def test_probe_missing_values_ignores_rows_without_a_probe_and_undefined_drift(tmp_path):
    run = healthy_run()
    run.probes["fixed_point_probe"][0]["w_sharp_drift"] = math.nan  # defined == 0 there
    run.curves[EVERY - 1]["fixed_point_drift"] = math.nan
    c = verdict(run, tmp_path, "probe_missing_values")
    assert c.verdict == PASS and c.observed["allowed_missing"] == 2
    assert c.observed["probed_rows"] == N_ITERS // EVERY


def test_probe_missing_values_fails_on_nan_where_a_probe_ran(tmp_path):
    run = healthy_run()
    run.probes["fixed_point_probe"][2]["w_sharp_drift"] = math.nan  # defined == 1 there
    run.curves[2 * EVERY - 1]["dist_mmd2"] = None
    c = verdict(run, tmp_path, "probe_missing_values")
    assert c.verdict == FAIL and c.observed["unexpected_missing"] == 2
    assert "fixed_point_probe.w_sharp_drift@14" in c.detail
    assert "learning_curves.dist_mmd2@9" in c.detail


def test_monotone_time(tmp_path):
    run = healthy_run()
    run.curves[5]["iter"], run.curves[6]["iter"] = 6.0, 5.0
    c = verdict(run, tmp_path, "monotone_time")
    assert c.verdict == FAIL and "iter 6 -> 5" in c.detail


def test_rho_sane(tmp_path):
    run = healthy_run()
    run.curves[7]["mean_rho2"] = 150.0
    c = verdict(run, tmp_path, "rho_sane")
    assert c.verdict == FAIL and c.observed["max_mean_rho2"] == 150.0 > RHO2_SANE_MAX


def test_sigma_condition(tmp_path):
    c = verdict(healthy_run("sigma_mu=0.35", "sigma_pi=0.3"), tmp_path / "a", "sigma_condition")
    assert c.verdict == PASS
    assert c.observed["E_rho2_equal_means"] == pytest.approx(1.0757, abs=1e-4)  # docs/model.md §6.3
    c = verdict(
        healthy_run("sigma_mu=0.25", "sigma_pi=0.4", "rho_clip=0"),
        tmp_path / "b",
        "sigma_condition",
    )
    assert c.verdict == FAIL and "infinite" in c.detail
    # clipped at c, E_mu[min(rho, c)^2] <= c^2 is finite whatever the widths (issue 24)
    c = verdict(
        healthy_run("sigma_mu=0.25", "sigma_pi=0.4", "rho_clip=1"),
        tmp_path / "c",
        "sigma_condition",
    )
    assert c.verdict == PASS and "clipped at 1" in c.detail and c.observed["rho_clip"] == 1.0
    assert expected_rho2_equal_means(0.25, 0.4) == math.inf


ON_POLICY = ("beta=1.0", "sigma_mu=0.3", "sigma_pi=0.3", "theta_mu_offset_scale=0.0")


def on_policy_run():
    run = healthy_run(*ON_POLICY)
    for col, value in (
        ("mean_rho", 1.0),
        ("mean_rho2", 1.0),
        ("min_rho", 1.0),
        ("max_rho", 1.0),
        ("tracking_gap", 0.0),
    ):
        run.set_curve(col, value)
    run.set_probe("distribution_probe", "dist_action_kl", 0.0)
    run.set_probe("distribution_probe", "dist_action_tv", 0.0)
    return run


def test_on_policy_expected(tmp_path):
    assert "not applicable" in verdict(healthy_run(), tmp_path / "n", "on_policy_expected").detail
    c = verdict(on_policy_run(), tmp_path / "a", "on_policy_expected")
    assert c.verdict == PASS and "not applicable" not in c.detail
    run = on_policy_run()
    run.curves[4]["mean_rho2"] = 1.001
    c = verdict(run, tmp_path / "b", "on_policy_expected")
    assert c.verdict == FAIL and "max|mean_rho2-1|=0.001" in c.detail
    run = on_policy_run()
    run.set_probe("distribution_probe", "dist_action_kl", 0.01)
    assert verdict(run, tmp_path / "c", "on_policy_expected").verdict == FAIL


def test_no_bootstrap_expected(tmp_path):
    assert (
        "not applicable" in verdict(healthy_run(), tmp_path / "n", "no_bootstrap_expected").detail
    )
    run = healthy_run("gamma=0.0")
    c = verdict(run, tmp_path / "a", "no_bootstrap_expected")
    assert c.verdict == PASS and "positive semi-definite" in c.detail
    run.probes["stability_probe"][1]["eig_min_real"] = -0.5  # beyond spectral_noise 0.01
    c = verdict(run, tmp_path / "b", "no_bootstrap_expected")
    assert c.verdict == FAIL and "eig_min_real" in c.detail
    run = healthy_run("gamma=0.0")
    run.probes["fixed_point_probe"][0]["converged"] = 0.0
    assert verdict(run, tmp_path / "c", "no_bootstrap_expected").verdict == FAIL


def fixed_pi_run(beta: float = 0.2):
    run = healthy_run("alpha_pi=0.0", f"beta={beta}")
    run.set_curve("delta_theta_pi_norm", 0.0)
    run.set_curve("tracking_gap", lambda i: 0.3 * (1 - beta) ** (2 * (i + 1)))
    return run


def test_fixed_pi_expected(tmp_path):
    c = verdict(fixed_pi_run(), tmp_path / "a", "fixed_pi_expected")
    assert c.verdict == PASS and c.observed["max_rel_dev_decay"] < 1e-12
    run = fixed_pi_run()
    run.curves[6]["delta_theta_pi_norm"] = 1e-9
    assert verdict(run, tmp_path / "b", "fixed_pi_expected").verdict == FAIL
    run = fixed_pi_run()
    run.curves[6]["tracking_gap"] *= 1.01
    c = verdict(run, tmp_path / "c", "fixed_pi_expected")
    assert c.verdict == FAIL and "(1-beta)^2" in c.detail


def test_complete_passes_and_fails_with_the_recorded_reason(tmp_path):
    assert verdict(healthy_run(), tmp_path / "a", "complete").verdict == PASS
    run = healthy_run()
    del run.curves[10:]
    run.status.update(
        status="incomplete",
        next_iter=10,
        exit_code=130,
        reason=f"interrupted by SIGINT after 10 of {N_ITERS} iterations",
    )
    checks = checks_of(run, tmp_path / "b")
    assert checks["complete"].verdict == FAIL
    status, reasons = overall_status(list(checks.values()))
    assert status == FAIL
    assert reasons[0] == f"incomplete run: interrupted by SIGINT after 10 of {N_ITERS} iterations"
    run = healthy_run()
    del run.curves[10:]
    assert "10 of 20 rows" in verdict(run, tmp_path / "c", "complete").detail  # says complete


def test_scale_consistency(tmp_path):
    run = healthy_run()
    run.set_probe(
        "stability_probe",
        "stability_probe_step_scale",
        lambda k: run.cfg().train_step_scale * (1 + 1e-6),
    )
    c = verdict(run, tmp_path, "scale_consistency")
    assert c.verdict == FAIL and c.observed["max_abs_ratio_minus_1"] == pytest.approx(1e-6)


def test_loss_convention_fails_on_the_seeds_half_convention(tmp_path):
    """docs/model.md §9: the seed's td_loss_from_Q had a 1/2, so it read 0.5 of the cache loss."""
    run = healthy_run(arrays=True)
    for row in run.probes["q_kernel_probe"]:
        row["td_loss_from_Q"] = row["td_loss_cache"] / 2
        row["td_loss_from_Q_cache_rel_diff"] = 0.5
        row["td_loss_from_Q_rel_diff"] = abs(row["td_loss_from_Q"] / row["td_loss"] - 1)
    c = verdict(run, tmp_path, "loss_convention")
    assert c.verdict == FAIL and "td_loss_from_Q_cache_rel_diff = 0.5" in c.detail
    assert "mean signed" in c.detail  # the rows' mean is -0.49, far beyond its error


def test_loss_convention_fails_beyond_the_subsampling_error(tmp_path):
    run = healthy_run(arrays=True)
    run.probes["q_kernel_probe"][1]["td_loss_from_Q_rel_diff"] = 3.0
    c = verdict(run, tmp_path, "loss_convention")
    assert c.verdict == FAIL and "td_loss_from_Q_rel_diff = 3 >" in c.detail


def test_subsampling_tolerance_from_q_hat():
    """Hand calculation: white errors of equal variance, T steps: cv = sqrt(2 / T); the cache
    holds 2 of 4 trajectories: se = cv sqrt(1/2 - 1/4) = cv / 2."""
    assert trajectory_cv(np.eye(50) * 3e-4) == pytest.approx(math.sqrt(2 / 50))
    assert trajectory_cv(np.ones((50, 50))) == pytest.approx(math.sqrt(2))  # fully correlated
    assert trajectory_cv(np.zeros((3, 3))) == LOSS_CV_FALLBACK
    assert subsample_rel_se(0.2, 2, 4, 30, 30) == pytest.approx(0.1)
    assert subsample_rel_se(0.2, 4, 4, 30, 30) == 0.0
    assert subsample_rel_se(0.2, 4, 4, 10, 30) == pytest.approx(0.1)


def test_fixed_point_converged(tmp_path):
    run = healthy_run()
    run.set_probe("fixed_point_probe", "converged", 0.0)
    run.set_probe("fixed_point_probe", "num_iters", 2000.0)
    c = verdict(run, tmp_path, "fixed_point_converged")
    assert c.verdict == FAIL and c.observed["not_converged"] == 4 and "2000" in c.detail


def test_rho_audit(tmp_path):
    run = healthy_run()
    run.probes["rho_audit"][-1].update(
        passed=0.0, rho2_mean_emp=1.33, rho2_mean_z=12.0, max_abs_z=12.0
    )
    c = verdict(run, tmp_path / "a", "rho_audit")
    assert c.verdict == FAIL and "rho2_mean 1.33 vs theory 1.076" in c.detail
    run = healthy_run()  # passed with an unreliable z left out: PASS, as `tdlens audit rho` says
    run.set_probe("rho_audit", "reliable", 0.0)
    c = verdict(run, tmp_path / "b", "rho_audit")
    assert c.verdict == PASS and "left out" in c.detail


def test_critic_frozen_warns_on_a_frozen_critic(tmp_path):
    c = verdict(frozen_run(), tmp_path / "a", "critic_frozen")
    assert c.verdict == WARN
    assert c.observed["max_rel_step"] == pytest.approx(1e-7)
    assert c.observed["fastest_timescale"] == pytest.approx(1 / (0.08 * 7.4e-4))
    run = healthy_run()  # moving critic, but no stability probe: step criterion alone
    run.set_curve("delta_w_norm", lambda i: 1e-7 * run.curves[i]["w_norm"])
    del run.probes["stability_probe"]
    c = verdict(run, tmp_path / "b", "critic_frozen")
    assert c.verdict == WARN and "median delta_w_norm/w_norm 1e-07 < 1e-06" in c.detail
    run = healthy_run()  # the critic moves, but its fastest mode is slower than the run
    run.set_probe("stability_probe", "fastest_timescale", 500.0)
    c = verdict(run, tmp_path / "c", "critic_frozen")
    assert c.verdict == WARN and "fastest_timescale 500 > the run's 20 iterations" in c.detail
    run = healthy_run()  # a first big step, then frozen: the median decides, as in sweeps
    run.set_curve("delta_w_norm", lambda i: (1e-2 if i == 0 else 1e-7) * run.curves[i]["w_norm"])
    del run.probes["stability_probe"]
    c = verdict(run, tmp_path / "d", "critic_frozen")
    assert c.verdict == WARN and c.observed["max_rel_step"] == pytest.approx(1e-2)


@pytest.mark.parametrize(("rel_step", "expected"), [(0.9e-6, WARN), (1.1e-6, PASS)])
def test_critic_frozen_threshold_is_one_in_a_million_per_iteration(tmp_path, rel_step, expected):
    """The threshold against its documented value, not against FROZEN_REL_STEP itself:
    docs/metrics.md gives a median delta_w_norm / w_norm below 1e-6 per iteration."""
    run = healthy_run()
    run.set_curve("delta_w_norm", lambda i: rel_step * run.curves[i]["w_norm"])
    del run.probes["stability_probe"]
    assert verdict(run, tmp_path / "a", "critic_frozen").verdict == expected


def test_step_stable_passes_below_and_fails_above_the_critical_step(tmp_path):
    run = healthy_run()
    c = verdict(run, tmp_path / "a", "step_stable")
    assert c.verdict == PASS
    run.set_probe("stability_probe", "critical_step", 0.01)  # eta = 0.08 > 0.01
    c = verdict(run, tmp_path / "b", "step_stable")
    assert c.verdict == FAIL and "> critical_step" in c.detail
    run = healthy_run()
    run.set_probe("stability_probe", "growth_timescale", 3.0)  # grows within 20 iterations
    c = verdict(run, tmp_path / "c", "step_stable")
    assert c.verdict == FAIL and "growing mode" in c.detail


def test_step_stable_fails_on_a_diverged_run_below_the_critical_step(tmp_path):
    """issue #23: ||w|| growing x e^(0.5 x 19) ~ 13,000 at a steady rate diverges by the
    run's own numbers, every step below the critical step or not, with or without
    stability rows."""
    run = healthy_run()
    run.set_curve("w_norm", lambda i: math.exp(0.5 * i))
    c = verdict(run, tmp_path / "a", "step_stable")
    assert c.verdict == FAIL and "the run is diverged" in c.detail, c.detail
    assert "> critical_step" not in c.detail and "growing mode" not in c.detail
    del run.probes["stability_probe"]
    c = verdict(run, tmp_path / "b", "step_stable")
    assert c.verdict == FAIL and "no stability probe rows" in c.detail, c.detail


def test_step_stable_pairs_each_critical_step_with_its_own_probe(tmp_path):
    """Issue 13: the message once paired the last probe's critical step with the
    iterations of earlier probes. Each over-critical probe is named with its own number
    and interval."""
    run = healthy_run()
    crit = [1.0, 1.0, 0.05, 0.02]  # eta = 0.08: the last two probes are over
    run.set_probe("stability_probe", "critical_step", lambda k: crit[k % len(crit)])
    run.set_probe("stability_probe", "critical_step_lo", lambda k: 0.9 * crit[k % len(crit)])
    run.set_probe("stability_probe", "critical_step_hi", lambda k: 1.1 * crit[k % len(crit)])
    c = verdict(run, tmp_path, "step_stable")
    assert c.verdict == FAIL
    iters = [row["iter"] for row in run.probes["stability_probe"]]
    over = [(it, crit[k % len(crit)]) for k, it in enumerate(iters) if crit[k % len(crit)] < 0.08]
    for it, value in over[:5]:
        assert f"iter {fmt(it)}: {fmt(value)} ({fmt(0.9 * value)}-{fmt(1.1 * value)})" in c.detail
    assert f"iter {fmt(iters[0])}:" not in c.detail  # a stable probe is not named
