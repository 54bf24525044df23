"""tdlens calibrate (tdlens.runs.calibrate): the empirical divergence threshold of training
with the policies frozen lies inside the stability probe's critical-step interval, which is
no wider than +-20%, on three configs that differ in D, gamma and the sigma ratio."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tdlens.cli import app
from tdlens.config import load_config
from tdlens.runs.calibrate import calibrate

BASE = [
    "env.actor_feature_dim=16",
    "trajectories=8",
    "horizon=50",
    "w_init_scale=2.0",
    "theta_mu_offset_scale=0.1",
    "probes.stability.batch_size=6400",
    "probes.stability.k_mc=1",
    "probes.stability.power_iters=5",
    "threads=1",
]


def run_cli(args: list[str]):
    return CliRunner().invoke(app, args)


CONFIGS = {
    "D64_gamma0.9_sigma0.25/0.3": [
        "env.feature_dim=64",
        "gamma=0.9",
        "sigma_pi=0.25",
        "sigma_mu=0.3",
    ],
    "D128_gamma0.5_sigma0.3/0.35": [
        "env.feature_dim=128",
        "gamma=0.5",
        "sigma_pi=0.3",
        "sigma_mu=0.35",
    ],
    "D96_gamma0.95_sigma0.3/0.3": [
        "env.feature_dim=96",
        "gamma=0.95",
        "sigma_pi=0.3",
        "sigma_mu=0.3",
    ],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_empirical_threshold_inside_the_predicted_interval(name):
    cal = calibrate(load_config(None, [*BASE, *CONFIGS[name]]))
    lo, hi = cal.predicted_interval
    stable, diverged = cal.empirical_bracket
    assert lo <= 1.0 <= hi
    assert hi - lo <= 0.4, (lo, hi)  # no wider than +-20%
    # the threshold lies in (stable, diverged]; that bracket meets [lo, hi]
    assert stable < hi and diverged > lo, (stable, diverged, lo, hi)
    assert not any(r["diverged"] for r in cal.rows if r["f"] <= 0.8)
    assert all(r["diverged"] for r in cal.rows if r["f"] >= 1.5)


def test_calibrate_command_writes_table_plot_and_summary(tmp_path):
    out = tmp_path / "cal"
    sets = [a for s in [*BASE, *CONFIGS["D64_gamma0.9_sigma0.25/0.3"]] for a in ("--set", s)]
    result = run_cli(
        ["calibrate", "sanity", "--grid", "0.5,2", "--iters", "10", "--out", str(out), *sets]
    )
    assert result.exit_code == 0, result.output
    lines = (out / "calibration.csv").read_text().splitlines()
    assert lines[0] == "f,alpha_w,eta,diverged,w_norm_max,w_norm_last,growth" and len(lines) == 3
    summary = json.loads((out / "calibration.json").read_text())
    assert summary["predicted_f_lo"] <= 1.0 <= summary["predicted_f_hi"]
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_rejects_a_bad_grid(tmp_path):
    result = run_cli(["calibrate", "sanity", "--grid", "0.5,x", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--grid" in result.output
    assert not (tmp_path / "c").exists()


def test_calibrate_plot_keeps_its_labels_inside_the_figure():
    """The x label was cut at the bottom of the PNG (issue 24): the axis labels, title and
    legend lie inside the figure once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tdlens.runs.calibrate import Calibration, plot_figure

    iters = 60
    rows = tuple(
        {
            "f": f,
            "alpha_w": 0.1 * f,
            "eta": f,
            "diverged": float(f > 1),
            "w_norm_max": 1.0,
            "w_norm_last": 1.0,
            "growth": 1.0,
        }
        for f in (0.5, 0.9, 1.1, 2.0)
    )
    norms = np.array([np.exp(np.linspace(0, 3 * (r["f"] - 1), iters)) for r in rows])
    cal = Calibration(2849.43, 2800.0, 2900.0, 0.08, rows, norms)
    fig = plot_figure(cal)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    width, height = fig.bbox.width, fig.bbox.height
    for text in (ax.xaxis.label, ax.yaxis.label, ax.title, ax.get_legend()):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text
