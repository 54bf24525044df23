"""Counterfactual predictions and advice that predicts its outcome (issue 23 items 2, 4).

The override -> (eta, B) mapping against hand values for both step normalisations; the
control equals the probe's own prediction bit for bit; the regime rule and the advice
choice on hand-made paths; and, on small configs of our own (D <= 128, policies frozen
or slow, a probe at iteration 0), the advice FOLLOWED: a fresh run with the advised
setting ends (its last fixed-point probe) inside the predicted interval, and so do the
alpha_w x4 and alpha_w / 4 + trajectories x4 twins. Measured values: module fixtures
below, one source run per config shared by every test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdlens.api import load_run_config
from tdlens.config import load_config
from tdlens.probes import counterfactual as cf
from tdlens.probes import expected as ex
from tdlens.regimes import REGIME_TABLE, predicted_interventions
from tdlens.report import advice as ra
from tdlens.report.build import build_report, counterfactual_section
from tdlens.report.card import advised_action
from tdlens.report.render_json import render_json
from tdlens.rundir.read import load_array, load_run
from tdlens.runs.runner import Runner

X4_CAP = REGIME_TABLE["plateau:slow-modes"].intervention[0].cap_critical
"""The regime table's cap of alpha_w x4, as a fraction of the critical step."""
FAST = [
    "threads=1",
    "probes.plateau.enabled=false",
    "probes.distribution.enabled=false",
    "probes.q_kernel.enabled=false",
    "probes.rho_audit.enabled=false",
    "probes.stability.enabled=false",
    "probes.fixed_point.batch_size=1600",
]
"""Only the fixed-point probe (it carries the prediction and the critical step)."""
FLOAT32_PATHS = 1e-6
"""Relative agreement of two computations that are equal in exact arithmetic but multiply
the float32 batch rows in different shapes (predict_many's shared terms against one
predict): the BLAS kernel rounds such products by shape, ~4e-8 relative measured under
OPENBLAS_CORETYPE=Haswell (1e-13 with the default kernel on an AVX-512 machine); the
bound test_counterfactuals_equal_one_predict_per_setting uses for the same reason."""
CASES = {
    "plateau": (
        "regime_plateau",
        ["env.feature_dim=128", "env.actor_feature_dim=32", "alpha_pi=0", "beta=0"],
    ),
    "noise_floor": (
        "regime_noise_floor",
        ["env.feature_dim=128", "env.actor_feature_dim=32", "alpha_pi=0", "beta=0"],
    ),
    "learning": ("regime_learning", ["env.feature_dim=64", "env.actor_feature_dim=16"]),
}
"""Small variants of three shipped configs (the learning one keeps its slow policies)."""


def _run(root: Path, name: str, case: str, *extra: str) -> Path:
    base, overrides = CASES[case]
    cfg = load_run_config(base, [*FAST, *overrides, "outer_iters=30", *extra])
    Runner(cfg, root / name, handle_signals=False, write_report=False).run()
    return root / name


def _final_value_gap(run_dir: Path) -> float:
    return load_run(run_dir).probe("fixed_point_probe").last("value_gap")


