"""The shipped regime configs show their regime for real (docs/model.md §13), by their own report,
and the report and the catalog always agree on a run's regime (one scoring module)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tdlens.catalog.store import index_run_dir
from tdlens.cli import app
from tdlens.config import load_config
from tdlens.features import make_feature_maps
from tdlens.learner import init_params
from tdlens.probes import examples as ex
from tdlens.probes import fixed_point as fp
from tdlens.probes import spectrum as sp
from tdlens.probes import stability as st
from tdlens.probes.common import ChainSpec, roll_chains
from tdlens.regimes import entry as regime_entry
from tdlens.report import write_report
from tdlens.report.theory import expected_dynamics
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner
from tdlens.scores import (
    DRIFT_NOISE_FACTOR,
    ERROR_GROWTH_FACTOR,
    FLOOR_FACTOR,
    GROWTH_SE_FACTOR,
    MOVING_TARGET_RATIO,
    PREDICTED_GAIN_MIN,
    regime_family,
)
from tdlens.sweeps import explain as ex_

GROWTH_RTOL = 0.25
"""growth_timescale vs the measured e-folding time of w_norm (issue #14)."""


def _checks(report: dict) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in report["health"]["checks"]}


def assert_report_and_catalog_agree(run_dir: Path, catalog: Path) -> str:
    """The report's regime is the catalog's, and critic_frozen warns exactly on frozen."""
    report = json.loads((run_dir / "run_report.json").read_text())
    index_run_dir(catalog, run_dir)
    (regime,) = (
        sqlite3.connect(catalog)
        .execute("SELECT regime FROM runs WHERE path = ?", (str(run_dir.resolve()),))
        .fetchone()
    )
    label = report["regime"]["label"]
    assert label == regime, (run_dir.name, label, regime)
    if regime_family(label) != "diverged":
        assert (_checks(report)["critic_frozen"] == "WARN") == (label == "frozen"), run_dir.name
    return label


def _mechanism_holds(label: str, ev: dict, outer_iters: int) -> bool:
    """The label's rule (tdlens.scores docstring), re-checked on the report's own numbers;
    an AssertionError for a label it has no re-check for (never a silent True). With
    counterfactuals (``gain_*`` in the evidence) a mechanism also needs its predicted gain
    beyond the band, and moving-target its drift beyond the noise floor."""
    f_s = ev["stochastic_floor"]  # None in JSON when inf: no floor, never reached
    at_floor = f_s is not None and math.isfinite(f_s) and ev["value_gap_last"] <= FLOOR_FACTOR * f_s
    predicted = "gain_slow_modes" in ev

    def gain(key: str) -> bool:
        return not predicted or ev[key] > PREDICTED_GAIN_MIN

    if label == "learning":
        return ev["falling"] == 1.0 and (at_floor or ev["tau_obs"] <= outer_iters)
    if label == "plateau:noise-floor":
        return at_floor and ev["fall_second_half"] <= ev["fall_noise"] and gain("gain_noise_floor")
    if label == "plateau:moving-target":
        drifts = not predicted or ev["drift_over_noise"] > DRIFT_NOISE_FACTOR
        moving = ev["drift_ratio"] >= MOVING_TARGET_RATIO and drifts
        return not at_floor and moving and gain("gain_moving_target")
    if label == "plateau:slow-modes":
        slow = ev["tau_obs"] > outer_iters
        return not at_floor and slow and gain("gain_slow_modes")
    if label == "plateau" and predicted:  # no mechanism's intervention predicted to help
        if at_floor:
            return ev["gain_noise_floor"] <= PREDICTED_GAIN_MIN
        moving = (
            ev["drift_ratio"] >= MOVING_TARGET_RATIO
            and ev["drift_over_noise"] > DRIFT_NOISE_FACTOR
            and ev["gain_moving_target"] > PREDICTED_GAIN_MIN
        )
        return not moving and ev["gain_slow_modes"] <= PREDICTED_GAIN_MIN
    raise AssertionError(f"no rule re-check for regime label {label!r}: add one here")


