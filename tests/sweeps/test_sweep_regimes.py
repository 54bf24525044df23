"""Regime labels on synthetic runs, and the seed's NaN-placeholder regression (docs/model.md
§11)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import small_config
from tdlens.catalog.records import load_record
from tdlens.rundir.files import TableWriter, atomic_write_json
from tdlens.runs.runner import curve_columns
from tdlens.scores import (
    ERROR_GROWTH_FACTOR,
    FROZEN_REL_STEP,
    GROWTH_SE_FACTOR,
    W_GROWTH_FACTOR,
    RunSeries,
    fall_noise,
    growth_evidence,
    label_regime,
    log_growth,
    measured_floor,
    regime_family,
    value_noise_floor,
)

ITERS = 40
PROBE_ITERS = [9.0, 19.0, 29.0, 39.0]


def _curves(w_norm=None, rel_step=1e-2, td_loss=None) -> dict:
    w = np.ones(ITERS) if w_norm is None else np.asarray(w_norm, float)
    td = np.linspace(1.0, 0.5, ITERS) if td_loss is None else np.asarray(td_loss, float)
    return {
        "iter": [float(i) for i in range(ITERS)],
        "td_loss": [float(x) for x in td],
        "w_norm": [float(x) for x in w],
        "delta_w_norm": [float(x) for x in rel_step * w],
        # sparse summary column: empty (None) where no probe ran
        "fixed_point_drift": [0.0 if i in PROBE_ITERS else None for i in range(ITERS)],
    }


def _fixed_point(gaps, floor=0.01) -> dict:
    # noise_floor is parameter-space; value/w ratio 1/10 puts F at `floor` in value space
    return {
        "iter": PROBE_ITERS[: len(gaps)],
        "value_gap": [float(g) for g in gaps],
        "w_gap": [10.0 * g for g in gaps],
        "noise_floor": [10.0 * floor] * len(gaps),
        "w_sharp_drift": [math.nan, *[0.1] * (len(gaps) - 1)],  # NaN at the first probe
    }


def _stability(
    fastest=5.0, growth=math.inf, eta=0.1, critical=1.0, eig=(math.nan, math.nan, math.nan)
) -> dict:
    """eig: (eig_min_real, eig_min_real_lo, eig_min_real_hi) of every round."""
    n = len(PROBE_ITERS)
    return {
        "iter": PROBE_ITERS,
        "fastest_timescale": [fastest] * n,
        "growth_timescale": [growth] * n,
        "eta": [eta] * n,
        "critical_step": [critical] * n,
        "eig_min_real": [eig[0]] * n,
        "eig_min_real_lo": [eig[1]] * n,
        "eig_min_real_hi": [eig[2]] * n,
        "spectral_noise": [0.0] * n,
        "rho_clip": [math.nan] * n,
    }


def _series(status="complete", curves=None, fixed=None, stab=None) -> RunSeries:
    return RunSeries(
        status,
        ITERS,
        curves if curves is not None else _curves(),
        fixed if fixed is not None else _fixed_point([1.0, 0.6, 0.3, 0.1]),
        stab if stab is not None else _stability(),
    )


def test_learning_value_gap_falls_far_beyond_its_noise_floor():
    r = label_regime(_series())
    assert r.label == "learning", r.reason
    assert "value_noise_floor 0.01" in r.reason


def test_learning_while_falling_into_the_floor_noise_floor_once_flat_there():
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.5, 0.1, 0.012])))
    assert r.label == "learning", r.reason
    # reached the floor in the first interval and flat since: stopped by the noise floor
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.005, 0.004, 0.004])))
    assert r.label == "plateau:noise-floor", r.reason
    assert r.evidence["gap_over_floor"] == pytest.approx(0.4)


def test_plateau_value_gap_stops_falling_above_the_floor():
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.9, 0.9, 0.9])))
    assert r.label == "plateau:slow-modes", r.reason
    assert r.evidence["tau_obs"] == math.inf
    # a fall within the noise floor is no learning either
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.99, 0.986, 0.982])))
    assert r.label == "plateau:slow-modes", r.reason


def test_frozen_by_relative_step_or_by_timescale():
    r = label_regime(_series(curves=_curves(rel_step=FROZEN_REL_STEP / 100)))
    assert r.label == "frozen" and "delta_w_norm/w_norm" in r.reason
    r = label_regime(_series(stab=_stability(fastest=17_000.0)))
    assert r.label == "frozen" and "fastest_timescale 1.7e+04" in r.reason


GROWTH = 0.12
"""Per-iteration growth rate of the synthetic diverging runs: x108 over ITERS."""


def _growing(rate=GROWTH, noise=0.0, seed=0) -> np.ndarray:
    """||w|| = exp(rate t) times lognormal noise (sd `noise`), t = 0..ITERS-1."""
    t = np.arange(ITERS)
    return np.exp(rate * t + noise * np.random.default_rng(seed).standard_normal(ITERS))


def test_diverged_by_status_non_finite_or_growth():
    assert label_regime(_series(status="diverged")).label == "diverged"
    td = np.linspace(1, 0.5, ITERS).tolist()
    td[-1] = math.inf
    assert label_regime(_series(curves=_curves(td_loss=td))).label == "diverged"
    # ||w|| x108 from 1 with no stability interval: growth read from the run, unexplained
    r = label_regime(_series(curves=_curves(w_norm=_growing(noise=0.05))))
    assert r.label == "diverged", r.reason
    ev = r.evidence
    assert ev["w_norm_over_scale"] == pytest.approx(ev["w_norm_ratio"]) and ev["w_norm_ratio"] > 50
    assert ev["growth_rate"] == pytest.approx(GROWTH, rel=0.1)
    assert 0 < ev["growth_rate_se"] < GROWTH / 10 and ev["growth_points"] == ITERS // 2
    assert "error grows" in r.reason and regime_family(r.label) == "diverged"


def test_divergence_mechanism_from_the_growth_rate_and_the_spectrum():
    w = _curves(w_norm=_growing(noise=0.05))

    def label(**stab) -> str:
        return label_regime(_series(curves=w, stab=_stability(**stab))).label

    # the growth rate matches -eta l of a negative mode (eta 0.1, l in [-1.5, -0.9]):
    # off-policy, even when the step also overshoots
    negative = (-1.2, -1.5, -0.9)
    assert label(eig=negative) == "diverged:off-policy"
    assert label(eig=negative, eta=0.1, critical=0.05) == "diverged:off-policy"
    # no negative mode can grow that fast (-eta l <= 0.001), the step overshoots: step-size
    assert label(eig=(-0.001, -0.01, 0.5), eta=0.1, critical=0.05) == "diverged:step-size"
    # the whole interval below zero, no overshoot, rate unexplained: still off-policy
    assert label(eig=(-0.008, -0.01, -0.005)) == "diverged:off-policy"
    # an interval across zero, no overshoot, a rate no mode explains: plain diverged
    assert label(eig=(-0.001, -0.01, 0.5)) == "diverged"
    # non-finite values: the mechanism still comes from the latest stability round
    td = np.linspace(1, 0.5, ITERS).tolist()
    td[-1] = math.nan
    r = label_regime(_series(curves=_curves(td_loss=td), stab=_stability(growth=10 * ITERS)))
    assert r.label == "diverged:off-policy" and "non-finite td_loss" in r.reason
    r = label_regime(_series(curves=_curves(td_loss=td), stab=_stability(eta=2.0)))
    assert r.label == "diverged:step-size"


def test_short_growth_counts_only_while_the_update_is_unstable():
    """||w|| x4.5 (< ERROR_GROWTH_FACTOR) at a steady rate: diverged when the stability
    round says the expected update is unstable (overshoot, a growth_timescale shorter
    than the run, or eig_min_real's whole 95% interval below zero: the reflected bootstrap
    covers at 95%, tests/probes/test_spectral_coverage.py), learning otherwise (an
    interval that reaches zero is no negative mode)."""
    growing = np.geomspace(1.0, 3 * W_GROWTH_FACTOR, ITERS)
    assert 3 * W_GROWTH_FACTOR < ERROR_GROWTH_FACTOR
    w = _curves(w_norm=growing)

    def regime(**stab):
        return label_regime(_series(curves=w, stab=_stability(**stab)))

    r = regime(eta=2.0)
    assert r.label == "diverged:step-size" and "overshoot" in r.reason, r.reason
    assert "expected update is unstable" in r.reason
    assert r.evidence["w_norm_ratio"] == pytest.approx(3 * W_GROWTH_FACTOR)
    assert regime(growth=10.0).label == "diverged:off-policy"
    assert regime(eig=(-0.5, -0.6, -0.4)).label == "diverged:off-policy"
    assert regime(eig=(-0.5, -0.6, 0.1)).label == "learning"
    assert regime().label == "learning"
    assert regime(growth=10 * ITERS).label == "learning"  # too slow to grow within the run
    # a flat ||w|| under an unstable update is no divergence (the mode is not excited)
    assert label_regime(_series(stab=_stability(eta=2.0))).label == "learning"


def test_value_gap_growth_is_divergence_even_with_a_steady_norm():
    """value_gap x50 over the probe rounds with ||w|| flat (w# runs away): diverged, its
    rate fitted on log(value_gap) over the rounds from the middle one on."""
    gaps = [0.1 * 50 ** (k / 3) for k in range(4)]
    r = label_regime(_series(fixed=_fixed_point(gaps), stab=_stability(eig=(-3, -4, -2))))
    assert r.label == "diverged:off-policy", r.reason
    rate = math.log(50) / 30  # per iteration: PROBE_ITERS are 10 apart
    assert r.evidence["value_gap_ratio"] == pytest.approx(50)
    assert r.evidence["growth_rate"] == pytest.approx(rate) and r.evidence["growth_points"] == 3
    # below ERROR_GROWTH_FACTOR it is no divergence (value_gap rising: a plateau)
    gaps = [0.1 * (ERROR_GROWTH_FACTOR / 2) ** (k / 3) for k in range(4)]
    r = label_regime(_series(fixed=_fixed_point(gaps), stab=_stability(eig=(-3, -4, -2))))
    assert regime_family(r.label) == "plateau", r.reason


def test_a_critic_growing_from_a_tiny_start_is_not_diverged():
    """||w|| from 0.01 to its fixed point's norm 1 (relaxation time 4 iterations) with
    AR(1) fluctuations: x100 over the run, but it ends at ||w#|| and its second-half growth
    rate is within noise, so it is learning (value_gap falls), not diverged."""
    rng = np.random.default_rng(3)
    t = np.arange(ITERS)
    ar = np.zeros(ITERS)
    for i in range(1, ITERS):
        ar[i] = 0.5 * ar[i - 1] + 0.01 * rng.standard_normal()
    w = (1.0 - 0.99 * np.exp(-t / 4.0)) * np.exp(ar)
    fixed = _fixed_point([1.0, 0.6, 0.3, 0.1])
    fixed["w_sharp_norm"] = [1.0] * 4
    r = label_regime(_series(curves=_curves(w_norm=w), fixed=fixed))
    assert r.label == "learning", r.reason
    # without a fixed-point norm ||w|| ends 100x above its start: the rate decides
    del fixed["w_sharp_norm"]
    r = label_regime(_series(curves=_curves(w_norm=w), fixed=fixed))
    assert r.label == "learning", r.reason
    ev = growth_evidence(_series(curves=_curves(w_norm=w), fixed=fixed))
    assert ev["w_norm_over_scale"] > ERROR_GROWTH_FACTOR
    assert ev["growth_rate"] <= GROWTH_SE_FACTOR * ev["growth_rate_se"], ev
    # the same curve still growing exponentially at the end: diverged
    r = label_regime(_series(curves=_curves(w_norm=0.01 * np.exp(ar + 0.15 * t)), fixed=fixed))
    assert regime_family(r.label) == "diverged", r.reason


def test_log_growth_rate_and_its_autocorrelation_robust_error():
    """Exact exponentials give their rate with zero error; on flat AR(1) noise (phi 0.5,
    n 200, 400 fixed-seed draws) the rate exceeds GROWTH_SE_FACTOR Newey-West errors in
    at most 9% of draws (one-sided nominal 2.3%; the iid formula would flag ~3x more)."""
    t = np.arange(50.0)
    fit = log_growth(t, 3.0 * np.exp(0.07 * t))
    assert fit.rate == pytest.approx(0.07, rel=1e-12) and fit.se == pytest.approx(0, abs=1e-12)
    assert math.isnan(log_growth([0.0, 1.0], [1.0, 2.0]).rate)  # fewer than 3 points
    rng = np.random.default_rng(0)
    n, draws = 200, 400
    flagged = naive = 0
    for _ in range(draws):
        x = np.zeros(n)
        eps = 0.02 * rng.standard_normal(n)
        for i in range(1, n):
            x[i] = 0.5 * x[i - 1] + eps[i]
        f = log_growth(np.arange(n), np.exp(x))
        flagged += f.rate > GROWTH_SE_FACTOR * f.se
        tc = np.arange(n) - (n - 1) / 2
        resid = x - x.mean() - f.rate * tc
        iid_se = math.sqrt(resid @ resid / (n - 2) / (tc @ tc))
        naive += f.rate > GROWTH_SE_FACTOR * iid_se
    assert flagged / draws <= 0.09, flagged
    assert naive > 2 * flagged, (naive, flagged)


def test_a_growing_mode_without_growing_w_is_not_divergence():
    # growth_timescale shorter than the run, but ||w|| steady: the mode is not excited
    r = label_regime(_series(stab=_stability(growth=10.0)))
    assert r.label == "learning", r.reason
    # ||w|| growing x5 while every mode is stable: learning towards a larger fixed point
    growing = np.geomspace(1.0, ERROR_GROWTH_FACTOR / 2, ITERS)
    assert label_regime(_series(curves=_curves(w_norm=growing))).label == "learning"


def test_empty_probe_cells_and_nan_placeholders_are_not_instability():
    # the seed labelled every probed run "instability" from NaN placeholders (docs/model.md §11)
    s = _series()
    assert any(c is None for c in s.curves["fixed_point_drift"])
    assert math.isnan(s.fixed_point["w_sharp_drift"][0])
    assert regime_family(label_regime(s).label) != "diverged"


def test_value_noise_floor_column_is_preferred():
    fixed = _fixed_point([1.0, 0.45, 0.3, 0.27])
    assert value_noise_floor(fixed) == pytest.approx(0.01)
    assert label_regime(_series(fixed=fixed)).label == "learning"
    fixed["value_noise_floor"] = [0.2] * 4  # the probe's own value-space floor wins
    assert value_noise_floor(fixed) == pytest.approx(0.2)
    assert label_regime(_series(fixed=fixed)).label == "plateau:noise-floor"


def test_td_loss_fallback_without_probe_rounds():
    rng = np.random.default_rng(0)
    falling = np.linspace(1.0, 0.2, ITERS) + 0.01 * rng.normal(size=ITERS)
    flat = 0.5 + 0.01 * rng.normal(size=ITERS)
    r = label_regime(RunSeries("complete", ITERS, _curves(td_loss=falling)))
    assert r.label == "learning" and "no value_gap" in r.reason
    assert label_regime(RunSeries("complete", ITERS, _curves(td_loss=flat))).label == "plateau"


def test_too_few_rows_is_not_available():
    curves = {k: v[:1] for k, v in _curves().items()}
    assert label_regime(RunSeries("failed", ITERS, curves)).label == "n/a"


# --------------------------------------------------------------------------- from files


def write_run(run_dir: Path, status: str = "complete", gaps=(1.0, 0.6, 0.3, 0.1)) -> Path:
    """A synthetic run directory as the Runner writes it (empty sparse cells)."""
    cfg = small_config(f"outer_iters={ITERS}")
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    atomic_write_json(
        run_dir / "status.json",
        {"status": status, "reason": None, "config_hash": cfg.config_hash(), "next_iter": ITERS},
    )
    curves = TableWriter(run_dir / "learning_curves.csv", curve_columns())
    c = _curves()
    for i in range(ITERS):
        row = {k: c[k][i] for k in ("iter", "td_loss", "w_norm", "delta_w_norm")}
        row["iter_time_s"] = 0.01
        if i in PROBE_ITERS:  # probe summary columns only on probed rows
            row.update(
                fixed_point_drift=math.nan if i == PROBE_ITERS[0] else 0.1,
                fixed_point_drift_defined=float(i != PROBE_ITERS[0]),
                probe_reason="every",
            )
        curves.append(row)
    fixed = _fixed_point(list(gaps))
    table = TableWriter(run_dir / "probes" / "fixed_point_probe.csv", list(fixed))
    for i in range(len(gaps)):
        table.append({k: v[i] for k, v in fixed.items()})
    stab = _stability()
    table = TableWriter(run_dir / "probes" / "stability_probe.csv", list(stab))
    for i in range(len(PROBE_ITERS)):
        table.append({k: v[i] for k, v in stab.items()})
    (run_dir / "run_report.json").write_text(json.dumps({"health": {"status": "PASS"}}))
    return run_dir


def test_record_from_files_with_sparse_columns(tmp_path):
    rec = load_record(write_run(tmp_path / "run"), {"alpha_w": 0.1})
    assert rec.regime == "learning", rec.regime_reason
    assert rec.status == "complete" and rec.health == "PASS" and rec.iters == ITERS
    assert rec.metrics["value_gap"] == pytest.approx(0.1)
    assert rec.metrics["td_loss"] == pytest.approx(0.5)
    assert rec.seconds == pytest.approx(0.01 * ITERS)
    assert rec.flat()["alpha_w"] == 0.1 and not rec.problems


def test_record_of_a_broken_run_never_raises(tmp_path):
    run = write_run(tmp_path / "run", status="failed")
    (run / "learning_curves.csv").write_text("iter,td_loss\n0,1,2\n")  # corrupt
    (run / "run_report.json").write_text("{not json")
    rec = load_record(run)
    assert rec.status == "failed" and rec.iters == 0 and rec.regime == "n/a"
    assert len(rec.problems) == 2
    assert load_record(tmp_path / "missing").status == "not started"


# --------------------------------------------------------------------------- plateau mechanisms


def test_slow_modes_when_value_gap_still_falls_slower_than_the_run():
    """[1, .9, .8, .7] with F = 0.01 falls beyond the noise, but at
    tau_obs = 20 / ln(0.89 / 0.69) = 78.58 iterations (hand value) > the run's 40."""
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.9, 0.8, 0.7])))
    assert r.label == "plateau:slow-modes", r.reason
    assert r.evidence["tau_obs"] == pytest.approx(20 / math.log(0.89 / 0.69))
    assert r.evidence["falling"] == 1.0 and "tau_obs 78.58 vs 40" in r.reason
    # the same shape, faster than the run: learning
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.5, 0.25, 0.125])))
    assert r.label == "learning" and r.evidence["tau_obs"] < ITERS, r.reason


