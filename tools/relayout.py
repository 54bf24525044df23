"""Move tdlens's modules to where they belong (issue 25, item 8: a layout that tells the truth).

Run from the repository root: ``python tools/relayout.py``. A second run changes nothing.

What it does, in order (each step is skipped when its result is already there):

1. ``git mv`` the modules that serve more than their package:
   ``report/{kit,fmt,plots,honest}.py`` -> the ``tdlens.pages`` package (every page: run
   report, sweep summaries and comparisons, suites, exports);
   ``sweeps/catalog.py`` -> ``catalog/store.py`` and ``sweeps/records.py`` ->
   ``catalog/records.py`` (single runs are indexed too); ``report/stats.py`` ->
   ``report/series_stats.py`` (statistics of one metric series) and ``sweeps/stats.py`` ->
   ``sweeps/seed_stats.py`` (IQM and stratified bootstrap over seeds).
2. Rewrites every reference to a moved module in the ``.py``, ``.md``, ``.yml``/``.yaml``
   files under src/, tests/, benchmarks/, docs/, docs_hooks/ and in mkdocs.yml, README.md
   and BENCHMARKS.md: ``from tdlens.report import kit as H`` (split when one statement
   imports moved and unmoved names), every dotted name (``tdlens.report.kit``, in imports,
   docstrings, mkdocstrings ``::: ...`` lines and patch strings) and file paths
   (``src/tdlens/report/kit.py``, ``report/kit.py``).
3. Moves whole top-level definitions by name (found with ``ast``, so edited bodies move
   as they are): ``reindex`` and its ``_walk`` leave the catalog for ``sweeps/reindex.py``
   (they read sweep plans, which the catalog, below sweeps, may not import); and
   ``sweeps/atlas.py`` becomes the package ``tdlens.sweeps.atlas`` split by job: ``data``
   (records -> points), ``geometry`` (crossings, boundaries, axis effects), ``plot``
   (matplotlib) and ``page`` (Markdown and writing). A definition not named below goes to
   ``page`` (the top) and is printed. Each new module imports exactly the names its
   definitions use; importers of the moved names (``from M import x`` and ``alias.x``
   after ``from P import M as alias``) and dotted ``M.x`` strings are rewritten.
4. Puts ``pages`` and ``catalog`` in tests/test_architecture.py's layers (pages above
   scores, below render/report; catalog above runs, below sweeps/suites).
5. ``ruff check --fix --select I`` and ``ruff format`` on the files it changed.

It stops with a message (exit 2), before writing anything, when it cannot place
something: a relative import, a non-definition statement at the top level of a module it
splits, a cycle between the new modules, a module at both its old and new path, or no
layer lines to extend. (A moved name that clashes with a name already bound in an
importer is found only while rewriting importers: then it stops there, exit 2.)

What it does not handle (check by hand after a run, then run the tests):

- files outside src/, tests/, benchmarks/, docs/, docs_hooks/, mkdocs.yml, README.md and
  BENCHMARKS.md (pyproject.toml, configs/, notebooks) and tests/test_relayout.py (its
  fixture is the tree before the moves);
- names of a split module reached other than through ``from M import x``,
  ``from P import M [as a]`` + ``a.x`` or the dotted string ``M.x``: ``import M as a``,
  ``getattr(a, "x")``, ``monkeypatch.setattr(a, "x", ...)`` (for reindex: ``cat`` there);
- file paths of ``sweeps/atlas.py`` (it has no single successor) and ``path.py:LINE``
  references (the line numbers stay the old ones);
- an import a new module adds against the layers (tests/test_architecture.py says which).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path.cwd()
SRC = ROOT / "src"

MODULE_MOVES: tuple[tuple[str, str], ...] = (
    ("tdlens.report.kit", "tdlens.pages.kit"),
    ("tdlens.report.fmt", "tdlens.pages.fmt"),
    ("tdlens.report.plots", "tdlens.pages.plots"),
    ("tdlens.report.honest", "tdlens.pages.honest"),
    ("tdlens.sweeps.catalog", "tdlens.catalog.store"),
    ("tdlens.sweeps.records", "tdlens.catalog.records"),
    ("tdlens.report.stats", "tdlens.report.series_stats"),
    ("tdlens.sweeps.stats", "tdlens.sweeps.seed_stats"),
)
"""(old, new) dotted module names moved with ``git mv``."""

NEW_PACKAGES: dict[str, str] = {
    "tdlens.pages": (
        "The building blocks of every page: the run report, sweep summaries and comparisons,\n"
        "suites and the exporters.\n\n"
        ":mod:`~tdlens.pages.fmt` (numbers as text), :mod:`~tdlens.pages.kit` (escaping, tables,\n"
        "plotly figures and the page shell), :mod:`~tdlens.pages.honest` (how much a series\n"
        "really changed, and a y range that shows it) and :mod:`~tdlens.pages.plots` (the\n"
        "figures). They read run data and format it; they never run anything.\n"
    ),
    "tdlens.catalog": (
        "The catalog of runs, single runs and sweep members alike.\n\n"
        ":mod:`~tdlens.catalog.records` (a run directory as one row, with its regime label)\n"
        "and :mod:`~tdlens.catalog.store` (the SQLite database of runs and sweeps, and its\n"
        "read-only queries). Rebuilding it from the directories on disk reads sweep plans,\n"
        "so it lives above, in :mod:`tdlens.sweeps.reindex`.\n"
    ),
}
"""New packages and their ``__init__`` docstrings."""

TEXT_DIRS = ("src", "tests", "benchmarks", "docs", "docs_hooks")
TEXT_FILES = ("mkdocs.yml", "README.md", "BENCHMARKS.md")
TEXT_SUFFIXES = (".py", ".md", ".yml", ".yaml")
PY_DIRS = ("src", "tests", "benchmarks", "docs_hooks")
SKIP_FILES = ("tests/test_relayout.py",)
"""Never rewritten: the test of this script describes the tree before the moves."""


@dataclass
class Split:
    """Top-level definitions of `source` moved by name into new modules."""

    source: str
    """Dotted module the definitions leave."""
    targets: dict[str, tuple[str, tuple[str, ...]]]
    """Dotted target module -> (its docstring, the names it receives)."""
    default: str | None = None
    """Target of a definition named nowhere (None: it stays in `source`)."""
    package_doc_suffix: str = ""
    """When set, `source` becomes a package whose ``__init__`` keeps the module docstring
    with this paragraph appended (and no code)."""
    done_when: str = ""
    """Dotted module whose existence means the split was already made."""
    moved: dict[str, str] = field(default_factory=dict)


REINDEX = Split(
    source="tdlens.catalog.store",
    targets={
        "tdlens.sweeps.reindex": (
            "`tdlens runs reindex`: rebuild the catalog from the run and sweep directories on\n"
            "disk.\n\n"
            "A sweep directory is read through its plan (:mod:`tdlens.sweeps.plan`), which is\n"
            "why this sits in the sweeps layer, above :mod:`tdlens.catalog.store` that it\n"
            "writes.\n",
            ("_walk", "reindex"),
        )
    },
    done_when="tdlens.sweeps.reindex",
)

ATLAS = Split(
    source="tdlens.sweeps.atlas",
    targets={
        "tdlens.sweeps.atlas.data": (
            "The atlas's data: a sweep's plan and records as points on the diagrams\n"
            "(:class:`AtlasPoint`: step ratio, mismatch, beta, alpha_w, eig_min_real).\n",
            (
                "MISMATCH_KEYS",
                "AtlasError",
                "AtlasPoint",
                "AtlasSweep",
                "_param",
                "mismatch_name",
                "_eig_interval",
                "mismatch_key",
                "atlas_points",
                "read_sweep",
            ),
        ),
        "tdlens.sweeps.atlas.geometry": (
            "The atlas's geometry: where eig_min_real changes sign across the mismatch axis,\n"
            "the closed-form boundary, which axes move the label, and a representative run\n"
            "per label.\n",
            (
                "eig_zero_crossing",
                "crossing_interval",
                "closed_form_boundary",
                "axis_effect",
                "_representatives",
            ),
        ),
        "tdlens.sweeps.atlas.plot": (
            "The atlas's figures (matplotlib): step x mismatch and beta x offset, coloured and\n"
            "marked by regime label (tdlens.regimes.REGIME_TABLE), and their PNG bytes.\n",
            (
                "label_colour",
                "label_marker",
                "step_mismatch_figure",
                "beta_offset_figure",
                "_legend_right",
                "_fig_png",
            ),
        ),
        "tdlens.sweeps.atlas.page": (
            "The atlas page: its Markdown (boundary text, label tables, reproduce commands,\n"
            "shipped regime configs) and :func:`write_atlas`, which writes it with its images.\n",
            (
                "SHIPPED_REGIMES",
                "Atlas",
                "reproduce_command",
                "_boundary_text",
                "_label_table",
                "_effects",
                "atlas_markdown",
                "write_atlas",
            ),
        ),
    },
    default="tdlens.sweeps.atlas.page",
    package_doc_suffix=(
        "Modules, by job: :mod:`~tdlens.sweeps.atlas.data` (records -> points),\n"
        ":mod:`~tdlens.sweeps.atlas.geometry` (crossings and boundaries),\n"
        ":mod:`~tdlens.sweeps.atlas.plot` (matplotlib) and :mod:`~tdlens.sweeps.atlas.page`\n"
        "(Markdown, :func:`~tdlens.sweeps.atlas.page.write_atlas`).\n"
    ),
    done_when="tdlens.sweeps.atlas.page",
)

LAYER_INSERTS: tuple[tuple[str, str], ...] = (
    ('    ("scores",),\n', '    ("pages",),\n'),
    ('    ("runs",),\n', '    ("catalog",),\n'),
)
"""(layer line, new layer inserted right after it) in tests/test_architecture.py."""


class RelayoutError(Exception):
    """Something the script cannot place; nothing of that step was written."""


# --------------------------------------------------------------------------- files


def module_path(dotted: str) -> Path:
    """src/ path of a dotted module (a package's ``__init__.py`` when it is one)."""
    base = SRC / Path(*dotted.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def exists(dotted: str) -> bool:
    base = SRC / Path(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def text_files() -> list[Path]:
    out = [ROOT / f for f in TEXT_FILES if (ROOT / f).is_file()]
    for d in TEXT_DIRS:
        if (ROOT / d).is_dir():
            out += sorted(
                p
                for p in (ROOT / d).rglob("*")
                if p.suffix in TEXT_SUFFIXES and p.is_file() and "site" not in p.parts
            )
    return [p for p in out if str(p.relative_to(ROOT)) not in SKIP_FILES]


def py_files() -> list[Path]:
    return [p for p in text_files() if p.suffix == ".py" and p.parts[len(ROOT.parts)] in PY_DIRS]


def git(*args: str) -> None:
    subprocess.run(["git", *args], cwd=ROOT, check=True)


CHANGED: set[Path] = set()


def write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        CHANGED.add(path)


# --------------------------------------------------------------------------- source edits


def _offsets(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _pos(text: str, starts: list[int], line: int, col: int) -> int:
    """Character offset of ast's (1-based line, UTF-8 byte column)."""
    begin = starts[line - 1]
    end = starts[line] if line < len(starts) else len(text)
    return begin + len(text[begin:end].encode()[:col].decode(errors="ignore"))


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace character spans (start, end, new), given in any order, non-overlapping."""
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def node_span(text: str, starts: list[int], node: ast.AST) -> tuple[int, int]:
    return (
        _pos(text, starts, node.lineno, node.col_offset),
        _pos(text, starts, node.end_lineno, node.end_col_offset),
    )


def import_from(module: str, names: list[tuple[str, str | None]]) -> str:
    parts = [n if a is None or a == n else f"{n} as {a}" for n, a in names]
    return f"from {module} import {', '.join(parts)}"


def statement_indent(text: str, starts: list[int], node: ast.stmt) -> str:
    line = text[starts[node.lineno - 1] : starts[node.lineno]]
    return line[: len(line) - len(line.lstrip())]


# --------------------------------------------------------------------------- step 1-2


def make_packages() -> None:
    for pkg, doc in NEW_PACKAGES.items():
        init = module_path(pkg) if exists(pkg) else SRC / Path(*pkg.split(".")) / "__init__.py"
        if not init.is_file():
            write(init, f'"""{doc}"""\n')
            git("add", str(init.relative_to(ROOT)))


def move_modules(check_only: bool = False) -> None:
    for old, new in MODULE_MOVES:
        src, dst = module_path(old), SRC / Path(*new.split(".")).with_suffix(".py")
        if src.is_file() and dst.is_file():
            raise RelayoutError(f"both '{src}' and '{dst}' exist: merge them by hand first")
        if src.is_file() and not check_only:
            dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", str(src.relative_to(ROOT)), str(dst.relative_to(ROOT)))
            CHANGED.add(dst)


def _check_relative_imports(moves: dict[str, str]) -> None:
    bad = []
    for path in py_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                bad.append(f"{path}:{node.lineno}")
    if bad:
        raise RelayoutError(
            "relative imports found (rewrite them as absolute first): " + ", ".join(bad)
        )


def rewrite_parent_imports(moves: dict[str, str]) -> None:
    """``from tdlens.report import kit as H, write_report`` -> one statement per package."""
    by_parent: dict[tuple[str, str], str] = {}
    for old, new in moves.items():
        parent, last = old.rsplit(".", 1)
        by_parent[(parent, last)] = new
    for path in py_files():
        text = path.read_text()
        if not any(f"from {p} import" in text for p, _ in by_parent):
            continue
        starts = _offsets(text)
        edits = []
        for node in ast.walk(ast.parse(text, str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if not any((node.module, a.name) in by_parent for a in node.names):
                continue
            keep: list[tuple[str, str | None]] = []
            groups: dict[str, list[tuple[str, str | None]]] = {}
            for a in node.names:
                new = by_parent.get((node.module, a.name))
                if new is None:
                    keep.append((a.name, a.asname))
                    continue
                parent, last = new.rsplit(".", 1)
                groups.setdefault(parent, []).append((last, a.asname or a.name))
            indent = statement_indent(text, starts, node)
            lines = [import_from(node.module, keep)] if keep else []
            lines += [import_from(p, names) for p, names in groups.items()]
            start, end = node_span(text, starts, node)
            edits.append((start, end, ("\n" + indent).join(lines)))
        write(path, apply_edits(text, edits))


def rewrite_names(moves: dict[str, str]) -> None:
    """Dotted names and file paths of moved modules, in every text file."""
    subs: list[tuple[re.Pattern[str], str]] = []
    for old, new in sorted(moves.items(), key=lambda m: -len(m[0])):
        subs.append((re.compile(rf"(?<![\w.]){re.escape(old)}(?!\w)"), new))
        old_rel = "/".join(old.split(".")[1:]) + ".py"
        new_rel = "/".join(new.split(".")[1:]) + ".py"
        subs.append(
            (
                re.compile(rf"(?<![\w./-])((?:src/)?tdlens/)?{re.escape(old_rel)}(?!\w)"),
                rf"\g<1>{new_rel}",
            )
        )
    for path in text_files():
        text = path.read_text()
        new_text = text
        for pattern, repl in subs:
            new_text = pattern.sub(repl, new_text)
        write(path, new_text)


# --------------------------------------------------------------------------- step 3


@dataclass
class Block:
    """One top-level definition (with its decorators, the comments right above it and an
    attribute docstring right below it) as source lines [start, end) (0-based)."""

    names: tuple[str, ...]
    start: int
    end: int
    node: ast.stmt
    extra: list[ast.stmt] = field(default_factory=list)


def _bound(node: ast.stmt) -> tuple[str, ...]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return (node.name,)
    if isinstance(node, ast.Assign):
        return tuple(t.id for t in node.targets if isinstance(t, ast.Name))
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return (node.target.id,)
    return ()


def parse_module(
    path: Path,
) -> tuple[str, list[str], list[ast.stmt], list[Block], ast.Module]:
    """(docstring, source lines, top-level imports, definitions) of a module."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text, str(path))
    doc = ast.get_docstring(tree, clean=False) or ""
    imports: list[ast.stmt] = []
    blocks: list[Block] = []
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            if blocks:
                raise RelayoutError(f"{path}:{node.lineno}: an import after a definition")
            imports.append(node)
            continue
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if is_doc and blocks and isinstance(blocks[-1].node, ast.Assign | ast.AnnAssign):
            blocks[-1].end = node.end_lineno
            blocks[-1].extra.append(node)
            continue
        names = _bound(node)
        if not names:
            raise RelayoutError(
                f"{path}:{node.lineno}: a top-level statement that is not a definition "
                "(move it by hand, then run again)"
            )
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        start = first - 1
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        blocks.append(Block(names, start, node.end_lineno, node))
    return doc, lines, imports, blocks, tree


def used_names(nodes: list[ast.stmt]) -> set[str]:
    out = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                out.add(sub.id)
    return out


def import_bindings(node: ast.stmt) -> list[tuple[str, str]]:
    """(bound name, the statement that binds only it) for each alias of an import."""
    out = []
    if isinstance(node, ast.Import):
        for a in node.names:
            bound = a.asname or a.name.split(".")[0]
            out.append((bound, f"import {a.name}" + (f" as {a.asname}" if a.asname else "")))
    elif isinstance(node, ast.ImportFrom):
        for a in node.names:
            out.append((a.asname or a.name, import_from(node.module or "", [(a.name, a.asname)])))
    return out


def split_module(split: Split, check_only: bool = False) -> dict[str, str]:
    """Move the definitions; returns {moved name: its new module}. ``check_only``: place
    them and raise what cannot be placed, but write nothing (the source may still be at
    its name before the module moves)."""
    if exists(split.done_when):
        return {}
    before = {new: old for old, new in MODULE_MOVES}.get(split.source, split.source)
    source = split.source if exists(split.source) else before if check_only else ""
    if not source or not exists(source):
        return {}
    path = module_path(source)
    doc, lines, imports, blocks, _ = parse_module(path)
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)
    where: dict[str, str] = {}
    for target, (_, names) in split.targets.items():
        for n in names:
            where[n] = target
    placed = _place(split, path, blocks, where, quiet=check_only)
    if not placed:
        return {}
    modules = list(split.targets) + ([] if split.package_doc_suffix else [split.source])
    home = {n: placed.get(n, split.source) for b in blocks for n in b.names}
    own = {m: [b for b in blocks if home[b.names[0]] == m] for m in modules}
    needs: dict[str, set[str]] = {}
    for m in modules:
        used = used_names([b.node for b in own[m]] + [e for b in own[m] for e in b.extra])
        needs[m] = {home[n] for n in used if n in home and home[n] != m}
    _check_acyclic(needs)
    if needs.get(split.source):
        raise RelayoutError(
            f"{split.source} still uses what moves to {sorted(needs[split.source])}"
        )
    if check_only:
        return placed

    bindings = [(bound, stmt) for node in imports for bound, stmt in import_bindings(node)]
    bindings = [(b, s) for b, s in bindings if b != "annotations"]
    texts: dict[str, str] = {}
    for m in modules:
        if m == split.source:
            continue
        body = [b for b in own[m]]
        used = used_names([b.node for b in body] + [e for b in body for e in b.extra])
        head = [f'"""{split.targets[m][0]}"""\n']
        if future:
            head.append("from __future__ import annotations\n")
        imps = [s for bound, s in bindings if bound in used]
        for other in sorted(needs[m]):
            names = sorted(n for n in used if home.get(n) == other)
            imps.append(import_from(other, [(n, None) for n in names]))
        chunks = ["".join(lines[b.start : b.end]).rstrip("\n") + "\n" for b in body]
        texts[m] = "\n".join(head) + "\n" + "\n".join(imps) + "\n\n\n" + "\n\n".join(chunks)
    if split.package_doc_suffix:
        path.unlink()
        CHANGED.discard(path)
        git("rm", "--cached", "-q", str(path.relative_to(ROOT)))
        init = path.with_suffix("") / "__init__.py"
        write(init, f'"""{doc.rstrip()}\n\n{split.package_doc_suffix}"""\n')
        git("add", str(init.relative_to(ROOT)))
    else:
        texts[split.source] = _remainder(path, lines, imports, blocks, home, needs, split)
    for m, text in texts.items():
        target = SRC / Path(*m.split(".")).with_suffix(".py")
        write(target, text)
        git("add", str(target.relative_to(ROOT)))
    return {n: d for n, d in placed.items()}


def _place(
    split: Split, path: Path, blocks: list[Block], where: dict[str, str], quiet: bool = False
) -> dict[str, str]:
    """{name: target module} for every definition that leaves the source.

    When the source is dissolved into a package, a definition named nowhere (added since
    this script was written) goes with its users when only moved definitions use it (to the
    lowest target that uses it, in the order of `split.targets`), else to `split.default`.
    When the source stays, such a definition stays with it (other modules may use it).
    """
    order = list(split.targets)
    home: dict[str, str | None] = {}
    for b in blocks:
        dests = {where[n] for n in b.names if n in where}
        if len(dests) > 1:
            raise RelayoutError(f"{path}: {b.names} are assigned to different modules")
        dest = next(iter(dests), None)
        for n in b.names:
            home[n] = dest
    users = {
        b.names[0]: {
            x.names[0]
            for x in blocks
            if x is not b and set(b.names) & used_names([x.node, *x.extra])
        }
        for b in blocks
    }
    unnamed = [b for b in blocks if home[b.names[0]] is None]
    if not split.package_doc_suffix:
        return {n: d for n, d in home.items() if d is not None}  # the rest stays: others use it
    for _ in range(len(unnamed) + 1):
        for b in unnamed:
            homes = {home[u] for u in users[b.names[0]]}
            if homes and None not in homes and homes <= set(order):
                dest = min(homes, key=order.index)
            else:
                dest = split.default
            for n in b.names:
                home[n] = dest
    for b in unnamed:
        if home[b.names[0]] is not None and not quiet:
            print(
                f"relayout: {split.source}.{b.names[0]} is named nowhere: put in {home[b.names[0]]}"
            )
    return {n: d for n, d in home.items() if d is not None}


def _remainder(
    path: Path,
    lines: list[str],
    imports: list[ast.stmt],
    blocks: list[Block],
    home: dict[str, str],
    needs: dict[str, set[str]],
    split: Split,
) -> str:
    """The source without the moved blocks and without imports only they used."""
    stay = [b for b in blocks if home[b.names[0]] == split.source]
    moved = [b for b in blocks if home[b.names[0]] != split.source]
    used_stay = used_names([b.node for b in stay] + [e for b in stay for e in b.extra])
    used_moved = used_names([b.node for b in moved])
    text = "".join(lines)
    starts = _offsets(text)
    edits = []
    for b in moved:
        start, end = starts[b.start], starts[b.end]
        while end < len(text) and text[end] == "\n":
            end += 1
        edits.append((start, end, ""))
    for node in imports:
        pairs = import_bindings(node)
        drop = [b for b, _ in pairs if b in used_moved and b not in used_stay]
        if not drop or isinstance(node, ast.Import):
            continue
        keep = [(a.name, a.asname) for a in node.names if (a.asname or a.name) not in drop]
        start, end = node_span(text, starts, node)
        if keep:
            edits.append((start, end, import_from(node.module or "", keep)))
        else:
            edits.append((start, starts[node.end_lineno], ""))
    rest = apply_edits(text, edits).rstrip("\n").splitlines(keepends=True)
    while rest and (not rest[-1].strip() or rest[-1].lstrip().startswith("#")):
        rest.pop()  # a section comment whose section moved out
    return "".join(rest).rstrip("\n") + "\n"


def _check_acyclic(needs: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(needs.get(m, ())):
            if state.get(d) == 1:
                raise RelayoutError("the split makes a cycle: " + " -> ".join([*stack, m, d]))
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(needs):
        if m not in state:
            visit(m, [])


def rewrite_symbol_importers(old: str, moved: dict[str, str], old_is_gone: bool) -> None:
    """Importers of names that left module `old`: ``from old import x`` and ``alias.x``."""
    parent, last = old.rsplit(".", 1)
    symbol_re = re.compile(rf"(?<![\w.]){re.escape(old)}\.(\w+)")
    for path in py_files():
        text = path.read_text()
        new_text = _rewrite_importer(path, text, old, parent, last, moved, old_is_gone)
        new_text = symbol_re.sub(
            lambda m: f"{moved[m.group(1)]}.{m.group(1)}" if m.group(1) in moved else m.group(0),
            new_text,
        )
        write(path, new_text)
    for path in text_files():
        if path.suffix != ".py":
            text = path.read_text()
            write(
                path,
                symbol_re.sub(
                    lambda m: (
                        f"{moved[m.group(1)]}.{m.group(1)}" if m.group(1) in moved else m.group(0)
                    ),
                    text,
                ),
            )


def _owned_names(
    tree: ast.Module, node: ast.stmt, alias: str, binders: list[tuple[ast.ImportFrom, str]]
) -> list[ast.Name]:
    """The uses of `alias` whose nearest binding statement above is `node`."""
    lines = sorted(b.lineno for b, a in binders if a == alias)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id == alias:
            before = [ln for ln in lines if ln <= n.lineno]
            if before and before[-1] == node.lineno:
                out.append(n)
    return out


def _rewrite_importer(
    path: Path,
    text: str,
    old: str,
    parent: str,
    last: str,
    moved: dict[str, str],
    old_is_gone: bool,
) -> str:
    if old not in text and f"import {last}" not in text:
        return text
    tree = ast.parse(text, str(path))
    starts = _offsets(text)
    edits: list[tuple[int, int, str]] = []
    defined = {
        (a.asname or a.name)
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    } | {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    binders: list[tuple[ast.ImportFrom, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or node.module is None:
            continue
        indent = statement_indent(text, starts, node)
        if node.module == old and any(a.name in moved for a in node.names):
            keep, groups = [], {}
            for a in node.names:
                if a.name in moved:
                    groups.setdefault(moved[a.name], []).append((a.name, a.asname))
                elif old_is_gone:
                    raise RelayoutError(f"{path}:{node.lineno}: '{a.name}' is not in {old}")
                else:
                    keep.append((a.name, a.asname))
            out = [import_from(old, keep)] if keep else []
            out += [import_from(m, names) for m, names in sorted(groups.items())]
            start, end = node_span(text, starts, node)
            edits.append((start, end, ("\n" + indent).join(out)))
        elif node.module == parent and any(a.name == last for a in node.names):
            alias = next(a.asname or a.name for a in node.names if a.name == last)
            binders.append((node, alias))
    parent_of = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    for node, alias in binders:
        names = _owned_names(tree, node, alias, binders)
        attrs = [parent_of[id(n)] for n in names]
        attrs = [a for a in attrs if isinstance(a, ast.Attribute) and a.attr in moved]
        if not attrs:
            continue
        syms = sorted({a.attr for a in attrs})
        clash = [n for n in syms if n in defined]
        if clash:
            raise RelayoutError(
                f"{path}: {clash} would clash with a name already bound there; "
                f"rewrite its `{alias}.x` uses by hand"
            )
        for a in attrs:
            start, end = node_span(text, starts, a)
            edits.append((start, end, a.attr))
        groups: dict[str, list[tuple[str, str | None]]] = {}
        for n in syms:
            groups.setdefault(moved[n], []).append((n, None))
        new_imports = [import_from(m, ns) for m, ns in sorted(groups.items())]
        start, end = node_span(text, starts, node)
        indent = statement_indent(text, starts, node)
        if len(attrs) == len(names) and old_is_gone:
            rest = [(a.name, a.asname) for a in node.names if a.name != last]
            out = ([import_from(parent, rest)] if rest else []) + new_imports
            edits.append((start, end, ("\n" + indent).join(out)))
        else:
            edits.append((end, end, "".join(f"\n{indent}{s}" for s in new_imports)))
    return apply_edits(text, edits)


# --------------------------------------------------------------------------- step 4-5


def update_layers(check_only: bool = False) -> None:
    path = ROOT / "tests" / "test_architecture.py"
    if not path.is_file():
        raise RelayoutError(f"no {path}: its LAYERS get the new packages")
    text = path.read_text()
    for after, new in LAYER_INSERTS:
        if new in text:
            continue
        if after not in text:
            raise RelayoutError(f"{path}: no line {after.strip()!r} to put {new.strip()} after")
        text = text.replace(after, after + new, 1)
    if not check_only:
        write(path, text)


def tidy() -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in CHANGED if p.suffix == ".py" and p.is_file())
    if not files:
        return
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "-q", "--fix", "--select", "I", *files], cwd=ROOT, check=False)
    subprocess.run([*ruff, "format", "-q", *files], cwd=ROOT, check=True)


def main() -> int:
    if not (SRC / "tdlens" / "__init__.py").is_file():
        print("relayout: run it from the repository root (no src/tdlens here)", file=sys.stderr)
        return 2
    moves = dict(MODULE_MOVES)
    try:
        _check_relative_imports(moves)
        move_modules(check_only=True)  # everything that can refuse, before any write
        for split in (REINDEX, ATLAS):
            split_module(split, check_only=True)
        update_layers(check_only=True)
        make_packages()
        move_modules()
        rewrite_parent_imports(moves)
        rewrite_names(moves)
        for split in (REINDEX, ATLAS):
            moved = split_module(split)
            if moved:
                rewrite_symbol_importers(split.source, moved, bool(split.package_doc_suffix))
        update_layers()
    except RelayoutError as exc:
        print(f"relayout: {exc}", file=sys.stderr)
        return 2
    tidy()
    for p in sorted(CHANGED):
        print(f"relayout: wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
