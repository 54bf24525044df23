"""The four pages in a real browser (issue 15): the run report, the sanity summary, a sweep
summary and compare, opened from file:// in headless Chromium (the system's Debian
package, driven by Playwright's Python API; `playwright install` is never run).

For each page: no console error or page error, no request outside file:// (every other
request is intercepted, failed and reported), every figure rendered (an SVG with data
marks), the verdict card wholly inside the first 1280x800 screen, no horizontal overflow
at 1280 px. The pages are built once per module from tiny runs; one browser serves all.
A missing Chromium fails the tests with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import FAST_PROBES, small_config
from page_checks import assert_offline
from tdlens.config import load_config, shipped_configs
from tdlens.report import write_report
from tdlens.runs.runner import Runner
from tdlens.suites import run_suite
from tdlens.sweeps.compare import compare
from tdlens.sweeps.summary import summarize
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 800
TINY_PROBED = ("outer_iters=8", "probes.every=3", *FAST_PROBES)
DRAWN = """el => {
  const marks = el.querySelectorAll(
    '.scatterlayer .point, .scatterlayer path.js-line, .barlayer .point path, ' +
    '.heatmaplayer image, .hm image');
  const box = el.getBoundingClientRect();
  return {svg: el.querySelectorAll('svg.main-svg').length, marks: marks.length,
          traces: (el._fullData || []).length, width: box.width, height: box.height};
}"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The four pages, built from tiny runs once."""
    root = tmp_path_factory.mktemp("pages")
    run_dir = root / "run"
    Runner(
        small_config(*TINY_PROBED), run_dir, handle_signals=False, write_report=write_report
    ).run()
    base = load_config(
        shipped_configs() / "sanity.yaml",
        ["probes.enabled=false", "env.feature_dim=64", "env.actor_feature_dim=16"],
    )
    suite = run_suite(base, root / "sanity", only=["C5_gamma_0"])
    prepared = prepare_sweep(shipped_configs() / "sweeps" / "demo.yaml", root / "sweeps")
    sweep = execute_sweep(prepared, backend="local", jobs=1, catalog=root / "c.sqlite")
    out = root / "compare.html"
    compare([str(sweep.sweep_dir)], out, catalog=root / "c.sqlite")
    copied = root / "copied"  # a report opened from a copied folder still works
    shutil.copytree(run_dir, copied)
    return {
        "run report": copied / "run_report.html",
        "sanity summary": suite.out_dir / "SUMMARY.html",
        "sweep summary": sweep.sweep_dir / "summary.html",
        "compare": out,
    }


def provide_chromium() -> None:
    """The README's test command must work on a fresh Debian machine with only python3:
    when /usr/bin/chromium is missing and we may install packages (root with apt-get),
    install the Debian package as .ci/run does; otherwise fail with the command to run."""
    if CHROMIUM.is_file():
        return
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("installing the Debian package chromium for the browser tests", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            [apt, "install", "-y", "-qq", "chromium"], check=False, env=env, capture_output=True
        )
    if not CHROMIUM.is_file():
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: install the Debian package with "
            "`apt-get install -y chromium` (.ci/run does this when it is missing)"
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    provide_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def offline_tab(browser: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    """``path`` loaded at 1280x800 with every request but file:// refused; the refused
    requests and the console and page errors, collected as they come."""
    seen: dict[str, list[str]] = {"errors": [], "requests": []}
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})

    def route(r: Any) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            seen["requests"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.goto(path.as_uri(), wait_until="load")
    return page, seen


def open_page(browser: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    """``path`` loaded offline (:func:`offline_tab`) with its figures drawn."""
    page, seen = offline_tab(browser, path)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.plot'))"
        ".every(d => d.querySelector('svg.main-svg') !== null)",
        timeout=20_000,
    )
    return page, seen


@pytest.mark.parametrize("name", ["run report", "sanity summary", "sweep summary", "compare"])
def test_page_in_a_real_browser(browser, pages, name):
    path = pages[name]
    n_specs = assert_offline(path.read_text())
    page, seen = open_page(browser, path)
    try:
        assert seen["errors"] == [], seen["errors"]
        assert seen["requests"] == [], seen["requests"]
        figures = page.query_selector_all(".plot")
        assert len(figures) == n_specs
        if name != "sanity summary":
            assert n_specs >= 1
        for fig in figures:
            drawn = fig.evaluate(DRAWN)
            assert drawn["svg"] >= 1 and drawn["traces"] >= 1 and drawn["marks"] >= 1, drawn
            assert drawn["width"] >= 300 and drawn["height"] >= 200, drawn
        card = page.query_selector("#verdict").bounding_box()
        assert card["y"] >= 0 and card["y"] + card["height"] <= HEIGHT, card
        assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
    finally:
        page.close()


def test_run_report_card_and_controls_work(browser, pages):
    """The card names the regime; the log button and the legend toggle act on the plot."""
    page, seen = open_page(browser, pages["run report"])
    try:
        card = page.inner_text("#verdict")
        assert "Why:" in card and "Next:" in card and "health" in card
        first = page.query_selector(".plot")
        assert first.evaluate("el => el.layout.yaxis.type") in ("linear", "-", None)
        first.query_selector(".updatemenu-button >> nth=1").click()
        assert first.evaluate("el => el.layout.yaxis.type") == "log"
        first.query_selector(".legend .traces .legendtoggle").click()
        # plotly waits its double-click delay before it acts on a single legend click
        first.wait_for_selector(".legend .traces", state="attached")
        page.wait_for_function(
            f"document.getElementById('{first.get_attribute('id')}')"
            "._fullData[0].visible === 'legendonly'",
            timeout=5_000,
        )
        titles = page.eval_on_selector_all(".plot .gtitle", "els => els.map(e => e.textContent)")
        assert any("td_loss" in t for t in titles)
        x_titles = page.eval_on_selector_all(
            ".plot .g-xtitle", "els => els.map(e => e.textContent)"
        )
        assert "iteration (0-based)" in x_titles
        assert seen["errors"] == [] and seen["requests"] == []
    finally:
        page.close()


def test_sweep_summary_links_open_each_run_report(browser, pages):
    """Every run id links its own report: run_report.md (a sweep run writes no HTML page),
    which opens as text with its card; once `tdlens report RUN` made a run's page, the
    regenerated summary links that page, which opens with its card."""
    summary = pages["sweep summary"]
    page, seen = open_page(browser, summary)
    try:
        hrefs = page.eval_on_selector_all("a[href$='run_report.md']", "els => els.map(e => e.href)")
        assert len(hrefs) == 4 and all(h.startswith("file://") for h in hrefs)
        page.click("a[href$='run_report.md'] >> nth=0")
        page.wait_for_load_state()
        assert page.url == hrefs[0] and "# Run Report" in page.inner_text("body")
        assert seen["errors"] == [] and seen["requests"] == []
    finally:
        page.close()
    sweep_dir = summary.parent
    first = sorted((sweep_dir / "runs").iterdir())[0]
    write_report(first)
    summarize(sweep_dir)
    page, seen = open_page(browser, summary)
    try:
        html = page.eval_on_selector_all(
            "a[href$='run_report.html']", "els => els.map(e => e.href)"
        )
        assert len(html) == 1 and html[0].endswith(f"{first.name}/run_report.html")
        page.click("a[href$='run_report.html']")
        page.wait_for_selector("#verdict")
        assert "Why:" in page.inner_text("#verdict")
        assert seen["errors"] == [] and seen["requests"] == []
    finally:
        page.close()