def _sets(setting: dict) -> list[str]:
    return [f"{k}={v!r}" for k, v in setting.items()]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Each case run once with a probe at every iteration (so one at iteration 0)."""
    root = tmp_path_factory.mktemp("cf")
    return {case: _run(root, case, case, "probes.every=1") for case in CASES}


def _hand_config(normalization: str):
    return load_config(
        None,
        ["alpha_w=60", "trajectories=8", "horizon=100", f"step_normalization={normalization}"],
    )


@pytest.mark.parametrize("normalization", ["mean", "sqrt_batch"])
def test_overrides_map_to_eta_and_batch_by_hand(normalization):
    """eta = alpha_w s B T: mean s = 1/(B T) -> eta = alpha_w; sqrt_batch s = 1/(sqrt(B) T)
    -> eta = alpha_w sqrt(B). Hand values for alpha_w = 60, B = 8."""
    cfg = _hand_config(normalization)
    root8, root32 = (1.0, 1.0) if normalization == "mean" else (math.sqrt(8), math.sqrt(32))
    expected = {
        "{}": (60 * root8, 8),
        '{"alpha_w": 240}': (240 * root8, 8),
        '{"alpha_w": 15, "trajectories": 32}': (15 * root32, 32),
        '{"alpha_pi": 0, "beta": 0}': (60 * root8, 8),
    }
    for sets, (eta, B) in expected.items():
        got = cf.step_of(cfg, json.loads(sets))
        assert got[1] == B and got[0] == pytest.approx(eta, rel=1e-14), sets
    # alpha_w / 4 with 4x the batch: a quarter of the step (mean), half of it (sqrt_batch)
    ratio = cf.step_of(cfg, {"alpha_w": 15, "trajectories": 32})[0] / cf.step_of(cfg, {})[0]
    assert ratio == pytest.approx(0.25 if normalization == "mean" else 0.5, rel=1e-14)
    assert cf.alpha_w_for(cfg, 15 * root32, 32) == pytest.approx(15, rel=1e-14)


def _toy(D: int = 8, C: int = 6, n: int = 64, seed: int = 0) -> cf.Ingredients:
    """A small stable problem: A = Q diag(l) Q^T with l in [0.01, 1], random rows."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    A = Q @ np.diag(np.geomspace(0.01, 1.0, D)) @ Q.T
    phi = rng.standard_normal((n, D)).astype(np.float32)
    halves = tuple(
        ex.HalfBatch(
            A * (1.0 + 0.02 * k), rng.standard_normal(D), phi[k * n // 2 : (k + 1) * n // 2]
        )
        for k in range(2)
    )
    return cf.Ingredients(
        A, rng.standard_normal(D), 0.1 * rng.standard_normal((D, C)), phi, 0.01, halves
    )


@pytest.mark.parametrize("normalization", ["mean", "sqrt_batch"])
def test_control_is_the_probe_prediction_bit_for_bit_and_batches_rescale(normalization):
    cfg = _hand_config(normalization).model_copy(update={"alpha_w": 0.05, "outer_iters": 40})
    ing, n, crit = _toy(), 3, 2.0  # critical step of l_max = 1: 2 / 1
    eta = cf.step_of(cfg, {})[0]
    pred = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, eta, 8, 40, ing.est, ing.halves)
    got = {o.name: o for o in cf.counterfactuals(ing, cfg, n, crit).interventions}
    j = 40 - 1 - n
    s = pred.spread[j]
    assert got["control"].end == {
        "value_gap_end": math.hypot(pred.mid[j], s),
        "value_gap_end_lo": pred.lo[j],
        "value_gap_end_hi": pred.hi[j],
        "value_gap_end_path": pred.mid[j],
    }
    assert got["policies_frozen"].end == got["control"].end
    assert (
        got["sigma_mu_to_sigma_pi"].end is None
        and "not predictable" in got["sigma_mu_to_sigma_pi"].note
    )
    # below half its critical step: half-critical leaves the step, the bare family's
    # alpha_w / 4 (at most half critical) lowers it
    assert eta < crit / 2 and got["alpha_w_half_critical"].eta == pytest.approx(eta, rel=1e-14)
    assert got["alpha_w_div4"].eta == pytest.approx(eta / 4, rel=1e-14)
    assert got["alpha_w_div4"].set == {"alpha_w": pytest.approx(0.05 / 4, rel=1e-14)}
    x4 = got["alpha_w_x4"]
    assert x4.eta == pytest.approx(max(eta, min(4 * eta, X4_CAP * crit)), rel=1e-14)
    # the noise of 4x the batch, rescaled, against predict run with it
    quarter = got["alpha_w_div4_trajectories_x4"]
    direct = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, quarter.eta, 32, 40, ing.est, ing.halves)
    assert quarter.end["value_gap_end_hi"] == pytest.approx(direct.hi[j], rel=FLOAT32_PATHS)
    assert quarter.end["value_gap_end_lo"] == pytest.approx(
        direct.lo[j], rel=FLOAT32_PATHS, abs=1e-15
    )


