"""The regime atlas (`tdlens atlas`): a tiny real sweep drawn, the theory boundary, the
reproduce commands, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from matplotlib.markers import MarkerStyle
from typer.testing import CliRunner

from helpers import TINY_SWEEP, run_spec_sweep
from tdlens.catalog.records import RunRecord
from tdlens.cli import app
from tdlens.regimes import LABELS, RegimeTableError, entry
from tdlens.sweeps.atlas.data import AtlasError, AtlasPoint, AtlasSweep, atlas_points, mismatch_key
from tdlens.sweeps.atlas.geometry import closed_form_boundary, crossing_interval, eig_zero_crossing
from tdlens.sweeps.atlas.page import _boundary_text, reproduce_command
from tdlens.sweeps.atlas.plot import step_mismatch_figure

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
    return run_spec_sweep(tmp_path_factory.mktemp("atlas"), TINY_SPEC)


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
    assert {r.split(" | ")[1] for r in rows} == labels
    assert "[the deadly triad](triad.md)" in page
    assert "[the plateau laws](laws.md)" in page
    assert "| diverged:off-policy | `tdlens run regime_triad` |" in page


def test_atlas_takes_a_second_sweep_for_beta_x_offset(tiny_sweep, tmp_path):
    docs = tmp_path / "atlas.md"
    res = cli.invoke(app, ["atlas", str(tiny_sweep), str(tiny_sweep), "--docs", str(docs)])
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    assert f"tdlens atlas OUT/{tiny_sweep.name} OUT/{tiny_sweep.name} --docs" in page
    assert page.count("## Regime over beta x theta_mu_offset_scale") == 1
    assert page.count("`tdlens sweep configs/sweeps/tiny_atlas.yaml --jobs 2") == 2
    res = cli.invoke(app, ["atlas", *[str(tiny_sweep)] * 3, "--docs", str(tmp_path / "b.md")])
    assert res.exit_code == 2 and "one or two sweep directories" in res.output
    assert not (tmp_path / "b.md").exists()


def test_atlas_bad_input_exits_2(tiny_sweep, tmp_path):
    res = cli.invoke(app, ["atlas", str(tmp_path), "--docs", str(tmp_path / "a.md")])
    assert res.exit_code == 2 and "not a sweep directory" in res.output
    res = cli.invoke(app, ["atlas", str(tiny_sweep), "--docs", str(tmp_path / "a.html")])
    assert res.exit_code == 2 and "--docs" in res.output
    assert not (tmp_path / "a.html").exists()
    with pytest.raises(AtlasError, match="theta_mu_offset_scale"):
        mismatch_key(["alpha_w", "beta"])
    assert mismatch_key(["beta", "sigma_mu"]) == "sigma_mu"
    assert mismatch_key(["sigma_mu", "sigma_pi"]) == "sigma_pi"


def _point(
    mismatch: float, eig: float, lo: float = math.nan, hi: float = math.nan, regime: str = ""
) -> AtlasPoint:
    rec = RunRecord("r", Path("."), regime=regime or "learning")
    return AtlasPoint(rec, 1.0, mismatch, 0.2, 1.0, eig, lo, hi)


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


def test_sigma_pi_is_drawn_as_the_ratio_to_sigma_mu():
    rec = RunRecord(
        "r",
        Path("/nonexistent"),
        params={"alpha_w": 10.0, "sigma_pi": 0.6},
        metrics={"critical_step": 100.0, "eig_min_real": -0.004},
    )
    (p,) = atlas_points([rec], {"sigma_mu": 0.3, "beta": 0.1, "gamma": 0.99}, "sigma_pi")
    assert (p.mismatch, p.step_ratio, p.beta, p.eig_min_real) == (2.0, 0.1, 0.1, -0.004)
    assert math.isnan(p.eig_lo) and math.isnan(p.eig_hi)  # no run directory: no interval
    plan = {"base_config": {"sigma_mu": 0.3, "gamma": 0.99}}
    assert closed_form_boundary(AtlasSweep(plan, "sigma_pi", [p])) == pytest.approx(
        math.sqrt(2 / 0.99)
    )
    assert math.isnan(closed_form_boundary(AtlasSweep(plan, "theta_mu_offset_scale", [p])))


def _hlines(ax) -> dict[float, str]:
    return {
        line.get_ydata()[0]: line.get_linestyle()
        for line in ax.lines
        if len(set(line.get_ydata())) == 1 and len(set(line.get_xdata())) > 1
    }


def test_boundary_is_drawn_where_the_sweep_crosses_it():
    """Medians +0.2 at 1 and -0.2 at 2: eig_min_real = 0 at 1.5; eig_min_real_lo (0.1 ->
    -0.3) at 1 + 0.1 / 0.4 = 1.25, eig_min_real_hi (0.3 -> -0.1) at 1.75 (hand values)."""
    pts = [
        _point(1.0, 0.2, 0.1, 0.3, "learning"),
        _point(2.0, -0.2, -0.3, -0.1, "diverged:off-policy"),
    ]
    crossing = crossing_interval(pts)
    assert crossing == pytest.approx((1.5, 1.25, 1.75))
    fig = step_mismatch_figure(pts, "sigma_pi", crossing, closed_form=1.42)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert _hlines(ax) == {1.5: ":", 1.42: "-."}
    (band,) = ax.patches
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((1.25, 1.75))
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [1.0]
    assert ax.get_ylabel() == "sigma_pi / sigma_mu"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["diverged:off-policy", "learning"]
    assert "eig_min_real = 0 (medians)" in legend and "eig_min_real 95% interval" in legend
    text = _boundary_text(pts, "sigma_pi / sigma_mu", crossing, 1.42)
    assert "changes sign at sigma_pi / sigma_mu = 1.5" in text and "between 1.25 and 1.75" in text
    # no sign change: neither the line nor the band
    flat = [_point(1.0, 0.2, 0.1, 0.3), _point(2.0, 0.1, 0.05, 0.2)]
    none = crossing_interval(flat)
    assert all(math.isnan(c) for c in none)
    ax = step_mismatch_figure(flat, "sigma_pi", none).axes[0]
    assert _hlines(ax) == {} and not ax.patches
    assert "never changes sign" in _boundary_text(flat, "sigma_pi / sigma_mu", none, math.nan)


def test_every_label_is_drawn_with_its_table_colour_and_marker():
    """One point per label of tdlens.regimes.REGIME_TABLE: each scatter's face colour and
    marker path are the table's (no family fallback), and an undeclared label raises."""
    pts = [_point(1.0 + i, 0.1, regime=label) for i, label in enumerate(LABELS)]
    none = (math.nan, math.nan, math.nan)
    (ax,) = [a for a in step_mismatch_figure(pts, "sigma_pi", none).axes if a.get_visible()]
    drawn = ax.collections
    assert len(drawn) == len(LABELS)
    for label, coll in zip(LABELS, drawn, strict=True):
        assert tuple(coll.get_facecolor()[0]) == to_rgba(entry(label).colour), label
        marker = MarkerStyle(entry(label).marker)
        expected = marker.get_path().transformed(marker.get_transform()).vertices
        assert coll.get_paths()[0].vertices == pytest.approx(expected), label
    with pytest.raises(RegimeTableError, match="plateau:rho-variance"):
        step_mismatch_figure([_point(1.0, 0.1, regime="plateau:rho-variance")], "sigma_pi", none)


def test_atlas_writes_under_outputs_unless_docs_is_given(tiny_sweep, tmp_path, monkeypatch):
    """A plain `tdlens atlas SWEEP` never overwrites docs/atlas.md: it writes
    outputs/atlas.md (images in outputs/atlas/); the docs page is an explicit --docs."""
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "docs" / "atlas.md"
    page.parent.mkdir()
    page.write_text("the shipped page")
    res = cli.invoke(app, ["atlas", str(tiny_sweep)])
    assert res.exit_code == 0, res.output
    assert page.read_text() == "the shipped page"
    written = tmp_path / "outputs" / "atlas.md"
    assert f"tdlens atlas OUT/{tiny_sweep.name} --out outputs/atlas.md" in written.read_text()
    assert (tmp_path / "outputs" / "atlas" / "step_mismatch.png").is_file()
    res = cli.invoke(app, ["atlas", str(tiny_sweep), "--docs", "docs/atlas.md"])
    assert res.exit_code == 0, res.output
    assert "--docs docs/atlas.md" in page.read_text()
