"""The shipped regime configs show their regime for real (SPEC 13), by their own report,
and the report and the catalog always agree on a run's regime (one scoring module)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tdlens.cli import app
from tdlens.config import load_config
from tdlens.report import write_report
from tdlens.report.theory import expected_dynamics
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner
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
    if label != "diverged":
        assert (_checks(report)["critic_frozen"] == "WARN") == (label == "frozen"), run_dir.name
    return label


@pytest.mark.parametrize(
    ("name", "regime", "health"),
    [
        ("regime_learning", "learning", "PASS"),
        ("regime_plateau", "plateau", "PASS"),
        ("regime_divergence", "diverged", "FAIL"),
    ],
)
def test_regime_config_shows_its_regime(tmp_path, name, regime, health):
    cfg = load_config(f"configs/{name}.yaml")
    Runner(cfg, tmp_path / name, handle_signals=False, write_report=write_report).run()
    report = json.loads((tmp_path / name / "run_report.json").read_text())
    assert report["health"]["status"] == health
    assert report["regime"]["label"] == regime, report["regime"]["reason"]
    assert assert_report_and_catalog_agree(tmp_path / name, tmp_path / "c.sqlite") == regime
    if name == "regime_learning":
        # issue 13: value_gap inside the first probe's predicted band (expected dynamics plus
        # minibatch noise) at >= 90% of probes, fitted decay rate within 25% of predicted
        dyn = expected_dynamics(load_run(tmp_path / name))
        assert dyn.inside_fraction >= 0.9, dyn.inside
        assert abs(dyn.fitted_rate / dyn.predicted_rate - 1.0) <= 0.25


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
