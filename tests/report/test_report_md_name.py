"""run_report.md shows the run's name and directory as written, whatever Markdown
characters they hold (issue 24): each is a code span, never emphasis, a link or HTML."""

from __future__ import annotations

import markdown
import pytest

from helpers import small_config
from tdlens.report import write_report
from tdlens.report.render_md import md_code
from tdlens.runs.runner import Runner


@pytest.mark.parametrize(
    "text",
    ["plain", "my_*run*_[x](http://y)", "<b>bold</b>", "a`tick`", "``two``", "`edge`"],
)
def test_md_code_renders_the_text_verbatim(text):
    html = markdown.markdown(f"- name: {md_code(text)}")
    code = html.split("<code>", 1)[1].split("</code>", 1)[0]
    unescaped = code.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert unescaped.strip() == text.strip()
    assert "<em>" not in html and "<a " not in html and "<b>" not in html


def test_run_report_md_escapes_the_run_name(tmp_path):
    # the name rule (letters, digits, '.', '_', '+', '-') still lets '__x__' through, which
    # Markdown reads as bold; a run directory written by hand may hold anything
    name = "run+__alpha__+1"
    run = tmp_path / "run"
    cfg = small_config("outer_iters=2", "probes.enabled=false", f"name={name}")
    Runner(cfg, run, handle_signals=False, write_report=write_report).run()
    text = (run / "run_report.md").read_text()
    assert f"- name: `{name}`" in text and f"- run_dir: `{run}`" in text
    html = markdown.markdown(text)
    assert "<strong>alpha</strong>" not in html and "<em>" not in html