def test_alpha_w_x4_is_capped_below_the_critical_step():
    cfg = _hand_config("mean").model_copy(update={"alpha_w": 1.0, "outer_iters": 10})
    got = {o.name: o for o in cf.counterfactuals(_toy(), cfg, 0, 2.0).interventions}
    assert (
        got["alpha_w_x4"].eta == pytest.approx(X4_CAP * 2.0) and "capped" in got["alpha_w_x4"].note
    )
    assert got["alpha_w_x4"].set == {"alpha_w": pytest.approx(X4_CAP * 2.0)}
    # beyond the critical step (eta = 3 > 2): the control diverges, the remedies do not
    cfs = cf.counterfactuals(
        _toy(), cfg.model_copy(update={"alpha_w": 3.0, "outer_iters": 60}), 0, 2.0
    )
    got = {o.name: o for o in cfs.interventions}
    assert got["control"].regime == "diverged" and got["alpha_w_half_critical"].regime != "diverged"
    assert got["alpha_w_half_critical"].eta == pytest.approx(1.0, rel=1e-14)
    # alpha_w / 4 = 0.75 is below half the critical step (1): not capped, and cures too
    assert got["alpha_w_div4"].eta == pytest.approx(0.75, rel=1e-14)
    assert got["alpha_w_div4"].regime != "diverged" and not got["alpha_w_div4"].note
    cfs = cf.counterfactuals(
        _toy(), cfg.model_copy(update={"alpha_w": 8.0, "outer_iters": 60}), 0, 2.0
    )
    got = {o.name: o for o in cfs.interventions}  # 8 / 4 = 2 > 1: capped at half critical
    assert got["alpha_w_div4"].eta == pytest.approx(1.0, rel=1e-14)
    assert "capped at 0.5 x critical_step" in got["alpha_w_div4"].note
    assert all(o.eta <= cf.CAP * 2.0 * (1 + 1e-12) for o in cfs.grid)
    assert all(o.regime != "diverged" for o in cfs.grid)
    rows = ra.entries(cf.to_arrays(cfs))
    assert rows[0]["predicted"]["regime"] == "diverged" and rows[-1]["kind"] == "grid"


def _path(mid, noise, est=0.0) -> ex.Prediction:
    return ex.Prediction(mid=np.asarray(mid, float), noise=np.asarray(noise, float), est=est)


def test_path_regime_rules_on_hand_paths():
    j = np.arange(11)
    zero = np.zeros(11)
    assert cf.path_regime(_path(1.0 + 20.0 * (j == 10), zero + 0.01), 10) == "diverged"
    # within 2 noise from j = 3 (first half) or only from j = 8 (second half)
    assert cf.path_regime(_path(np.exp(-j), zero + 0.05), 10) == "plateau:noise-floor"
    assert cf.path_regime(_path(np.exp(-0.5 * j), zero + 0.01), 10) == "learning"
    # w#'s own error est counts: exp(-0.3 j) is within 2 est = 0.4 from j = 4
    assert cf.path_regime(_path(np.exp(-0.3 * j), zero, est=0.2), 10) == "plateau:noise-floor"
    assert cf.path_regime(_path(np.exp(-0.3 * j), zero, est=0.0), 10) == "plateau:slow-modes"
    # a 9% fall is frozen, a 30% one a slow-modes plateau
    assert cf.path_regime(_path(1.0 - 0.009 * j, zero + 0.01), 10) == "frozen"
    assert cf.path_regime(_path(1.0 - 0.03 * j, zero + 0.01), 10) == "plateau:slow-modes"


def _row(name, kind, sets, value, B=8, hi=None):
    predicted = {
        "value_gap_end": value,
        "value_gap_end_lo": value / 2,
        "value_gap_end_hi": value * 2 if hi is None else hi,
        "value_gap_end_path": value,
        "regime": "plateau:slow-modes",
    }
    return {
        "name": name,
        "kind": kind,
        "set": sets,
        "eta": 1.0,
        "trajectories": B,
        "predicted": predicted,
        "note": "",
    }


