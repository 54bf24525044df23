"""Commands write under outputs/ by default, never into the working directory or docs/
(issue 24): render, compare and atlas (docs/atlas.md only with an explicit --docs)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from helpers import small_config
from tdlens.cli import app
from tdlens.runs.runner import Runner

runner = CliRunner()
TINY = ["--set", "env.feature_dim=32", "--set", "env.actor_feature_dim=8"]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_render_and_compare_write_under_outputs(tmp_path, monkeypatch):
    run = tmp_path / "elsewhere" / "run"
    Runner(small_config("outer_iters=2", "probes.enabled=false"), run, handle_signals=False).run()
    cwd = tmp_path / "repo"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = runner.invoke(app, ["render", "sanity", *TINY, "--steps", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(run), "--catalog", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    assert "wrote outputs/compare.html" in res.output
    assert _files(cwd) == {"outputs/episode.gif", "outputs/compare.html"}