def test_moving_target_when_the_fixed_point_outruns_relaxation():
    """Drift 0.1 per round in w, x value_gap/w_gap = 1/10, over 10 iterations: 1e-3 per
    iteration; relaxation 0.9 / effective_timescale 2000 = 4.5e-4: ratio 2.222 (hand)."""
    fixed = _fixed_point([1.0, 0.9, 0.9, 0.9])
    fixed["effective_timescale"] = [2000.0] * 4
    r = label_regime(_series(fixed=fixed))
    assert r.label == "plateau:moving-target", r.reason
    assert r.evidence["drift_per_iter"] == pytest.approx(1e-3)
    assert r.evidence["relaxation_per_iter"] == pytest.approx(4.5e-4)
    assert r.evidence["drift_ratio"] == pytest.approx(1e-3 / 4.5e-4)
    # falling at tau_obs 78.58 > 40 with drift 1e-3/iter: the tracking lag d tau_obs is
    # 1e-3 * 78.58 / gap_k of the gaps .9, .8, .7 of the second half (median at .8, hand
    # value 0.098): slow modes, not tracking
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.9, 0.8, 0.7])))
    assert r.evidence["relaxation_timescale"] == pytest.approx(r.evidence["tau_obs"])
    assert r.evidence["drift_ratio"] == pytest.approx(1e-3 * 20 / math.log(0.89 / 0.69) / 0.8)
    # without a fall: slowest_timescale (then fastest, 5) as the relaxation time
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.9, 0.9, 0.9])))
    assert r.label == "plateau:slow-modes" and r.evidence["relaxation_timescale"] == 5.0
    stab = _stability()
    stab["slowest_timescale"] = [3000.0] * 4
    r = label_regime(_series(fixed=_fixed_point([1.0, 0.9, 0.9, 0.9]), stab=stab))
    assert r.label == "plateau:moving-target", r.reason
    assert r.evidence["drift_ratio"] == pytest.approx(1e-3 / (0.9 / 3000))