def test_advice_takes_a_larger_batch_only_when_it_helps_and_says_when_nothing_does():
    """helps: the advice's interval lies below the unchanged run's predicted end (its top
    under the control's value_gap_end 1.0), the label rule's predicted gain > 0."""
    cfg = _hand_config("mean")
    control = _row("control", "intervention", {}, 1.0)
    own = _row("g", "grid", {"alpha_w": 100.0}, 0.5, hi=0.8)
    bigger = _row("g4", "grid", {"alpha_w": 90.0, "trajectories": 32}, 0.45, B=32)
    (advice,) = ra.advice([control, own, bigger], cfg, 1000.0)
    assert advice["set"] == {"alpha_w": 100.0} and advice["helps"]
    lower = {"value_gap_end": 0.3, "value_gap_end_hi": 0.6}
    best, at_own = ra.advice(
        [control, own, {**bigger, "predicted": {**bigger["predicted"], **lower}}], cfg, 1000.0
    )
    assert best["set"]["trajectories"] == 32 and at_own["set"] == {"alpha_w": 100.0}
    # 0.3 at 4x the batch, but its band reaches 1.2 > 1.0: the helping own batch stays
    wide = {"value_gap_end": 0.3, "value_gap_end_hi": 1.2}
    (advice,) = ra.advice(
        [control, own, {**bigger, "predicted": {**bigger["predicted"], **wide}}], cfg, 1000.0
    )
    assert advice["set"] == {"alpha_w": 100.0} and advice["helps"]
    (flat,) = ra.advice([control, _row("g", "grid", {"alpha_w": 70.0}, 1.1)], cfg, 1000.0)
    assert not flat["helps"] and "No setting within the run's" in flat["why"]
    assert "slow modes dominate" in flat["why"]


def test_a_lower_centre_whose_band_reaches_the_unchanged_end_does_not_help():
    """Centre 0.6 against the control's 1.0, but the band's top 1.2 is above it: the gain
    is within the prediction's spread, helps is false and the sentence says so; the card
    then keeps the rule's own Next. A setting whose whole band lies below (0.7, top 0.95)
    is advised over a lower centre whose band does not (0.4, top 1.2)."""
    cfg = _hand_config("mean")
    control = _row("control", "intervention", {}, 1.0)
    (overlap,) = ra.advice([control, _row("g", "grid", {"alpha_w": 70.0}, 0.6, hi=1.2)], cfg, 1e3)
    assert not overlap["helps"]
    assert "No setting within the run's" in overlap["why"]
    assert (
        "helps beyond the prediction's band: its centre is lower, but its band reaches 1.2, "
        "above the unchanged run's 1:" in overlap["why"]
    )
    assert advised_action([overlap], [], cfg, "plateau:slow-modes", "complete") is None
    rows = [
        control,
        _row("ga", "grid", {"alpha_w": 70.0}, 0.4, hi=1.2),
        _row("gb", "grid", {"alpha_w": 50.0}, 0.7, hi=0.95),
    ]
    (advice,) = ra.advice(rows, cfg, 1e3)
    assert advice["set"] == {"alpha_w": 50.0} and advice["helps"]
    assert advised_action([advice], [], cfg, "plateau:slow-modes", "complete").startswith(
        "Lower alpha_w from 60 to 50: the first probe predicts value_gap 0.7 [0.35, 0.95]"
    )
    # exactly at the control's end is not below it
    (edge,) = ra.advice([control, _row("g", "grid", {"alpha_w": 70.0}, 0.5, hi=1.0)], cfg, 1e3)
    assert not edge["helps"]


def test_stored_control_is_the_first_probes_band_and_the_report_carries_it(sources, tmp_path):
    """End to end: the stored control equals expected_dynamics_0000.npz at the last
    iteration bit for bit; run_report.json gains regime.counterfactuals and verdict.advice."""
    run_dir = sources["plateau"]
    band = load_array(run_dir / "probes" / "expected_dynamics_0000.npz")
    rows = ra.entries(load_array(run_dir / "probes" / "counterfactuals_0000.npz"))
    assert len(list((run_dir / "probes").glob("counterfactuals_*.npz"))) == 1
    pred = ex.Prediction(
        band["value_gap_pred"], band["value_gap_noise"], float(band["value_gap_est"][0])
    )
    control = rows[0]["predicted"]
    assert control["value_gap_end_path"] == pred.mid[-1]
    assert control["value_gap_end_lo"] == band["value_gap_lo"][-1]
    assert control["value_gap_end_hi"] == band["value_gap_hi"][-1]
    assert control["value_gap_end"] == math.hypot(pred.mid[-1], pred.spread[-1])
    report = json.loads(render_json(build_report(run_dir)))
    names = [c["name"] for c in report["regime"]["counterfactuals"]]
    # one per distinct intervention of the regime table, the control first
    assert names == ["control", *predicted_interventions()]
    assert set(names) == {
        "control",
        "alpha_w_x4",
        "alpha_w_div4_trajectories_x4",
        "policies_frozen",
        "alpha_w_half_critical",
        "alpha_w_div4",
        "sigma_mu_to_sigma_pi",
    }
    by_name = {c["name"]: c for c in report["regime"]["counterfactuals"]}
    assert by_name["sigma_mu_to_sigma_pi"]["predicted"] is None
    (advice,) = report["verdict"]["advice"]
    assert set(advice["predicted"]) == {
        "value_gap_end",
        "value_gap_end_lo",
        "value_gap_end_hi",
        "regime",
    }
    assert set(advice) == {"set", "predicted", "why", "helps"}


