"""The run catalog: an embedded SQLite database of every run and sweep (docs/model.md §11).

Location: ``--catalog PATH``, else ``$TDLENS_CATALOG``, else ``outputs/catalog.sqlite``.
WAL journal (readers never block the writer) and a busy timeout; every write is one short
``BEGIN IMMEDIATE`` transaction, so concurrent sweeps in different processes queue for the
write lock instead of failing or corrupting the file.

Tables (one row per run directory / sweep directory, keyed by resolved path):

- ``runs``: id, path, name, sweep, sweep_id (the sweep directory's name,
  ``<time>_<name>``, which tells apart two sweeps of one name), sweep_path, config_hash,
  params (JSON of the swept
  values), status, reason, health, regime, iters, outer_iters, seconds, started_at,
  finished_at, indexed_at, one REAL column per final metric (``records.FINAL_METRICS``),
  metrics (JSON of all of them) and parent (a branch's parent run directory, from its
  branch.json; NULL for other runs; added to older catalogs when they are opened).
- ``sweeps``: path, name, created_at, updated_at, finished_at, backend, jobs, n_runs,
  counts (JSON), axes (JSON), spec (JSON).

Queries (``tdlens runs list --where COND``) run on a connection with ``PRAGMA query_only``
and an authorizer that allows only SELECT, column reads and functions, so a condition can
filter (``health = 'FAIL'``, ``json_extract(params, '$.alpha_w') > 0.1``) but never
modify or attach anything; a bad condition is a :class:`CatalogError` naming the problem.
A query still running after ``timeout`` seconds (``QUERY_TIMEOUT_S``; a recursive ``WITH``
may never end) is stopped by SQLite's progress handler, also a CatalogError.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tdlens.catalog.records import FINAL_METRICS, RunRecord
from tdlens.rundir.files import to_jsonable

DEFAULT_CATALOG = Path("outputs/catalog.sqlite")
CATALOG_ENV = "TDLENS_CATALOG"
BUSY_TIMEOUT_S = 60.0
QUERY_TIMEOUT_S = 10.0
"""How long a `runs list --where` query may run before it is stopped (--timeout)."""
PROGRESS_STEPS = 1000
"""SQLite virtual-machine steps between two looks at the query's clock."""
SCHEMA_VERSION = 2
"""2 added runs.sweep_id (an older catalog gains it, filled from sweep_path, on connect)."""
RUN_COLUMNS: tuple[str, ...] = (
    "id",
    "path",
    "name",
    "sweep",
    "sweep_id",
    "sweep_path",
    "config_hash",
    "params",
    "status",
    "reason",
    "health",
    "regime",
    "iters",
    "outer_iters",
    "seconds",
    "started_at",
    "finished_at",
    "indexed_at",
    *FINAL_METRICS,
    "metrics",
    "parent",
)
SWEEP_COLUMNS: tuple[str, ...] = (
    "path",
    "name",
    "created_at",
    "updated_at",
    "finished_at",
    "backend",
    "jobs",
    "n_runs",
    "counts",
    "axes",
    "spec",
)
LIST_COLUMNS: tuple[str, ...] = (
    "id",
    "sweep_id",
    "status",
    "health",
    "regime",
    "iters",
    "td_loss",
    "value_gap",
    "w_norm",
    "seconds",
)
"""Columns `tdlens runs list` shows."""

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
    | ({sqlite3.SQLITE_RECURSIVE} if hasattr(sqlite3, "SQLITE_RECURSIVE") else set())
)


class CatalogError(RuntimeError):
    """The catalog cannot be opened or a query is invalid; the message says why."""


REINDEX_HINT = "rebuild it from the run directories with `tdlens runs reindex`"


def _broken(path: str | Path, exc: sqlite3.Error) -> CatalogError:
    """A CatalogError for a catalog SQLite cannot use, with the way out when it is corrupt."""
    hint = f"; {REINDEX_HINT}" if _is_corrupt(exc) else ""
    return CatalogError(f"catalog '{path}': {exc}{hint}")


