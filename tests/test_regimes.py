"""The regime table (tdlens.regimes, issue #25): every label declared once, every consumer
covers every label, and an incomplete entry or consumer fails loudly."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tdlens import regimes, scores
from tdlens.regimes import (
    LABELS,
    REGIME_TABLE,
    Override,
    RegimeTableError,
    _check_table,
    entry,
    intervention_set,
    per_label,
)
from tdlens.report import rules
from tdlens.sweeps import summary
from tdlens.sweeps.atlas.plot import label_colour, label_marker


def test_table_holds_every_family_and_mechanism():
    assert set(LABELS) == {
        "diverged",
        "diverged:off-policy",
        "diverged:step-size",
        "frozen",
        "learning",
        "plateau",
        "plateau:noise-floor",
        "plateau:moving-target",
        "plateau:slow-modes",
        "n/a",
    }
    assert scores.REGIMES == ("diverged", "frozen", "learning", "plateau")
    assert set(scores.PLATEAU_MECHANISMS) == {"slow-modes", "moving-target", "noise-floor"}
    assert set(scores.DIVERGENCE_KINDS) == {"off-policy", "step-size"}
    assert scores.NOT_AVAILABLE == regimes.NOT_AVAILABLE == "n/a"


def test_every_consumer_covers_every_label():
    """rules' advice builders, the atlas' colours and markers, the summary's severity
    order of families (the glossary rows: tests/test_glossary.py)."""
    assert list(rules.ADVICE) == list(LABELS)
    looks = {(label_colour(lab), label_marker(lab)) for lab in LABELS}
    assert len(looks) == len(LABELS)  # every label drawn distinguishably
    assert sorted(summary.SEVERITY) == sorted(regimes.FAMILIES)


def test_every_rule_names_a_scoring_function():
    for label, e in REGIME_TABLE.items():
        assert callable(getattr(scores, e.rule, None)), (label, e.rule)


def test_scores_refuses_a_label_without_an_entry():
    with pytest.raises(RegimeTableError, match="plateau:rho-variance"):
        scores.Regime("plateau:rho-variance", "a new mechanism nobody declared")
    with pytest.raises(RegimeTableError, match="plateau:rho-variance"):
        label_colour("plateau:rho-variance")


def test_a_consumer_missing_a_label_fails():
    complete = dict.fromkeys(LABELS, 1)
    assert per_label(complete, "x") == complete
    partial = {k: v for k, v in complete.items() if k != "plateau:noise-floor"}
    with pytest.raises(RegimeTableError, match=r"consumer_y.*'plateau:noise-floor'"):
        per_label(partial, "consumer_y")
    with pytest.raises(RegimeTableError, match="plateau:rho-variance"):
        per_label({**complete, "plateau:rho-variance": 1}, "consumer_z")


def test_an_incomplete_entry_fails_the_table_check():
    good = dict(REGIME_TABLE)
    _check_table(good)
    e = REGIME_TABLE["plateau:noise-floor"]
    for bad_field in ("glossary", "colour", "marker", "rule"):
        bad = {**good, e.label: replace(e, **{bad_field: ""})}
        with pytest.raises(RegimeTableError, match=f"'plateau:noise-floor' has no {bad_field}"):
            _check_table(bad)
    orphan = replace(e, label="stalled:x")
    with pytest.raises(RegimeTableError, match="without its family 'stalled'"):
        _check_table({**good, "stalled:x": orphan})
    twin = replace(REGIME_TABLE["plateau:slow-modes"], label="plateau:twin")
    with pytest.raises(RegimeTableError, match="share colour"):
        _check_table({**good, "plateau:twin": twin})
    with pytest.raises(RegimeTableError, match="exactly one"):
        Override("alpha_w", times=2.0, value=1.0)


def test_interventions_as_config_overrides():
    """issue #23's table: frozen / slow-modes alpha_w x4 within the stable range,
    noise-floor alpha_w / 4 and trajectories x4, moving-target alpha_pi = beta = 0,
    step-size half the critical alpha_w, off-policy sigma_mu widened to sigma_pi."""
    cur = {"alpha_w": 10.0, "trajectories": 16, "sigma_pi": 0.5, "sigma_mu": 0.3}
    for label in ("frozen", "plateau:slow-modes"):
        assert intervention_set(label, cur) == {"alpha_w": 40.0}
        assert intervention_set(label, cur, 100.0) == {"alpha_w": 40.0}
        assert intervention_set(label, cur, 60.0) == {"alpha_w": 30.0}  # half the critical
        assert intervention_set(label, cur, 15.0) == {"alpha_w": 10.0}  # never lowered
    noise = intervention_set("plateau:noise-floor", cur)
    assert noise == {"alpha_w": 2.5, "trajectories": 64}
    assert isinstance(noise["trajectories"], int)
    assert intervention_set("plateau:moving-target", cur) == {"alpha_pi": 0.0, "beta": 0.0}
    assert intervention_set("diverged:step-size", cur, 3.0) == {"alpha_w": 1.5}
    assert intervention_set("diverged:step-size", cur) == {}  # no critical step known
    # a cure that lowers the step never raises it: at 0.03x its critical step (issue 23:
    # 30 -> 486 before) half-critical leaves alpha_w where it is
    assert intervention_set("diverged:step-size", cur, 1000.0) == {"alpha_w": 10.0}
    # the bare family names no mechanism: a quarter of the step, at most half the critical
    assert intervention_set("diverged", cur, 1000.0) == {"alpha_w": 2.5}
    assert intervention_set("diverged", cur, 3.0) == {"alpha_w": 1.5}  # capped below
    assert intervention_set("diverged", cur) == {"alpha_w": 2.5}  # no critical step known
    for crit in (0.1, 3.0, 19.0, 21.0, 80.0, 1e6, math.inf, None):
        for label in ("diverged", "diverged:step-size"):
            got = intervention_set(label, cur, crit).get("alpha_w", cur["alpha_w"])
            assert got <= cur["alpha_w"], (label, crit)
    assert intervention_set("diverged:off-policy", cur) == {"sigma_mu": 0.5}
    assert intervention_set("learning", cur) == {} and entry("learning").intervention == ()
    with pytest.raises(RegimeTableError, match="unknown regime label 'nope'"):
        intervention_set("nope", cur)


# ------------------------------------------------ issue 23 item 2: predicted mechanisms


def _series(cfs: tuple = (), gap: float = 0.1, drift_noise: float = 0.1) -> scores.RunSeries:
    """A flat value_gap over 10 probe rounds (a plateau), the fixed point drifting 0.5 per
    round (in value terms d = 0.5 x 0.1 / 10 per iteration against relaxation 0.1 / 100:
    drift_ratio 5), value-space noise 0.01, ``noise_floor`` = `drift_noise` per round."""
    rounds = 10
    fixed_point = {
        "iter": [10.0 * k for k in range(rounds)],
        "value_gap": [gap] * rounds,
        "value_noise_floor": [0.01] * rounds,
        "w_gap": [1.0] * rounds,
        "w_sharp_drift": [0.0] + [0.5] * (rounds - 1),
        "noise_floor": [drift_noise] * rounds,
        "effective_timescale": [100.0] * rounds,
    }
    curves = {"td_loss": [1.0] * 100, "w_norm": [1.0] * 100, "delta_w_norm": [0.01] * 100}
    return scores.RunSeries("complete", 100, curves, fixed_point, {}, cfs)


def _cf(name: str, end: float, hi: float) -> dict:
    return {"name": name, "value_gap_end": end, "value_gap_end_lo": 0.0, "value_gap_end_hi": hi}


CONTROL = _cf("control", 0.1, 0.13)
FROZEN_SAME = _cf("policies_frozen", 0.1, 0.13)
"""The probe predicts with the policies frozen: its policies_frozen entry is the control's."""


