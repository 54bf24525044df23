"""The command line (docs/model.md §12): exit codes, bad input, end-to-end runs."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from tdlens.cli import app

runner = CliRunner()
TINY = ["--set", "env.feature_dim=32", "--set", "env.actor_feature_dim=8", "--set", "outer_iters=2"]


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "report", "render"):
        assert cmd in res.output


def test_bad_override_exits_2_naming_the_key_and_writes_nothing(tmp_path):
    res = runner.invoke(app, ["run", "sanity", "--set", "gama=0.5", "--output-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "gama" in res.output and "did you mean 'gamma'" in res.output
    assert list(tmp_path.iterdir()) == []
    res = runner.invoke(
        app, ["run", "sanity", "--set", "sigma_mu=-1", "--output-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "sigma_mu" in res.output
    res = runner.invoke(app, ["run", "no_such_config.yaml", "--output-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no_such_config.yaml" in res.output
    assert list(tmp_path.iterdir()) == []


def test_existing_run_directory_is_refused(tmp_path):
    d = tmp_path / "run"
    args = ["run", "sanity", *TINY, "--set", "probes.enabled=false", "--run-dir", str(d)]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(app, ["run", str(d), "--resume", "--set", "gamma=0.1"])
    assert res.exit_code == 2


def test_sigma_condition_warning(tmp_path):
    res = runner.invoke(
        app,
        [
            "run",
            "sanity",
            *TINY,
            "--set",
            "probes.enabled=false",
            "--set",
            "sigma_pi=0.5",
            "--set",
            "sigma_mu=0.3",
            "--set",
            "rho_clip=0",
            "--run-dir",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0 and "sigma_condition" in res.output


def test_render_writes_a_gif(tmp_path):
    out = tmp_path / "ep.gif"
    res = runner.invoke(app, ["render", "sanity", "--steps", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.n_frames == 5
    res = runner.invoke(app, ["render", "sanity", "--steps", "5", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2


_counter = itertools.count()


@given(st.text(max_size=25))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_overrides_never_produce_a_traceback(tmp_path, text):
    d = tmp_path / f"r{next(_counter)}"
    res = runner.invoke(
        app,
        [
            "run",
            "sanity",
            *TINY,
            "--set",
            "probes.enabled=false",
            "--set",
            text,
            "--run-dir",
            str(d),
        ],
    )
    assert res.exit_code in (0, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    if res.exit_code == 2:
        assert "error:" in res.output and not d.exists()


def test_audit_rho_on_a_finished_run(tmp_path):
    d = tmp_path / "run"
    args = ["run", "sanity", *TINY, "--set", "probes.enabled=false", "--run-dir", str(d)]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, ["audit", "rho", str(d)])
    assert res.exit_code == 0, res.output
    assert "E_mu[rho^2]" in res.output and "verdict: PASS" in res.output
    res = runner.invoke(app, ["audit", "rho", str(tmp_path)])
    assert res.exit_code == 2


def test_end_to_end_run_on_the_sanity_config(tmp_path):
    """`tdlens run sanity` with every probe: exit 0, every run file, a report, --strict."""
    d = tmp_path / "e2e"
    res = runner.invoke(app, ["run", "sanity", "--run-dir", str(d), "--strict"])
    assert res.exit_code == 0, res.output
    # the sanity config's critic is frozen on 5 iterations: WARN, which --strict allows
    assert "health: WARN" in res.output
    # the last line points to both reports, the Markdown and the HTML page
    last = res.output.strip().splitlines()[-1]
    assert last == f"report: {d / 'run_report.md'} (with plots: {d / 'run_report.html'})"
    assert "critic_frozen: WARN" in (d / "run_report.md").read_text()
    for name in (
        "config.json",
        "learning_curves.csv",
        "status.json",
        "stdout.log",
        "run_report.md",
        "run_report.json",
        "run_report.html",
    ):
        assert (d / name).is_file(), name
    for probe in (
        "fixed_point_probe",
        "stability_probe",
        "distribution_probe",
        "q_kernel_probe",
        "rho_audit",
    ):
        assert (d / "probes" / f"{probe}.csv").is_file(), probe
    assert any((d / "checkpoints").iterdir())
    res = runner.invoke(app, ["report", str(d)])
    assert res.exit_code == 0 and "health: WARN" in res.output
    res = runner.invoke(app, ["runs", "list", "--where", "health = 'WARN'"])
    assert res.exit_code == 0 and "e2e" in res.output


def test_run_freezes_the_start_up_heap_only_while_it_runs(tmp_path, monkeypatch):
    """`tdlens run` freezes the objects of its start-up (gc.freeze) for the run, so the
    collector's full passes skip them (issue 28), and unfreezes them after it, also when
    the run fails (a file error: exit 2; a bug: the exception): an in-process caller
    keeps a heap it can collect."""
    import gc

    import tdlens.cli as cli
    from tdlens.rundir.files import RunFileError

    seen = []

    def fake_run(runner_):
        seen.append(gc.get_freeze_count())
        raise RunFileError("disk gone") if len(seen) == 1 else RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run_with_progress", fake_run)
    assert gc.get_freeze_count() == 0
    res = runner.invoke(app, ["run", "sanity", *TINY, "--run-dir", str(tmp_path / "a")])
    assert res.exit_code == 2 and "disk gone" in res.output
    assert gc.get_freeze_count() == 0
    res = runner.invoke(app, ["run", "sanity", *TINY, "--run-dir", str(tmp_path / "b")])
    assert isinstance(res.exception, RuntimeError)
    assert gc.get_freeze_count() == 0
    assert len(seen) == 2 and min(seen) > 10_000
