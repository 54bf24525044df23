"""The shape of the code: layers without import cycles, one module that registers commands.

The import graph is read from the source (every ``import`` and ``from ... import``,
module-level or inside a function, ``TYPE_CHECKING`` blocks included) and collapsed to
the packages and top-level modules of tdlens. Each may import only from its own layer or
a lower one, which also rules out cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tdlens

SRC = Path(tdlens.__file__).parent
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tdlens", "config", "seeding", "threads", "kernels", "schema", "regimes"),
    ("rundir", "features", "policy"),
    ("torus",),
    ("rollout",),
    ("learner",),
    ("probes",),
    ("scores",),
    ("pages",),
    ("render", "report"),
    ("runs",),
    ("catalog",),
    ("sweeps", "suites"),
    ("api", "export"),
    ("cli",),
)
"""Lowest first: a unit may import its own layer and the ones before it."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """tdlens modules imported by module `name` (anywhere in its source)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tdlens"


def test_every_unit_imports_only_its_own_or_lower_layers():
    modules = _modules()
    layer_of = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    units = {_unit(m) for m in modules}
    assert units <= set(layer_of), f"units without a layer: {sorted(units - set(layer_of))}"
    bad = []
    for name, path in modules.items():
        for target in _imports(name, path, set(modules)):
            a, b = _unit(name), _unit(target)
            if layer_of[b] > layer_of[a] or (a != b and layer_of[a] == layer_of[b]):
                bad.append(f"{name} -> {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_module_level_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not (m.startswith(d + ".") or d == "tdlens"):
                cycle.extend([*stack[stack.index(d) :], m, d] if d in stack else [m, d])
                return True
            if d not in state and visit(d, [*stack, m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_every_module_imports_in_a_fresh_process():
    names = sorted(_modules())
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_only_the_cli_registers_commands():
    offenders = []
    for name, path in _modules().items():
        text = path.read_text()
        if name != "tdlens.cli" and (".command(" in text or ".add_typer(" in text):
            offenders.append(name)
    assert offenders == []