def test_a_malformed_counterfactuals_file_is_skipped(sources, tmp_path):
    run_dir = tmp_path / "copy"
    (run_dir / "probes").mkdir(parents=True)
    for name in ("config.json", "status.json", "learning_curves.csv"):
        (run_dir / name).write_bytes((sources["plateau"] / name).read_bytes())
    (run_dir / "probes" / "counterfactuals_0000.npz").write_bytes(b"not an npz")
    interventions, advice, problems = counterfactual_section(load_run(run_dir))
    assert interventions == advice == []
    (problem,) = problems
    assert "counterfactuals_0000.npz' is unreadable" in problem
    assert problem in build_report(run_dir).problems


@pytest.mark.parametrize("case", list(CASES))
def test_followed_advice_lands_in_its_interval(sources, case, tmp_path):
    """The first advice of the probe at iteration 0, run from the start: its final
    value_gap (the new run's last fixed-point probe) lies in the predicted interval. Where
    the advice helps, the unchanged run's end lies above that interval (the prediction
    tells the two apart); where it does not, the advice says so."""
    data = load_run(sources[case])
    _, advice, _ = counterfactual_section(data)
    first = advice[0]
    p = first["predicted"]
    measured = _final_value_gap(
        _run(tmp_path, "advised", case, "probes.every=0", *_sets(first["set"]))
    )
    assert p["value_gap_end_lo"] <= measured <= p["value_gap_end_hi"], (first, measured)
    unchanged = data.probe("fixed_point_probe").last("value_gap")
    if first["helps"]:
        assert unchanged > p["value_gap_end_hi"], (first, unchanged)
    else:
        assert "No setting within the run's" in first["why"]


@pytest.mark.parametrize(
    ("case", "name"),
    [("plateau", "alpha_w_x4"), ("noise_floor", "alpha_w_div4_trajectories_x4")],
)
def test_label_interventions_land_in_their_intervals(sources, case, name, tmp_path):
    """alpha_w x4 (slow modes) and alpha_w / 4 with 4x the trajectories (noise floor), run
    from the start: the final value_gap lies in the predicted interval."""
    cfs, _, _ = counterfactual_section(load_run(sources[case]))
    entry = next(c for c in cfs if c["name"] == name)
    p = entry["predicted"]
    measured = _final_value_gap(_run(tmp_path, name, case, "probes.every=0", *_sets(entry["set"])))
    assert p["value_gap_end_lo"] <= measured <= p["value_gap_end_hi"], (entry, measured)


