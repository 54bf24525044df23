"""Next-step rules (docs/model.md §8) fire on the right synthetic data and name the values."""

from __future__ import annotations

import math

from test_report_fixtures import N_ITERS, frozen_run, healthy_run

from tdlens.regimes import LABELS
from tdlens.report import build_report
from tdlens.report.rules import ADVICE, NO_ISSUES, AdviceElsewhere
from tdlens.rundir.read import load_run


def steps(run, tmp_path) -> dict[str, str]:
    report = build_report(run.write(tmp_path / "run"))
    return {s.rule: s.message for s in report.next_steps}


def test_no_rule_fires_on_a_healthy_run(tmp_path):
    assert steps(healthy_run(), tmp_path) == {"none": NO_ISSUES}


def test_frozen_critic_fires_and_names_fastest_timescale(tmp_path):
    """docs/model.md §6.2 numbers: eta = 0.08, max Re eig(A) = 7.4e-4: ~17,000 iterations."""
    fired = steps(frozen_run(), tmp_path)
    assert "none" not in fired and NO_ISSUES not in fired.values()
    msg = fired["critic_frozen"]
    assert "fastest_timescale ~17,000 iterations" in msg
    assert "eta x max Re eig(A) = 0.08 x 0.00074 = 5.92e-05 per iteration" in msg
    assert "alpha_w up to 1.2 keeps it stable" in msg and "use alpha_w = 0.6" in msg
    assert "metrics_flat" in fired and "w_norm relative range 0" in fired["metrics_flat"]


def test_frozen_critic_within_the_critical_step(tmp_path):
    run = healthy_run()
    run.set_probe("stability_probe", "fastest_timescale", 100.0)
    msg = steps(run, tmp_path)["critic_frozen"]
    alpha_needed = 0.08 * 100.0 * 3 / N_ITERS
    assert f"alpha_w = {alpha_needed:.4g} (now 0.08)" in msg and "keeps it stable" in msg


def test_rho_variance_rule(tmp_path):
    run = healthy_run("sigma_mu=0.2", "sigma_pi=0.3")
    run.set_curve("mean_rho2", 5.0)
    msg = steps(run, tmp_path)["rho_variance"]
    assert "max mean_rho2 = 5 > 2" in msg and "raise sigma_mu from 0.2 to 0.3" in msg


def test_exploding_rule(tmp_path):
    run = healthy_run()
    run.set_curve("td_loss", lambda i: 1e-3 * 1.5**i)
    msg = steps(run, tmp_path)["exploding"]
    assert "td_loss last" in msg and "lower alpha_w from 0.08 to" in msg


def test_growing_mode_rule(tmp_path):
    run = healthy_run()
    run.set_probe("stability_probe", "eig_min_real", -1.0)
    run.set_probe("stability_probe", "growth_timescale", 12.5)
    msg = steps(run, tmp_path)["growing_mode"]
    assert "eig_min_real = -1 < -spectral_noise = -0.01" in msg
    assert "lower gamma from 0.99 to 0.98" in msg and "raise p_mix" in msg and "clip rho" in msg


def test_growing_mode_from_truncated_ratios_names_the_sigmas(tmp_path):
    """sigma_pi^2 = 0.36 > 2 sigma_mu^2 / gamma = 0.1818 with rho clipped at 1: the advice
    is the sigmas (docs/triad.md), never a tighter clip or a smaller alpha_w."""
    run = healthy_run("sigma_mu=0.3", "sigma_pi=0.6", "rho_clip=1.0")
    run.set_probe("stability_probe", "eig_min_real", -1.0)
    run.set_probe("stability_probe", "growth_timescale", 12.5)
    run.set_curve("w_norm", lambda i: 1.5**i)
    fired = steps(run, tmp_path)
    msg = fired["growing_mode"]
    assert "sigma_pi^2 = 0.36 > 2 sigma_mu^2 / gamma = 0.1818" in msg
    assert "narrow sigma_pi from 0.6 to 0.3 or widen sigma_mu from 0.3 to 0.6" in msg
    assert "clip rho" not in msg and "lowering alpha_w only slows the growth" in msg
    assert "lower alpha_w" not in fired["exploding"]
    assert "lowering alpha_w only slows it down" in fired["exploding"]


def test_growing_mode_within_noise_does_not_fire(tmp_path):
    run = healthy_run()
    run.set_probe("stability_probe", "eig_min_real", -0.005)  # inside spectral_noise 0.01
    run.set_probe("stability_probe", "growth_timescale", math.inf)
    assert "growing_mode" not in steps(run, tmp_path)


def test_fixed_point_drift_rule(tmp_path):
    run = healthy_run()
    run.set_probe("fixed_point_probe", "w_sharp_drift", lambda k: 0.0 if k == 0 else 1.0)
    msg = steps(run, tmp_path)["fixed_point_drift"]
    assert "w_sharp_drift = 1 over 5 iterations (0.2 per iteration, noise_floor 0.01)" in msg
    assert "delta_w_norm 0.02" in msg and "lower alpha_pi from" in msg