def test_mechanism_recheck_refuses_unknown_labels():
    ev = {"value_gap_last": 1.0, "stochastic_floor": 1.0, "drift_ratio": 0.0, "tau_obs": 1.0}
    with pytest.raises(AssertionError, match="plateau:rho-variance"):
        _mechanism_holds("plateau:rho-variance", ev, 10)


def test_mechanism_recheck_never_puts_a_run_at_an_infinite_floor():
    """An infinite stochastic_floor (None in run_report.json) is no floor: a flat run above
    it is a slow-modes plateau, not at its floor (tdlens.scores)."""
    ev = {"value_gap_last": 1.0, "tau_obs": math.inf, "fall_second_half": 0.0}
    ev["fall_noise"] = 0.1
    for f_s in (None, math.inf):
        assert _mechanism_holds("plateau:slow-modes", {**ev, "stochastic_floor": f_s}, 10)
        assert not _mechanism_holds("plateau:noise-floor", {**ev, "stochastic_floor": f_s}, 10)


SHIPPED = {
    "regime_learning": ("learning", "PASS"),
    "regime_plateau": ("plateau:slow-modes", "PASS"),
    "regime_noise_floor": ("plateau:noise-floor", "PASS"),
    "regime_divergence": ("diverged:step-size", "FAIL"),
}
"""Each shipped regime config (but the triad, below) with its label and health status."""


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Callable[[str], Path]:
    """Runs a shipped config once per module (shared by the label and causality tests)."""
    root = tmp_path_factory.mktemp("shipped")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            cfg = load_config(f"configs/{name}.yaml")
            Runner(cfg, root / name, handle_signals=False, write_report=write_report).run()
            done[name] = root / name
        return done[name]

    return get


@pytest.mark.parametrize("name", list(SHIPPED))
def test_regime_config_shows_its_regime(shipped, name):
    """Each shipped regime config gets its label, by its own report: the label, the
    mechanism's rule on the evidence numbers in run_report.json, and the same label at
    the top of run_report.md and in the catalog."""
    regime, health = SHIPPED[name]
    cfg = load_config(f"configs/{name}.yaml")
    run_dir = shipped(name)
    report = json.loads((run_dir / "run_report.json").read_text())
    assert report["health"]["status"] == health
    assert report["regime"]["label"] == regime, report["regime"]["reason"]
    if regime_family(regime) in ("learning", "plateau"):
        # JSON holds inf (tau_obs of a gap that no longer falls) as null
        ev = {k: math.inf if v is None else v for k, v in report["regime"]["evidence"].items()}
        assert _mechanism_holds(regime, ev, cfg.outer_iters), ev
        assert f"tau_obs {ev['tau_obs']:.4g}" in report["regime"]["reason"]
        steps = {s["rule"]: s["message"] for s in report["next_steps"]}
        # a plateau never reads "no issues": its mechanism, evidence and next change
        assert (regime in steps.get("plateau_mechanism", "")) == regime.startswith("plateau")
    md = (run_dir / "run_report.md").read_text()
    assert f"regime: {regime} (" in md
    assert assert_report_and_catalog_agree(run_dir, run_dir.parent / "c.sqlite") == regime
    if regime == "diverged:step-size":  # every eigenvalue of A stable, the step overshoots
        e = report["regime"]["evidence"]
        assert e["eig_min_real"] > -e["spectral_noise"], e
        assert e["growth_timescale"] is None, e  # inf in JSON: no growing mode
        assert e["eta"] > 2.0 * e["critical_step"], e
    if name in ("regime_learning", "regime_plateau"):
        # issue 13: value_gap inside the first probe's predicted band (expected dynamics plus
        # minibatch noise) at >= 90% of probes, fitted decay rate within 25% of predicted
        dyn = expected_dynamics(load_run(run_dir))
        assert dyn.inside_fraction >= 0.9, dyn.inside
        assert abs(dyn.fitted_rate / dyn.predicted_rate - 1.0) <= 0.25


