"""The plateau laws (`tdlens laws`, issue 27 item 3): the power-law fit against closed
forms, the relaxation time against a hand value, and a small real sweep whose fitted
slopes match the prediction's own within their intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tdlens.cli import app
from tdlens.sweeps.laws import fit_power_law, read_laws, relaxation_time

cli = CliRunner()
SMALL_LAWS = {
    "name": "small_laws",
    "base": "regime_noise_floor",
    "grid": {"alpha_w": [50.0, 100.0, 200.0], "trajectories": [4, 16]},
    "overrides": {
        "outer_iters": 60,
        "env.feature_dim": 32,
        "env.actor_feature_dim": 16,
        "probes.every": 2,
        "probes.fixed_point.batch_size": 8192,
        "probes.stability.enabled": False,
        "probes.distribution.enabled": False,
        "probes.q_kernel.enabled": False,
        "probes.rho_audit.enabled": False,
    },
}
"""configs/regime_noise_floor.yaml at D = 32: 6 runs over alpha_w (relaxation times ~10 to
~2.5 iterations, all at their floor by the second half) and B."""


def test_power_law_fit_recovers_a_known_slope_and_its_interval():
    x = np.geomspace(1.0, 100.0, 8)
    fit = fit_power_law(x, 3.0 * x**0.5)
    assert fit.slope == pytest.approx(0.5, abs=1e-12) and fit.n == 8
    assert fit.hi - fit.lo < 1e-6  # an exact line: a zero-width interval (up to rounding)
    # log-normal scatter of sd 0.1: the 95% interval covers the true slope in ~95% of
    # draws; with these 40 fixed seeds it misses in 2 (binomial: 2 +- 1.4 expected)
    misses = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = 3.0 * x**0.5 * np.exp(0.1 * rng.standard_normal(x.size))
        misses += not fit_power_law(x, y).covers(0.5)
    assert misses <= 6
    assert math.isnan(fit_power_law([1.0, 2.0], [1.0, -1.0]).slope)  # one positive pair


def test_relaxation_time_interpolates_the_e_fold_of_the_excess():
    iters = np.array([0.0, 5.0, 10.0, 15.0])
    target = 0.5
    excess = np.exp(-iters / 7.0)  # falls by e in exactly 7 iterations
    gap = np.sqrt(excess**2 + target**2)
    assert relaxation_time(iters, gap, target) == pytest.approx(7.0, rel=1e-12)
    assert math.isnan(relaxation_time(iters, np.full(4, 0.6), target))  # never falls


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("laws")
    spec = root / "small_laws.yaml"
    spec.write_text(yaml.safe_dump(SMALL_LAWS))
    res = cli.invoke(
        app,
        ["sweep", str(spec), "--output-dir", str(root / "sweeps"), "--jobs", "1"],
        env={"TDLENS_CATALOG": str(root / "c.sqlite")},
    )
    assert res.exit_code == 0, res.output
    (sweep,) = (root / "sweeps").iterdir()
    return sweep


def test_small_sweep_slopes_match_the_predictions_own(small_sweep, tmp_path):
    _, laws = read_laws(small_sweep)
    assert len(laws.points) == 6 and not laws.skipped
    for measured, predicted in (
        (laws.floor_measured, laws.floor_predicted),
        (laws.tau_measured, laws.tau_predicted),
    ):
        assert measured.covers(predicted.slope), (measured, predicted)
        assert 0.5 < predicted.slope < 1.5  # the law's slope 1, well below the critical step
    docs = tmp_path / "docs" / "laws.md"
    res = cli.invoke(app, ["laws", str(small_sweep), "--docs", str(docs)])
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    assert (tmp_path / "docs" / "laws" / "laws.png").read_bytes()[:4] == b"\x89PNG"
    assert "](laws/laws.png)" in page and "[regime atlas](atlas.md)" in page
    assert f"tdlens laws OUT/{small_sweep.name} --docs {docs}" in page
    assert sum(line.startswith("| alpha_w") for line in page.splitlines()) == 6  # one per run


def test_laws_refuses_what_is_not_a_sweep(tmp_path):
    res = cli.invoke(app, ["laws", str(tmp_path)])
    assert res.exit_code == 2 and "not a sweep directory" in res.output
