"""A failed or too-short run is never headlined ``learning`` (issue 24): a run that stopped
on an error is ``n/a`` (not judged) and its card headlines ``failed`` with the error; a run
whose td_loss has too few rows to estimate its noise is ``n/a``, too short to judge."""

from __future__ import annotations

import json

from test_report_fixtures import healthy_run

from helpers import fail_at_iteration, small_config
from tdlens.catalog.records import load_record
from tdlens.report import build_report, write_report
from tdlens.runs.runner import Runner
from tdlens.scores import NOISE_MIN_ROWS, RunSeries, label_regime

REASON = "RuntimeError at iteration 2: out of luck"


def _short(rows: int, status: str):
    """The healthy synthetic run cut to `rows` learning-curve rows and one probe round
    (no value_gap series: the td_loss rule judges it), td_loss falling throughout."""
    run = healthy_run()
    del run.curves[rows:]
    run.probes = {name: table[:1] for name, table in run.probes.items()}
    run.set_curve("td_loss", lambda i: 1e-3 * 0.5**i)
    run.status.update(status=status, next_iter=rows)
    if status == "failed":
        run.status.update(reason=REASON)
    return run


def test_failed_run_with_two_rows_headlines_failed_not_learning(tmp_path):
    """Two rows of a falling td_loss gave "Verdict: learning" (a fall with a standard error
    of 0); the failed run's card now says failed, with the error in its health reasons,
    and the catalog's regime agrees."""
    run_dir = _short(2, "failed").write(tmp_path / "run")
    write_report(run_dir, html=True)
    v = build_report(run_dir).verdict
    assert v.regime == "n/a" and v.headline == "failed" and v.status == "failed"
    assert "failed" in v.regime_reason and "td_loss fell" not in v.regime_reason
    assert v.why == "The run failed with RuntimeError before it could be judged."
    md = (run_dir / "run_report.md").read_text()
    first = next(line for line in md.splitlines() if line.startswith("> **Verdict"))
    assert first.startswith("> **Verdict: failed** (the run failed after 2 learning-curve")
    assert f"failed run: {REASON}" in first and "Verdict: learning" not in md
    card = (run_dir / "run_report.html").read_text().split('id="verdict"', 1)[1]
    assert '<span class="regime failed">failed</span>' in card.split("</section>", 1)[0]
    report = json.loads((run_dir / "run_report.json").read_text())
    assert report["verdict"]["regime"] == report["regime"]["label"] == "n/a"
    assert load_record(run_dir).regime == "n/a"


def test_too_few_rows_to_estimate_the_noise_is_too_short_to_judge(tmp_path):
    """The same two falling rows of a complete run: n/a, too short to judge; with
    NOISE_MIN_ROWS rows the noise is estimable and the same fall is learning, so the rule
    is the row count, not the status."""
    v = build_report(_short(2, "complete").write(tmp_path / "two")).verdict
    assert v.regime == "n/a" and v.headline == "n/a"
    assert v.regime_reason.startswith("too short to judge: 2 learning-curve rows")
    enough = build_report(_short(NOISE_MIN_ROWS + 3, "complete").write(tmp_path / "six"))
    assert enough.verdict.regime == "learning", enough.verdict.regime_reason


def test_a_failed_run_is_not_judged_unless_it_diverged():
    """label_regime: failed -> n/a whatever its rows show; a failed run whose td_loss went
    non-finite is still diverged (the evidence is its own)."""
    td = [1.0 / (i + 1) for i in range(40)]
    falling = {"td_loss": td, "w_norm": [1.0] * 40, "delta_w_norm": [0.01] * 40}
    assert label_regime(RunSeries("complete", 40, falling)).label == "learning"
    assert label_regime(RunSeries("failed", 40, falling)).label == "n/a"
    blown = {**falling, "td_loss": [*falling["td_loss"][:-1], float("nan")]}
    assert label_regime(RunSeries("failed", 40, blown)).label.startswith("diverged")


def test_run_that_raises_after_two_iterations_is_carded_failed(tmp_path, monkeypatch):
    """A real run that raises at iteration 2 (two learning-curve rows written): its report
    headlines failed, never a regime judged from two points."""
    fail_at_iteration(monkeypatch, 2, RuntimeError("out of luck"))
    cfg = small_config("probes.enabled=false", "outer_iters=6")
    result = Runner(cfg, tmp_path / "run", handle_signals=False, write_report=write_report).run()
    assert result.status == "failed"
    v = build_report(tmp_path / "run").verdict
    assert (v.regime, v.headline) == ("n/a", "failed")
    md = (tmp_path / "run" / "run_report.md").read_text()
    assert "> **Verdict: failed** (the run failed after 2 learning-curve row(s)" in md


def test_why_names_what_stopped_the_run(tmp_path):
    """The runner's reasons read aloud: the exception's name, or the cause without its
    iteration and file (a path's digits would count as the Why's numbers)."""
    cases = {
        "ValueError at iteration 2: <boom>": "The run failed with ValueError before",
        "out of memory at iteration 0: Unable to allocate 156. GiB": "The run failed (out of "
        "memory) before",
        "No space left on device writing '/o/20261206_1/learning_curves.csv' at iteration 3": (
            "The run failed (No space left on device) before"
        ),
        "": "The run failed with an error before",
    }
    for k, (reason, why) in enumerate(cases.items()):
        run = _short(2, "failed")
        run.status.update(reason=reason)
        v = build_report(run.write(tmp_path / f"run{k}")).verdict
        assert v.why.startswith(why), (reason, v.why)
        assert v.why.endswith(" before it could be judged."), v.why
