"""What the command line prints (issue 15): progress with one iteration numbering, the
dry run, the rho audit beside the report's, the fixed-point tol actually used."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from helpers import small_config
from tdlens import cli
from tdlens.api import Eta, PlainProgress, probe_rounds_after
from tdlens.cli import app
from tdlens.config import parse_config
from tdlens.pages.fmt import duration_text
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Progress, Runner

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--set", "env.feature_dim=32", "--set", "env.actor_feature_dim=8", "--set", "outer_iters=2"]
QUIET = [*TINY, "--set", "probes.enabled=false"]


class FakeClock:
    """A clock that returns the times it is given, in order."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def _progress(n: int, total: int, reason: str | None = None, seconds: float = 0.25) -> Progress:
    return Progress(n, total, {"td_loss": 2.5e-5, "w_norm": 4.42895}, reason, seconds)


def test_plain_progress_numbers_iterations_as_the_tables_and_gives_an_eta():
    """Hand values, probes off: started at t=100; iteration 0 done at t=130 (with the
    compile: no ETA); iteration 1 at t=132 (2 s each), 78 left: ETA 156 s = 2m36s, not
    the 78 x 16 s = 20m48s of the mean with the compile. Iteration 79 is the last."""
    lines = PlainProgress(None, clock=FakeClock(100.0, 130.0, 132.0, 900.0))
    first = lines.line(_progress(0, 80))
    assert first.startswith("iter 0 (1/80 done, elapsed 30s) td_loss=2.5e-05")
    second = lines.line(_progress(1, 80))
    assert second.startswith("iter 1 (2/80 done, elapsed 32s, ETA 2m36s) ")
    last = lines.line(_progress(79, 80, "last"))
    assert last.startswith("iter 79 (80/80 done, elapsed 13m20s) ")
    assert last.endswith("w_norm=4.42895 probes(last) 0.25s") and "ETA" not in last


def test_plain_progress_eta_of_a_resumed_run_counts_only_its_own_iterations():
    """Resumed at iteration 40 of 80: iteration 40 (with the compile) ended at 10 s, 41 at
    20 s; 80 - 42 = 38 remain: ETA 10 * 38 = 380 s = 6m20s."""
    lines = PlainProgress(None, clock=FakeClock(0.0, 10.0, 20.0))
    assert "ETA" not in lines.line(_progress(40, 80))
    assert "(42/80 done, elapsed 20s, ETA 6m20s)" in lines.line(_progress(41, 80))
    assert [duration_text(s) for s in (0.4, 59.6, 61, 3600 * 3 + 600)] == [
        "0s",
        "1m00s",
        "1m01s",
        "3h10m",
    ]


def test_probe_rounds_left_follow_the_schedule():
    """Hand counts. every 5 of 80: after iteration 3, rounds after 4, 9, ..., 79 (16; the
    last is one of them); after 4, 15. every 3 of 10 after 0: after 2, 5, 8 and the last,
    9 (4). every 0: only the last. Probes off or at the end: none."""
    assert probe_rounds_after(3, 80, 5) == 16 and probe_rounds_after(4, 80, 5) == 15
    assert probe_rounds_after(0, 10, 3) == 4 and probe_rounds_after(8, 10, 3) == 1
    assert probe_rounds_after(3, 80, 0) == 1 and probe_rounds_after(3, 80, None) == 0
    assert probe_rounds_after(79, 80, 5) == 0


def test_eta_times_probe_rounds_apart_from_iterations():
    """every 3 of 10 iterations; iterations take 2 s, the probe round after iteration 2
    takes 20 s. After iteration 0: no ETA (its time includes the compile). After 1, before
    any round: 8 x 2 = 16 s. After iteration 2 (t = 26 s, 20 of them the round): 7
    iterations x (4 s / 2) + 3 rounds (after 5, 8, 9) x 20 s = 74 s; the mean over all
    time would say 7 x 26 / 3 = 61 s."""
    eta = Eta(3, clock=FakeClock(0.0, 2.0, 4.0, 26.0))
    assert eta.update(_progress(0, 10)) == (2.0, None)
    assert eta.update(_progress(1, 10)) == (4.0, 16.0)
    assert eta.update(_progress(2, 10, "every", seconds=20.0)) == (26.0, 74.0)


