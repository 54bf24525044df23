"""tools/relayout.py (issue 25 item 8) on a small tree shaped like tdlens before the moves:
modules moved and their importers rewritten, definitions split by name after their bodies
changed, a second run a no-op, and a statement it cannot place refused with exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "relayout.py"

LAYERS = """\
LAYERS = (
    ("tdlens",),
    ("scores",),
    ("render", "report"),
    ("runs",),
    ("sweeps", "suites"),
)
"""

TREE = {
    "src/tdlens/__init__.py": "",
    "src/tdlens/report/__init__.py": """\
        def write_report(d):
            return d
        """,
    "src/tdlens/report/kit.py": '''\
        """Page kit (see tdlens.report.fmt)."""

        from tdlens.report.fmt import fmt


        def esc(x):
            return fmt(x)
        ''',
    "src/tdlens/report/fmt.py": """\
        def fmt(x):
            return f"<{x}>"
        """,
    "src/tdlens/sweeps/__init__.py": "",
    "src/tdlens/sweeps/plan.py": """\
        def is_sweep_dir(p):
            return False
        """,
    "src/tdlens/sweeps/records.py": """\
        class RunRecord:
            regime = "learning"
        """,
    "src/tdlens/sweeps/catalog.py": '''\
        """The catalog."""

        from __future__ import annotations

        import os
        from collections.abc import Iterator

        from tdlens.sweeps.records import RunRecord


        def index_runs(path, records: list[RunRecord]) -> int:
            return _count(records)


        def _count(records) -> int:
            return len(records) + len(os.sep) - 1


        # --------------------------------------------------------------------- rebuild


        def _walk(root) -> Iterator[str]:
            from tdlens.sweeps.plan import is_sweep_dir

            yield "sweep" if is_sweep_dir(root) else "run"


        def reindex(path, roots) -> int:
            return sum(index_runs(path, [RunRecord()]) for r in roots for _ in _walk(r))
        ''',
    "src/tdlens/sweeps/atlas.py": '''\
        """The atlas (an edited body below, and a helper added since the script)."""

        from __future__ import annotations

        import math
        from dataclasses import dataclass

        from tdlens.report import kit as H
        from tdlens.sweeps.records import RunRecord

        MISMATCH_KEYS: tuple[str, ...] = ("sigma_pi",)
        """Mismatch axes."""


        @dataclass(frozen=True)
        class AtlasPoint:
            record: RunRecord
            mismatch: float


        def _shade(label: str) -> str:
            return "#" + label[:2]


        def label_colour(label: str) -> str:
            return _shade(label)


        def eig_zero_crossing(points: list[AtlasPoint]) -> float:
            return math.nan if not points else points[0].mismatch * 2.0


        def write_atlas(points: list[AtlasPoint]) -> str:
            cells = [label_colour(p.record.regime) for p in points]
            return H.esc(f"{MISMATCH_KEYS[0]} {eig_zero_crossing(points)} {cells}")
        ''',
    "src/tdlens/sweeps/commands.py": """\
        def show(path):
            from tdlens.sweeps import catalog as cat

            return cat.index_runs(path, [])


        def runs_reindex(path, roots):
            from tdlens.sweeps import catalog as cat

            return cat.reindex(path, roots) + cat.index_runs(path, [])
        """,
    "tests/test_architecture.py": LAYERS,
    "tests/test_use.py": """\
        from unittest import mock

        from tdlens.report import kit as H, write_report
        from tdlens.sweeps import atlas, plan
        from tdlens.sweeps.atlas import AtlasPoint, write_atlas
        from tdlens.sweeps.records import RunRecord

        PATCH = "tdlens.sweeps.atlas.write_atlas"


        def use():
            point = AtlasPoint(RunRecord(), 1.5)
            with mock.patch("tdlens.report.kit.esc", H.esc):
                return write_atlas([point]), atlas.label_colour("ab"), plan, write_report
        """,
    "docs/api.md": """\
        ::: tdlens.report.kit

        Source: `src/tdlens/report/kit.py`; not `tests/report/kit.py` nor
        `configs/sweeps/atlas.yaml`.
        """,
}


def _make_tree(root: Path, extra: dict[str, str] | None = None) -> None:
    for rel, text in {**TREE, **(extra or {})}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tree"],
    ):
        subprocess.run(cmd, cwd=root, check=True)


def _relayout(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=root, capture_output=True, text=True, timeout=120
    )


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not any(part.startswith((".", "__pycache__")) for part in p.relative_to(root).parts)
    }


def _run_python(root: Path, code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{root / 'src'}:{root / 'tests'}", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_relayout_moves_splits_rewrites_and_a_second_run_changes_nothing(tmp_path):
    _make_tree(tmp_path)
    before = _run_python(tmp_path, "import test_use; print(test_use.use()[:2])")
    first = _relayout(tmp_path)
    assert first.returncode == 0, first.stderr
    src = tmp_path / "src" / "tdlens"
    for gone in ("report/kit.py", "report/fmt.py", "sweeps/catalog.py", "sweeps/atlas.py"):
        assert not (src / gone).exists(), gone
    atlas = src / "sweeps" / "atlas"
    assert "def _shade" in (atlas / "plot.py").read_text()  # named nowhere: with its user
    assert "named nowhere" in first.stdout
    assert "def eig_zero_crossing" in (atlas / "geometry.py").read_text()
    assert "def reindex" in (src / "sweeps" / "reindex.py").read_text()
    store = (src / "catalog" / "store.py").read_text()
    assert "def _count" in store and "reindex" not in store and "Iterator" not in store
    assert "rebuild" not in store  # the section comment left with its section
    # the importers work and compute what they did before
    after = _run_python(tmp_path, "import test_use; print(test_use.use()[:2])")
    assert after == before
    out = _run_python(
        tmp_path,
        "from tdlens.sweeps.commands import runs_reindex, show; print(runs_reindex('c', [1, 2]))",
    )
    assert out.strip() == "2"
    use = (tmp_path / "tests" / "test_use.py").read_text()
    assert 'PATCH = "tdlens.sweeps.atlas.page.write_atlas"' in use
    assert '"tdlens.pages.kit.esc"' in use
    assert "from tdlens.report import write_report" in use
    docs = (tmp_path / "docs" / "api.md").read_text()
    assert "::: tdlens.pages.kit" in docs and "`src/tdlens/pages/kit.py`" in docs
    assert "`tests/report/kit.py`" in docs and "`configs/sweeps/atlas.yaml`" in docs
    layers = (tmp_path / "tests" / "test_architecture.py").read_text()
    assert '("scores",),\n    ("pages",),' in layers
    assert '("runs",),\n    ("catalog",),' in layers
    snapshot = _snapshot(tmp_path)
    second = _relayout(tmp_path)
    assert second.returncode == 0, second.stderr
    assert _snapshot(tmp_path) == snapshot


def test_relayout_refuses_a_statement_it_cannot_place_before_writing_anything(tmp_path):
    atlas = textwrap.dedent(TREE["src/tdlens/sweeps/atlas.py"])
    atlas += "\nif math.pi > 3:\n    FAST = True\n"
    _make_tree(tmp_path, {"src/tdlens/sweeps/atlas.py": atlas})
    before = _snapshot(tmp_path)
    proc = _relayout(tmp_path)
    assert proc.returncode == 2
    assert "atlas.py:" in proc.stderr and "not a definition" in proc.stderr
    assert _snapshot(tmp_path) == before  # nothing moved or rewritten
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True
    )
    assert status.stdout == ""
