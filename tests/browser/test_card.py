"""The verdict card of a diverged:off-policy run in headless Chromium (issue 24): Why
reads aloud, Next is the mechanism's own fix, the card fits the first screen; the
screenshot is kept beside the run (``card.png``) for a human look."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))

from test_card_words import ACTION_VERBS, CASES, _triad
from test_pages import HEIGHT, WIDTH, browser, open_page  # noqa: F401

from tdlens.report import build_report, write_report


def test_triad_card_in_a_real_browser(browser, tmp_path):  # noqa: F811
    run_dir = _triad().write(tmp_path / "run")
    write_report(run_dir)
    page, seen = open_page(browser, run_dir / "run_report.html")
    try:
        card = page.query_selector("#verdict")
        text = card.inner_text()
        why = text.split("Why:", 1)[1].split("Next:", 1)[0].strip()
        action = text.split("Next:", 1)[1].strip()
        assert why.startswith("The critic diverged off-policy: an eigenvalue of A is below")
        assert action.split()[0] in ACTION_VERBS and action.startswith("Narrow sigma_pi")
        assert "is infinite" not in text and "raise beta" not in text
        box = card.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT, box
        assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
        shot = card.screenshot(path=str(run_dir / "card.png"))
        assert len(shot) > 10_000  # a drawn card, not an empty box
        assert seen["errors"] == [] and seen["requests"] == []
    finally:
        page.close()


@pytest.mark.parametrize("case", list(CASES))
def test_every_labels_card_in_a_real_browser(browser, tmp_path, case):  # noqa: F811
    """Each label's card (and a failed run's), as a reader sees it: the page shows the
    verdict's own Why and Next, Next opens with an action, the card fits the first screen
    without horizontal overflow, and the page logs no error and asks for nothing."""
    make, _label = CASES[case]
    run_dir = make().write(tmp_path / "run")
    write_report(run_dir)
    verdict = build_report(run_dir).verdict
    page, seen = open_page(browser, run_dir / "run_report.html")
    try:
        card = page.query_selector("#verdict")
        text = " ".join(card.inner_text().split())
        assert " ".join(verdict.why.split()) in text and " ".join(verdict.next.split()) in text
        action = text.split("Next:", 1)[1].strip()
        assert action.split()[0] in ACTION_VERBS, action
        box = card.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT, (case, box)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
        card.screenshot(path=str(tmp_path / f"card_{case}.png"))
        assert seen["errors"] == [] and seen["requests"] == []
    finally:
        page.close()
