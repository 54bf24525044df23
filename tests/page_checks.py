"""Checks shared by the page tests: a tdlens HTML page is offline and self-contained.

The only scripts a page may hold are plotly.js inlined once in its head, one JSON spec per
figure and the loader that draws them (:mod:`tdlens.pages.kit`); nothing is loaded from
a URL, a stylesheet or another file.
"""

from __future__ import annotations

import re

from tdlens.pages.kit import LOADER, figure_specs, plotly_js

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)|@import|url\(|<link""")
SPEC_TAG = re.compile(r'<script type="application/json" class="tdfig" data-for="fig-[0-9a-f]+">')


def assert_offline(text: str) -> int:
    """Assert the page loads nothing from outside itself; returns its figure count."""
    library = f"<script>{plotly_js()}</script>"
    n_figs = len(figure_specs(text))
    assert text.count(library) == (1 if n_figs else 0)
    rest = text.replace(library, "").replace(LOADER, "")
    assert not EXTERNAL.search(rest), EXTERNAL.search(rest)
    tags = re.findall(r"<script[^>]*>", rest, flags=re.I)
    assert len(tags) == n_figs and all(SPEC_TAG.fullmatch(t) for t in tags), tags
    return n_figs
