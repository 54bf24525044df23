"""The run report (docs/model.md §8): statistics, health checks, next-step rules, plots, and
run_report.md/.json/.html, computed from the run directory's files alone.

Public API: :func:`write_report` and :func:`build_report` (the data, a :class:`Report`).
"""

from __future__ import annotations

from pathlib import Path

from tdlens.report.build import Report, build_report
from tdlens.report.render_html import render_html
from tdlens.report.render_json import render_json
from tdlens.report.render_md import render_md
from tdlens.rundir.files import atomic_write_text

REPORT_FILES = ("run_report.md", "run_report.json", "run_report.html")


def write_report(run_dir: str | Path, html: bool = True) -> list[Path]:
    """Build the report of ``run_dir`` and write run_report.md, .json and .html atomically
    (html=False skips the plots); returns the paths written."""
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    texts = [render_md(report), render_json(report)]
    if html:
        texts.append(render_html(report))
    paths = []
    for name, text in zip(REPORT_FILES, texts, strict=False):
        atomic_write_text(run_dir / name, text)
        paths.append(run_dir / name)
    return paths


__all__ = [
    "REPORT_FILES",
    "Report",
    "build_report",
    "render_html",
    "render_json",
    "render_md",
    "write_report",
]