def test_demo_sweep_reports_and_catalog_agree(tmp_path):
    out = tmp_path / "sweeps"
    result = CliRunner().invoke(
        app, ["sweep", "configs/sweeps/demo.yaml", "--output-dir", str(out), "--jobs", "2"]
    )
    assert result.exit_code in (0, 1), result.output  # diverged runs are runs, not errors
    runs = sorted((next(out.iterdir()) / "runs").iterdir())
    assert len(runs) == 4
    labels = {assert_report_and_catalog_agree(r, tmp_path / "c.sqlite") for r in runs}
    assert labels == {"frozen", "diverged:step-size"}


def _run(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, Path]:
    cfg = load_config(f"configs/{name}.yaml", list(overrides))
    run_dir = tmp_path / name
    Runner(cfg, run_dir, handle_signals=False, write_report=write_report).run()
    return json.loads((run_dir / "run_report.json").read_text()), run_dir


def _column(path: Path, key: str) -> np.ndarray:
    with path.open() as f:
        return np.array([float(row[key]) for row in csv.DictReader(f)])


@pytest.fixture(scope="module")
def triad(shipped) -> tuple[dict, Path]:
    """One run of configs/regime_triad.yaml (~10 s): its report and run directory."""
    run_dir = shipped("regime_triad")
    return json.loads((run_dir / "run_report.json").read_text()), run_dir


CAUSAL = ("regime_plateau", "regime_noise_floor", "regime_divergence", "regime_triad")
"""The shipped configs with a plateau mechanism or divergence label (issue 23 item 6)."""


@pytest.mark.parametrize("name", CAUSAL)
def test_shipped_mechanism_config_is_causal(shipped, tmp_path, name):
    """The label's intervention twin (tdlens.sweeps.explain.INTERVENTIONS, the regime
    table's) changes the final value_gap clearly in the predicted direction (lower; for
    off-policy: eig_min_real's sign, as issue 23's table predicts): a
    FRESH run with the intervention from the start (not an explain branch: the label's
    prediction comes from the counterfactual probe at the first probe round, iteration 3
    at most 7 of 30-120, so it predicts nearly a fresh run; a fresh run needs no checkpoint),
    compared with the shipped run by explain's estimator and verdict (ln value_gap of
    the last probe rounds, Z = 2 AR(1)-inflated standard errors; a diverged run's is inf).
    The twin's overrides are the report's counterfactual entry's ``set`` (the regime
    table's, as the probe set them at its first round); explain's are the same except where
    the intervention reads the critical step, which explain takes from the newest round
    (a diverging run's policies move its A)."""
    run_dir = shipped(name)
    cfg = load_config(f"configs/{name}.yaml")
    report = json.loads((run_dir / "run_report.json").read_text())
    label = report["regime"]["label"]
    (intervention,) = ex_.INTERVENTIONS[label]
    sets = intervention.overrides(cfg, run_dir)
    assert len(list((run_dir / "probes").glob("counterfactuals_*.npz"))) == 1
    entry = next(c for c in report["regime"]["counterfactuals"] if c["name"] == intervention.name)
    if not any(o.critical_fraction for o in regime_entry(label).intervention):
        assert entry["set"] == sets
    if entry["predicted"] is not None:
        assert ex_.predicted_for(run_dir, entry["set"]) == entry["predicted"]
    twin_report, twin_dir = _run(tmp_path, name, *(f"{k}={v}" for k, v in entry["set"].items()))
    if label == "diverged:off-policy":
        # issue 23's table: the twin measures the predicted sign of eig_min_real. sigma_mu
        # = sigma_pi removes the negative mode (whole 95% interval above zero), but the
        # on-policy A's critical step (31.5) is below the triad's eta = 40: the twin still
        # diverges, by step size, so its value_gap is no test of the off-policy mechanism
        e, t = report["regime"]["evidence"], twin_report["regime"]["evidence"]
        assert e["eig_min_real_hi"] < 0 < t["eig_min_real_lo"], (e, t)
        assert twin_report["regime"]["label"] == "diverged:step-size", twin_report["regime"]
        return
    control = ex_.final_value_gap(run_dir, 0, cfg.outer_iters)
    twin = ex_.final_value_gap(twin_dir, 0, cfg.outer_iters)
    word, why = ex_.verdict(twin, control, intervention.direction)
    assert word == "confirmed", (label, sets, why)


