"""The shipped regime configs show their regime for real (SPEC 13), by their own report,
and the report and the catalog always agree on a run's regime (one scoring module)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tdlens.cli import app
from tdlens.config import load_config
from tdlens.report import write_report
from tdlens.runs.runner import Runner
from tdlens.scores import FLOOR_FACTOR, MOVING_TARGET_RATIO, regime_family
from tdlens.sweeps.catalog import index_run_dir


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
    """The label's rule (tdlens.scores docstring), re-checked on the report's own numbers."""
    at_floor = ev["value_gap_last"] <= FLOOR_FACTOR * ev["stochastic_floor"]
    if label == "learning":
        return ev["falling"] == 1.0 and (at_floor or ev["tau_obs"] <= outer_iters)
    if label == "plateau:noise-floor":
        return at_floor and ev["fall_second_half"] <= ev["fall_noise"]
    if label == "plateau:moving-target":
        return not at_floor and ev["drift_ratio"] >= MOVING_TARGET_RATIO
    if label == "plateau:slow-modes":
        slow = ev["tau_obs"] > outer_iters
        return not at_floor and slow and ev["drift_ratio"] < MOVING_TARGET_RATIO
    return True


@pytest.mark.parametrize(
    ("name", "regime", "health"),
    [
        ("regime_learning", "learning", "PASS"),
        ("regime_plateau", "plateau:slow-modes", "PASS"),
        ("regime_moving_target", "plateau:moving-target", "PASS"),
        ("regime_noise_floor", "plateau:noise-floor", "PASS"),
        ("regime_divergence", "diverged", "FAIL"),
    ],
)
def test_regime_config_shows_its_regime(tmp_path, name, regime, health):
    """Each shipped regime config gets its label, by its own report: the label, the
    mechanism's rule on the evidence numbers in run_report.json, and the same label at
    the top of run_report.md and in the catalog."""
    cfg = load_config(f"configs/{name}.yaml")
    Runner(cfg, tmp_path / name, handle_signals=False, write_report=write_report).run()
    report = json.loads((tmp_path / name / "run_report.json").read_text())
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
    md = (tmp_path / name / "run_report.md").read_text()
    assert f"regime: {regime} (" in md
    assert assert_report_and_catalog_agree(tmp_path / name, tmp_path / "c.sqlite") == regime


def test_demo_sweep_reports_and_catalog_agree(tmp_path):
    out = tmp_path / "sweeps"
    result = CliRunner().invoke(
        app, ["sweep", "configs/sweeps/demo.yaml", "--output-dir", str(out), "--jobs", "2"]
    )
    assert result.exit_code in (0, 1), result.output  # diverged runs are runs, not errors
    runs = sorted((next(out.iterdir()) / "runs").iterdir())
    assert len(runs) == 4
    labels = {assert_report_and_catalog_agree(r, tmp_path / "c.sqlite") for r in runs}
    assert labels == {"frozen", "diverged"}
