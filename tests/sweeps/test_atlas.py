"""The regime atlas (`tdlens atlas`): a tiny real sweep drawn, the theory boundary, the
reproduce commands, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from helpers import TINY_SWEEP
from tdlens.cli import app
from tdlens.sweeps.atlas import (
    AtlasError,
    AtlasPoint,
    eig_zero_crossing,
    mismatch_key,
    reproduce_command,
)
from tdlens.sweeps.records import RunRecord

cli = CliRunner()
TINY_SPEC = {
    "name": "tiny_atlas",
    "base": "sanity",
    "grid": {
        "alpha_w": [1.0, 1000.0],
        "theta_mu_offset_scale": [0.0, 1.0],
        "beta": [0.2],
    },
    "overrides": TINY_SWEEP,
}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atlas")
    spec = root / "tiny_atlas.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    res = cli.invoke(
        app,
        ["sweep", str(spec), "--output-dir", str(root / "sweeps"), "--jobs", "1"],
        env={"TDLENS_CATALOG": str(root / "c.sqlite")},
    )
    assert res.exit_code in (0, 1), res.output  # diverged runs are runs
    (sweep,) = (root / "sweeps").iterdir()
    return sweep


def test_atlas_command_draws_a_tiny_sweep(tiny_sweep, tmp_path):
    docs = tmp_path / "docs" / "atlas.md"
    res = cli.invoke(app, ["atlas", str(tiny_sweep), "--docs", str(docs)])
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    for name in ("step_mismatch.png", "beta_offset.png"):
        image = tmp_path / "docs" / "atlas" / name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](atlas/{name})" in page
    assert "alpha_w / critical_step x theta_mu_offset_scale" in page
    assert "eta = critical_step" in page and "eig_min_real" in page
    assert f"tdlens atlas OUT/{tiny_sweep.name} --docs {docs}" in page
    assert "tdlens sweep configs/sweeps/tiny_atlas.yaml --jobs 2" in page
    assert "alpha_w changes it in 2 of 2" in page  # frozen at 1, diverged at 1000
    # every label the sweep produced has one reproduce command with its swept values
    rows = [line for line in page.splitlines() if "`tdlens run sanity" in line]
    assert all("--set alpha_w=" in r and "--set outer_iters=3" in r for r in rows)
    (regimes,) = [line for line in res.output.splitlines() if line.startswith("regimes: ")]
    labels = {kv.split("=")[0] for kv in regimes[len("regimes: ") :].split(", ")}
    assert "diverged" in {label.split(":")[0] for label in labels}  # alpha_w = 1000
    assert {r.split(" | ")[0].removeprefix("| ") for r in rows} == labels


def test_atlas_bad_input_exits_2(tiny_sweep, tmp_path):
    res = cli.invoke(app, ["atlas", str(tmp_path), "--docs", str(tmp_path / "a.md")])
    assert res.exit_code == 2 and "not a sweep directory" in res.output
    res = cli.invoke(app, ["atlas", str(tiny_sweep), "--docs", str(tmp_path / "a.html")])
    assert res.exit_code == 2 and "--docs" in res.output
    assert not (tmp_path / "a.html").exists()
    with pytest.raises(AtlasError, match="theta_mu_offset_scale"):
        mismatch_key(["alpha_w", "beta"])
    assert mismatch_key(["beta", "sigma_mu"]) == "sigma_mu"


def _point(mismatch: float, eig: float) -> AtlasPoint:
    return AtlasPoint(RunRecord("r", Path(".")), 1.0, mismatch, 0.2, 1.0, eig)


def test_eig_zero_crossing_by_linear_interpolation():
    """Medians 0.3 at mismatch 1 and -0.1 at 2: zero at 1 + 0.3 / 0.4 = 1.75 (hand value)."""
    pts = [_point(0.0, 0.5), _point(1.0, 0.2), _point(1.0, 0.4), _point(2.0, -0.1)]
    assert eig_zero_crossing(pts) == pytest.approx(1.75)
    assert math.isnan(eig_zero_crossing([_point(0.0, 0.5), _point(1.0, 0.1)]))


def test_reproduce_command_is_base_overrides_and_run_values():
    plan = {"spec": {"base": "regime_plateau", "overrides": {"outer_iters": 40}}}
    rec = RunRecord("r", Path("."), params={"alpha_w": 48.0, "beta": 0.2})
    assert reproduce_command(plan, rec) == (
        "tdlens run regime_plateau --set outer_iters=40 --set alpha_w=48.0 --set beta=0.2"
    )
