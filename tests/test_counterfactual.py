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

import json
import math
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
    assert got["alpha_w_half_critical"].eta == pytest.approx(crit / 2, rel=1e-14)
    x4 = got["alpha_w_x4"]
    assert x4.eta == pytest.approx(max(eta, min(4 * eta, X4_CAP * crit)), rel=1e-14)
    # the noise of 4x the batch, rescaled, against predict run with it
    quarter = got["alpha_w_div4_trajectories_x4"]
    direct = ex.predict(ing.A, ing.e0, ing.U, ing.phi_t, quarter.eta, 32, 40, ing.est, ing.halves)
    assert quarter.end["value_gap_end_hi"] == pytest.approx(direct.hi[j], rel=1e-12)
    assert quarter.end["value_gap_end_lo"] == pytest.approx(direct.lo[j], rel=1e-12, abs=1e-15)


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


def _row(name, kind, sets, value, B=8):
    predicted = {
        "value_gap_end": value,
        "value_gap_end_lo": value / 2,
        "value_gap_end_hi": value * 2,
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
    cfg = _hand_config("mean")
    control = _row("control", "intervention", {}, 1.0)
    own = _row("g", "grid", {"alpha_w": 100.0}, 0.5)
    bigger = _row("g4", "grid", {"alpha_w": 90.0, "trajectories": 32}, 0.45, B=32)
    (advice,) = ra.advice([control, own, bigger], cfg, 1000.0)
    assert advice["set"] == {"alpha_w": 100.0} and advice["helps"]
    best, at_own = ra.advice(
        [control, own, {**bigger, "predicted": {**bigger["predicted"], "value_gap_end": 0.3}}],
        cfg,
        1000.0,
    )
    assert best["set"]["trajectories"] == 32 and at_own["set"] == {"alpha_w": 100.0}
    (flat,) = ra.advice([control, _row("g", "grid", {"alpha_w": 70.0}, 0.9)], cfg, 1000.0)
    assert not flat["helps"] and "No setting within the run's" in flat["why"]
    assert "slow modes dominate" in flat["why"]


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
