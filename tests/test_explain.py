"""Branches and `tdlens explain` (docs/model.md §16): a branch is a new run from a
parent's checkpoint; explain tests a label by intervention twins against a control.

One parent (D=64, 24 iterations, frozen by construction: its fastest mode needs ~90
iterations) is shared by every test; twins start late and run few iterations.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import tdlens
from tdlens.cli import app
from tdlens.config import config_from_json
from tdlens.features import make_feature_maps
from tdlens.learner import METRIC_COLUMNS, init_params
from tdlens.rundir.read import read_table_text
from tdlens.runs.branch import create_branch, run_branch
from tdlens.runs.checkpoint import load_checkpoint
from tdlens.sweeps import explain as ex

runner = CliRunner()
PARENT = {
    "env.feature_dim": 64,
    "env.actor_feature_dim": 16,
    "outer_iters": 24,
    "checkpoint_every": 4,
    "checkpoint_keep": 6,
    "alpha_w": 6.0,
    "probes.every": 6,
    "probes.fixed_point.batch_size": 1024,
    "probes.stability.batch_size": 512,
    "probes.distribution.enabled": False,
    "probes.q_kernel.enabled": False,
    "probes.rho_audit.enabled": False,
    "threads": 1,
}
"""regime_plateau at alpha_w = 6 (a tenth of its own): the critic is frozen (fastest
timescale ~75 iterations > 24), and alpha_w x4 moves value_gap clearly within 8."""
TWIN_ITERS = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explain")


@pytest.fixture(scope="module")
def parent(root) -> Path:
    run = tdlens.run(
        "regime_plateau", PARENT, run_dir=root / "parent", progress=False, catalog=root / "c.db"
    )
    assert run.status == "complete"
    return run.path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _rows(path: Path) -> dict[int, dict[str, str]]:
    """A table's rows by iteration, plain or compressed (a twin, run by a sweep worker, is
    compacted: learning_curves.csv.gz)."""
    rows = csv.DictReader(io.StringIO(read_table_text(path), newline=""))
    return {int(float(r["iter"])): r for r in rows}


@pytest.fixture(scope="module")
def frozen_policies(root, parent) -> Path:
    """A branch of the parent at iteration 12 with the policies frozen, run to the end."""
    before = _snapshot(parent)
    branch = create_branch(
        parent, {"alpha_pi": 0.0, "beta": 0.0}, at=12, run_dir=root / "frozen_policies"
    )
    assert run_branch(branch).status == "complete"
    assert _snapshot(parent) == before  # the parent is only read
    return branch


def test_control_branch_reproduces_the_parent_bit_for_bit(root, parent):
    branch = create_branch(parent, {}, at=8, run_dir=root / "control")
    info = json.loads((branch / "branch.json").read_text())
    ckpt = parent / "checkpoints" / "ckpt_000008.npz"
    assert info["checkpoint"] == "checkpoints/ckpt_000008.npz" and info["iteration"] == 8
    assert info["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["parent"] == str(parent.resolve()) and info["changed"] == {}
    assert (
        info["parent_config_hash"]
        == json.loads((parent / "status.json").read_text())["config_hash"]
    )
    assert len(_rows(branch / "learning_curves.csv")) == 8  # the parent's rows before 8
    assert run_branch(branch).status == "complete"
    columns = [c for c in METRIC_COLUMNS if c != "iter_time_s"]
    mine, theirs = _rows(branch / "learning_curves.csv"), _rows(parent / "learning_curves.csv")
    assert sorted(mine) == sorted(theirs) == list(range(24))
    for n in range(8, 24):
        assert [mine[n][c] for c in columns] == [theirs[n][c] for c in columns], n
    fp_mine = _rows(branch / "probes" / "fixed_point_probe.csv")
    fp_theirs = _rows(parent / "probes" / "fixed_point_probe.csv")
    assert sorted(fp_mine) == sorted(fp_theirs) == [5, 11, 17, 23]
    for n in (11, 17, 23):  # probe rounds after the branch point, same draws
        assert fp_mine[n]["value_gap"] == fp_theirs[n]["value_gap"]
        assert fp_mine[n]["w_sharp_drift"] == fp_theirs[n]["w_sharp_drift"]


def test_a_control_branch_from_the_start_reproduces_the_parent_bit_for_bit(root, parent):
    """No checkpoint at iteration 0 exists: the branch writes the initial state (a pure
    function of config and seed) and reruns the parent's whole run, every learner column
    and every probe round equal."""
    assert not (parent / "checkpoints" / "ckpt_000000.npz").exists()
    before = _snapshot(parent)
    branch = create_branch(parent, {}, at=0, run_dir=root / "from_start")
    info = json.loads((branch / "branch.json").read_text())
    assert info["checkpoint"] is None and info["checkpoint_sha256"] is None
    assert info["start"] == "initial" and info["iteration"] == 0 and info["changed"] == {}
    assert not (branch / "learning_curves.csv").exists()  # no parent rows before 0
    # the checkpoint written at 0 holds exactly the runner's initial parameters
    cfg = config_from_json(parent / "config.json")
    start = init_params(cfg, make_feature_maps(cfg))
    ckpt = load_checkpoint(branch / "checkpoints" / "ckpt_000000.npz")
    for name in ("theta_mu", "theta_pi", "w"):
        assert np.array_equal(getattr(ckpt.params, name), getattr(start, name)), name
    assert run_branch(branch).status == "complete"
    assert _snapshot(parent) == before
    columns = [c for c in METRIC_COLUMNS if c != "iter_time_s"]
    mine, theirs = _rows(branch / "learning_curves.csv"), _rows(parent / "learning_curves.csv")
    assert sorted(mine) == sorted(theirs) == list(range(24))
    for n in range(24):
        assert [mine[n][c] for c in columns] == [theirs[n][c] for c in columns], n
    fp_mine = _rows(branch / "probes" / "fixed_point_probe.csv")
    fp_theirs = _rows(parent / "probes" / "fixed_point_probe.csv")
    assert sorted(fp_mine) == sorted(fp_theirs) == [5, 11, 17, 23]
    assert fp_mine == fp_theirs  # every probe column of every round
    stab = "probes/stability_probe.csv"
    assert _rows(branch / stab) == _rows(parent / stab) and len(_rows(branch / stab)) == 4


def test_a_changed_branch_has_its_own_config_and_leaves_the_parent_unchanged(
    parent, frozen_policies
):
    info = tdlens.open_run(frozen_policies).branch
    assert info["changed"] == {
        "alpha_pi": {"parent": 0.05, "branch": 0.0},
        "beta": {"parent": 0.2, "branch": 0.0},
    }
    assert info["config_hash"] != info["parent_config_hash"]
    twin = _rows(frozen_policies / "learning_curves.csv")
    par = _rows(parent / "learning_curves.csv")
    assert all(twin[n]["td_loss"] == par[n]["td_loss"] for n in range(12))  # copied history
    assert twin[12]["td_loss"] == par[12]["td_loss"]  # iteration 12 runs from the same state
    assert twin[20]["tracking_gap"] != par[20]["tracking_gap"]  # frozen policies diverge later
    assert tdlens.open_run(parent).branch is None


def test_resume_of_a_branch_works_and_refuses_a_changed_config(root, parent):
    branch = create_branch(parent, {"alpha_w": 12.0}, at=16, iters=3, run_dir=root / "resumed")
    done = runner.invoke(app, ["run", str(branch), "--resume"])
    assert done.exit_code == 0, done.output
    assert "resumed from 'ckpt_000016.npz'" in done.output
    assert len(_rows(branch / "learning_curves.csv")) == 19
    other = create_branch(parent, {"alpha_w": 12.0}, at=16, iters=3, run_dir=root / "edited")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "alpha_w": 13.0}))
    refused = runner.invoke(app, ["run", str(other), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert "alpha_w" in refused.output and len(refused.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def explained(root, parent) -> dict:
    result = runner.invoke(
        app, ["explain", str(parent), "--iters", str(TWIN_ITERS), "--catalog", str(root / "c.db")]
    )
    assert result.exit_code == 0, result.output
    return json.loads((parent / "explain.json").read_text())


def test_explain_confirms_a_frozen_label_where_alpha_w_x4_lowers_value_gap(root, parent, explained):
    assert explained["label"] == "frozen" and explained["label_verdict"] == "confirmed"
    assert explained["iteration"] == 16  # newest checkpoint at or before 24 - 8
    (twin,) = explained["twins"]
    # the prediction comes from the report's regime.counterfactuals (the same set)
    assert twin["set"] == {"alpha_w": 24.0}
    pred = twin["predicted"]
    assert pred["value_gap_end_lo"] <= pred["value_gap_end"] <= pred["value_gap_end_hi"]
    m, c = twin["measured"], twin["control"]
    assert twin["verdict"] == "confirmed" and m["rounds"] >= ex.MIN_ROUNDS
    assert c["value_gap"] > m["value_gap"]
    band = 2 * math.hypot(m["log_value_gap_se"], c["log_value_gap_se"])
    assert c["log_value_gap"] - m["log_value_gap"] > band
    for name in ex.EXPLAIN_FILES:
        assert (parent / name).is_file()
    assert "label frozen confirmed" in (parent / "run_report.md").read_text()
    con = sqlite3.connect(root / "c.db")
    parents = con.execute("SELECT parent FROM runs WHERE parent IS NOT NULL").fetchall()
    assert {p for (p,) in parents} == {str(parent.resolve())} and len(parents) == 2
    control = _rows(Path(explained["control"]["run_dir"]) / "learning_curves.csv")
    theirs = _rows(parent / "learning_curves.csv")
    assert all(control[n]["w_norm"] == theirs[n]["w_norm"] for n in range(16, 24))
    twin_run = tdlens.open_run(twin["run_dir"])
    assert twin_run.branch["changed"]["alpha_w"] == {"parent": 6.0, "branch": 24.0}
    assert twin_run.branch["iteration"] == 16


def test_explain_refutes_moving_target_when_the_policies_are_already_frozen(frozen_policies):
    result = ex.explain(frozen_policies, 6, label="plateau:moving-target", index=False)
    (twin,) = result["twins"]
    assert twin["set"] == {"alpha_pi": 0.0, "beta": 0.0}
    assert twin["measured"]["value_gap"] == twin["control"]["value_gap"]  # nothing changed
    assert twin["verdict"] == "refuted" and result["label_verdict"] == "refuted"
    assert "REFUTED" in (frozen_policies / "run_report.md").read_text()


@pytest.fixture(scope="module")
def step_size_run(root) -> tdlens.Run:
    """alpha_w = 1800 (about 5x the critical alpha_w at D=64): value_gap grows by ~10^2
    per 2 iterations (diverged:step-size)."""
    overrides = {**PARENT, "alpha_w": 1800.0, "checkpoint_every": 2, "checkpoint_keep": 20}
    run = tdlens.run(
        "regime_divergence", {**overrides, "probes.every": 2}, run_dir=root / "div", progress=False
    )
    assert run.verdict["regime"] == "diverged:step-size"
    return run


def test_explain_confirms_a_step_size_divergence_cured_by_half_the_critical_step(step_size_run):
    """Branched late (--at 10): the twin at half the smallest critical alpha_w of the
    rounds from 10 on stops the growth."""
    run = step_size_run
    result = ex.explain(run.path, 6, at=10, index=False)
    (twin,) = result["twins"]
    stab = run.probes["stability_probe"]
    critical = stab.loc[stab["iter"] >= 10, "critical_alpha_w"].min()
    assert twin["set"]["alpha_w"] == pytest.approx(critical / 2, rel=1e-12)
    assert result["iteration"] == 10 and result["start"] == "checkpoint"
    assert twin["verdict"] == "confirmed"
    assert twin["measured"]["value_gap"] < 1e-3 * twin["control"]["value_gap"]


def test_a_diverged_label_is_tested_from_the_start_over_the_whole_run(step_size_run):
    """By default a diverged label's twins branch at iteration 0 (the claim: the change
    would have prevented the divergence) and run the parent's outer_iters; the control
    then diverges as the parent did, bit for bit, and the twin does not."""
    run = step_size_run
    result = ex.explain(run.path, index=False)
    assert result["start"] == "initial" and result["checkpoint"] is None
    assert result["iteration"] == 0 and result["iters"] == run.config.outer_iters == 24
    (twin,) = result["twins"]
    critical = run.probes["stability_probe"]["critical_alpha_w"].min()
    assert twin["set"]["alpha_w"] == pytest.approx(critical / 2, rel=1e-12)
    control = Path(result["control"]["run_dir"])
    mine, theirs = _rows(control / "learning_curves.csv"), _rows(run.path / "learning_curves.csv")
    assert sorted(mine) == sorted(theirs)  # the control reproduces the parent's run
    assert all(mine[n]["w_norm"] == theirs[n]["w_norm"] for n in theirs)
    assert tdlens.open_run(twin["run_dir"]).branch["start"] == "initial"
    assert twin["verdict"] == "confirmed", twin["why"]
    assert twin["measured"]["value_gap"] < 1e-3 * (twin["control"]["value_gap"] or math.inf)
    text = (run.path / "explain.md").read_text()
    assert "the start (iteration 0, the initial state" in text


TRIAD = {
    "outer_iters": 16,
    "checkpoint_every": 4,
    "probes.every": 4,
    "probes.fixed_point.batch_size": 4096,
    "probes.stability.batch_size": 4096,
    "probes.distribution.enabled": False,
    "probes.q_kernel.enabled": False,
    "probes.rho_audit.enabled": False,
    "threads": 1,
}
"""regime_triad (D = 64) shortened to 16 iterations: still diverged:off-policy."""


def test_the_off_policy_twin_is_read_by_the_sign_of_eig_min_real(root):
    """sigma_mu widened to sigma_pi turns A's smallest eigenvalue positive (its 95%
    interval above 0, the control's below): confirmed by the sign the table predicts,
    although the twin's value_gap does not fall (its on-policy A's critical step lies
    below the triad's step: it grows by step size). Twins from the start, stability
    probe on."""
    run = tdlens.run("regime_triad", TRIAD, run_dir=root / "triad", progress=False)
    assert run.verdict["regime"] == "diverged:off-policy"
    result = ex.explain(run.path, index=False)
    assert result["start"] == "initial" and result["iters"] == 16
    (twin,) = result["twins"]
    assert twin["set"] == {"sigma_mu": 0.6} and twin["direction"] == "eig_min_real_positive"
    for d in (twin["run_dir"], result["control"]["run_dir"]):
        assert tdlens.open_run(d).config.probes.stability.enabled
    rounds = tdlens.open_run(twin["run_dir"]).probes["stability_probe"]
    last = rounds.iloc[-1]
    assert twin["eig_min_real"] == {
        "lo": last["eig_min_real_lo"],
        "hi": last["eig_min_real_hi"],
        "iter": int(last["iter"]),
    }
    assert twin["eig_min_real"]["lo"] > 0 > twin["control_eig_min_real"]["hi"]
    assert twin["verdict"] == "confirmed" and result["label_verdict"] == "confirmed"
    assert twin["value_gap_verdict"] == "refuted"  # what value_gap alone would have said
    assert "above 0 in the twin, below 0 in the control" in twin["why"]
    assert "eig_min_real 95% interval lies above 0" in (run.path / "explain.md").read_text()


def test_sign_verdict_needs_the_twin_above_and_the_control_below_zero():
    up, down, none = (1e-4, 3e-4, 15), (-5e-3, -4e-3, 15), (math.nan, math.nan, None)
    straddle = (-1e-4, 2e-4, 15)
    assert ex.sign_verdict(up, down, False)[0] == "confirmed"
    assert ex.sign_verdict(up, none, True)[0] == "confirmed"  # the control diverged
    assert ex.sign_verdict(up, none, False)[0] == "refuted"
    assert ex.sign_verdict(up, straddle, False)[0] == "refuted"
    assert ex.sign_verdict(straddle, down, False)[0] == "refuted"
    assert ex.sign_verdict(down, down, False)[0] == "refuted"
    word, why = ex.sign_verdict(none, down, True)
    assert word == "refuted" and "not measured" in why


@pytest.mark.parametrize(("phi", "rounds"), [(0.0, 4), (0.5, 4), (0.8, 4), (0.8, 8)])
def test_the_final_value_gap_interval_covers_under_autocorrelated_noise(phi, rounds):
    """A falling line plus AR(1) noise: the end point lies within 2 SE in >= 90% of 2000
    draws (binomial SE of the rate 0.7%) for every phi the estimator claims."""
    rng = np.random.default_rng(int(phi * 10) + rounds)
    t = np.arange(float(rounds)) * 2
    draws, covered = 2000, 0
    for _ in range(draws):
        e = np.empty(rounds)
        e[0] = rng.normal() / math.sqrt(1 - phi**2)
        for i in range(1, rounds):
            e[i] = phi * e[i - 1] + rng.normal()
        a, se = ex.line_end_se(t, 3.0 - 0.2 * t + e)
        covered += abs(a - (3.0 - 0.2 * t[-1])) <= 2 * se
    assert covered / draws >= 0.90


def test_the_end_point_of_an_exact_line_has_no_error():
    a, se = ex.line_end_se(np.arange(6.0), 1.0 + 0.5 * np.arange(6.0))
    assert a == pytest.approx(3.5) and se == pytest.approx(0.0, abs=1e-12)


def test_verdict_on_divergence_and_missing_rounds():
    ok = ex.Final(math.log(0.1), 0.01, 5, "complete")
    gone = ex.Final(math.inf, 0.0, 0, "diverged")
    assert ex.verdict(ok, gone)[0] == "confirmed"
    assert ex.verdict(gone, ok)[0] == "refuted"
    assert ex.verdict(ex.Final(0.0, math.nan, 2, "complete"), ok)[0] == "refuted"
    assert ex.verdict(ex.Final(math.log(0.1) - 0.03, 0.01, 5, None), ok)[0] == "confirmed"
    assert ex.verdict(ex.Final(math.log(0.1) - 0.025, 0.01, 5, None), ok)[0] == "refuted"


def test_interventions_read_the_run_and_predictions_come_from_the_report(tmp_path, parent):
    cfg = tdlens.open_run(parent).config
    critical = tdlens.open_run(parent).probes["stability_probe"]["critical_alpha_w"].iloc[-1]
    (step,) = ex.INTERVENTIONS["diverged:step-size"]
    # a frozen run, far below its critical step: half-critical never raises alpha_w = 6
    assert critical / 2 > 6.0 and step.overrides(cfg, parent) == {"alpha_w": 6.0}
    (bare,) = ex.INTERVENTIONS["diverged"]
    assert bare.overrides(cfg, parent) == {"alpha_w": 1.5}  # alpha_w / 4 below the cap
    crit = tdlens.open_run(parent).probes["stability_probe"].set_index("iter")["critical_alpha_w"]
    for k in (0, 12, 23, 24):  # the smallest critical_alpha_w of the rounds at or after k
        later = crit[crit.index >= k]
        expected = later.min() if len(later) else crit.iloc[-1]
        assert ex._critical_alpha_w(parent, k) == pytest.approx(expected, rel=1e-12), k
    (noise,) = ex.INTERVENTIONS["plateau:noise-floor"]
    assert noise.overrides(cfg, parent) == {"alpha_w": 1.5, "trajectories": 32}
    # the regime table's sets are the counterfactual probe's: explain finds the prediction
    reported = json.loads((parent / "run_report.json").read_text())["regime"]["counterfactuals"]
    for twin in (noise, *ex.INTERVENTIONS["plateau:moving-target"]):
        (found,) = [c for c in reported if c["name"] == twin.name]
        assert found["set"] == twin.overrides(cfg, parent)
        assert ex.predicted_for(parent, found["set"]) == found["predicted"] is not None
    assert ex.INTERVENTIONS["learning"] == ()
    predicted = {"value_gap_end": 0.1, "value_gap_end_lo": 0.08, "value_gap_end_hi": 0.12}
    report = {"regime": {"counterfactuals": [{"set": {"alpha_w": 24.0}, "predicted": predicted}]}}
    (tmp_path / "run_report.json").write_text(json.dumps(report))
    assert ex.predicted_for(tmp_path, {"alpha_w": 24.0}) == predicted
    assert ex.predicted_for(tmp_path, {"alpha_w": 12.0}) is None
    assert ex.predicted_for(tmp_path / "none", {"alpha_w": 24.0}) is None


def test_a_label_without_intervention_runs_the_control_only(frozen_policies):
    result = ex.explain(frozen_policies, 4, label="learning", index=False)
    assert result["twins"] == [] and result["label_verdict"] == "untested"
    assert result["control"]["measured"]["rounds"] == 4
    assert "nothing to test" in (frozen_policies / "explain.md").read_text()


def test_an_older_catalog_gains_the_parent_column(tmp_path, parent):
    from tdlens.catalog import store as catalog

    path = tmp_path / "old.sqlite"
    old = catalog._schema()[0].replace(", parent TEXT", "")
    assert "parent" not in old  # the runs table as catalogs before branches had it
    with sqlite3.connect(path) as db:
        db.execute(old)
    catalog.index_run_dir(path, parent)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT parent FROM runs").fetchall() == [(None,)]


def test_a_twin_that_cannot_be_made_leaves_no_twin_behind(monkeypatch, root, parent):
    bad = ex.Intervention("negative_step", lambda c, d, k=None: {"alpha_w": -1.0})
    monkeypatch.setitem(ex.INTERVENTIONS, "frozen", (bad,))
    before = {p.name for p in root.iterdir()}
    result = runner.invoke(app, ["explain", str(parent), "--label", "frozen"])
    assert result.exit_code == 2 and "alpha_w" in result.output, result.output
    assert {p.name for p in root.iterdir()} == before  # the control made first is removed


def test_bad_input_exits_2_with_one_line(root, parent):
    bare = root / "no_checkpoint"
    bare.mkdir()
    (bare / "config.json").write_bytes((parent / "config.json").read_bytes())
    cases = [
        ([str(root / "nothing")], "is not a run directory"),
        ([str(bare)], "has no checkpoint"),
        ([str(parent), "--backend", "slurm"], "--backend 'slurm'"),
        ([str(parent), "--label", "sleepy"], "--label 'sleepy'"),
    ]
    for args, message in cases:
        before = _snapshot(parent)
        result = runner.invoke(app, ["explain", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert _snapshot(parent) == before


def test_a_twin_finds_its_prediction_by_set_else_by_intervention_name(tmp_path):
    """The report's entry with the twin's exact set; else the same intervention's entry
    (set at the first probe round's critical step) with its own set as predicted_set."""
    predicted = {"value_gap_end": 0.1, "value_gap_end_lo": 0.08, "value_gap_end_hi": 0.12}
    entry = {"name": "alpha_w_half_critical", "set": {"alpha_w": 441.0}, "predicted": predicted}
    (tmp_path / "run_report.json").write_text(json.dumps({"regime": {"counterfactuals": [entry]}}))
    got = ex._prediction(tmp_path, "alpha_w_half_critical", {"alpha_w": 441.0})
    assert got == {"predicted": predicted}
    got = ex._prediction(tmp_path, "alpha_w_half_critical", {"alpha_w": 44.4})
    assert got == {"predicted": predicted, "predicted_set": {"alpha_w": 441.0}}
    assert ex._prediction(tmp_path, "alpha_w_x4", {"alpha_w": 44.4}) == {"predicted": None}