def test_run_not_on_a_terminal_prints_plain_zero_based_lines(tmp_path):
    res = runner.invoke(app, ["run", "sanity", *QUIET, "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("iter ")]
    assert [ln.split(" (")[0] for ln in lines] == ["iter 0", "iter 1"]
    # iteration 0 includes the compile (no ETA from it); iteration 1 is the last
    assert "(2/2 done, elapsed" in lines[1] and "ETA" not in res.output
    curves = load_run(tmp_path / "r").curves
    assert list(curves.values("iter")) == [0.0, 1.0]  # the same numbering as the table


def test_run_on_a_terminal_shows_a_live_bar(tmp_path, monkeypatch):
    """The bar (rich, forced to a terminal): iteration, n of N done, ETA, td_loss, w_norm
    and the newest probe round, numbered as the tables."""
    import importlib.util

    if importlib.util.find_spec("colorama") is not None:
        import colorama.initialise as ci

        # a first numba compile inside the bar calls colorama.init(), which keeps the
        # bar's stdout proxy for its exit hook; put colorama's stdio back after the test
        for name in ("orig_stdout", "orig_stderr"):
            monkeypatch.setattr(ci, name, getattr(ci, name))
    cfg = small_config("outer_iters=2", "probes.every=1", "probes.distribution.enabled=false")
    r = Runner(cfg, tmp_path / "r")  # no report: the bar is what is tested
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=220, color_system=None)
    result = cli._run_with_progress(r, console)
    assert result.status == "complete"
    text = buf.getvalue()
    for part in ("iter 1", "2/2", "done", "ETA", "td_loss", "w_norm", "probes at iter 1 (last"):
        assert part in text, part
    assert "iter 2 " not in text and "probe@" not in text


def test_dry_run_prints_the_resolved_config_and_estimate_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "runs"
    res = runner.invoke(
        app, ["run", "sanity", "--dry-run", "--set", "alpha_w=0.3", "--output-dir", str(out_dir)]
    )
    assert res.exit_code == 0, res.output
    assert list(tmp_path.iterdir()) == []  # no run folder, no catalog, nothing
    printed = yaml.safe_load(res.output)  # the estimate lines are YAML comments
    cfg = parse_config(printed)
    assert cfg.alpha_w == 0.3 and cfg.name == "sanity"
    assert f"# config_hash: {cfg.config_hash()}" in res.output
    assert "# estimated peak memory: " in res.output and "# estimated disk: " in res.output
    assert "# would write: " in res.output and "(dry run: nothing written)" in res.output
    res = runner.invoke(app, ["run", "sanity", "--dry-run", "--set", "gama=0.5"])
    assert res.exit_code == 2 and "gama" in res.output
    res = runner.invoke(app, ["run", "sanity", "--dry-run", "--set", "env.feature_dim=10000000"])
    assert res.exit_code == 2 and "would be refused" in res.output
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_an_existing_or_resumed_run(tmp_path):
    d = tmp_path / "r"
    assert runner.invoke(app, ["run", "sanity", *QUIET, "--run-dir", str(d)]).exit_code == 0
    before = sorted(p.name for p in d.rglob("*"))
    res = runner.invoke(app, ["run", "sanity", "--dry-run", "--run-dir", str(d)])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(app, ["run", str(d), "--resume", "--dry-run"])
    assert res.exit_code == 0 and f"# would resume: {d}" in res.output
    assert sorted(p.name for p in d.rglob("*")) == before


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    """A 3-iteration run whose rho audit ran at iterations 1 and 2 (every 2 + last)."""
    d = tmp_path_factory.mktemp("audit") / "alpha_w0.1_seed0-278ca7614994_a_long_run_name"
    args = ["run", "sanity", "--run-dir", str(d), "--catalog", str(d.parent / "c.sqlite")]
    args += ["--set", "outer_iters=3", "--set", "probes.every=2"]
    args += ["--set", "env.feature_dim=32", "--set", "env.actor_feature_dim=8"]
    for probe in ("fixed_point", "stability", "distribution", "q_kernel"):
        args += ["--set", f"probes.{probe}.enabled=false"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return d


def test_audit_rho_replays_the_reports_draws_and_agrees(audited_run):
    """Same iteration, parameters and chain as the run's own last audit: every column of
    the report's row (probes/rho_audit.csv, as the report shows it) is reproduced."""
    from tdlens.runs.audit import audit_run_rho

    res = audit_run_rho(audited_run)
    assert res.n == 2 and res.report_iter == 2 and res.same_sample
    for key, value in res.row.items():
        assert res.report_row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    report = load_run(audited_run).report["probe_metrics"]["rho_audit"]["metrics"]
    assert report["rho_mean_z"]["last"] == pytest.approx(res.row["rho_mean_z"], abs=1e-9)
    out = runner.invoke(app, ["audit", "rho", str(audited_run)])
    assert out.exit_code == 0, out.output
    assert "at iteration 2 (replay draws)" in out.output and "report z (iter 2)" in out.output
    assert "same draws" in out.output and "the z-scores agree" in out.output


def test_audit_rho_fresh_draws_say_why_they_differ(audited_run):
    """An independent chain: other ratios, so other z (sampling noise), and it says so."""
    from tdlens.runs.audit import audit_run_rho

    res = audit_run_rho(audited_run, "fresh")
    assert res.n == 2 and not res.same_sample
    assert res.row["rho_mean_emp"] != res.report_row["rho_mean_emp"]
    out = runner.invoke(app, ["audit", "rho", str(audited_run), "--fresh"])
    assert out.exit_code == 0, out.output
    assert "(fresh draws)" in out.output and "independent chain" in out.output
    gap = abs(res.row["rho_mean_z"] - res.report_row["rho_mean_z"])
    assert f"{gap:.3g}" in out.output or "max |z - z_report|" in out.output


def test_audit_rho_of_a_run_without_audit_rows_says_so(tmp_path):
    d = tmp_path / "r"
    assert runner.invoke(app, ["run", "sanity", *QUIET, "--run-dir", str(d)]).exit_code == 0
    res = runner.invoke(app, ["audit", "rho", str(d)])
    assert res.exit_code == 0, res.output
    assert "no rho audit up to iteration 1" in res.output and "report z" not in res.output


@pytest.mark.parametrize("tol", [1e-3, 1e-11])
def test_fixed_point_tol_is_the_configs(tmp_path, tol):
    """The direct solver refines to the config's tol and reports that tol: at 1e-3 the
    float32 LU's first solve already meets it (num_iters 1); at 1e-11 the residual is
    below 1e-11, beyond the former fixed 1e-8."""
    cfg = small_config(
        "outer_iters=1",
        f"probes.fixed_point.tol={tol}",
        "probes.distribution.enabled=false",
        "probes.q_kernel.enabled=false",
        "probes.rho_audit.enabled=false",
    )
    assert cfg.probes.fixed_point.solver == "direct"
    Runner(cfg, tmp_path / "r").run()
    table = load_run(tmp_path / "r").probe("fixed_point_probe")
    assert table.last("tol") == tol
    assert table.last("residual") <= tol and table.last("converged") == 1.0
    if tol == 1e-3:
        assert table.last("num_iters") == 1.0
    assert not math.isnan(table.last("value_noise_floor"))


def test_shipped_configs_use_the_default_tol_the_solver_used_before():
    """Every shipped config's fixed-point tol is 1e-8, the residual the direct solver
    refined to before tol was honoured, so their probe numbers did not change."""
    from tdlens.api import load_run_config
    from tdlens.config import shipped_configs

    for path in sorted(shipped_configs().glob("*.yaml")):
        assert load_run_config(path.stem).probes.fixed_point.tol == 1e-8, path.name


@pytest.mark.parametrize("columns", [80, 60])
def test_runs_list_never_wraps_ids_in_a_narrow_terminal(audited_run, columns):
    """COLUMNS < 120: the table drops its least useful columns (and says which) instead of
    folding a 45-character id into shards; csv and json keep every column. At 60 even
    the columns that always stay are wider: they are shown whole, never folded."""
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "tdlens.cli", "runs", "list"]
    cmd += ["--catalog", str(audited_run.parent / "c.sqlite")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    run_id = audited_run.name
    assert len(run_id) == 45
    lines = res.stdout.splitlines()
    assert any(run_id in line for line in lines), res.stdout
    table = [line for line in lines if "│" in line or "┃" in line]
    if columns >= 80:
        assert all(len(line) <= columns for line in table)
    else:  # id, status and regime alone need 69: wider than the terminal, still whole
        assert "status" in table[0] and "regime" in table[0] and "health" not in table[0]
    if columns < 100:
        assert "hidden to fit" in res.stdout and "--format csv" in res.stdout
    for fmt in ("csv", "json"):
        res = runner.invoke(app, [*cmd[3:], "--format", fmt])
        assert res.exit_code == 0 and run_id in res.output and "seconds" in res.output


def test_fit_columns_drops_in_order_until_the_table_fits():
    """Hand widths: id 10 + 3, a 5 + 3, seconds 7 + 3, plus 1 = 32 characters."""
    from tdlens.sweeps.commands import fit_columns, table_width

    cells = [{"id": "x" * 10, "a": "12345", "seconds": "1"}]
    assert table_width(cells, ["id", "a", "seconds"]) == 32
    assert fit_columns(cells, ["id", "a", "seconds"], 32) == ["id", "a", "seconds"]
    assert fit_columns(cells, ["id", "a", "seconds"], 31) == ["id", "a"]
    assert fit_columns(cells, ["id", "a", "seconds"], 5) == ["id", "a"]  # never id, never a


def test_gif_frame_has_a_legend_naming_every_mark_and_a_caption(tmp_path):
    """The artists of a frame before it is rasterised: one legend entry per kind of mark
    draw_state makes (in its colours), and a caption with config, step and policy."""
    import numpy as np
    from matplotlib.colors import to_rgb

    from tdlens.render import FRAME_PX, frame_figure
    from tdlens.torus.draw import ADVENTURER_COLOUR, GHOST_COLOUR
    from tdlens.torus.dynamics import reset_from_uniforms, reset_width

    cfg = small_config("name=giffy", "sigma_mu=0.3")
    u = np.random.default_rng(0).random((1, reset_width(cfg.env.num_goblets)))
    state = reset_from_uniforms(u, cfg.env)
    fig = frame_figure(state, cfg, np.array([0.1, 0.0]), 3, 5)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [
        "adventurer (agent)",
        "action a_t",
        "ghost",
        f"catch radius {cfg.env.eps_catch:g}",
        "goblet, type +1",
        "goblet, type -1",
    ]
    colours = [to_rgb(h.get_color()) for h in legend.legend_handles]
    assert colours[0] == to_rgb(ADVENTURER_COLOUR) and colours[2] == to_rgb(GHOST_COLOUR)
    (caption,) = [t.get_text() for t in fig.texts]
    assert caption.startswith("giffy (seed 0) | step 3/5 |")
    assert "policy: behaviour mu at initialisation" in caption and "sigma_mu 0.3" in caption
    assert fig.get_size_inches().tolist() == [FRAME_PX[0] / 100, FRAME_PX[1] / 100]


def test_rendered_gif_shows_the_legend_beside_the_torus(tmp_path):
    """Pixel check of a written GIF: right of the torus (which ends at 52% of the width),
    where only the legend is drawn, there are adventurer-blue and ghost-purple pixels;
    the caption's text darkens the bottom strip."""
    import numpy as np
    from matplotlib.colors import to_rgb
    from PIL import Image

    from tdlens.render import FRAME_PX

    out = tmp_path / "ep.gif"
    res = runner.invoke(app, ["render", "sanity", *TINY[:4], "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == FRAME_PX and im.n_frames == 2
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    right = rgb[: int(0.8 * FRAME_PX[1]), int(0.535 * FRAME_PX[0]) :]
    for colour in (to_rgb("tab:blue"), to_rgb("tab:purple")):
        near = np.abs(right - 255 * np.array(colour)).max(axis=-1) < 40
        assert near.sum() > 20, colour
    dark = (rgb[int(0.85 * FRAME_PX[1]) :] < 80).all(axis=-1)  # caption text, bottom strip
    assert dark.sum() > 100


RAW_REPR = re.compile(r"\d\.\d{7,}|'")
"""A float printed with more than 6 decimals, or a quoted list item."""


def test_sanity_summary_markdown_keeps_pipes_inside_cells(tmp_path):
    """SUMMARY.md turned `|measured - predicted|` into `/measured - predicted/`; escaped as
    `\\|` the table keeps its 5 columns and GitHub/MkDocs show the text as written."""
    from tdlens.suites import CheckResult, SuiteResult, markdown_cell, write_summary

    assert markdown_cell("max |a - b| 0.01\nnext") == "max \\|a - b\\| 0.01 next"
    observed = "value_gap 0.07 -> 0.01; max |measured - predicted| 0.0109 over 7 probes"
    check = CheckResult("learning", True, observed, "|x| small", "STATISTICAL", [])
    write_summary(SuiteResult(tmp_path, [check]))
    lines = (tmp_path / "SUMMARY.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| learning"))
    assert "max \\|measured - predicted\\| 0.0109" in row and "/measured" not in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 6  # 5 cells


@pytest.mark.parametrize("name", ["on_policy", "no_bootstrap", "fixed_pi"])
def test_sanity_observed_texts_have_no_raw_float_reprs(tmp_path, name):
    """The observed column said `residuals [3.22711411371696e-16, ...]`, `KL [0.0, ...]`
    and `gap ratios ['0.64', ...]` beside 4-digit numbers: now summaries with 4 digits."""
    from tdlens.config import load_config
    from tdlens.suites import run_suite

    probed = ["env.feature_dim=64", "env.actor_feature_dim=16", "outer_iters=3"]
    probed += ["probes.distribution.permutations=10", "probes.distribution.num_samples=64"]
    check = run_suite(load_config("configs/sanity.yaml", probed), tmp_path, only=[name]).checks[0]
    assert check.passed, check.observed
    assert not RAW_REPR.search(check.observed), check.observed
    assert "[0.0" not in check.observed and "health PASS: []" not in check.observed
    if name == "no_bootstrap":
        assert "fixed point residual at most " in check.observed
        assert "residual <= 1e-08" in check.expected  # the config's tol, as used


def test_sweep_bar_moves_with_each_finished_run():
    """On a terminal the sweep shows one bar: n of the runs executed done, ETA; each run's
    own line still prints (above the bar)."""
    from types import SimpleNamespace

    from tdlens.sweeps import commands

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    lines = []
    with commands.sweep_progress_bar(console) as bar:
        hook = commands._with_bar(bar, lambda o, done, total: lines.append((o.run_id, done)))
        for done in (1, 2, 3):
            hook(SimpleNamespace(run_id=f"r{done}"), done, 3)
        (task,) = bar.tasks
        assert (task.completed, task.total) == (3, 3)
    assert lines == [("r1", 1), ("r2", 2), ("r3", 3)]
    assert "3/3" in buf.getvalue() and "runs done" in buf.getvalue()


def test_resumed_run_numbers_iterations_as_an_uninterrupted_one(tmp_path):
    """Stopped after iterations 0 and 1 of 4: the resume says so and goes on at iter 2."""
    d = tmp_path / "r"
    r = Runner(small_config("outer_iters=4", "probes.enabled=false", "checkpoint_every=1"), d)
    r.on_progress = lambda p: setattr(r, "_stop_signal", 15) if p.n == 1 else None
    assert r.run().status == "incomplete"
    res = runner.invoke(app, ["run", str(d), "--resume"])
    assert res.exit_code == 0, res.output
    assert "(2 iterations done; continuing at iteration 2)" in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("iter ")]
    assert [ln.split(", elapsed")[0] for ln in lines] == ["iter 2 (3/4 done", "iter 3 (4/4 done"]


def test_console_prints_brackets_as_written(tmp_path):
    """rich markup is off for printed text: a path with `[bold]` in it, the sigma warning's
    `E_mu[rho^2]` and a config error quoting `['direct']` keep their brackets."""
    odd = tmp_path / "x[bold]y"
    res = runner.invoke(app, ["report", str(odd)])
    assert res.exit_code == 2 and f"'{odd}' is not a run directory" in res.output
    res = runner.invoke(
        app,
        [
            "run",
            "sanity",
            "--dry-run",
            *("--set", "sigma_pi=0.5", "--set", "sigma_mu=0.3"),
            *("--set", "rho_clip=0"),
        ],
    )
    assert res.exit_code == 0 and "E_mu[rho^2] is infinite" in res.output
    res = runner.invoke(app, ["run", "sanity", "--set", "probes.fixed_point.solver=[direct]"])
    assert res.exit_code == 2 and "(got ['direct'])" in res.output


def test_audit_rho_of_a_checkpoint_past_the_last_audit_says_so(tmp_path):
    """Stopped after iteration 2 of 4 with audits at iterations 1 and 3 (every 2): the
    newest checkpoint is iteration 2, the report's newest audit iteration 1."""
    d = tmp_path / "r"
    over = ["outer_iters=4", "probes.every=2", "checkpoint_every=1"]
    over += [f"probes.{p}.enabled=false" for p in ("fixed_point", "stability", "distribution")]
    r = Runner(small_config(*over, "probes.q_kernel.enabled=false"), d)
    r.on_progress = lambda p: setattr(r, "_stop_signal", 15) if p.n == 2 else None
    assert r.run().status == "incomplete"
    res = runner.invoke(app, ["audit", "rho", str(d)])
    assert res.exit_code == 0, res.output
    assert "at iteration 2 (replay draws)" in res.output and "report z (iter 1)" in res.output
    assert "newest rho audit is at iteration 1, before the checkpoint's iteration 2" in res.output
