"""The one read model of a run directory (docs/model.md §7): config, status, tables, report, arrays.

Every reader (the report, sweep records and summaries, compare, the sanity suite, the
catalog) loads a run through :func:`load_run`, so they all see the same rows. It never
imports the learner or probes.

A broken or partial run still loads: a missing or corrupt file becomes an empty table
plus a line in ``RunData.problems`` naming the file (a row torn by a crash is skipped),
so a report or a sweep summary can say what is wrong instead of crashing. Files read:
config.json, status.json (as observed: a dead ``running`` run is ``crashed``),
learning_curves.csv, probes/<name>.csv, probes/rounds.csv, run_report.json and, on
demand, the probe arrays probes/<prefix>_<iter>.np[yz].

A table may be stored gzip-compressed (``learning_curves.csv.gz``, ``probes/<name>.csv.gz``,
``probes/rounds.jsonl.gz``: a finished sweep run, :mod:`tdlens.sweeps.compact`): every
reader opens a table through :func:`read_table_text`, which reads ``X`` or else ``X.gz``
(the same bytes once decompressed), so no reader tells the two apart.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import ConfigError, RunConfig, config_from_json
from tdlens.rundir.files import (
    ArrayRefusedError,
    RunFileError,
    array_limit,
    check_array_file,
    parse_cell,
    read_json,
)
from tdlens.rundir.status import observed_status

CURVES_FILE = "learning_curves.csv"
ROUNDS_TABLE = "rounds"
GZ_SUFFIX = ".gz"
"""The suffix of a gzip-compressed table (``learning_curves.csv.gz``)."""
MAX_TABLE_BYTES = 2**30
"""Most bytes a compressed table may decompress to without a config (1 GiB)."""
TABLE_ROW_BYTES = 64 * 1024
"""Bytes allowed per table row by :func:`table_limit` (a learning-curve row is ~0.5 KB,
a probe table's ~1.5 KB at the Step-C settings)."""

Cell = float | str | None


@dataclass(frozen=True)
class Table:
    """A CSV table: its header and its rows (cells parsed: float, str, or None = empty)."""

    columns: tuple[str, ...] = ()
    rows: tuple[dict[str, Cell], ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, column: str) -> bool:
        return column in self.columns

    def values(self, column: str) -> np.ndarray:
        """Column as float64; NaN for empty or text cells and for a missing column."""
        out = np.full(len(self.rows), np.nan)
        for i, row in enumerate(self.rows):
            cell = row.get(column)
            if isinstance(cell, float):
                out[i] = cell
        return out

    def texts(self, column: str) -> list[str | None]:
        """Column as strings (numbers rendered back), None for empty cells."""
        out: list[str | None] = []
        for row in self.rows:
            cell = row.get(column)
            out.append(None if cell is None else (cell if isinstance(cell, str) else repr(cell)))
        return out

    def numeric_columns(self) -> list[str]:
        """Columns with no text cell (empty cells allowed), in header order."""
        return [c for c in self.columns if not any(isinstance(r.get(c), str) for r in self.rows)]

    def iters(self) -> np.ndarray:
        """The ``iter`` column, or the row index when the table has none."""
        return self.values("iter") if self.has("iter") else np.arange(len(self), dtype=float)

    def last(self, column: str) -> float | None:
        """The value of ``column`` in the last row (None when empty or missing)."""
        if not self.rows:
            return None
        cell = self.rows[-1].get(column)
        return cell if isinstance(cell, float) else None


@dataclass(frozen=True)
class RunData:
    """One run directory as read: `cfg` is the typed config (None when config.json is
    missing or invalid), `config_data` its raw content, `report` run_report.json's."""

    run_dir: Path
    cfg: RunConfig | None
    status: dict[str, Any]
    curves: Table
    probes: dict[str, Table]
    rounds: Table
    problems: tuple[str, ...] = field(default=())
    config_data: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def probe(self, name: str) -> Table:
        """The table of probe ``name`` (empty when the file does not exist)."""
        return self.probes.get(name, Table())


def table_limit(outer_iters: int | None) -> int:
    """Most bytes a compressed table of a run with `outer_iters` iterations may decompress
    to: ``TABLE_ROW_BYTES`` for each of at most ``outer_iters + 1`` rows (a table has a
    row per iteration at most, and a header), at least 16 MiB, at most
    :data:`MAX_TABLE_BYTES` (also the limit without a config)."""
    if outer_iters is None:
        return MAX_TABLE_BYTES
    return min(MAX_TABLE_BYTES, max(2**24, TABLE_ROW_BYTES * (int(outer_iters) + 1)))


def gz_twin(path: str | Path) -> Path:
    """``X.gz`` for the table ``X``."""
    path = Path(path)
    return path.with_name(path.name + GZ_SUFFIX)


def table_file(path: str | Path) -> Path | None:
    """The file that holds the table `path` (``X``): its gzip twin ``X.gz`` when that is a
    file, else ``X`` itself when it is, else None.

    Both exist only when something stopped between writing one and deleting the other: a
    compaction (``X.gz`` written from the complete ``X``), an expansion (``X`` written from
    ``X.gz``), or a Ray driver copying a run's final files over an older snapshot of its
    directory. ``X.gz`` is only ever made from a finished table, so it is the table: the
    plain ``X`` beside it is the same bytes or an older copy."""
    path = Path(path)
    twin = gz_twin(path)
    if twin.is_file():
        return twin
    return path if path.is_file() else None


def table_files(folder: Path, suffix: str = ".csv") -> dict[str, Path]:
    """The tables ``<name><suffix>`` of `folder` (plain or gzip-compressed) by name, in
    name order; where both exist, the gzip twin (:func:`table_file`)."""
    found: dict[str, Path] = {}
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            for end in (suffix, suffix + GZ_SUFFIX):
                if path.name.endswith(end) and len(path.name) > len(end):
                    name = path.name[: -len(end)]
                    if name not in found or end != suffix:
                        found[name] = path
    return dict(sorted(found.items()))


def read_table_text(path: str | Path, max_bytes: int = MAX_TABLE_BYTES) -> str:
    """The text of the run table `path` (``learning_curves.csv``, ``probes/<name>.csv``,
    ``probes/rounds.jsonl``): the file itself, else its gzip twin ``X.gz`` decompressed
    (:func:`table_file`); the one way a run's tables are opened.

    A compressed table is read to at most ``max_bytes + 1`` decompressed bytes
    (:func:`table_limit` of the run), so a small file that would inflate to gigabytes is
    refused before it fills memory. Raises RunFileError naming the file: missing,
    unreadable, not gzip, decompressing past `max_bytes`, or not UTF-8.
    """
    path = Path(path)
    found = table_file(path)
    if found is None:
        raise RunFileError(f"'{path}' is missing")
    try:
        if found.name.endswith(GZ_SUFFIX):
            with gzip.open(found, "rb") as fh:
                data = fh.read(max_bytes + 1)
        else:
            data = found.read_bytes()
        text = data.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise RunFileError(f"'{found}' cannot be read ({exc})") from None
    if found.name.endswith(GZ_SUFFIX) and len(data) > max_bytes:
        raise RunFileError(
            f"'{found}' decompresses to more than {max_bytes} bytes, more than a table of "
            "this run holds; refused"
        )
    return text


def read_table(path: str | Path, max_bytes: int = MAX_TABLE_BYTES) -> Table:
    """The CSV table `path` (plain or ``.gz``, :func:`read_table_text`), cells parsed;
    a row with a wrong cell count, like any unreadable file, is a RunFileError naming the
    file (:func:`load_run` reads leniently instead)."""
    problems: list[str] = []
    found = table_file(path) or Path(path)
    table = _parse_lenient(read_table_text(path, max_bytes), found, problems)
    if table is None or problems:
        raise RunFileError(problems[0] if problems else f"'{found}' has no header")
    return table


def _parse_lenient(text: str, path: Path, problems: list[str]) -> Table | None:
    """Rows of the CSV `text` (of `path`) with as many cells as the header; others (a row
    torn by a crash) are skipped and named in ``problems``."""
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        problems.append(f"'{path}' cannot be read ({exc})")
        return None
    if not lines or not lines[0]:
        problems.append(f"'{path}' has no header")
        return None
    header, rows = lines[0], []
    for lineno, cells in enumerate(lines[1:], start=2):
        if len(cells) == len(header):
            rows.append({h: parse_cell(c) for h, c in zip(header, cells, strict=True)})
        else:
            problems.append(
                f"'{path}' line {lineno}: {len(cells)} cells, header has "
                f"{len(header)} (row skipped)"
            )
    return Table(tuple(header), tuple(rows))


def _read_table(
    path: Path, problems: list[str], required: bool, max_bytes: int = MAX_TABLE_BYTES
) -> Table | None:
    """A CSV table, plain or compressed (:func:`read_table_text`), read leniently: a file
    that cannot be read, or a torn row, is a line in `problems`."""
    found = table_file(path)
    if found is None:
        if required:
            problems.append(f"{path.name} is missing")
        return None
    try:
        text = read_table_text(path, max_bytes)
    except RunFileError as exc:
        problems.append(str(exc))
        return None
    return _parse_lenient(text, found, problems)


def _read_dict(path: Path, problems: list[str]) -> dict[str, Any]:
    """A JSON object file ({} when missing; a problem when corrupt or not an object)."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except RunFileError as exc:
        problems.append(str(exc))
        return {}
    if not isinstance(data, dict):
        problems.append(f"'{path}' does not hold a JSON object")
        return {}
    return data


def load_run(run_dir: str | Path) -> RunData:
    """Load config, status, learning curves, probe tables and report of ``run_dir``."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    cfg: RunConfig | None = None
    try:
        cfg = config_from_json(run_dir / "config.json")
    except ConfigError as exc:
        problems.append(f"config.json: {exc}")
    config_data = _read_dict(run_dir / "config.json", [])
    if not (run_dir / "status.json").exists():
        problems.append(f"'{run_dir / 'status.json'}' is missing")
    status = observed_status(run_dir, _read_dict(run_dir / "status.json", problems))
    report = _read_dict(run_dir / "run_report.json", problems)
    limit = table_limit(cfg.outer_iters if cfg is not None else None)
    curves = _read_table(run_dir / CURVES_FILE, problems, True, limit) or Table()
    probes: dict[str, Table] = {}
    rounds = Table()
    probe_dir = run_dir / "probes"
    for name in table_files(probe_dir):
        table = _read_table(probe_dir / f"{name}.csv", problems, False, limit)
        if table is None:
            continue
        if name == ROUNDS_TABLE:
            rounds = table
        else:
            probes[name] = table
    return RunData(
        run_dir, cfg, status, curves, probes, rounds, tuple(problems), config_data, report
    )


def array_files(run_dir: Path, prefix: str) -> dict[int, Path]:
    """``probes/<prefix>_<iter>.npy|npz`` files by iteration (``q_kernel`` does not match
    ``q_kernel_lag_0004.npy``: the part after the prefix must be all digits)."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)\.np[yz]$")
    found: dict[int, Path] = {}
    probe_dir = Path(run_dir) / "probes"
    if probe_dir.is_dir():
        for path in probe_dir.iterdir():
            match = pattern.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


GRAM_FACTOR = "gram_factor"
"""The one key of an .npz that stores a Gram matrix ``F^T F / n`` by its factor ``F [n, m]``
(``probes/q_kernel_<iter>.npz``: ``Q_hat = Delta^T Delta / B_c`` from the ``[B_c, T_c]``
cache, 12.8 KB instead of 320 KB at T_c = 200, B_c = 8); :func:`load_array` returns the
matrix."""


def load_array(path: Path, feature_dim: int | None = None) -> Any:
    """An .npy array or a dict of .npz arrays (never pickles); None when unreadable. An
    .npz holding only :data:`GRAM_FACTOR` ``F`` comes back as ``F^T F / n`` (float64).

    The one reader of a run's arrays: their headers are checked first
    (:func:`tdlens.rundir.files.check_array_file`, at most ``array_limit(feature_dim)``
    elements), and a file over the limit is an ArrayRefusedError (a RunFileError) naming
    it, raised before anything is decompressed.
    """
    try:
        check_array_file(path, array_limit(feature_dim))
    except ArrayRefusedError:
        raise
    except RunFileError:
        return None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
            if set(arrays) == {GRAM_FACTOR} and arrays[GRAM_FACTOR].ndim == 2:
                F = np.asarray(arrays[GRAM_FACTOR], dtype=np.float64)
                return F.T @ F / F.shape[0]
            return arrays
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError):
        return None


def latest_array(
    run_dir: Path, prefix: str, at_or_before: int | None = None, feature_dim: int | None = None
) -> tuple[int, Any]:
    """The latest readable ``<prefix>_<iter>`` array (optionally at or before an iteration);
    ``(-1, None)`` when there is none."""
    for it, path in reversed(list(array_files(run_dir, prefix).items())):
        if at_or_before is not None and it > at_or_before:
            continue
        arr = load_array(path, feature_dim)
        if arr is not None:
            return it, arr
    return -1, None


Q_KERNEL_CV_FILE = "q_kernel_cv.json"
"""``probes/q_kernel_cv.json``: ``{"<iter>": cv}`` of the q_kernel rounds pruned."""


def read_q_kernel_cv(run_dir: Path) -> dict[int, float]:
    """``probes/q_kernel_cv.json`` as ``{iter: cv}`` ({} when missing or unreadable)."""
    path = Path(run_dir) / "probes" / Q_KERNEL_CV_FILE
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
        return {int(k): float(v) for k, v in data.items()}
    except (RunFileError, AttributeError, TypeError, ValueError):
        return {}
