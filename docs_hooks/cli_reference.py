"""MkDocs hook: the CLI reference page is generated from the commands themselves.

A page containing the line ``<!-- tdlens-cli-reference -->`` gets, in its place, the
``--help`` of every tdlens command and command group, exactly as a user sees it.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- tdlens-cli-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker with the generated reference (other pages are left alone)."""
    if MARKER not in markdown:
        return markdown
    from tdlens.cli_reference import render_cli_reference

    return markdown.replace(MARKER, render_cli_reference())