def test_value_gap_floor_column_is_the_stochastic_floor():
    """F_s is what a probe measures at the predicted floor: the median value_gap_floor
    (0.675) combined with the probe's own w# error F/2 (F = 0.01): sqrt(0.675^2 + 0.005^2)."""
    fixed = _fixed_point([1.0, 0.9, 0.9, 0.9])
    fixed["value_gap_floor"] = [0.7, 0.6, 0.65, 0.7]
    r = label_regime(_series(fixed=fixed))
    assert r.label == "plateau:noise-floor", r.reason
    assert r.evidence["stochastic_floor"] == pytest.approx(math.sqrt(0.675**2 + 0.005**2))
    assert r.evidence["noise_floor"] == pytest.approx(0.01)


def test_an_infinite_value_gap_floor_is_no_floor_the_run_sits_at():
    """A round whose predicted noise grows has value_gap_floor inf (docs/model.md §6.1).
    When that is the median round the run has no floor: F_s is inf, gap_over_floor NaN, and
    the run is not at its floor. Before, the inf rounds were dropped (and a finite 1e9 in
    their place made the run "at its floor"): the one finite round, 0.7, made value_gap
    0.9 read as plateau:noise-floor."""
    fixed = _fixed_point([1.0, 0.9, 0.9, 0.9])
    fixed["value_gap_floor"] = [0.7, math.inf, math.inf, math.inf]
    r = label_regime(_series(fixed=fixed))
    assert r.label == "plateau:slow-modes", r.reason
    assert r.evidence["stochastic_floor"] == math.inf
    assert math.isnan(r.evidence["gap_over_floor"])
    # a minority of rounds without a floor leaves the median round's floor in force
    fixed["value_gap_floor"] = [0.7, 0.6, 0.65, math.inf]
    r = label_regime(_series(fixed=fixed))
    assert r.label == "plateau:noise-floor", r.reason
    assert r.evidence["stochastic_floor"] == pytest.approx(math.hypot(0.675, 0.005))


def test_a_gap_below_the_probes_own_error_is_at_the_floor():
    """regime_noise_floor's numbers at D = 256, alpha_w 1200 (before issue 23 retuned it):
    predicted floor 0.0036, but the probe's w# error
    F/2 = 0.0131 dominates what it can measure, so value_gap 0.011 is at the floor."""
    assert measured_floor(0.003579, 0.02615) == pytest.approx(0.013556, rel=1e-4)
    assert measured_floor(np.array([3.0, 0.0]), np.array([8.0, 2.0])) == pytest.approx([5.0, 1.0])


def test_fall_noise_from_round_to_round_jitter():
    """A line plus alternating +-e: second differences +-4e, so
    sqrt(2) std(diff2, ddof=1) / sqrt(6) = 8e/3 (hand value), below F = 0.01."""
    e = 1e-3
    gaps = np.array([1.0, 0.9, 0.8, 0.7, 0.6]) + e * np.array([1, -1, 1, -1, 1])
    assert fall_noise(gaps, 0.01) == pytest.approx(8 * e / 3)
    assert fall_noise(gaps[:4], 0.01) == 0.01  # too few rounds: F
    assert regime_family("plateau:slow-modes") == "plateau" and regime_family("frozen") == "frozen"
