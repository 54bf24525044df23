"""Golden structure: our run_report.md has every section, table and metric row of the seed
report (shared/seeds/000_45abd9c71cec40ff.txt, copied to data/seed_report.md), in the
seed's order and format (docs/model.md §8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_report_fixtures import frozen_run, healthy_run

from helpers import FAST_PROBES, small_config
from tdlens.report import write_report
from tdlens.runs.runner import Runner

HERE = Path(__file__).resolve().parent
SEED_COPY = HERE / "data" / "seed_report.md"
SEED_NAME = "000_45abd9c71cec40ff.txt"
SHARED_SEED = HERE.parents[2] / "shared" / "seeds" / SEED_NAME
"""The repo root is parents[1] of tests/report; shared/ sits beside it (also in CI)."""
SETTINGS = "settings (constant over the run)"
"""Probe Metrics' last subsection: every probe's settings, one table (issue 15)."""
PROBES_FAST = ("outer_iters=12", "probes.every=4", *FAST_PROBES)


def sections(text: str, level: str = "## ") -> list[tuple[str, list[str]]]:
    """``(heading, body lines)`` for each heading of the given level, in order."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(level):
            out.append((line[len(level) :], []))
        elif out:
            out[-1][1].append(line)
    return out


def bullets(lines: list[str]) -> list[tuple[str, str]]:
    return [tuple(line[2:].split(": ", 1)) for line in lines if line.startswith("- ")]


def table(lines: list[str]) -> tuple[str, list[list[str]]]:
    """(header line, rows as cells) of the first pipe table in ``lines``."""
    rows = [line for line in lines if line.startswith("|")]
    cells = [r.strip("| ").split(" | ") for r in rows[2:]]
    return rows[0], cells


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


def assert_seed_structure(ours: str, seed: str) -> None:
    """Every section, bullet key, table header and metric row of ``seed`` is in ``ours``."""
    assert ours.splitlines()[0] == seed.splitlines()[0] == "# Run Report"
    s_secs, o_secs = sections(seed), sections(ours)
    n = len(s_secs)
    assert [h for h, _ in o_secs[:n]] == [h for h, _ in s_secs]
    by_name = dict(o_secs)
    for name in ("Run Info", "Scale Checks"):
        s_keys = [k for k, _ in bullets(dict(s_secs)[name])]
        assert [k for k, _ in bullets(by_name[name])][: len(s_keys)] == s_keys
    s_hp = dict(bullets(dict(s_secs)["Run Info"]))["key_hparams"]
    o_hp = dict(bullets(by_name["Run Info"]))["key_hparams"]
    s_keys = [kv.split("=")[0] for kv in s_hp.split(", ")]
    assert [kv.split("=")[0] for kv in o_hp.split(", ")][: len(s_keys)] == s_keys
    status = bullets(by_name["Health"])[0]
    assert status[0] == "status" and re.fullmatch(r"(PASS|WARN|FAIL)( \(.+\))?", status[1])
    assert dict(bullets(by_name["Scale Checks"]))["stability_probe_step_scale_ratio"].endswith(
        "(expect ~1.0)"
    )
    for name in ("Core Metrics", "Samples (Head)", "Samples (Tail)"):
        s_head, s_rows = table(dict(s_secs)[name])
        o_head, o_rows = table(by_name[name])
        assert o_head == s_head
        assert all(len(r) == s_head.count("|") - 1 for r in o_rows)
        if name == "Core Metrics":
            assert [r[0] for r in o_rows] == [r[0] for r in s_rows]
        else:
            assert len(o_rows) <= 8
    s_probes = sections("\n".join(dict(s_secs)["Probe Metrics"]), "### ")
    o_probes = dict(sections("\n".join(by_name["Probe Metrics"]), "### "))
    assert is_subsequence([h for h, _ in s_probes], list(o_probes))
    settings: set[tuple[str, str]] = set()
    if SETTINGS in o_probes:
        s_head, s_rows = table(o_probes[SETTINGS])
        assert s_head == "| probe | setting | value |"
        settings = {(r[0], r[1]) for r in s_rows}
    for probe, lines in s_probes:
        s_head, s_rows = table(lines)
        o_head, o_rows = table(o_probes[probe])
        assert o_head == s_head
        names = [r[0] for r in o_rows]
        assert names == sorted(names)
        assert "iter" not in names, "iter is the rounds' span, never a metric"
        # a seed row is in our metric table, or a setting (constant over the run) in the
        # one settings table, or `iter` (the "- rounds: n, iterations a-b" line)
        missing = {r[0] for r in s_rows} - set(names) - {c for p, c in settings if p == probe}
        missing -= {"iter"}
        assert not missing, f"{probe}: seed rows missing from ours: {missing}"
        assert not set(names) & {c for p, c in settings if p == probe}
        assert all(len(r) == 6 for r in o_rows)
    assert bullets(by_name["Next Steps"])


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real (tiny) run with every probe on, written by the runner."""
    run_dir = tmp_path_factory.mktemp("real") / "run"
    result = Runner(
        small_config(*PROBES_FAST), run_dir, handle_signals=False, write_report=write_report
    ).run()
    assert result.status == "complete" and result.report_paths
    return run_dir


def test_seed_copy_matches_shared():
    if not SHARED_SEED.exists():
        pytest.skip("no shared/ checkout beside the repository")
    assert SEED_COPY.read_text() == SHARED_SEED.read_text()


def test_seed_parses_as_expected():
    """The parser itself, on the seed: 8 sections, 4 probe tables, 15 fixed-point rows."""
    seed = SEED_COPY.read_text()
    assert [h for h, _ in sections(seed)] == [
        "Run Info",
        "Health",
        "Scale Checks",
        "Core Metrics",
        "Probe Metrics",
        "Samples (Head)",
        "Samples (Tail)",
        "Next Steps",
    ]
    probes = dict(sections("\n".join(dict(sections(seed))["Probe Metrics"]), "### "))
    assert list(probes) == [
        "distribution_probe",
        "fixed_point_probe",
        "q_kernel_probe",
        "stability_probe",
    ]
    assert len(table(probes["fixed_point_probe"])[1]) == 15


def test_real_run_report_has_the_seed_structure(real_run):
    assert_seed_structure((real_run / "run_report.md").read_text(), SEED_COPY.read_text())


@pytest.mark.parametrize("make", [healthy_run, frozen_run])
def test_synthetic_reports_have_the_seed_structure(tmp_path, make):
    run = make()
    run.status.update(
        status="incomplete",
        reason="interrupted by SIGINT after 20 of 40 iterations",
        outer_iters=40,
    )
    write_report(run.write(tmp_path / "run"), html=False)
    assert_seed_structure((tmp_path / "run" / "run_report.md").read_text(), SEED_COPY.read_text())


def test_probes_off_report_keeps_every_section(tmp_path):
    """Without probes the seed's sections and probe headings are still there."""
    run_dir = tmp_path / "run"
    Runner(
        small_config("outer_iters=3", "probes.enabled=false"),
        run_dir,
        handle_signals=False,
        write_report=write_report,
    ).run()
    text = (run_dir / "run_report.md").read_text()
    seed = SEED_COPY.read_text()
    assert [h for h, _ in sections(text)[:8]] == [h for h, _ in sections(seed)]
    probes = [h for h, _ in sections("\n".join(dict(sections(text))["Probe Metrics"]), "### ")]
    assert is_subsequence(
        ["distribution_probe", "fixed_point_probe", "q_kernel_probe", "stability_probe"], probes
    )
    assert "the probe did not run" in text
