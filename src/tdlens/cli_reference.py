"""The command-line reference, generated from the typer app (for the documentation site).

:func:`render_cli_reference` walks the ``tdlens`` command tree and renders each command's
``--help`` as a user sees it, so the reference can never disagree with the commands.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.testing import CliRunner

WIDTH = 100


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