def test_without_counterfactuals_the_old_rule_holds():
    assert scores.label_regime(_series()).label == "plateau:moving-target"
    assert scores.label_regime(_series(gap=0.012)).label == "plateau:noise-floor"


def test_a_mechanism_needs_its_intervention_predicted_beyond_the_band():
    """slow-modes when alpha_w x4's band top (0.07) is below the control's value_gap_end
    (0.1); the family plateau, with every prediction in its reason, when it is not."""
    helps = (CONTROL, _cf("alpha_w_x4", 0.05, 0.07), FROZEN_SAME)
    r = scores.label_regime(_series(helps))
    assert r.label == "plateau:slow-modes", r.reason
    assert r.evidence["gain_slow_modes"] == pytest.approx(0.1 - 0.07)
    assert r.evidence["gain_moving_target"] == pytest.approx(0.1 - 0.13)  # measured - top
    assert r.evidence["cf_alpha_w_x4_hi"] == 0.07
    inside = (CONTROL, _cf("alpha_w_x4", 0.08, 0.11), FROZEN_SAME)
    r = scores.label_regime(_series(inside))
    assert r.label == "plateau", r.reason
    assert "alpha_w_x4 0.08 [0, 0.11]" in r.reason and "control 0.1 [0, 0.13]" in r.reason
    assert r.evidence["gain_slow_modes"] == pytest.approx(-0.01)


