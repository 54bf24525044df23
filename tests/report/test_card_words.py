"""The verdict card in words (issue 24): for every label and a failed run, Next is an
action and Why is at most two sentences with at most three numbers; the eig_min_real
headline is the computed minimum, the certified bound named apart."""

from __future__ import annotations

import re

import pytest
from test_report_fixtures import frozen_run, healthy_run

from tdlens.config import load_config
from tdlens.report import build_report, write_report
from tdlens.report.card import (
    WHY_MAX_NUMBERS,
    WHY_MAX_SENTENCES,
    Verdict,
    advised_action,
    unhelpful_note,
)
from tdlens.runs.audit import audit_run_rho
from tdlens.runs.runner import Runner

ACTION_VERBS = {
    "Raise",
    "Lower",
    "Narrow",
    "Keep",
    "Make",
    "Fix",
    "Continue",
    "Slow",
    "Run",
    "Remove",
    "Lengthen",
    "Compare",
    "Look",
    "Clip",
}
"""The imperative verbs a card's Next may start with."""
NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def assert_card_reads_aloud(v: Verdict) -> None:
    """Why: <= 2 sentences, <= 3 numbers; Next: starts with an imperative and is whole."""
    assert len(SENTENCE_END.findall(v.why)) <= WHY_MAX_SENTENCES, v.why
    assert len(NUMBER.findall(v.why)) <= WHY_MAX_NUMBERS, v.why
    assert v.why.endswith("."), v.why
    assert v.next.split()[0] in ACTION_VERBS, v.next
    assert v.next.endswith("."), v.next


def _triad():
    """A growing mode from truncated ratios (test_report_rules' triad) with ||w|| growing."""
    run = healthy_run("sigma_mu=0.3", "sigma_pi=0.6", "rho_clip=1.0")
    run.set_probe("stability_probe", "eig_min_real", -1.0)
    run.set_probe("stability_probe", "growth_timescale", 12.5)
    run.set_curve("w_norm", lambda i: 1.5**i)
    return run


def _step_size():
    """||w|| and td_loss explode with every eigenvalue positive and eta > critical_step."""
    run = healthy_run()
    run.set_probe("stability_probe", "critical_step", 0.01)
    run.set_curve("w_norm", lambda i: 1.5**i)
    run.set_curve("td_loss", lambda i: 1e-3 * 1.5**i)
    return run


def _failed():
    """The issue's failed run: a MemoryError whose message holds a number with a point."""
    run = healthy_run()
    del run.curves[2:]
    run.probes = {name: rows[:1] for name, rows in run.probes.items()}
    run.status.update(
        status="failed",
        reason="MemoryError: Unable to allocate 156. GiB for an array with shape "
        "(1000000000, 42) and data type float32",
        next_iter=2,
    )
    return run


def _plateau(mechanism: str):
    """value_gap flat at 0.05 over the run (above its 0.01 floor), with the fixed point
    drifting far faster than the critic for moving-target, and flat at the floor for
    noise-floor."""
    run = healthy_run()
    level = {"slow-modes": 0.05, "moving-target": 0.05, "noise-floor": 0.002}[mechanism]
    run.set_probe("fixed_point_probe", "value_gap", lambda k: level * (1 + 1e-4 * (-1) ** k))
    run.set_probe("fixed_point_probe", "w_gap", lambda k: 5 * level * (1 + 1e-4 * (-1) ** k))
    if mechanism == "moving-target":
        run.set_probe("fixed_point_probe", "w_sharp_drift", lambda k: 0.0 if k == 0 else 50.0)
    if mechanism == "noise-floor":
        run.set_probe("fixed_point_probe", "w_sharp_drift", 0.0)
    return run


def _plain_plateau():
    """One fixed-point round and a flat td_loss: a plateau with no mechanism to name."""
    run = healthy_run()
    run.probes["fixed_point_probe"] = run.probes["fixed_point_probe"][:1]
    run.set_curve("td_loss", lambda i: 1e-3 * (1 + 1e-3 * (-1) ** i))
    return run