def _gapped(D: int = 48, C: int = 5, n: int = 96, seed: int = 1) -> cf.Ingredients:
    """A non-normal A with two fast modes (1 and 0.7) over a slow bulk in [1e-3, 0.05]
    (the seed run's shape: two eigenvalues ~10x the rest), halves perturbed."""
    rng = np.random.default_rng(seed)
    V = np.eye(D) + 0.1 * rng.standard_normal((D, D))
    lam = np.concatenate([[1.0, 0.7], np.geomspace(1e-3, 0.05, D - 2)])
    A = V @ np.diag(lam) @ np.linalg.inv(V)
    phi = rng.standard_normal((n, D)).astype(np.float32)
    halves = tuple(
        ex.HalfBatch(
            A + 1e-3 * rng.standard_normal((D, D)),
            rng.standard_normal(D),
            phi[k * n // 2 : (k + 1) * n // 2],
        )
        for k in range(2)
    )
    return cf.Ingredients(
        A, rng.standard_normal(D), 0.1 * rng.standard_normal((D, C)), phi, 0.01, halves
    )


@pytest.mark.parametrize("maker", [_toy, _gapped])
def test_predict_many_matches_predict_in_every_regime(maker):
    """predict_many (shared series terms; past the series, the deflated series or the
    stacked loop) against predict one eta at a time: steps from the series regime (kappa
    < 1/2) to 0.9 x the critical step, where _gapped deflates its two fast modes and _toy
    (no gap) loops. mid and noise agree to 1e-6 relative (float32 readouts)."""
    ing, steps = maker(), 60
    A = ing.A
    kappa_eta = steps * float(np.linalg.norm(A))  # kappa per unit eta
    top = 0.9 * 2.0 / float(np.max(np.linalg.eigvals(A).real))
    etas = [0.05 / kappa_eta, 0.3 / kappa_eta, 0.02 * top, 0.3 * top, top]
    assert etas[1] * kappa_eta < 0.5 < etas[2] * kappa_eta  # both regimes are exercised
    if maker is _gapped:  # the deflation itself, not its fallback to the loop
        X = np.concatenate([ing.e0[:, None], ing.U], axis=1)
        assert ex._deflated_reads(A, X, etas[2:], steps, [(ing.phi_t, slice(0, 1))])
    many = ex.predict_many(A, ing.e0, ing.U, ing.phi_t, etas, 8, steps, ing.est, ing.halves)
    for eta, got in zip(etas, many, strict=True):
        ref = ex.predict(A, ing.e0, ing.U, ing.phi_t, eta, 8, steps, ing.est, ing.halves)
        np.testing.assert_allclose(got.mid, ref.mid, rtol=1e-6, err_msg=str(eta))
        np.testing.assert_allclose(got.noise, ref.noise, rtol=1e-6, atol=1e-300)


def test_predict_many_on_tiny_and_diverging_problems():
    """D = 4 (no deflation) and a step past the critical one: the same as predict (an
    overflowing path stays non-finite, so its regime is diverged)."""
    ing = _toy(D=4, C=2, n=16)
    for etas in ([0.01, 5.0], [0.5, 3.0]):  # critical step 2 / 1 = 2
        many = ex.predict_many(ing.A, ing.e0, ing.U, ing.phi_t, etas, 8, 300, 0.01, ing.halves)
        for eta, got in zip(etas, many, strict=True):
            ref = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, eta, 8, 300, 0.01, ing.halves)
            np.testing.assert_allclose(got.mid, ref.mid, rtol=1e-6)
            np.testing.assert_allclose(got.noise, ref.noise, rtol=1e-6)
            assert (cf.path_regime(got, 299) == "diverged") == (eta > 2.0)


def test_counterfactuals_equal_one_predict_per_setting():
    """Every stored value of counterfactuals (prefetched with predict_many) equals the same
    outcome computed from predict itself to < 1e-6 relative (the brief's bound is 1%)."""
    cfg = _hand_config("mean").model_copy(update={"alpha_w": 0.05, "outer_iters": 40})
    ing = _gapped()
    crit = 2.0 / float(np.max(np.linalg.eigvals(ing.A).real))
    cfs = cf.counterfactuals(ing, cfg, 0, crit)
    for o in [*cfs.interventions, *cfs.grid]:
        if o.end is None:
            continue
        p = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, o.eta, 8, 40, ing.est, ing.halves)
        p = ex.Prediction(p.mid, p.noise * math.sqrt(8 / o.trajectories), p.est)
        ref = cf.outcome_of(p, o.name, o.set, o.eta, o.trajectories, cfs.j_end)
        assert o.regime == ref.regime, o.name
        for k, v in ref.end.items():
            assert o.end[k] == pytest.approx(v, rel=1e-6, abs=1e-12), (o.name, k)


