"""docs/metrics.md names every column tdlens writes (issue 15).

Runs every shipped config, shrunk to two iterations with small batches (the columns do
not depend on the sizes, only on which probes run), plus a small sweep (its summary
tables, sweep.json and the catalog), then walks every column of every table they wrote
and looks it up in the glossary. Columns other engineers add later are found the same
way: nothing here lists columns.

A name counts as documented when it is an entry of a glossary table's first cell (split
at commas and "and") or appears in backticks; ``<x>`` in an entry stands for any word
(``<m>_iqm`` documents ``td_loss_iqm``), except ``<section>``, which stands for the config
section of a registered probe only (``<section>_s`` documents ``stability_s``, not any
``*_s``).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tdlens.api import load_run_config
from tdlens.cli import app
from tdlens.config import shipped_configs
from tdlens.probes import registry
from tdlens.regimes import LABELS, REGIME_TABLE
from tdlens.rundir.read import read_table_text, table_file, table_files
from tdlens.runs.runner import Runner
from tdlens.scores import STABILITY_KEYS, RunSeries, growth_evidence, thresholds

GLOSSARY = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
SHRINK = [
    "outer_iters=2",
    "trajectories=2",
    "horizon=20",
    "env.feature_dim=32",
    "env.actor_feature_dim=8",
    "probes.every=1",
    "probes.fixed_point.batch_size=64",
    "probes.stability.batch_size=64",
    "probes.stability.k_mc=2",
    "probes.stability.power_iters=5",
    "probes.distribution.num_samples=32",
    "probes.distribution.action_samples=4",
    "probes.distribution.permutations=10",
    "probes.distribution.mmd_bandwidth_samples=32",
    "probes.q_kernel.cache_batch_size=2",
    "probes.q_kernel.max_horizon=20",
    "probes.rho_audit.batch_size=64",
    "checkpoint_every=1",
]
"""Overrides that make any shipped config a two-iteration run of a second or less."""
NAME = re.compile(r"[A-Za-z_][\w.]*(?:<\w+>[\w.]*)*|<\w+>[\w.]*(?:<\w+>[\w.]*)*")


def glossary_entries(text: str) -> tuple[set[str], list[re.Pattern[str]]]:
    """The names the glossary documents: exact names and ``<x>`` templates as patterns."""
    candidates: list[str] = re.findall(r"`([^`\n]+)`", text)
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            first = line.split("|")[1].replace("`", "")
            candidates += re.split(r",|\band\b", first)
    names, patterns = set(), []
    for raw in candidates:
        token = raw.strip()
        if not NAME.fullmatch(token):
            continue
        if "<" in token:
            # <section> stands for a registered probe's config section only
            sections = "(?:" + "|".join(map(re.escape, registry.sections())) + ")"
            parts = re.split(r"(<\w+>)", token)
            patterns.append(
                re.compile(
                    "".join(
                        (sections if part == "<section>" else r"\w+")
                        if re.fullmatch(r"<\w+>", part)
                        else re.escape(part)
                        for part in parts
                    )
                )
            )
        else:
            names.add(token)
    return names, patterns


def documented(name: str, entries: tuple[set[str], list[re.Pattern[str]]]) -> bool:
    names, patterns = entries
    return name in names or any(p.fullmatch(name) for p in patterns)


def test_glossary_entries_are_parsed_as_documented():
    """The parser on a hand-made glossary: table entries, backticks and templates count;
    a word that only appears in prose does not."""
    text = (
        "| column | formula |\n| --- | --- |\n| a_x, b_y and c_z | `d_w` in a formula |\n"
        "prose mentions e_v; `<m>_iqm` per metric; `||w - w#||` is no name; `<section>_s`\n"
    )
    entries = glossary_entries(text)
    named = ("a_x", "b_y", "c_z", "d_w", "td_loss_iqm", "stability_s", "rho_audit_s")
    assert all(documented(n, entries) for n in named)
    assert not any(documented(n, entries) for n in ("e_v", "column_x", "iqm", "iter_time_s"))


def _csv_header(path: Path) -> list[str]:
    """The header of a table, plain or compressed (a sweep run's ``X.gz``)."""
    return read_table_text(path).split("\n", 1)[0].strip().split(",")


def _jsonl_keys(path: Path) -> set[str]:
    lines = read_table_text(path).splitlines()
    return {k for line in lines if line for k in json.loads(line)}


def _run_tables(run_dir: Path) -> dict[str, list[str]]:
    """Every table of a run directory: its CSV headers, rounds.jsonl and status.json keys."""
    tables = {"learning_curves.csv": _csv_header(run_dir / "learning_curves.csv")}
    for name in table_files(run_dir / "probes"):
        tables[f"probes/{name}.csv"] = _csv_header(run_dir / "probes" / f"{name}.csv")
    rounds = run_dir / "probes" / "rounds.jsonl"
    if table_file(rounds) is not None:
        tables["probes/rounds.jsonl"] = sorted(_jsonl_keys(rounds))
    tables["status.json"] = list(json.loads((run_dir / "status.json").read_text()))
    return tables


@pytest.fixture(scope="module")
def written_tables(tmp_path_factory) -> dict[str, list[str]]:
    """{where: columns} over the shrunk shipped configs, a sweep and its catalog."""
    root = tmp_path_factory.mktemp("glossary")
    found: dict[str, list[str]] = {}
    configs = sorted(p.stem for p in shipped_configs().glob("*.yaml"))
    assert len(configs) >= 7
    for name in configs:
        Runner(load_run_config(name, SHRINK), root / name).run()
        for table, columns in _run_tables(root / name).items():
            found[f"{name}: {table}"] = columns
    catalog = root / "catalog.sqlite"
    args = ["sweep", "--base", "sanity", "--grid", "alpha_w=0.1,0.2", "--jobs", "1"]
    args += ["--output-dir", str(root / "sweeps"), "--catalog", str(catalog)]
    args += [a for o in SHRINK for a in ("--set", o)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (sweep_dir,) = (root / "sweeps").iterdir()
    axes = {a["key"] for a in json.loads((sweep_dir / "plan.json").read_text())["axes"]}
    for table in ("summary.csv", "summary_configs.csv"):
        # the swept axes' columns are config keys (docs/model.md), not metrics
        found[f"sweep: {table}"] = [c for c in _csv_header(sweep_dir / table) if c not in axes]
    found["sweep: sweep.json"] = list(json.loads((sweep_dir / "sweep.json").read_text()))
    run_dirs = sorted((sweep_dir / "runs").iterdir())
    assert len(run_dirs) == 2
    for table, columns in _run_tables(run_dirs[0]).items():
        found[f"sweep run: {table}"] = columns
    with sqlite3.connect(catalog) as db:
        for table in ("runs", "sweeps"):
            rows = db.execute(f"PRAGMA table_info({table})").fetchall()
            found[f"catalog: {table}"] = [r[1] for r in rows]
    return found


def test_every_column_written_is_in_the_glossary(written_tables):
    entries = glossary_entries(GLOSSARY.read_text())
    assert "learning_curves.csv" in " ".join(written_tables)
    assert any(k.endswith("probes/rounds.csv") for k in written_tables)
    missing = {
        where: [c for c in columns if not documented(c, entries)]
        for where, columns in written_tables.items()
    }
    missing = {where: cols for where, cols in missing.items() if cols}
    assert not missing, f"columns not in docs/metrics.md: {missing}"


def test_the_glossary_states_the_iteration_numbering_and_the_shared_draws():
    text = GLOSSARY.read_text()
    assert "0-based" in text and "iter 79 (80/80 done)" in text
    assert "common random numbers" in text.lower() and "min = max" in text


def test_every_regime_label_threshold_and_evidence_is_in_the_glossary():
    """Each label of tdlens.regimes.REGIME_TABLE has its row, with its glossary line, in
    the Regime labels table and no row names a label outside it; every threshold of
    tdlens.scores.thresholds() and every number a diverged label's evidence holds is
    documented."""
    text = GLOSSARY.read_text()
    for label, e in REGIME_TABLE.items():
        assert f"| {label} | {e.glossary} |" in text, label
    section = text.split("## Regime labels", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \|", section, flags=re.M)
    assert sorted(r for r in rows if r not in ("label", "---")) == sorted(LABELS)
    for name, value in thresholds().items():  # stated with the code's value
        stated = re.search(rf"`{name} = ([-+.e0-9]+)`", text)
        assert stated and float(stated.group(1)) == value, name
    entries = glossary_entries(text)
    series = RunSeries("complete", 3, {"w_norm": [1.0, 2.0, 4.0]})
    names = [*STABILITY_KEYS, *growth_evidence(series)]
    assert [n for n in names if not documented(n, entries)] == []


def _check_rows(text: str) -> dict[str, str]:
    """check name -> its row of docs/metrics.md's health-check table (``| check | PASS
    when | threshold (constant) |``), in table order."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| check | PASS when |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip()] = line
    return rows


def test_every_health_check_has_its_glossary_row_with_its_constants():
    """The health-check table lists exactly the registered checks, in report order, and
    each row quotes every constant its check registers as ``NAME = value`` with that value
    (an expression such as ``sqrt(2)`` is evaluated)."""
    from tdlens.report.health import HEALTH_CHECKS

    rows = _check_rows(GLOSSARY.read_text())
    assert list(rows) == [c.name for c in HEALTH_CHECKS]
    for check in HEALTH_CHECKS:
        for name, value in check.constants:
            found = re.search(rf"`{name} = ([^`]+)`", rows[check.name])
            assert found, f"docs/metrics.md: row {check.name} does not quote `{name} = ...`"
            quoted = eval(found.group(1), {"sqrt": math.sqrt})
            assert quoted == pytest.approx(value, rel=1e-12), (check.name, name)
