"""Labels and advice on configs that are not shipped (issue 23's "Done when").

Four cases of the held-out matrix (benchmarks/heldout_matrix.py, its results in
docs/verdicts.md), each run once per module and shared by every test of it: the source
run, explain's twins of its label running TWIN_ITERS iterations (a probe round each),
branched that many before the end (a divergence's wherever explain branches it), and its
first advice followed from the start. Picked for outcomes far from the edge in the matrix
(twin effect >= 8 combined SEs, advice measured near the middle of its interval), and for
what they vary:

- ``frozen_aw3`` (D 128, alpha_w 60 -> 3): ``frozen``; alpha_w x4 lowered ln value_gap
  by 0.041 against a 2-SE band of 0.002 (20 bands); advice (alpha_w ~ 495) measured
  0.0140 in [0.0044, 0.0289].
- ``plateau_g08_aw20`` (D 128, gamma 0.9 -> 0.8, alpha_w 20): ``plateau:slow-modes``;
  alpha_w x4 by 0.285 against 0.021; advice measured 0.0094 in [0.0035, 0.0188].
- ``learning_frozen_policies`` (D 128, alpha_pi = beta = 0, alpha_w 300): ``learning``,
  no intervention: the control-only rule (the control ends at its floor or still
  relaxes toward it, :func:`heldout_matrix.learning_holds`); advice ("no setting helps
  much") measured 0.0133 in [0.0040, 0.0278].
- ``rho_clip_02`` (D 48, gamma 0.95, rho_clip 1 -> 0.2, sigma_pi / sigma_mu 2):
  ``diverged:off-policy``; the table's sigma_mu -> sigma_pi twin must move eig_min_real's
  95% interval above zero (the twin lowered value_gap by 0.65 in ln against 0.077 too);
  advice measured 0.0391 in [0.0234, 0.0553].

Checked once at seeds 1 and 2 as well (``seed`` added to the overrides): every label
confirmed and every advice landed (rho_clip_02's twin interval lo 6.3e-05 and 5.6e-05).
The file takes ~39 s of CPU (49-89 s wall at load average 4-6 on 2 shared cores).

A refuted label or an advice outside its interval is a finding (a wrong rule or
prediction), never a reason to loosen these checks.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tdlens.api import load_run_config

MATRIX_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout_matrix.py"
CASES = {  # hm.QUICK, with the labels
    "frozen_aw3": "frozen",
    "plateau_g08_aw20": "plateau:slow-modes",
    "learning_frozen_policies": "learning",
    "rho_clip_02": "diverged:off-policy",
}
"""Case -> the label it had in the matrix (module docstring: why each)."""
TWIN_ITERS = 8
"""Twins run the last 8 iterations with a probe round each (explain's probe_every)."""


def _matrix() -> Any:
    spec = importlib.util.spec_from_file_location("heldout_matrix", MATRIX_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("heldout_matrix", module)
    spec.loader.exec_module(module)
    return module


hm = _matrix()


@pytest.fixture(scope="module", params=list(CASES))
def outcome(request, tmp_path_factory) -> dict[str, Any]:
    """One case run as the matrix runs it, with short late twins."""
    case = hm.case_named(request.param)
    return hm.evaluate(case, tmp_path_factory.mktemp(case.name), TWIN_ITERS)


def _get(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def test_the_quick_matrix_is_this_file():
    assert tuple(CASES) == hm.QUICK


def test_cases_are_small_late_and_not_shipped(outcome):
    """D <= 128, <= 80 iterations, twins branched late, and every case moves at least one
    key of its shipped base to a value the base does not have."""
    case = hm.case_named(outcome["case"])
    cfg = load_run_config(case.base, case.source())
    assert cfg.env.feature_dim <= 128 and cfg.outer_iters <= 80
    late = outcome["twin_iteration"] >= cfg.outer_iters - TWIN_ITERS - case.every
    from_start = outcome["label"].startswith("diverged") and outcome["twin_iteration"] == 0
    assert late or from_start  # where explain branches a divergence from the start
    base = load_run_config(case.base, []).to_dict()
    assert any(_get(base, k) != v for k, v in case.overrides.items()), case.overrides


def test_label_is_the_one_the_matrix_recorded(outcome):
    assert outcome["label"] == CASES[outcome["case"]], outcome["evidence"]


def test_the_labels_intervention_twin_confirms_it(outcome):
    """Confirmed by explain's twins (Z = 2 combined SEs on ln value_gap); learning by its
    control-only rule; off-policy by the twin's eig_min_real sign."""
    assert outcome["label_verdict"] == "confirmed", (outcome["label"], outcome["label_why"])
    if outcome["label"] != "learning":
        assert outcome["twins"] and outcome["twins"][0]["measured"]["rounds"] == TWIN_ITERS


def test_followed_advice_lands_in_its_interval(outcome):
    advice = outcome["advice"]
    p = advice["predicted"]
    assert p["value_gap_end_lo"] <= advice["measured"] <= p["value_gap_end_hi"], advice
    assert advice["lands"]


def test_every_matrix_case_is_small_and_moves_its_base():
    """The whole matrix (not run here): D <= 256, <= 80 iterations, probes every 2-8, and
    every case changes at least one key of its shipped base."""
    assert 12 <= len(hm.MATRIX) and len({c.name for c in hm.MATRIX}) == len(hm.MATRIX)
    for case in hm.MATRIX:
        cfg = load_run_config(case.base, case.source())
        assert cfg.env.feature_dim <= 256 and cfg.outer_iters <= 80, case.name
        assert 2 <= cfg.probes.every <= 8, case.name
        base = load_run_config(case.base, []).to_dict()
        assert any(_get(base, k) != v for k, v in case.overrides.items()), case.name


def _learning(monkeypatch, t, g, control_gap, se=0.01, floor=0.01, outer=60):
    """learning_holds on a hand-made control: rounds (t, g), final value_gap control_gap."""
    monkeypatch.setattr(hm, "_control_rounds", lambda result: (np.asarray(t), np.asarray(g)))
    measured = {"log_value_gap": math.log(control_gap), "log_value_gap_se": se}
    result = {"control": {"measured": {**measured, "value_gap": control_gap}}}
    report = {"regime": {"evidence": {"stochastic_floor": floor, "outer_iters": outer}}}
    return hm.learning_holds(result, report)[0]


def test_the_learning_rule_refutes_a_flat_or_slow_control_above_its_floor(monkeypatch):
    """F_s = 0.01, so the floor is 1.5 F_s = 0.015. At it (2 SE = 0.02 in ln): confirmed.
    Above it: confirmed when the excess g - F_s relaxes at timescale 10 (exp(-t/10)),
    refuted when flat, or when relaxing at timescale 200 > 60 iterations, or noisy."""
    t = np.arange(44.0, 60.0, 2.0)
    assert _learning(monkeypatch, t, t, control_gap=0.0152) == "confirmed"
    assert _learning(monkeypatch, t, t, control_gap=0.0160) == "refuted"  # ln 0.065 > 0.02
    fast = 0.01 + 0.05 * np.exp(-(t - 44) / 10)
    assert _learning(monkeypatch, t, fast, control_gap=fast[-1]) == "confirmed"
    flat = np.full(t.size, 0.05)
    assert _learning(monkeypatch, t, flat, control_gap=0.05) == "refuted"
    slow = 0.01 + 0.05 * np.exp(-(t - 44) / 200)
    assert _learning(monkeypatch, t, slow, control_gap=slow[-1]) == "refuted"
    rng = np.random.default_rng(0)
    noisy = 0.05 * np.exp(0.3 * rng.standard_normal(t.size))
    assert _learning(monkeypatch, t, noisy, control_gap=0.05) == "refuted"


def test_slope_se_is_the_ols_slope_se_inflated_as_explain_inflates():
    """An exact line has slope b and SE 0; on noisy points the SE is scipy's OLS stderr
    times sqrt((1 + PHI) / (1 - PHI)) = sqrt(19)."""
    t = np.arange(8.0)
    b, se = hm.slope_se(t, 1.0 - 0.25 * t)
    assert b == pytest.approx(-0.25) and se == pytest.approx(0.0, abs=1e-12)
    g = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    s_tt = float(np.sum((t - t.mean()) ** 2))
    b_hand = float(np.sum((t - t.mean()) * (g - g.mean())) / s_tt)
    rss = float(np.sum((g - g.mean() - b_hand * (t - t.mean())) ** 2))
    b, se = hm.slope_se(t, g)
    assert b == pytest.approx(b_hand)
    assert se == pytest.approx(math.sqrt(rss / 6 / s_tt) * math.sqrt(19.0), rel=1e-12)


def test_the_matrix_script_refuses_bad_input_before_writing(tmp_path):
    for args, message in (
        (["--only", "nope"], "unknown case(s) nope"),
        (["--jobs", "0"], "--jobs"),
    ):
        done = subprocess.run(
            [sys.executable, str(MATRIX_SCRIPT), str(tmp_path / "out"), *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
