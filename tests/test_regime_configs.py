"""The shipped regime configs show their regime for real (SPEC 13), by their own report."""

from __future__ import annotations

import json

import pytest

from tdlens.config import load_config
from tdlens.report import write_report
from tdlens.runs.runner import Runner
from tdlens.sweeps.records import load_record


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
    record = load_record(tmp_path / name)
    assert record.regime == regime, record.regime_reason
