"""The documentation site works offline (issue 24): built with ``mkdocs build`` and opened
from file:// in headless Chromium with every other request refused, a page with equations
loads nothing from the network (no CDN MathJax, no Google fonts), logs no console error,
and its equations are typeset (MathJax's SVG output, no raw TeX left)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pages import CHROMIUM, offline_tab, provide_chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The docs built from this checkout (the hooks copy MathJax into it)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "-q",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    provide_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def test_site_has_no_network_reference(site):
    """No page names the CDN or Google fonts; the bundle is in the site."""
    assert (site / "javascripts" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for host in ("unpkg.com", "cdn.jsdelivr", "fonts.googleapis", "fonts.gstatic"):
            assert host not in text, (page.relative_to(site), host)


@pytest.mark.parametrize("page", ["model/index.html", "metrics/index.html", "index.html"])
def test_page_offline_renders_its_equations(browser, site, page):
    tab, seen = offline_tab(browser, site / page)
    try:
        maths = tab.eval_on_selector_all(".arithmatex", "els => els.length")
        if page == "model/index.html":
            assert maths > 20  # the model page is written in equations
        if maths:
            tab.wait_for_function(
                f"document.querySelectorAll('.arithmatex mjx-container svg').length >= {maths}",
                timeout=20_000,
            )
            raw = tab.eval_on_selector_all(
                ".arithmatex", "els => els.filter(e => !e.querySelector('mjx-container')).length"
            )
            assert raw == 0  # no equation left as raw TeX
            assert tab.eval_on_selector_all("mjx-merror", "els => els.length") == 0
        tab.wait_for_timeout(300)  # late requests (fonts, search index) would show here
        assert seen["requests"] == []
        assert seen["errors"] == []
    finally:
        tab.close()
