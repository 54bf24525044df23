"""The documentation: every tutorial's code runs, the CLI reference covers every command,
and nothing a user reads points at a file outside the project."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tdlens.cli import app

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs_hooks" / "cli_reference.py"
_spec = importlib.util.spec_from_file_location("cli_reference", HOOK)
cli_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_reference)  # the MkDocs hook that renders the CLI reference
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown page as (language, code), in page order."""
    return [(lang, code) for lang, code in FENCE.findall(page.read_text())]


def test_there_are_tutorials_with_code():
    assert [p.stem for p in TUTORIALS] == ["first-run", "notebook", "sweep"]
    for page in TUTORIALS:
        langs = {lang for lang, _ in code_blocks(page)}
        assert langs <= {"python", "bash"} and "python" in langs, page.name


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_written(page, tmp_path, monkeypatch):
    """Python blocks run in one namespace, bash lines as tdlens commands, in page order,
    in a fresh folder; every assert in the page must hold and every command exit 0."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tutorial__"}
    ran = 0
    for k, (lang, code) in enumerate(code_blocks(page)):
        if lang == "python":
            exec(compile(code, f"{page.name} block {k}", "exec"), namespace)
        else:
            for line in code.splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                args = shlex.split(line)
                assert args[0] == "tdlens", f"{page.name}: only tdlens commands run: {line}"
                res = CliRunner().invoke(app, args[1:])
                assert res.exit_code == 0, f"{page.name}: {line}\n{res.output}"
        ran += 1
    assert ran == len(code_blocks(page)) >= 3


def test_cli_reference_shows_every_command_and_option():
    reference = cli_reference.render_cli_reference()
    paths = cli_reference.command_paths()
    assert ["export", "mlflow"] in paths and ["runs", "list"] in paths and ["sweep"] in paths
    for path in paths:
        assert f"## `{' '.join(['tdlens', *path])}`" in reference
    for option in ("--tracking-uri", "--grid", "--seeds", "--resume", "--where"):
        assert option in reference, option
    assert "\x1b[" not in reference  # no terminal colours in the page


def test_nothing_a_user_reads_points_outside_the_project():
    configs = ROOT / "src" / "tdlens" / "configs"
    pages = [ROOT / "README.md", *DOCS.rglob("*.md"), *configs.rglob("*.yaml")]
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in pages}
    texts["tdlens --help (every command)"] = cli_reference.render_cli_reference()
    cites_spec = re.compile(r"SPEC(\.md| \d| section)")  # not `tdlens sweep SPEC` (a file)
    for name, text in texts.items():
        assert "shared/" not in text, name
        # only the model page may say "SPEC" (docstrings cite docs/model.md sections)
        assert not cites_spec.search(text) or name == "docs/model.md", name
    # every relative link of a page points at a file that exists
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_model_sections_are_numbered_without_gaps_and_citations_point_at_them():
    """docs/model.md numbers its sections 1, 2, ... with no gap (it skipped 9: issue 24),
    and every `docs/model.md §n` / `docs/model.md section n` cited in src names one."""
    text = (ROOT / "docs" / "model.md").read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1))
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    cited = set()
    for path in (ROOT / "src").rglob("*"):
        if path.suffix in (".py", ".yaml", ".md") and path.is_file():
            text = path.read_text()
            # every section of a citation: "docs/model.md §7, §15", "§4, step 3"
            for citation in re.findall(r"docs/model\.md (?:§|section )[^)\n]*", text):
                cited.update(re.findall(r"§(\d+(?:\.\d+)?)", citation))
            cited.update(re.findall(r"docs/model\.md section (\d+(?:\.\d+)?)", text))
    assert cited and cited <= sections, sorted(cited - sections)


def test_docstrings_cite_the_model_page_a_clone_has_not_a_spec():
    """No module, test or benchmark cites "SPEC" (a document that is not in the repository:
    issue 25); they cite docs/model.md sections, which the test above checks exist."""
    cites = re.compile(r"\bSPEC\b(?!_)")
    for root in ("src", "tests", "benchmarks"):
        for path in (ROOT / root).rglob("*.py"):
            if path.name == "test_docs.py":
                continue
            hits = [
                n for n, line in enumerate(path.read_text().splitlines(), 1) if cites.search(line)
            ]
            assert not hits, f"{path.relative_to(ROOT)}: lines {hits} cite SPEC"
