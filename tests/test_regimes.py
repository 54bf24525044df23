"""The regime table (tdlens.regimes, issue #25): every label declared once, every consumer
covers every label, and an incomplete entry or consumer fails loudly."""

from __future__ import annotations

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
    assert intervention_set("diverged:off-policy", cur) == {"sigma_mu": 0.5}
    assert intervention_set("learning", cur) == {} and entry("learning").intervention == ()
    with pytest.raises(RegimeTableError, match="unknown regime label 'nope'"):
        intervention_set("nope", cur)
