"""MkDocs hooks: the CLI reference is generated from the commands themselves, and no page
of docs/ is left out of the nav.

A page containing the line ``<!-- tdlens-cli-reference -->`` gets, in its place, the
``--help`` of every tdlens command and command group, exactly as a user sees it, so the
reference can never disagree with the commands. tests/test_docs.py checks it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

MARKER = "<!-- tdlens-cli-reference -->"
WIDTH = 80


def command_paths(app: typer.Typer | None = None) -> list[list[str]]:
    """Every command and command group as its argv path: [], ['run'], ['runs', 'list']..."""
    if app is None:
        from tdlens.cli import app
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        paths.append(path)
        children = getattr(cmd, "commands", None) or {}  # a group (typer vendors click)
        for name, child in children.items():
            if not getattr(child, "hidden", False):
                walk(child, [*path, name])

    walk(root, [])
    return paths


def help_text(path: list[str]) -> str:
    """``tdlens PATH --help`` as plain text (no colours), WIDTH columns wide."""
    from tdlens.cli import app

    env = {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": str(WIDTH)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=WIDTH)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if result.exit_code != 0:
        raise RuntimeError(f"tdlens {' '.join(path)} --help exited {result.exit_code}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render_cli_reference() -> str:
    """Markdown: one section per command with its --help in a code block."""
    parts = []
    for path in command_paths():
        title = " ".join(["tdlens", *path])
        parts.append(f"## `{title}`\n\n```text\n{help_text(path)}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker with the generated reference (other pages are left alone)."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_cli_reference())


def _listed(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(v) for v in nav))
    return set()


def on_config(config: Any) -> Any:
    """Append the pages of docs/ that the nav of mkdocs.yml does not list (in name order)."""
    nav = config.get("nav")
    if nav:
        docs = Path(config["docs_dir"])
        pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
        listed = _listed(nav)
        nav.extend(page for page in pages if page not in listed)
    return config
