"""Sweep summaries: seed aggregates, stability boundary, files (docs/model.md §11)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_sweep_regimes import write_run

from page_checks import assert_offline
from tdlens.catalog.records import RunRecord
from tdlens.rundir.files import atomic_write_json
from tdlens.sweeps.seed_stats import iqm
from tdlens.sweeps.summary import (
    config_row,
    group_configs,
    majority_regime,
    marginal_rows,
    stability_boundary,
    summarize,
)


def _rec(alpha: float, beta: float, seed: int = 0, regime: str = "plateau", gap=0.5):
    return RunRecord(
        run_id=f"a{alpha}_b{beta}_s{seed}",
        path=Path("/nonexistent"),
        params={"alpha_w": alpha, "beta": beta, "seed": seed},
        status="complete",
        metrics={"value_gap": gap, "td_loss": 1.0},
        regime=regime,
    )


def test_config_row_aggregates_seeds():
    gaps = [4.0, 1.0, 3.0, 2.0]
    recs = [_rec(0.1, 0.2, s, "learning" if s else "plateau", g) for s, g in enumerate(gaps)]
    (group,) = group_configs(recs, ["alpha_w", "beta"])
    row = config_row(group, 0)
    assert row["runs"] == 4 and row["regime"] == "learning"
    assert row["regimes"] == "learning=3 plateau=1"
    assert (row["n_learning"], row["n_plateau"], row["n_diverged"]) == (3, 1, 0)
    assert row["value_gap_mean"] == pytest.approx(2.5)
    assert row["value_gap_iqm"] == pytest.approx(2.5)  # (2 + 3) / 2, by hand
    assert 1.0 <= row["value_gap_ci_low"] <= 2.5 <= row["value_gap_ci_high"] <= 4.0
    again = config_row(group, 0)  # the bootstrap is seeded
    assert (again["value_gap_ci_low"], again["value_gap_ci_high"]) == (
        row["value_gap_ci_low"],
        row["value_gap_ci_high"],
    )


def test_majority_regime_ties_go_to_the_most_severe():
    assert majority_regime(["learning", "diverged"]) == "diverged"
    assert majority_regime(["learning", "plateau"]) == "plateau"
    assert majority_regime(["learning", "learning", "frozen"]) == "learning"
    assert majority_regime([]) == "n/a"


def test_stability_boundary_per_slice():
    diverged = {(0.4, 0.1), (0.2, 0.5), (0.4, 0.5), (0.1, 0.9)}
    recs = []
    for alpha in (0.1, 0.2, 0.4):
        for beta in (0.1, 0.5, 0.9):
            for seed in (0, 1):  # one diverged seed makes the config diverged
                bad = (alpha, beta) in diverged and seed == 1
                recs.append(_rec(alpha, beta, seed, "diverged" if bad else "plateau"))
    groups = group_configs(recs, ["alpha_w", "beta"])
    rows = {r["beta"]: r for r in stability_boundary(groups, ["alpha_w", "beta"])}
    assert rows[0.1]["largest_stable_alpha_w"] == 0.2
    assert rows[0.1]["smallest_diverged_alpha_w"] == 0.4 and rows[0.1]["monotone"]
    assert rows[0.5]["largest_stable_alpha_w"] == 0.1
    assert rows[0.9]["largest_stable_alpha_w"] == 0.4 and not rows[0.9]["monotone"]
    assert stability_boundary(groups, ["beta"]) == []


def test_summarize_a_sweep_with_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    entries = []
    for i, (alpha, seed) in enumerate([(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]):
        rid = f"alpha_w{alpha}_seed{seed}-{i:012d}"
        entries.append(
            {
                "run_id": rid,
                "index": i,
                "overrides": {"alpha_w": alpha, "seed": seed},
                "config_hash": f"{i:012d}",
            }
        )
        if i < 3:  # the last run never started
            write_run(sweep / "runs" / rid, gaps=(1.0, 0.6, 0.3, 0.1 * (i + 1)))
    axes = [{"key": "alpha_w", "values": [0.1, 0.2]}, {"key": "seed", "values": [0, 1]}]
    atomic_write_json(
        sweep / "plan.json", {"name": "syn", "runs": entries, "axes": axes, "base_config": {}}
    )
    s = summarize(sweep)
    assert s.metric == "value_gap" and len(s.records) == 4 and len(s.configs) == 2
    assert [r.status for r in s.records] == ["complete"] * 3 + ["not started"]
    first = s.configs[0]
    assert first["runs"] == 2 and first["value_gap_mean"] == pytest.approx(0.15)
    assert first["value_gap_iqm"] == pytest.approx(iqm(np.array([0.1, 0.2])))
    assert s.configs[1]["value_gap_mean"] == pytest.approx(0.3)  # the missing run is skipped
    with open(sweep / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["seed"] for r in rows] == ["0", "1", "0", "1"] and rows[3]["value_gap"] == ""
    with open(sweep / "summary_configs.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    data = json.loads((sweep / "summary.json").read_text())
    assert data["thresholds"]["FROZEN_REL_STEP"] == 1e-6 and data["stability_boundary"]
    assert data["runs"][3]["regime"] == "n/a" and math.isnan(s.records[3].seconds)
    md = (sweep / "summary.md").read_text()
    assert "Regime labels" in md
    # nothing diverged: the boundary section says so instead of a table of blanks
    said = "Nothing diverged: every run is stable up to the largest alpha_w of the grid (0.2)"
    assert said in md and "smallest_diverged_alpha_w" not in md
    html = (sweep / "summary.html").read_text()
    assert_offline(html)
    assert html.count(said) == 2 and "diverged from" not in html  # the card and the section


def test_one_seed_gives_no_interval():
    """A config (or marginal) whose runs are single seeds prints "1 seed", never the
    zero-width interval the stratified bootstrap of one value would give."""
    (group,) = group_configs([_rec(0.1, 0.2, 0, "learning", 0.3)], ["alpha_w", "beta"])
    row = config_row(group, 0)
    assert row["value_gap_n"] == 1 and row["value_gap_iqm"] == 0.3
    assert math.isnan(row["value_gap_ci_low"]) and math.isnan(row["value_gap_ci_high"])
    assert row["value_gap_ci"] == "1 seed"
    two = config_row(
        group_configs(
            [_rec(0.1, 0.2, s, gap=g) for s, g in ((0, 1.0), (1, 2.0))], ["alpha_w", "beta"]
        )[0],
        0,
    )
    assert (
        two["value_gap_ci"].startswith("[") and two["value_gap_ci_high"] > two["value_gap_ci_low"]
    )
    groups = group_configs([_rec(a, 0.2, 0, gap=a) for a in (0.1, 0.2)], ["alpha_w", "beta"])
    (beta_row,) = [
        m for m in marginal_rows(groups, ["alpha_w", "beta"], "value_gap") if m["axis"] == "beta"
    ]
    assert beta_row["runs"] == 2 and beta_row["ci"] == "1 seed" and math.isnan(beta_row["ci_low"])


def test_marginals_split_by_regime_family_and_counts():
    """beta = 0.2 holds a frozen run (gap 0.9), a diverged one (gap 50) and two plateaus
    with mechanisms: one row per family, never their average."""
    recs = [
        _rec(0.1, 0.2, 0, "frozen", 0.9),
        _rec(0.2, 0.2, 0, "diverged:off-policy", 50.0),
        _rec(0.3, 0.2, 0, "plateau:slow-modes", 0.2),
        _rec(0.3, 0.2, 1, "plateau:noise-floor", 0.4),
    ]
    groups = group_configs(recs, ["alpha_w", "beta"])
    rows = [
        m for m in marginal_rows(groups, ["alpha_w", "beta"], "value_gap") if m["axis"] == "beta"
    ]
    by_regime = {m["regime"]: m for m in rows}
    assert list(by_regime) == ["diverged", "frozen", "plateau"]  # most severe first
    assert by_regime["diverged"]["iqm"] == 50.0 and by_regime["frozen"]["iqm"] == 0.9
    assert by_regime["plateau"]["runs"] == 2 and by_regime["plateau"]["iqm"] == pytest.approx(0.3)
    assert by_regime["plateau"]["ci"].startswith("[")  # one config with two plateau seeds
    third = config_row(groups[2], 2)
    assert third["n_plateau"] == 2 and third["regime"] == "plateau:slow-modes"  # tie: first
    assert majority_regime(["plateau:slow-modes", "diverged:step-size"]) == "diverged:step-size"
    assert stability_boundary(groups, ["alpha_w", "beta"])[0]["smallest_diverged_alpha_w"] == 0.2