def test_fixed_point_drift_rule_reads_the_drifts_own_noise(tmp_path):
    """Where the probe records w_sharp_drift_noise, the drift must exceed DRIFT_NOISE_FACTOR
    of it (not the half-batch noise_floor, which common random numbers make far larger)."""
    run = healthy_run()
    run.set_probe("fixed_point_probe", "w_sharp_drift", lambda k: 0.0 if k == 0 else 1.0)
    run.set_probe("fixed_point_probe", "w_sharp_drift_noise", 0.6)  # 1.0 < 2 x 0.6
    assert "fixed_point_drift" not in steps(run, tmp_path)
    run.set_probe("fixed_point_probe", "w_sharp_drift_noise", 0.4)  # 1.0 > 2 x 0.4
    msg = steps(run, tmp_path / "again")["fixed_point_drift"]
    assert "(0.2 per iteration, w_sharp_drift_noise 0.4)" in msg


def test_convention_rule(tmp_path):
    run = healthy_run()
    run.set_probe("q_kernel_probe", "td_loss_from_Q_cache_rel_diff", 0.5)
    msg = steps(run, tmp_path)["convention_scale_mismatch"]
    assert "loss_convention FAIL" in msg and "no 1/2" in msg


def test_incomplete_run_rule(tmp_path):
    run = healthy_run()
    del run.curves[10:]
    run.status.update(
        status="incomplete", reason="interrupted by SIGTERM after 10 of 20 iterations", next_iter=10
    )
    msg = steps(run, tmp_path)["run_status"]
    assert "interrupted by SIGTERM after 10 of 20" in msg and "--resume" in msg


def test_other_failing_check_never_reads_no_issues(tmp_path):
    run = healthy_run()
    run.set_probe("rho_audit", "passed", 0.0)
    fired = steps(run, tmp_path)
    assert "none" not in fired and "rho_audit FAIL" in fired["health_checks"]


def test_frozen_critic_names_the_floor_and_the_alpha_w_that_reaches_it(tmp_path):
    """Issue 13: over all modes. Hand values: floor 0.03, est = 0.08 / 2, target
    sqrt(0.03^2 + 0.04^2) = 0.05; value_gap 0.5 at every probe, effective_timescale 1000:
    1000 ln(0.5 / 0.05) = 2303 iterations, alpha_w 0.08 x 2303 / (N_ITERS - first iter)."""
    run = frozen_run()
    for col, value in (
        ("value_gap", 0.5),
        ("value_gap_floor", 0.03),
        ("value_noise_floor", 0.08),
        ("effective_timescale", 1000.0),
    ):
        run.set_probe("fixed_point_probe", col, value)
    run.set_probe("stability_probe", "critical_step_lo", 1.0)
    run.set_probe("stability_probe", "critical_step_hi", 1.5)
    msg = steps(run, tmp_path)["critic_frozen"]
    first = run.probes["fixed_point_probe"][0]["iter"]
    alpha = 0.08 * 1000.0 * math.log(10.0) / (N_ITERS - first)
    assert "effective_timescale ~1,000 iterations" in msg
    assert "probe_floor 0.05 (the lowest a probe can measure" in msg
    assert "in ~2,300 more iterations" in msg  # fmt_count rounds
    assert f"alpha_w = {alpha:.4g} would reach it within the run" in msg
    assert "critical alpha_w 1.2, 95% interval 1-1.5" in msg


def test_every_plateau_label_has_its_own_advice(tmp_path):
    """The advice builders behind the regime table (tdlens.regimes): each plateau label
    its own text, no shared fallback; the family's from the table's intervention
    (alpha_w x4 = 0.32, below half the critical alpha_w 1.2); the other labels name the
    rule that advises them."""
    data = load_run(healthy_run().write(tmp_path / "run"))
    assert data.cfg is not None
    ev = {"tau_obs": math.inf, "drift_ratio": 2.0}
    texts = {
        label: builder(data, ev, data.cfg)
        for label in LABELS
        if not isinstance(builder := ADVICE[label], AdviceElsewhere)
    }
    assert sorted(texts) == [
        "plateau",
        "plateau:moving-target",
        "plateau:noise-floor",
        "plateau:slow-modes",
    ]
    assert len(set(texts.values())) == len(texts)
    assert "try alpha_w = 0.32" in texts["plateau"]
    assert "lower alpha_w from 0.08 to 0.02" in texts["plateau:noise-floor"]
    assert "alpha_pi from 0.06 to 0.015" in texts["plateau:moving-target"]
    assert ADVICE["frozen"] == AdviceElsewhere("critic_frozen")
