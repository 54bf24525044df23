"""write_report on any run: reproducible bytes, machine-readable JSON, a self-contained and
escaped HTML page, and a report for incomplete, diverged, failed and empty runs (docs/model.md §7,
§8)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from test_report_fixtures import healthy_run

from helpers import fail_at_iteration, small_config
from tdlens.pages.kit import figure_specs, plotly_js
from tdlens.report import REPORT_FILES, build_report, write_report
from tdlens.report.health import HEALTH_CHECKS
from tdlens.rundir.files import atomic_write_text
from tdlens.runs.runner import Runner

FAST = ("probes.enabled=false", "outer_iters=6")


def test_report_regenerates_identically(tmp_path):
    run_dir = healthy_run(arrays=True).write(tmp_path / "run")
    paths = write_report(run_dir)
    assert [p.name for p in paths] == list(REPORT_FILES)
    first = [p.read_bytes() for p in paths]
    second = [p.read_bytes() for p in write_report(run_dir)]
    assert first == second


def test_json_carries_the_same_content(tmp_path):
    run_dir = healthy_run().write(tmp_path / "run")
    write_report(run_dir, html=False)
    data = json.loads((run_dir / "run_report.json").read_text())  # strict JSON: no NaN
    md = (run_dir / "run_report.md").read_text()
    assert f"- status: {data['health']['line']}" in md
    assert data["health"]["status"] == "PASS" and len(data["health"]["checks"]) == len(
        HEALTH_CHECKS
    )
    assert all("observed" in c for c in data["health"]["checks"])
    growth = data["probe_metrics"]["stability_probe"]["metrics"]["growth_timescale"]
    assert growth["last"] is None and growth["mean_last_k"] is None  # inf -> null
    assert list(data["core_metrics"]["metrics"]) == [
        "td_loss",
        "w_norm",
        "mean_rho2",
        "tracking_gap",
        "critic_teacher_error",
    ]
    assert data["scale_checks"]["stability_probe_step_scale_ratio"] == 1.0
    assert data["next_steps"][0]["rule"] == "none"
    assert len(data["samples"]["head"]) == 8 and data["samples"]["head"][0][6] is None


def test_html_escapes_every_run_string_and_is_self_contained(tmp_path):
    evil = "<script>alert(1)</script>"
    run = healthy_run(f"name={evil}", arrays=True)
    run.status.update(
        status="failed",
        reason="<img src=x onerror=alert(2)> at iteration 3",
        traceback='Traceback:\n  File "<b>boom</b>"\nValueError: <i>x</i>\n',
    )
    run_dir = run.write(tmp_path / "run")
    write_report(run_dir)
    page = (run_dir / "run_report.html").read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>boom</b>" not in page and "&lt;b&gt;boom&lt;/b&gt;" in page
    # the only scripts: plotly.js inlined once in the head, each figure's JSON spec and the
    # loader that draws them (issue 15: interactive and still offline and self-contained)
    assert page.count(f"<script>{plotly_js()}</script>") == 1
    rest = page.replace(plotly_js(), "").lower()
    assert re.findall(r"<script[^>]*\bsrc=", rest) == []
    assert "<link" not in rest and "href=" not in rest
    assert 'src="http' not in rest and "@import" not in rest
    assert rest.count("<script") == 1 + len(figure_specs(page)) + 1
    titles = [f["layout"]["title"]["text"] for f in figure_specs(page)]
    for what in ("td_loss", "Q_hat", "spectrum of A", "rho", "value_gap: measured"):
        assert any(what in t for t in titles), (what, titles)
    assert page.count("<svg") > 50  # a sparkline per probe metric row
    assert evil in (run_dir / "run_report.md").read_text()  # markdown keeps the text as is


def test_zero_rows_and_missing_columns_do_not_crash(tmp_path):
    run = healthy_run()
    for row in run.probes["stability_probe"]:
        del row["stability_proxy"]
    for row in run.probes["q_kernel_probe"]:
        del row["td_loss_from_Q_cache_rel_diff"]
    run_dir = run.write(tmp_path / "a")
    write_report(run_dir, html=False)
    md = (run_dir / "run_report.md").read_text()
    assert "| stability_proxy | missing | missing | missing | missing | missing |" in md
    assert "- loss_convention: WARN (missing columns: td_loss_from_Q_cache_rel_diff)" in md
    empty = healthy_run()
    empty.curves.clear()
    empty.probes.clear()
    empty.rounds.clear()
    empty.status.update(status="failed", reason="RuntimeError at iteration 0: boom")
    run_dir = empty.write(tmp_path / "b")
    paths = write_report(run_dir)
    md = paths[0].read_text()
    assert "- status: FAIL (failed run: RuntimeError at iteration 0: boom)" in md
    assert md.count("- no rows") == 2


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    run_dir = healthy_run().write(tmp_path / "run")
    atomic_write_text(run_dir / "config.json", "{not json")
    (run_dir / "status.json").unlink()
    report = build_report(run_dir)
    assert report.health_status == "FAIL"
    assert any("config.json" in p for p in report.problems)
    assert any("status.json" in p for p in report.problems)
    write_report(run_dir)
    assert "## Files" in (run_dir / "run_report.md").read_text()


def test_incomplete_run_after_sigint_reports_fail_with_its_reason(tmp_path):
    def interrupt(progress):
        if progress.n == 2:
            os.kill(os.getpid(), signal.SIGINT)

    result = Runner(
        small_config(*FAST), tmp_path / "run", on_progress=interrupt, write_report=write_report
    ).run()
    assert result.status == "incomplete" and result.exit_code == 130
    md = (tmp_path / "run" / "run_report.md").read_text()
    assert "- status: FAIL (incomplete run: interrupted by SIGINT after 3 of 6 iterations" in md
    assert "- complete: FAIL (incomplete run: interrupted by SIGINT after 3 of 6" in md
    assert "--resume" in md


def test_diverged_run_gets_a_report(tmp_path):
    result = Runner(
        small_config(*FAST, "alpha_w=1e12"),
        tmp_path / "run",
        handle_signals=False,
        write_report=write_report,
    ).run()
    assert result.status == "diverged" and result.report_paths
    md = (tmp_path / "run" / "run_report.md").read_text()
    assert "- status: FAIL (diverged run: non-finite" in md
    assert "run diverged" in md and "lower alpha_w from 1000000000000" in md


def test_failed_run_shows_its_traceback(tmp_path, monkeypatch):
    fail_at_iteration(monkeypatch, 2, ValueError("<boom>"))
    result = Runner(
        small_config(*FAST), tmp_path / "run", handle_signals=False, write_report=write_report
    ).run()
    assert result.status == "failed"
    md = (tmp_path / "run" / "run_report.md").read_text()
    assert "- status: FAIL (failed run: ValueError at iteration 2: <boom>)" in md
    assert "```\nTraceback (most recent call last):" in md
    assert "&lt;boom&gt;" in (tmp_path / "run" / "run_report.html").read_text()


def test_report_reads_only_the_run_directory(tmp_path):
    """The report package never imports the learner, a probe or the runner: of the probes
    it reads only their declarations (tdlens.probes.registry)."""
    run_dir = healthy_run().write(tmp_path / "run")
    code = (
        "import sys\nfrom tdlens.report import write_report\n"
        f"write_report({str(run_dir)!r})\n"
        "bad = [m for m in sys.modules if m in ('tdlens.learner', 'tdlens.runs.runner') "
        "or (m.startswith('tdlens.probes.') and m != 'tdlens.probes.registry')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)


def test_torn_last_row_keeps_the_complete_rows(tmp_path):
    """A run killed mid-write (kill -9) leaves a torn row: report the rows before it."""
    run = healthy_run()
    run.status.update(status="running", reason=None)
    run_dir = run.write(tmp_path / "run")
    with open(run_dir / "learning_curves.csv", "a") as fh:
        fh.write("20,0.001,0.02")
    report = build_report(run_dir)
    assert len(report.data.curves) == 20 and report.core["td_loss"].count == 20
    assert any("line 22" in p for p in report.problems)
    checks = {c.name: c for c in report.checks}
    assert checks["complete"].verdict == "FAIL" and "status 'running'" in checks["complete"].detail
