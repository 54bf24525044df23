"""The SQLite run catalog: concurrent writers, read-only --where queries, CLI (docs/model.md
§11)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tdlens.catalog import store as cat
from tdlens.catalog.records import RunRecord

PER_WRITER = 40


def _record(i: int, tag: str, health: str = "PASS") -> RunRecord:
    return RunRecord(
        run_id=f"{tag}_run{i}-0123456789ab",
        path=Path(f"/nonexistent/{tag}/runs/run{i}"),
        params={"alpha_w": 0.01 * i, "beta": 0.1},
        status="complete",
        health=health,
        iters=10,
        outer_iters=10,
        seconds=1.5,
        metrics={"td_loss": 0.1 * i, "value_gap": float("nan"), "growth_timescale": float("inf")},
        regime="plateau",
    )


def _writer(path: str, tag: str, start: mp.synchronize.Event) -> None:
    start.wait(30)
    for i in range(PER_WRITER):  # one transaction per run, as a sweep driver does
        cat.index_runs(path, [_record(i, tag)], sweep=tag, sweep_path=Path(f"/x/{tag}"))
        cat.index_sweep(path, Path(f"/x/{tag}"), name=tag, n_runs=i + 1, counts={"complete": i})


def test_two_processes_writing_at_once_never_corrupt_it(tmp_path):
    path = str(tmp_path / "catalog.sqlite")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, tag, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (2 * PER_WRITER,)
    rows = conn.execute("SELECT name, n_runs FROM sweeps ORDER BY name").fetchall()
    assert rows == [("a", PER_WRITER), ("b", PER_WRITER)]


@pytest.fixture
def catalog(tmp_path) -> Path:
    path = tmp_path / "catalog.sqlite"
    records = [_record(i, "s1", "FAIL" if i % 2 else "PASS") for i in range(6)]
    cat.index_runs(path, records, sweep="s1", sweep_path=Path("/x/s1"))
    cat.index_runs(path, [_record(0, "s2")], sweep="s2")
    return path


def test_upsert_keeps_one_row_per_path_and_stores_metrics(catalog):
    cat.index_runs(catalog, [_record(0, "s2", "WARN")], sweep="s2")
    rows = cat.query_runs(catalog, "id LIKE 's2%'")
    assert len(rows) == 1 and rows[0]["health"] == "WARN"
    assert rows[0]["value_gap"] is None and rows[0]["growth_timescale"] == float("inf")


def test_where_filters_and_can_read_json_params(catalog):
    assert {r["id"] for r in cat.query_runs(catalog, "health = 'FAIL'")} == {
        f"s1_run{i}-0123456789ab" for i in (1, 3, 5)
    }
    rows = cat.query_runs(catalog, "json_extract(params, '$.alpha_w') >= 0.04", sweep="s1")
    assert len(rows) == 2
    assert len(cat.query_runs(catalog, sweep="s2")) == 1


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("nonexistent = 1", "no such column: nonexistent"),
        ("health = 'FAIL", "unrecognized token"),
        ("1=1; DROP TABLE runs", "syntax error"),
        ("1=1) ; DELETE FROM runs; --", "one statement"),
        ("(SELECT 1 FROM pragma_query_only() WHERE 0) IS NULL OR 1", "not authorized"),
        ("   ", "empty condition"),
    ],
)
def test_bad_or_malicious_where_is_an_error_and_changes_nothing(catalog, condition, message):
    with pytest.raises(cat.CatalogError, match=message):
        cat.query_runs(catalog, condition)
    assert len(cat.query_runs(catalog)) == 7


def test_where_cannot_write_through_a_subquery_or_attach(catalog, tmp_path):
    for condition in (
        "id IN (SELECT id FROM runs) AND 0 = (SELECT COUNT(*) FROM sweeps)",  # reads are fine
    ):
        cat.query_runs(catalog, condition)
    conn = cat._read_only(catalog)
    for statement in ("DELETE FROM runs", f"ATTACH '{tmp_path / 'x.db'}' AS x"):
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(statement)
    conn.close()
    assert len(cat.query_runs(catalog)) == 7 and not (tmp_path / "x.db").exists()


def _app() -> typer.Typer:
    from tdlens.cli import app

    return app


def test_cli_runs_list_and_show(catalog):
    runner = CliRunner()
    res = runner.invoke(
        _app(), ["runs", "list", "--where", "health = 'FAIL'", "--catalog", str(catalog)]
    )
    assert res.exit_code == 0, res.output
    assert "3 run(s)" in res.output
    res = runner.invoke(_app(), ["runs", "list", "--where", "nope > 1", "--catalog", str(catalog)])
    assert res.exit_code == 2 and "no such column: nope" in res.output
    res = runner.invoke(_app(), ["runs", "show", "s1_run3", "--catalog", str(catalog)])
    assert res.exit_code == 0 and "s1_run3-0123456789ab" in res.output and "alpha_w" in res.output
    res = runner.invoke(_app(), ["runs", "show", "zzz", "--catalog", str(catalog)])
    assert res.exit_code == 2 and "no run 'zzz'" in res.output


def test_cli_runs_list_without_a_catalog_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(cat.CATALOG_ENV, str(tmp_path / "none.sqlite"))
    res = CliRunner().invoke(_app(), ["runs", "list"])
    assert res.exit_code == 2 and "no catalog" in res.output
    assert not (tmp_path / "none.sqlite").exists()


def test_index_a_stand_alone_run_directory(tmp_path):
    from test_sweep_regimes import write_run

    run = write_run(tmp_path / "20260101_000000_solo")
    path = tmp_path / "c.sqlite"
    cat.index_run_dir(path, run)
    (row,) = cat.find_runs(path, "20260101_000000_solo")
    assert row["sweep"] is None and row["regime"] == "learning" and row["health"] == "PASS"
    assert cat.find_runs(path, str(run))[0]["id"] == row["id"]


def test_two_sweeps_of_one_name_are_told_apart_by_their_id(tmp_path):
    """Two sweeps named demo (issue 24): --sweep demo gives both, --sweep <id> one; the
    list shows the sweep id, the sweep directory's name."""
    path = tmp_path / "c.sqlite"
    first, second = Path("/x/20261201_100000_demo"), Path("/x/20261201_100000_demo_2")
    for sweep_path in (first, second):
        records = [_record(i, sweep_path.name) for i in range(2)]
        cat.index_runs(path, records, sweep="demo", sweep_path=sweep_path)
    assert len(cat.query_runs(path, sweep="demo")) == 4
    rows = cat.query_runs(path, sweep=second.name)
    assert len(rows) == 2 and {r["sweep_id"] for r in rows} == {second.name}
    assert {r["sweep_id"] for r in cat.query_runs(path, sweep=first.name)} == {first.name}
    assert cat.query_runs(path, sweep="20261201%100000_demo") == []  # LIKE escapes
    from tdlens.cli import app

    res = CliRunner().invoke(
        app, ["runs", "list", "--sweep", second.name, "--catalog", str(path), "--format", "csv"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("id,sweep_id,") and len(lines) == 3
    assert all(f",{second.name}," in line for line in lines[1:])


def test_a_schema_1_catalog_gains_the_sweep_id_column(tmp_path):
    path = tmp_path / "old.sqlite"
    schema_1 = [stmt.replace("sweep_id TEXT, ", "") for stmt in cat._schema()]
    assert all("sweep_id" not in stmt for stmt in schema_1)
    conn = sqlite3.connect(path)
    for stmt in schema_1:
        conn.execute(stmt)
    conn.execute(
        "INSERT INTO runs (id, path, sweep, sweep_path, indexed_at) "
        "VALUES ('r1', '/x/s/runs/r1', 'demo', '/x/20261201_demo', '')"
    )
    conn.commit()
    conn.close()
    assert len(cat.query_runs(path, sweep="20261201_demo")) == 1  # read-only, as it is
    cat.connect(path).close()
    (row,) = cat.query_runs(path, sweep="demo")
    assert row["sweep_id"] == "20261201_demo"