def test_moving_target_needs_drift_beyond_its_noise_floor_and_a_predicted_gain():
    """drift 0.5 per round against noise_floor 0.1 (x5): moving-target when the measured
    value_gap_last (0.1) is above the frozen prediction's band top (0.08); the same drift
    against noise_floor 2 (x0.25) is no drift, and the slow-modes gain decides."""
    frozen_lower = _cf("policies_frozen", 0.05, 0.08)
    cfs = (CONTROL, _cf("alpha_w_x4", 0.05, 0.07), frozen_lower)
    r = scores.label_regime(_series(cfs))
    assert r.label == "plateau:moving-target", r.reason
    assert r.evidence["drift_over_noise"] == pytest.approx(5.0)
    r = scores.label_regime(_series(cfs, drift_noise=2.0))
    assert r.evidence["drift_over_noise"] == pytest.approx(0.25)
    assert r.label == "plateau:slow-modes", r.reason
    nothing = (CONTROL, _cf("alpha_w_x4", 0.09, 0.12), frozen_lower)
    assert scores.label_regime(_series(nothing, drift_noise=2.0)).label == "plateau"


def test_drift_is_judged_against_its_own_noise_where_the_column_exists():
    """drift 0.5 per round against noise_floor 2 (x0.25, no drift by the half-batch
    distance) but w_sharp_drift_noise 0.05 (x10): the drift's own noise decides and the
    label is moving-target; rounds whose w_sharp_drift_noise is 0 (a resume from an older
    checkpoint) fall back to noise_floor."""
    frozen_lower = _cf("policies_frozen", 0.05, 0.08)
    cfs = (CONTROL, _cf("alpha_w_x4", 0.05, 0.07), frozen_lower)
    s = _series(cfs, drift_noise=2.0)
    s.fixed_point["w_sharp_drift_noise"] = [0.0] + [0.05] * 9
    r = scores.label_regime(s)
    assert r.evidence["drift_over_noise"] == pytest.approx(10.0)
    assert r.label == "plateau:moving-target", r.reason
    assert "drift / its noise 10" in r.reason
    s.fixed_point["w_sharp_drift_noise"] = [0.0] * 10
    r = scores.label_regime(s)
    assert r.evidence["drift_over_noise"] == pytest.approx(0.25)
    assert r.label == "plateau:slow-modes", r.reason


def test_noise_floor_needs_its_intervention_predicted_beyond_the_band():
    lower = (CONTROL, _cf("alpha_w_div4_trajectories_x4", 0.004, 0.009))
    assert scores.label_regime(_series(lower, gap=0.012)).label == "plateau:noise-floor"
    same = (CONTROL, _cf("alpha_w_div4_trajectories_x4", 0.011, 0.2))
    assert scores.label_regime(_series(same, gap=0.012)).label == "plateau"


def test_the_table_is_the_one_source_of_interventions():
    """Each label with an intervention names its counterfactual entry; explain's twins and
    the counterfactual probe's entries use those names and the table's sets."""
    from tdlens.sweeps import explain

    for label, e in REGIME_TABLE.items():
        assert (e.predictor is None) == (not e.intervention), label
        twins = explain.INTERVENTIONS.get(label, ())
        assert [t.name for t in twins] == ([e.predictor.name] if e.predictor else [])
    assert regimes.predicted_interventions() == {
        "alpha_w_div4": "diverged",
        "sigma_mu_to_sigma_pi": "diverged:off-policy",
        "alpha_w_half_critical": "diverged:step-size",
        "alpha_w_x4": "frozen",
        "alpha_w_div4_trajectories_x4": "plateau:noise-floor",
        "policies_frozen": "plateau:moving-target",
    }
    entries = [{"name": "control"}, {"name": "alpha_w_x4", "x": 1}]
    assert entry("plateau:slow-modes").predictor(entries) == {"name": "alpha_w_x4", "x": 1}
    assert entry("plateau:noise-floor").predictor(entries) is None
    with pytest.raises(RegimeTableError, match="predictor exactly when"):
        _check_table({"learning": replace(REGIME_TABLE["learning"], predictor=len)})