def catalog_path(arg: str | Path | None = None) -> Path:
    """``--catalog`` if given, else ``$TDLENS_CATALOG``, else outputs/catalog.sqlite."""
    if arg:
        return Path(arg)
    env = os.environ.get(CATALOG_ENV)
    return Path(env) if env else DEFAULT_CATALOG


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _schema() -> list[str]:
    metric_cols = ", ".join(f"{m} REAL" for m in FINAL_METRICS)
    return [
        "CREATE TABLE IF NOT EXISTS runs (id TEXT NOT NULL, path TEXT PRIMARY KEY, name TEXT, "
        "sweep TEXT, sweep_id TEXT, sweep_path TEXT, config_hash TEXT, params TEXT, "
        "status TEXT, reason TEXT, "
        "health TEXT, regime TEXT, iters INTEGER, outer_iters INTEGER, seconds REAL, "
        f"started_at TEXT, finished_at TEXT, indexed_at TEXT, {metric_cols}, metrics TEXT, "
        "parent TEXT)",
        "CREATE INDEX IF NOT EXISTS runs_id ON runs (id)",
        "CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep)",
        "CREATE INDEX IF NOT EXISTS runs_hash ON runs (config_hash)",
        "CREATE TABLE IF NOT EXISTS sweeps (path TEXT PRIMARY KEY, name TEXT, created_at TEXT, "
        "updated_at TEXT, finished_at TEXT, backend TEXT, jobs INTEGER, n_runs INTEGER, "
        "counts TEXT, axes TEXT, spec TEXT)",
        "CREATE INDEX IF NOT EXISTS sweeps_name ON sweeps (name)",
    ]


def _retry_locked(fn: Any, attempts: int = 50) -> Any:
    """Retry `fn` while SQLite says the database is locked (journal-mode switches)."""
    for k in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or k == attempts - 1:
                raise
            time.sleep(0.05 * (k + 1))
    return None


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the catalog in WAL mode with a busy timeout and the schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        with transaction(conn):
            for statement in _schema():
                conn.execute(statement)
            _add_sweep_id(conn)
            _add_columns(conn, "runs", ADDED_RUN_COLUMNS)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    return conn


def _add_sweep_id(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: add runs.sweep_id (the name of sweep_path) where it is missing."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "sweep_id" not in columns:
        conn.execute("ALTER TABLE runs ADD COLUMN sweep_id TEXT")
        paths = conn.execute("SELECT DISTINCT sweep_path FROM runs WHERE sweep_path IS NOT NULL")
        for (sweep_path,) in paths.fetchall():
            conn.execute(
                "UPDATE runs SET sweep_id = ? WHERE sweep_path = ?",
                (Path(sweep_path).name, sweep_path),
            )
    conn.execute("CREATE INDEX IF NOT EXISTS runs_sweep_id ON runs (sweep_id)")


ADDED_RUN_COLUMNS = {"parent": "TEXT"}
"""Columns of ``runs`` newer than the first schema: added to an older catalog on open."""


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of `columns` the table lacks."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
    _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _json(value: Any) -> str:
    return json.dumps(to_jsonable(value), sort_keys=True, allow_nan=False)


def _real(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)  # NaN -> NULL


def run_row(record: RunRecord, sweep: str | None, sweep_path: Path | None) -> dict[str, Any]:
    """The catalog row of a run record."""
    row: dict[str, Any] = {
        "id": record.run_id,
        "path": str(Path(record.path).resolve()),
        "name": record.name,
        "sweep": sweep,
        "sweep_id": Path(sweep_path).resolve().name if sweep_path else None,
        "sweep_path": str(Path(sweep_path).resolve()) if sweep_path else None,
        "config_hash": record.config_hash,
        "params": _json(record.params),
        "status": record.status,
        "reason": record.reason,
        "health": record.health,
        "regime": record.regime,
        "iters": record.iters,
        "outer_iters": record.outer_iters,
        "seconds": _real(record.seconds),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "indexed_at": _now(),
        "metrics": _json(record.metrics),
        "parent": record.parent,
    }
    row.update({m: _real(record.metrics.get(m)) for m in FINAL_METRICS})
    return row


def _upsert(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], row: dict) -> None:
    names = ", ".join(columns)
    marks = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "path")
    conn.execute(
        f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT(path) DO UPDATE SET {updates}",
        {c: row.get(c) for c in columns},
    )


def index_runs(
    path: str | Path,
    records: list[RunRecord],
    sweep: str | None = None,
    sweep_path: Path | None = None,
) -> None:
    """Insert or update the rows of `records` (one transaction)."""
    conn = connect(path)
    try:
        with transaction(conn):
            for record in records:
                _upsert(conn, "runs", RUN_COLUMNS, run_row(record, sweep, sweep_path))
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    finally:
        conn.close()


