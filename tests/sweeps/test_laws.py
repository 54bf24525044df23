"""The plateau laws (`tdlens laws`, issue 27 item 3): the power-law fit against closed
forms, the relaxation time against a hand value, and a small real sweep whose fitted
slopes match the prediction's own within their intervals."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tdlens.cli import app
from tdlens.sweeps.laws import fit_power_law, read_laws, relaxation_time
from tdlens.sweeps.spec import load_spec

SCALING = Path(__file__).parents[2] / "src" / "tdlens" / "configs" / "sweeps" / "scaling.yaml"

cli = CliRunner()
SMALL_LAWS = {
    "name": "small_laws",
    "base": "regime_noise_floor",
    "grid": {"alpha_w": [90.0, 140.0, 210.0], "trajectories": [2, 4]},
    "overrides": {
        "outer_iters": 80,
        "step_normalization": "mean",
        "env.feature_dim": 32,
        "env.actor_feature_dim": 16,
        "probes.every": 2,
        "probes.fixed_point.batch_size": 24576,
        "probes.stability.enabled": False,
        "probes.distribution.enabled": False,
        "probes.q_kernel.enabled": False,
        "probes.rho_audit.enabled": False,
    },
}
"""configs/regime_noise_floor.yaml at D = 32 under the mean normalisation (eta = alpha_w),
as configs/sweeps/scaling.yaml's middle: 6 runs over alpha_w (relaxation times ~5.5 to
~2.4 iterations, at most 0.37 of the critical step) and B (the smallest, 1, is left out:
there the noise the error multiplies already lifts the floor at 0.25 of the critical
step)."""


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
        assert measured.n >= 4, laws.points  # the design resolves most runs
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


def test_laws_without_docs_writes_into_the_sweep_not_docs(small_sweep, tmp_path, monkeypatch):
    """Without --docs the page and its figure go to SWEEP/laws.md and SWEEP/laws/: a docs/
    folder in the working directory is left exactly as it was."""
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "laws.md").write_text("hand-kept\n")
    res = cli.invoke(app, ["laws", str(small_sweep)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in docs.iterdir()) == ["laws.md"]
    assert (docs / "laws.md").read_text() == "hand-kept\n"
    page = (small_sweep / "laws.md").read_text()
    assert "](laws/laws.png)" in page and "--docs" not in page
    assert (small_sweep / "laws" / "laws.png").read_bytes()[:4] == b"\x89PNG"
    res = cli.invoke(app, ["laws", str(small_sweep), "--constant", str(small_sweep)])
    assert res.exit_code == 2 and "--constant and --annealed go together" in res.output


def test_scaling_sweep_spans_the_laws_below_the_critical_step(tmp_path):
    """configs/sweeps/scaling.yaml: >= 5 steps over >= 1.5 decades, >= 3 batches under a
    step normalisation where B matters (mean: eta = alpha_w), >= 3 seeds, probes the page
    does not read off; and every step at most 0.6 of the critical alpha_w that the
    stability probe of a one-iteration pilot of its base gives (~565 at D = 32)."""
    spec = load_spec(SCALING)
    axes = {a.key: a.values for a in spec.all_axes}
    alphas, batches = sorted(axes["alpha_w"]), sorted(axes["trajectories"])
    assert len(alphas) >= 5 and math.log10(alphas[-1] / alphas[0]) >= 1.5 - 1e-9
    assert len(set(batches)) >= 3 and len(set(axes["seed"])) >= 3
    over = spec.raw["overrides"]
    assert over["step_normalization"] == "mean"
    for probe in ("stability", "distribution", "q_kernel", "rho_audit"):
        assert over[f"probes.{probe}.enabled"] is False
    sets = [f"--set={k}={v}" for k, v in over.items() if not k.startswith("probes.")]
    res = cli.invoke(
        app,
        [
            "run",
            str(spec.base),
            *sets,
            "--set=outer_iters=1",
            "--set=probes.fixed_point.enabled=false",
            "--set=probes.distribution.enabled=false",
            "--set=probes.q_kernel.enabled=false",
            "--set=probes.rho_audit.enabled=false",
            f"--set=trajectories={batches[0]}",
            "--run-dir",
            str(tmp_path / "pilot"),
        ],
        env={"TDLENS_CATALOG": str(tmp_path / "c.sqlite")},
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "pilot/probes/stability_probe.csv").open()))
    critical = float(rows[-1]["critical_alpha_w"])
    assert 300 < critical < 1000  # ~565: the value the spec's comment quotes
    assert alphas[-1] <= 0.6 * critical


def test_constant_vs_annealed_panel(small_sweep, tmp_path):
    """--constant/--annealed: one panel of a constant-step run of the sweep and its
    inverse_time twin with their predicted bands; the page reports both runs' last-quarter
    value_gap and the one-line commands that make them. Swapped, it is refused (exit 2)
    before anything is written."""
    const = next(p for p in (small_sweep / "runs").iterdir() if "alpha_w140_t2" in p.name)
    sets = [f"--set={k}={v}" for k, v in SMALL_LAWS["overrides"].items()]
    ann = tmp_path / "annealed"
    res = cli.invoke(
        app,
        [
            "run",
            "regime_noise_floor",
            *sets,
            "--set=alpha_w=140.0",
            "--set=trajectories=2",
            "--set=seed=0",
            "--set=schedules.alpha_w.kind=inverse_time",
            "--run-dir",
            str(ann),
        ],
        env={"TDLENS_CATALOG": str(tmp_path / "c.sqlite")},
    )
    assert res.exit_code == 0, res.output
    docs = tmp_path / "docs" / "laws.md"
    args = ["laws", str(small_sweep), "--docs", str(docs)]
    res = cli.invoke(app, [*args, "--constant", str(ann), "--annealed", str(const)])
    assert res.exit_code == 2 and "must have a constant alpha_w" in res.output
    assert not docs.parent.exists()  # refused before anything is written
    res = cli.invoke(app, [*args, "--constant", str(const), "--annealed", str(ann)])
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    assert (docs.parent / "laws" / "annealing.png").read_bytes()[:4] == b"\x89PNG"
    assert "![constant vs annealed](laws/annealing.png)" in page
    assert "schedules.alpha_w.kind=inverse_time" in page  # the twin's reproduce line
    rows = [line for line in page.splitlines() if line.startswith(f"| {ann.name} |")]
    assert len(rows) == 1 and "inverse_time (alpha_w 140" in rows[0]
