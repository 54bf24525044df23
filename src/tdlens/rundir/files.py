"""Crash-safe files of a run directory (SPEC sections 7 and 15).

Whole files are written atomically: to a temporary file in the same directory, fsynced,
then renamed over the target, so a reader (or a crash) sees the old or the new content,
never half of it. New files get the mode ``0o666 & ~umask`` that ``open()`` would give
them (0644 under umask 022), not the 0600 of the temporary file. Tables (CSV, JSONL, the
log) are appended a row at a time and flushed; a resumed run first cuts them back to the
rows of its checkpoint, again by an atomic rewrite.

Every byte a run writes passes through :func:`_write`, which names the file in the
``OSError`` it raises (``fh.write`` alone does not), so a full disk reads as "No space left
on device: 'run/status.json'"; the fault-injection tests replace it to fail at the k-th
write.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def timestamped_dir(parent: str | Path, name: str) -> Path:
    """``<parent>/<YYYYmmdd_HHMMSS>_<name>``, suffixed ``_2``, ``_3``... when taken."""
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    base = Path(parent) / f"{stamp}_{name}"
    path, k = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}_{k}")
        k += 1
    return path


class RunFileError(RuntimeError):
    """A run file is missing, corrupt or inconsistent; the message names the file."""


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666 & ~umask``.

    Read from /proc/self/status (thread-safe); elsewhere by setting and restoring the umask.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write(fh: Any, data: bytes | str, path: Path) -> None:
    """Write, flush and fsync `data`; an OSError names `path` (the one choke point)."""
    try:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), file_mode())
            _write(fh, data, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFileError(f"'{path}' is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFileError(f"'{path}' is not valid JSON ({exc})") from None


def format_cell(value: Any) -> str:
    """A CSV cell: shortest round-trip repr for floats, '' for missing (None)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "item"):
        return format_cell(value.item())
    return str(value)


def parse_cell(text: str) -> float | str | None:
    """Inverse of format_cell for numbers ('' -> None; 'nan', 'inf' are floats)."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


class TableWriter:
    """Append-only CSV (and optional JSONL twin) with a fixed header, flushed per row."""

    def __init__(self, csv_path: str | Path, columns: Sequence[str], jsonl: bool = False) -> None:
        self.csv_path = Path(csv_path)
        self.columns = list(columns)
        self.jsonl_path = self.csv_path.with_suffix(".jsonl") if jsonl else None
        if not self.csv_path.exists():
            atomic_write_text(self.csv_path, _csv_line(self.columns))
        else:
            header = read_csv_header(self.csv_path)
            if header != self.columns:
                raise RunFileError(
                    f"'{self.csv_path}': header {header} does not match the expected columns"
                )
        if self.jsonl_path is not None and not self.jsonl_path.exists():
            atomic_write_text(self.jsonl_path, "")

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row (missing columns are empty; unknown keys are an error)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise RunFileError(f"'{self.csv_path}': unexpected columns {sorted(unknown)}")
        cells = [format_cell(row.get(c)) for c in self.columns]
        append_text(self.csv_path, _csv_line(cells))
        if self.jsonl_path is not None:
            record = {c: to_jsonable(row.get(c)) for c in self.columns}
            append_text(self.jsonl_path, json.dumps(record, allow_nan=False) + "\n")


def _csv_line(cells: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(cells))
    return buf.getvalue()


def append_text(path: str | Path, text: str) -> None:
    """Append `text` to `path` (created if missing), flushed and fsynced."""
    with open(path, "a", encoding="utf-8") as fh:
        _write(fh, text, Path(path))


def read_csv_header(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except OSError as exc:
        raise RunFileError(f"'{path}' cannot be read ({exc.strerror})") from None


def read_csv_rows(path: str | Path) -> list[dict[str, float | str | None]]:
    """Rows of a CSV written by TableWriter, numbers parsed; corrupt files are an error."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise RunFileError(f"'{path}' has no header")
            rows = []
            for lineno, cells in enumerate(reader, start=2):
                if len(cells) != len(header):
                    raise RunFileError(
                        f"'{path}' line {lineno}: {len(cells)} cells, header has {len(header)}"
                    )
                rows.append({h: parse_cell(c) for h, c in zip(header, cells, strict=True)})
            return rows
    except FileNotFoundError:
        raise RunFileError(f"'{path}' is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunFileError(f"'{path}' cannot be read ({exc})") from None


def truncated_tables(csv_path: str | Path, before_iter: int) -> dict[Path, str]:
    """The content a CSV and its JSONL twin keep with only rows of ``iter < before_iter``
    (a row torn by a crash ends the table); nothing is written. A complete row whose
    ``iter`` is not a number is a RunFileError naming the file and line."""
    csv_path = Path(csv_path)
    out: dict[Path, str] = {}
    if csv_path.exists():
        try:
            lines = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as exc:
            raise RunFileError(f"'{csv_path}' cannot be read ({exc})") from None
        if not lines:
            raise RunFileError(f"'{csv_path}' is empty (no header)")
        header = next(csv.reader([lines[0]]))
        if "iter" not in header:
            raise RunFileError(f"'{csv_path}' has no 'iter' column")
        col = header.index("iter")
        kept = [lines[0]]
        for lineno, line in enumerate(lines[1:], start=2):
            cells = next(csv.reader([line]), [])
            if len(cells) != len(header):
                break  # a torn last row from a crash
            try:
                it = float(cells[col])
            except ValueError:
                raise RunFileError(
                    f"'{csv_path}' line {lineno}: iter {cells[col][:40]!r} is not a number"
                ) from None
            if it < before_iter:
                kept.append(line)
        out[csv_path] = "".join(kept)
    jsonl = csv_path.with_suffix(".jsonl")
    if jsonl.exists():
        kept_json = []
        for line in jsonl.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            it = record.get("iter") if isinstance(record, dict) else None
            if isinstance(it, int | float) and it < before_iter:
                kept_json.append(line if line.endswith("\n") else line + "\n")
        out[jsonl] = "".join(kept_json)
    return out


def truncate_table(csv_path: str | Path, before_iter: int) -> None:
    """Keep only rows with ``iter < before_iter`` in a CSV and its JSONL twin (atomic)."""
    for path, text in truncated_tables(csv_path, before_iter).items():
        atomic_write_text(path, text)