def index_run_dir(path: str | Path, run_dir: str | Path) -> RunRecord:
    """Index one stand-alone run directory (e.g. at the end of ``tdlens run``)."""
    from tdlens.catalog.records import load_record

    record = load_record(run_dir)
    index_runs(path, [record])
    return record


def index_sweep(path: str | Path, sweep_path: Path, **fields: Any) -> None:
    """Insert or update a sweep's row; JSON fields (counts, axes, spec) are serialised."""
    row = {"path": str(Path(sweep_path).resolve()), "updated_at": _now(), **fields}
    for key in ("counts", "axes", "spec"):
        if key in row and not isinstance(row[key], str | type(None)):
            row[key] = _json(row[key])
    conn = connect(path)
    try:
        with transaction(conn):
            old = conn.execute("SELECT * FROM sweeps WHERE path = ?", (row["path"],)).fetchone()
            if old is not None:
                keys = [d[0] for d in conn.execute("SELECT * FROM sweeps LIMIT 0").description]
                row = {**{k: v for k, v in zip(keys, old, strict=True) if v is not None}, **row}
            _upsert(conn, "sweeps", SWEEP_COLUMNS, row)
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    finally:
        conn.close()


# --------------------------------------------------------------------------- queries


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _read_only(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"no catalog at '{path}' (run a sweep first, or pass --catalog)")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    conn.set_authorizer(_authorize)
    conn.row_factory = sqlite3.Row  # rows convert to dicts keyed by column name
    return conn


def query_runs(
    path: str | Path,
    where: str | None = None,
    sweep: str | None = None,
    timeout: float = QUERY_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Runs matching the SQL condition `where` and `sweep` (a sweep's name, or its id: the
    sweep directory's name, which tells apart two sweeps of one name), newest first.

    The condition is wrapped as ``WHERE (COND)`` on a query-only connection whose
    authorizer refuses anything but reads (module docstring); the query is stopped after
    `timeout` seconds (a CatalogError saying so).
    """
    if not timeout > 0:
        raise CatalogError(f"--timeout: expected a number of seconds > 0, got {timeout}")
    clauses, args = [], []
    if where is not None:
        if not where.strip():
            raise CatalogError("--where: empty condition")
        clauses.append(f"({where}\n)")
    if sweep is not None:  # by sweep_path, so a catalog of schema 1 answers alike
        escaped = sweep.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("(sweep = ? OR sweep_path LIKE ? ESCAPE '\\')")
        args += [sweep, f"%/{escaped}"]
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY indexed_at DESC, id"
    conn = _read_only(path)
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        cur = conn.execute(sql, args)
        return [dict(row) for row in cur.fetchall()]
    except (sqlite3.Error, sqlite3.Warning) as exc:
        if time.monotonic() > deadline and "interrupt" in str(exc):
            what = "the query" if where is None else f"--where {where!r}"
            raise CatalogError(
                f"{what}: stopped after {timeout:g} s (a query that does not end, e.g. a "
                "recursive WITH? --timeout allows longer)"
            ) from None
        if where is None or _is_corrupt(exc):
            raise _broken(path, exc) from None
        raise CatalogError(f"--where {where!r}: {exc}") from None
    finally:
        conn.close()


def find_runs(path: str | Path, key: str) -> list[dict[str, Any]]:
    """Runs whose id or path equals `key`, else whose id starts with it."""
    conn = _read_only(path)
    try:
        resolved = str(Path(key).resolve())
        cur = conn.execute(
            "SELECT * FROM runs WHERE id = ? OR path = ? OR path = ? ORDER BY indexed_at DESC",
            (key, key, resolved),
        )
        rows = cur.fetchall()
        if not rows:
            escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            cur = conn.execute(
                "SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY indexed_at DESC",
                (escaped + "%",),
            )
            rows = cur.fetchall()
        return [dict(row) for row in rows]
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    finally:
        conn.close()


def find_sweeps(path: str | Path, key: str) -> list[dict[str, Any]]:
    """Sweeps whose name or path equals `key`, newest first."""
    conn = _read_only(path)
    try:
        cur = conn.execute(
            "SELECT * FROM sweeps WHERE name = ? OR path = ? ORDER BY created_at DESC",
            (key, str(Path(key).resolve())),
        )
        return [dict(row) for row in cur.fetchall()]
    except sqlite3.Error as exc:
        raise _broken(path, exc) from None
    finally:
        conn.close()


def _is_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "malformed" in text or "not a database" in text or "corrupt" in text