def test_counterfactuals_scale_the_whole_schedule():
    """Under schedules.alpha_w = inverse_time every counterfactual is predict_scheduled
    of the schedule with its base step: alpha_w x4 is 4 x every eta_t; the control is the
    schedule itself; and no annealing is proposed on top of a schedule."""
    from tdlens.config import eta_t

    cfg = load_config(
        None,
        ["alpha_w=0.05", "trajectories=8", "horizon=100", "outer_iters=40",
         "schedules.alpha_w.kind=inverse_time", "schedules.alpha_w.t0=5"],
    )  # fmt: skip
    ing, n = _toy(), 2
    cfs = cf.counterfactuals(ing, cfg, n, 2.0)
    got = {o.name: o for o in cfs.interventions}
    t = n + 1 + np.arange(40 - n - 1)
    for name, base in (("control", 0.05), ("alpha_w_x4", 0.2)):
        etas = eta_t(cfg.schedules.alpha_w, base, t)
        p = ex.predict_scheduled(ing.A, ing.e0, ing.U, ing.phi_t, etas, 8, ing.est, ing.halves)
        j = cfs.j_end
        assert got[name].end["value_gap_end_path"] == pytest.approx(p.mid[j], rel=1e-12)
        assert got[name].end["value_gap_end_hi"] == pytest.approx(p.hi[j], rel=1e-12)
    assert got["alpha_w_x4"].end["value_gap_end_path"] < got["control"].end["value_gap_end_path"]
    assert cfs.schedules == []


def test_a_scheduled_setting_too_costly_to_follow_uses_its_mean_step(monkeypatch):
    """Past the series regime a scheduled noise costs ~steps^2 C D^2: above SCHEDULED_FLOPS
    (forced to 0 here) the schedule's mean step stands in, and the note says so."""
    from tdlens.config import eta_t

    monkeypatch.setattr(cf, "SCHEDULED_FLOPS", 0.0)
    cfg = load_config(
        None,
        ["alpha_w=0.05", "trajectories=8", "horizon=100", "outer_iters=40",
         "schedules.alpha_w.kind=inverse_time", "schedules.alpha_w.t0=5"],
    )  # fmt: skip
    ing = _toy()
    got = {o.name: o for o in cf.counterfactuals(ing, cfg, 2, 2.0).interventions}
    mean = float(np.mean(eta_t(cfg.schedules.alpha_w, 0.2, 3 + np.arange(37))))
    p = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, mean, 8, 40, ing.est, ing.halves)
    x4 = got["alpha_w_x4"]
    assert x4.end["value_gap_end_path"] == pytest.approx(p.mid[37], rel=FLOAT32_PATHS)
    assert "schedule approximated by its mean step" in x4.note


def test_anneal_advice_only_under_a_noise_floor_and_only_when_lower():
    cfg = _hand_config("mean")
    control = _row("control", "intervention", {}, 1.0)
    grid = _row("g", "grid", {"alpha_w": 100.0}, 0.9)
    sched = {"schedules.alpha_w.kind": "inverse_time", "schedules.alpha_w.t0": 4.0}
    slow = _row("anneal_00", "schedule", {**sched, "schedules.alpha_w.t0": 1.0}, 0.6)
    fast = _row("anneal_01", "schedule", sched, 0.4)
    rows = [control, grid, slow, fast]
    assert len(ra.advice(rows, cfg, 1000.0)) == 1  # the control's path is not at a floor
    *_, anneal = ra.advice(rows, cfg, 1000.0, "plateau:noise-floor")
    assert anneal["set"] == sched and anneal["helps"]
    assert anneal["predicted"]["value_gap_end"] == 0.4 and "inverse_time" in anneal["why"]
    floor = {**control, "predicted": {**control["predicted"], "regime": "plateau:noise-floor"}}
    assert ra.advice([floor, grid, slow, fast], cfg, 1000.0)[-1]["set"] == sched
    higher = {**fast, "predicted": {**fast["predicted"], "value_gap_end": 1.5}}
    assert len(ra.advice([floor, grid, higher], cfg, 1000.0)) == 1


ANNEAL = [
    *FAST,
    "env.feature_dim=64",
    "alpha_w=500",
    "outer_iters=60",
    "probes.fixed_point.batch_size=4096",
]
"""configs/regime_noise_floor.yaml at D = 64 (as tests/test_schedules.py's noise-floor
run, alpha_w 500 below its critical step) over 60 iterations, with a probe batch whose
w# error stays below the constant step's floor."""