CASES = {
    "learning": (healthy_run, "learning"),
    "frozen": (frozen_run, "frozen"),
    "diverged:off-policy": (_triad, "diverged:off-policy"),
    "diverged:step-size": (_step_size, "diverged:step-size"),
    "failed": (_failed, None),
    "plateau:slow-modes": (lambda: _plateau("slow-modes"), "plateau:slow-modes"),
    "plateau:moving-target": (lambda: _plateau("moving-target"), "plateau:moving-target"),
    "plateau:noise-floor": (lambda: _plateau("noise-floor"), "plateau:noise-floor"),
    "plateau": (_plain_plateau, "plateau"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_card_reads_aloud_and_ends_in_an_action(tmp_path, case):
    make, label = CASES[case]
    r = build_report(make().write(tmp_path / "run"))
    v = r.verdict
    if label is not None:
        assert v.regime == label, (v.regime, v.regime_reason)
    assert_card_reads_aloud(v)


def test_triad_card_gives_the_mechanisms_fix_and_one_rho_verdict(tmp_path):
    """diverged:off-policy with rho clipped at 1: sigma_condition passes (E_mu[min(rho,
    1)^2] <= 1), so Next is the triad's own fix, never the ratio-variance one; an audit that
    passed with an infinite-variance z left out is PASS, as `tdlens audit rho` says, and no
    next step says rho disagrees with its closed form."""
    run = _triad()
    run.set_probe("rho_audit", "reliable", 0.0)
    r = build_report(run.write(tmp_path / "run"))
    checks = {c.name: c.verdict for c in r.checks}
    assert checks["sigma_condition"] == "PASS" and checks["rho_audit"] == "PASS"
    v = r.verdict
    assert v.next.startswith("Narrow sigma_pi from 0.6 to 0.3 or widen sigma_mu from 0.3 to 0.6")
    assert "lift the truncation" in v.next
    messages = " ".join(s.message for s in r.next_steps)
    assert "is infinite" not in messages and "disagrees with its closed form" not in messages


def test_failed_run_next_is_whole_and_says_what_to_do(tmp_path):
    """The issue's MemoryError: Why names the failure without its numbers, Next is the
    whole action (the old card cut it at "Unable to allocate 156.")."""
    v = build_report(_failed().write(tmp_path / "run")).verdict
    assert v.why == "The run failed with MemoryError before it could be judged."
    assert v.next.startswith("Make the run smaller") and v.next.endswith("run it again.")


def test_eig_min_headline_is_the_computed_minimum(tmp_path):
    """The seed's numbers (issue 24): a Krylov spectrum whose certified bound is -2.252e-5
    and computed minimum +2.25e-5 headlines +2.25e-5 and names the bound apart; only an
    interval wholly below zero reads as a growing mode."""
    run = frozen_run()
    for col, value in (
        ("eig_min_real", -2.252e-5),
        ("eig_min_real_bound", -2.252e-5),
        ("eig_min_real_computed", 2.25e-5),
        ("eig_min_real_is_bound", 1.0),
        ("eig_min_real_lo", -2.252e-5),
        ("eig_min_real_hi", 3.8e-5),
    ):
        run.set_probe("stability_probe", col, value)
    v = build_report(run.write(tmp_path / "a")).verdict
    eig = {k.name: k for k in v.key_numbers}["eig_min_real"]
    assert eig.value == 2.25e-5 and "certified lower bound of -2.252e-05" in eig.note
    assert "whole interval is below zero: a growing mode" not in eig.note
    run.set_probe("stability_probe", "eig_min_real_hi", -1e-6)
    run.set_probe("stability_probe", "eig_min_real_computed", -5e-6)
    v = build_report(run.write(tmp_path / "b")).verdict
    eig = {k.name: k for k in v.key_numbers}["eig_min_real"]
    assert eig.value == -5e-6 and "whole interval is below zero: a growing mode" in eig.note


def test_shipped_triad_card_and_one_rho_verdict(tmp_path):
    """configs/regime_triad.yaml for real (~10 s, D = 64, 30 iterations): the card reads
    aloud and gives the triad's fix; sigma_condition passes (rho clipped at 1); the
    report's rho check and `tdlens audit rho` (the replayed audit) give the same verdict,
    PASS, although the rho^2 z-score is left out for infinite variance."""
    run_dir = tmp_path / "triad"
    Runner(
        load_config("configs/regime_triad.yaml"),
        run_dir,
        handle_signals=False,
        write_report=write_report,
    ).run()
    r = build_report(run_dir)
    v = r.verdict
    assert v.regime == "diverged:off-policy", v.regime_reason
    assert_card_reads_aloud(v)
    assert v.next.startswith("Narrow sigma_pi from 0.6 to 0.3 or widen sigma_mu from 0.3 to 0.6")
    checks = {c.name: c.verdict for c in r.checks}
    assert checks["sigma_condition"] == "PASS"
    audit = audit_run_rho(run_dir)
    assert audit.same_sample and audit.row["reliable"] == 0.0
    assert checks["rho_audit"] == ("PASS" if audit.row["passed"] == 1.0 else "FAIL") == "PASS"
    assert "disagrees with its closed form" not in " ".join(s.message for s in r.next_steps)


def _advice(alpha_w: float, helps: bool = True, **extra: float) -> dict:
    return {
        "set": {"alpha_w": alpha_w, **extra},
        "predicted": {
            "value_gap_end": 0.02,
            "value_gap_end_lo": 0.01,
            "value_gap_end_hi": 0.03,
            "regime": "learning",
        },
        "why": "...",
        "helps": helps,
    }


CONTROL = [{"name": "control", "predicted": {"value_gap_end": 0.05}}]


def test_next_carries_the_advice_and_its_predicted_outcome():
    """A complete frozen or plateau run whose first probe found a setting that helps: Next
    is that setting with its predicted final value_gap [lo, hi] and regime against the
    unchanged run's (issue 23: advice says what it will do); otherwise the rules decide."""
    cfg = load_config("configs/sanity.yaml", ["alpha_w=0.5", "trajectories=4"])
    text = advised_action([_advice(40.0)], CONTROL, cfg, "frozen", "complete")
    assert text == (
        "Raise alpha_w from 0.5 to 40: the first probe predicts value_gap 0.02 [0.01, 0.03] "
        "at the run's end (learning), against 0.05 unchanged."
    )
    assert text.split()[0] in ACTION_VERBS
    both = advised_action(
        [_advice(0.25, trajectories=16)], CONTROL, cfg, "plateau:noise-floor", "complete"
    )
    assert both.startswith("Lower alpha_w from 0.5 to 0.25 and trajectories from 4 to 16: ")
    # the first advice that helps is taken; none that helps, another label or an
    # unfinished run leave Next to the rules
    picked = advised_action(
        [_advice(9.0, False), _advice(40.0)], CONTROL, cfg, "frozen", "complete"
    )
    assert picked.startswith("Raise alpha_w from 0.5 to 40:")
    assert advised_action([_advice(40.0, False)], CONTROL, cfg, "frozen", "complete") is None
    assert advised_action([_advice(40.0)], CONTROL, cfg, "diverged:step-size", "complete") is None
    assert advised_action([_advice(40.0)], CONTROL, cfg, "frozen", "incomplete") is None
    schedule = {**_advice(40.0), "set": {"schedules.alpha_w.kind": "inverse_time"}}
    assert advised_action([schedule], CONTROL, cfg, "plateau", "complete") is None


def test_next_says_when_the_advice_does_not_help():
    """No advice helps (its band reaches above the unchanged run's end): the rules' Next
    stands and gains the advice's finding, with the best setting's predicted outcome;
    nothing when some advice helps, for other labels or an unfinished run."""
    cfg = load_config("configs/sanity.yaml", ["alpha_w=0.5", "trajectories=4", "outer_iters=80"])
    note = unhelpful_note([_advice(40.0, False)], CONTROL, cfg, "frozen", "complete")
    assert note == (
        " No alpha_w or batch is predicted to lower value_gap beyond its band within 80 "
        "iterations (best alpha_w = 40: 0.02 [0.01, 0.03], against 0.05 unchanged)."
    )
    assert unhelpful_note([_advice(40.0, False)], [], cfg, "plateau", "complete").endswith(
        "(best alpha_w = 40: 0.02 [0.01, 0.03])."
    )
    batch = [_advice(40.0, False, trajectories=16)]
    assert "(best alpha_w = 40, trajectories = 16: " in unhelpful_note(
        batch, CONTROL, cfg, "plateau:slow-modes", "complete"
    )
    helping = [_advice(9.0, False), _advice(40.0)]
    assert unhelpful_note(helping, CONTROL, cfg, "frozen", "complete") == ""
    assert unhelpful_note([_advice(40.0, False)], CONTROL, cfg, "learning", "complete") == ""
    assert unhelpful_note([_advice(40.0, False)], CONTROL, cfg, "frozen", "incomplete") == ""
    assert unhelpful_note([], CONTROL, cfg, "frozen", "complete") == ""