def test_triad_report_says_off_policy_with_its_evidence(triad):
    report, run_dir = triad
    regime = report["regime"]
    assert regime["label"] == "diverged:off-policy", regime["reason"]
    assert report["health"]["status"] == "FAIL"
    assert assert_report_and_catalog_agree(run_dir, run_dir.parent / "c.sqlite") == regime["label"]
    e = regime["evidence"]
    # an eigenvalue of A below zero far beyond the (conservative) spectral noise bound
    assert e["eig_min_real"] < -3.0 * e["spectral_noise"], e
    assert math.isfinite(e["growth_timescale"]) and e["growth_timescale"] < 30, e
    assert e["w_norm_ratio"] > 20.0, e
    assert "eig_min_real" in regime["reason"] and "any step" in regime["reason"]
    # at every probe round, not only the last: the mode is there from the start
    eig = _column(run_dir / "probes" / "stability_probe.csv", "eig_min_real")
    noise = _column(run_dir / "probes" / "stability_probe.csv", "spectral_noise")
    assert np.all(eig < -3.0 * noise), (eig, noise)


def test_triad_growth_timescale_matches_measured_growth(triad):
    """The probe's ``1/(eta (-min Re l))`` against the e-folding time of ||w|| over the
    second half of the run (least-squares slope of log w_norm), within GROWTH_RTOL. The
    first-order formula itself is ~9% short of ``1/log|1 - eta l|`` at this eta."""
    _, run_dir = triad
    w_norm = _column(run_dir / "learning_curves.csv", "w_norm")
    measured = ex.timescale_of(ex.log_norm_slope(w_norm[w_norm.size // 2 :]))
    predicted = _column(run_dir / "probes" / "stability_probe.csv", "growth_timescale")[-1]
    assert abs(predicted / measured - 1.0) < GROWTH_RTOL, (predicted, measured)


def test_triad_diverges_at_a_tenth_of_the_critical_step(triad, tmp_path):
    """alpha_w = 0.1 x the positive modes' critical step (eta = alpha_w here: mean step
    normalisation) still diverges: no step size is small enough."""
    report, run_dir = triad
    critical = float(
        np.median(_column(run_dir / "probes" / "stability_probe.csv", "critical_step"))
    )
    # the shipped config itself runs below a tenth of the critical step already
    assert report["regime"]["evidence"]["eta"] <= 0.1 * critical
    tenth, tenth_dir = _run(tmp_path, "regime_triad", f"alpha_w={0.1 * critical}", "outer_iters=15")
    assert tenth["regime"]["label"] == "diverged:off-policy", tenth["regime"]["reason"]
    assert tenth["regime"]["evidence"]["eta"] == pytest.approx(0.1 * critical)
    w_norm = _column(tenth_dir / "learning_curves.csv", "w_norm")
    assert w_norm[-1] > 100.0 * w_norm[0]


SLOW_TRIAD = (
    "env.feature_dim=96",
    "gamma=0.9",
    "sigma_pi=0.5",
    "rho_clip=1",
    "alpha_w=100",
    "outer_iters=300",
    "probes.every=100",
    "probes.distribution.enabled=false",
    "probes.q_kernel.enabled=false",
    "probes.rho_audit.enabled=false",
)
"""Issue #23's counter-example (there 400 iterations, probes every 5), shortened: a
negative eigenvalue of A inside the spectral noise, so slow that the old eigenvalue rule
called the run plateau:slow-modes while ||w|| grew x5000."""


def test_slow_off_policy_growth_is_diverged_and_fails_step_stable(tmp_path):
    """Divergence read from the run: ||w|| ends ~100x above max(||w_0||, ||w#||) with a
    second-half growth rate far beyond its error; off-policy because eig_min_real's whole
    95% interval is below zero although eig_min_real is above -spectral_noise; eta is far
    below the critical step. step_stable fails, report and catalog agree (~40 s)."""
    report, run_dir = _run(tmp_path, "regime_triad", *SLOW_TRIAD)
    regime = report["regime"]
    assert regime["label"] == "diverged:off-policy", regime["reason"]
    e = regime["evidence"]
    assert e["w_norm_over_scale"] > 3 * ERROR_GROWTH_FACTOR, e
    assert e["growth_rate"] > 2 * GROWTH_SE_FACTOR * e["growth_rate_se"] > 0, e
    assert e["eig_min_real_hi"] < 0 and e["eig_min_real"] > -e["spectral_noise"], e
    assert e["eta"] < 0.2 * e["critical_step"], e
    step = next(c for c in report["health"]["checks"] if c["name"] == "step_stable")
    assert step["verdict"] == "FAIL" and "diverged:off-policy" in step["reason"], step
    assert report["health"]["status"] == "FAIL"
    assert assert_report_and_catalog_agree(run_dir, tmp_path / "c.sqlite") == regime["label"]


def test_triad_mechanism_matches_its_closed_form():
    """With theta = 0 (means 0) and rho_clip c <= min rho = (sigma_mu/sigma_pi)^2 every
    ratio is truncated, so the probes' estimator weights actions by c mu. In the coordinate
    of the action-norm feature phi[D'+3] = ||a||^2 (2-D Gaussian moments, hand value):
    ``A[-1, -1] = c (8 sigma_mu^4 - gamma 2 sigma_mu^2 2 sigma_pi^2) / sqrt(D)``,
    negative iff sigma_pi^2 > 2 sigma_mu^2 / gamma. The batch's terms are iid (actions do
    not depend on the state), so the tolerance is 5 standard errors of their mean."""
    c, s_mu, s_pi, gamma = 0.1, 0.3, 0.6, 0.99
    cfg = load_config(
        "configs/regime_triad.yaml",
        ["theta_init_scale=0", "theta_mu_offset_scale=0", f"rho_clip={c}", "threads=1"],
    )
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    spec = ChainSpec("probe_fixed_point", 0, cfg.probes.fixed_point.batch_size)
    batch = roll_chains(cfg, maps, params, [spec], 0).td_batch(cfg, maps, [spec], params.theta_pi)
    phi_t, rho_t = batch.phi[0], batch.rho[0]
    assert np.all(rho_t == c)  # every ratio truncated
    dphi_t = fp.td_difference_(phi_t, batch.bar_phi[0].copy(), gamma)
    moments = fp.td_moments(phi_t, dphi_t, rho_t, batch.r[0])
    D = phi_t.shape[1]
    closed = c * (8 * s_mu**4 - gamma * 4 * s_mu**2 * s_pi**2) / math.sqrt(D)
    terms = rho_t * phi_t[:, -1].astype(float) * dphi_t[:, -1].astype(float) / math.sqrt(D)
    se = terms.std(ddof=1) / math.sqrt(terms.size)
    assert closed < 0 and abs(moments.A[-1, -1] - closed) < 5 * se, (moments.A[-1, -1], closed)
    noise = sp.spectral_noise(*moments.A_halves, np.ones(D))
    row = sp.spectrum_row(sp.eigenvalues(moments.A, noise, np.ones(D)), cfg.alpha_w)
    assert row["eig_min_real"] < -noise and math.isfinite(row["growth_timescale"])


# ------------------------------------------------------------ textbook ground truth


def _baird_reduced_eigvals(gamma: float) -> np.ndarray:
    """Hand reduction of Baird's A to span{sum_{i<6} e_i, e_6, e_7} (the other five
    eigenvalues are 4/7, on vectors of the upper block summing to zero): with
    ``x = a U + c e_6 + e e_7``, ``A x`` has coordinates ``R [a, c, e] / 7``."""
    g = gamma
    R = np.array([[4, -2 * g, 2 - 4 * g], [0, 1 - g, 2 * (1 - g)], [12, 2 - 8 * g, 10 - 16 * g]])
    return np.sort(np.linalg.eigvals(R / 7.0).real)


def test_baird_spectrum_finds_the_negative_eigenvalue():
    problem = ex.baird(0.99)
    reduced = _baird_reduced_eigvals(0.99)
    expected = np.sort(np.concatenate([reduced, np.full(5, 4.0 / 7.0)]))
    spec = sp.eigenvalues(problem.A, 0.0, np.ones(8))
    np.testing.assert_allclose(np.sort(spec.eigvals.real), expected, atol=1e-12)
    row = sp.spectrum_row(spec, eta=0.01)
    assert row["eig_min_real"] == pytest.approx(reduced[0], abs=1e-12)
    assert reduced[0] == pytest.approx(-0.23925, abs=1e-5)
    assert row["growth_timescale"] == pytest.approx(1.0 / (0.01 * -reduced[0]), rel=1e-12)
    assert row["critical_step"] == pytest.approx(2.0 / (4.0 / 7.0), rel=1e-12)
    # the Krylov path (ARPACK on float32 products) finds the same growing mode
    krylov = sp.eigenvalues(problem.A, 1e-3, np.ones(8), dense_max=0)
    assert not krylov.dense
    assert sp.spectrum_row(krylov, 0.01)["eig_min_real"] == pytest.approx(reduced[0], abs=1e-5)


def test_baird_growth_timescale_matches_expected_td():
    """Expected TD ``w <- w + eta (b - A w)`` from Sutton & Barto's w_0 (the probes'
    expected_iterates): the e-folding time of ||w|| over the second half equals
    ``1/log|1 - eta l|`` of the dominant mode to 1e-3, and the probe's first-order
    growth_timescale to ``eta |l| / 2`` (0.12%) plus that."""
    problem, eta, steps = ex.baird(0.99), 0.01, 6000
    traj = fp.expected_iterates(problem.A, problem.b, ex.BAIRD_W0, eta, steps)
    norms = np.linalg.norm(traj, axis=0)
    measured = ex.timescale_of(ex.log_norm_slope(norms[steps // 2 :]))
    eigvals = sp.eigenvalues(problem.A, 0.0, np.ones(8)).eigvals
    exact = ex.timescale_of(ex.growth_per_iteration(eigvals, eta))
    assert measured == pytest.approx(exact, rel=1e-3)
    row = sp.spectrum_row(sp.eigenvalues(problem.A, 0.0, np.ones(8)), eta)
    assert row["growth_timescale"] == pytest.approx(measured, rel=5e-3)


def test_baird_stability_proxy_exceeds_one():
    """The stability probe's power iteration on ``J = I - eta A`` (float32 A, as the probe
    holds it) converges to ``max |1 - eta l| = 1 + 0.01 x 0.23925``: a radius above 1 at a
    step 350 times below the critical step. The runner-up mode (``1 + 0.01 x 0.02218``)
    decays relative to it by ``exp(-5000 x 0.00217)``, so 5000 iterations resolve 1e-6."""
    problem, eta = ex.baird(0.99), 0.01
    A32 = problem.A.astype(np.float32)
    radius = st.power_iteration_radius(st.dense_apply(A32), eta, np.ones(8), 5000)
    exact = float(np.max(np.abs(1.0 - eta * np.linalg.eigvals(problem.A))))
    assert exact == pytest.approx(1.0 + eta * 0.23925, abs=1e-7)
    assert radius == pytest.approx(exact, abs=1e-6) and radius > 1.0


def test_baird_sample_A_from_the_probe_estimator_is_unstable():
    """The probes' td_moments over 200k behaviour transitions (rho = 7 on solid, 0 on
    dashed) estimate A / sqrt(D); its spectrum shows the negative eigenvalue beyond the
    spectral noise and within that noise of the closed form."""
    rng = np.random.default_rng(0)
    s, s_next, rho = ex.baird_transition(rng, 200_000)
    Phi = ex.baird_features()
    phi_t = Phi[s]
    dphi_t = fp.td_difference_(phi_t, Phi[s_next], 0.99)
    moments = fp.td_moments(phi_t, dphi_t, rho, np.zeros(s.size))
    noise = sp.spectral_noise(*moments.A_halves, np.ones(8))
    row = sp.spectrum_row(sp.eigenvalues(moments.A, noise, np.ones(8)), eta=0.01)
    closed = _baird_reduced_eigvals(0.99)[0] / math.sqrt(8)
    assert row["eig_min_real"] < -5.0 * noise
    assert abs(row["eig_min_real"] - closed) < noise
    assert math.isfinite(row["growth_timescale"])


def test_baird_stochastic_td_diverges():
    """200 independent semi-gradient off-policy TD(0) runs (alpha 0.01, one transition per
    step, Sutton & Barto Figure 11.2): ||w|| grows by > 1e3 in 6000 steps in every run."""
    rng = np.random.default_rng(1)
    Phi, runs, steps, alpha, gamma = ex.baird_features(), 200, 6000, 0.01, 0.99
    w = np.tile(ex.BAIRD_W0, (runs, 1))
    for _ in range(steps):
        s, s_next, rho = ex.baird_transition(rng, runs)
        delta = gamma * np.vecdot(Phi[s_next], w) - np.vecdot(Phi[s], w)
        w += alpha * (rho * delta)[:, None] * Phi[s]
    growth = np.linalg.norm(w, axis=1) / np.linalg.norm(ex.BAIRD_W0)
    assert np.all(np.isfinite(growth)) and growth.min() > 1e3, np.quantile(growth, [0, 0.5])


@pytest.mark.parametrize("gamma", [0.6, 0.9, 0.99])
def test_two_state_w_to_2w(gamma):
    """``A = 1 - 2 gamma`` (hand value); each expected update multiplies w by
    ``1 + eta (2 gamma - 1)``, at every eta: no step size avoids divergence."""
    problem = ex.two_state(gamma)
    assert problem.A[0, 0] == pytest.approx(1.0 - 2.0 * gamma, abs=1e-15)
    for eta in (1e-4, 1e-2, 1.0):
        row = sp.spectrum_row(sp.eigenvalues(problem.A, 0.0, np.ones(1)), eta)
        assert row["eig_min_real"] == pytest.approx(1.0 - 2.0 * gamma, abs=1e-15)
        assert row["growth_timescale"] == pytest.approx(1.0 / (eta * (2 * gamma - 1)))
        assert math.isinf(row["critical_step"])  # no positive mode
        traj = fp.expected_iterates(problem.A, problem.b, np.array([1.0]), eta, 50)[0]
        np.testing.assert_allclose(traj, (1.0 + eta * (2 * gamma - 1)) ** np.arange(1, 51))
        measured = ex.timescale_of(ex.log_norm_slope(np.abs(traj)))
        assert measured == pytest.approx(1.0 / math.log1p(eta * (2 * gamma - 1)), rel=1e-9)