def test_followed_annealing_lands_in_its_interval(tmp_path):
    """A noise-floor run with a probe at iteration 0: the probe predicts inverse_time
    schedules, the report (a plateau whose control path the probe predicts at its noise
    floor; the label stays the family when alpha_w / 4 with 4x trajectories is not
    predicted to beat its band) advises the lowest, predicted more
    than 10% below the constant control, and a fresh run with it ends (its last
    fixed-point probe) inside the predicted interval."""
    base = load_config("configs/regime_noise_floor.yaml", [*ANNEAL, "probes.every=1"])
    Runner(base, tmp_path / "constant", handle_signals=False, write_report=False).run()
    report = build_report(tmp_path / "constant")
    assert report.regime.label in ("plateau", "plateau:noise-floor"), report.regime
    rows = ra.entries(load_array(tmp_path / "constant" / "probes" / "counterfactuals_0000.npz"))
    assert [r["kind"] for r in rows].count("schedule") >= 3
    anneal = next(a for a in report.advice if "schedules.alpha_w.kind" in a["set"])
    p = anneal["predicted"]
    control = next(r for r in rows if r["name"] == "control")["predicted"]
    assert control["regime"] == "plateau:noise-floor"
    assert p["value_gap_end"] < 0.9 * control["value_gap_end"], (p, control)
    cfg = load_config(
        "configs/regime_noise_floor.yaml", [*ANNEAL, "probes.every=0", *_sets(anneal["set"])]
    )
    Runner(cfg, tmp_path / "annealed", handle_signals=False, write_report=False).run()
    measured = _final_value_gap(tmp_path / "annealed")
    assert p["value_gap_end_lo"] <= measured <= p["value_gap_end_hi"], (anneal, measured)


def _counterfactual_arrays(maker: str, threads: int) -> dict[str, np.ndarray]:
    """Round 0's counterfactual arrays (``cf.to_arrays``) on `threads` threads of a D = 256
    problem (split_product's row blocks apply: D a multiple of SPLIT_ALIGN): "gapped"
    deflates, "toy" (no gap) takes the series and the loop (both asserted)."""
    cfg = _hand_config("mean").model_copy(update={"alpha_w": 0.05, "outer_iters": 40})
    made = _gapped(D=256, C=20, n=512) if maker == "gapped" else _toy(D=256, C=20, n=512)
    ing = dataclasses.replace(made, threads=threads)
    crit = 2.0 / float(np.max(np.linalg.eigvals(ing.A).real))
    X = np.concatenate([ing.e0[:, None], ing.U], axis=1)
    deflated = ex._deflated_reads(ing.A, X, [0.5 * crit], 40, [(ing.phi_t, slice(0, 1))])
    assert (deflated is not None) == (maker == "gapped")
    return cf.to_arrays(cf.counterfactuals(ing, cfg, 0, crit))


def _assert_same_bits(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("maker", ["gapped", "toy"])
def test_round0_counterfactuals_same_bits_on_one_and_two_threads_and_unsplit(maker, monkeypatch):
    """The counterfactual arrays are bit for bit the same on 1 and 2 threads (with a gap:
    the halves side by side, then the batch's products split by rows, its readouts and
    etas on the threads; without: the three side by side) and the same as with every
    product with A made whole (SPLIT_ALIGN out of reach: the products before the split)."""
    assert 256 % ex.SPLIT_ALIGN == 0  # the products split
    one = _counterfactual_arrays(maker, 1)
    _assert_same_bits(_counterfactual_arrays(maker, 2), one)
    monkeypatch.setattr(ex, "SPLIT_ALIGN", 2**40)
    _assert_same_bits(_counterfactual_arrays(maker, 1), one)


@pytest.mark.parametrize("coretype", ["Haswell", "Prescott"])
def test_round0_counterfactuals_same_bits_under_other_openblas_kernels(coretype):
    """The test above in a fresh process whose OpenBLAS runs its `coretype` kernels."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pytest, test_counterfactual as t\n"
        "same = t.test_round0_counterfactuals_same_bits_on_one_and_two_threads_and_unsplit\n"
        "for maker in ('gapped', 'toy'):\n"
        "    with pytest.MonkeyPatch.context() as mp:\n"
        "        same(maker, mp)"
    )
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
