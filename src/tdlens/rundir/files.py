"""Crash-safe files of a run directory (docs/model.md §7 and §15).

Whole files are written atomically: to a temporary file in the same directory, fsynced,
then renamed over the target, so a reader (or a crash) sees the old or the new content,
never half of it. New files get the mode ``0o666 & ~umask`` that ``open()`` would give
them (0644 under umask 022), not the 0600 of the temporary file. Tables (CSV, JSONL, the
log) are appended a row at a time and flushed; a resumed run first cuts them back to the
rows of its checkpoint, again by an atomic rewrite. An append is fsynced at once, or,
given a ``pending`` set, later by :func:`sync_files` (a run syncs its tables before each
checkpoint, so the rows a checkpoint covers are on disk before it is).

Every byte a run writes passes through :func:`_write`, which names the file in the
``OSError`` it raises (``fh.write`` alone does not), so a full disk reads as "No space left
on device: 'run/status.json'"; the fault-injection tests replace it to fail at the k-th
write.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tdlens.threads import parallel_map


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


class ArrayRefusedError(RunFileError):
    """An array file refused by its headers (too large, objects): hostile, not torn."""


MAX_ARRAY_ELEMENTS = 2**28
"""Most elements of all arrays in one .npy/.npz of a run (2 GiB as float64)."""
ARRAY_MEMBERS_MAX = 256
"""Most arrays in one .npz of a run (a checkpoint holds about 20)."""


def array_limit(feature_dim: int | None) -> int:
    """Sane element count for one array file of a run with critic dimension D: 64 D^2
    (the largest saved array is D x D; a probe round's arrays are a few D^2 at most), at
    least 2**22, at most :data:`MAX_ARRAY_ELEMENTS`."""
    if feature_dim is None:
        return MAX_ARRAY_ELEMENTS
    return min(MAX_ARRAY_ELEMENTS, max(2**22, 64 * int(feature_dim) ** 2))


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype from an open .npy stream's header (nothing else is read)."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError) as exc:
        raise RunFileError(f"'{where}' is not a readable .npy array ({exc})") from None
    return tuple(shape), dtype


def check_array_file(path: str | Path, max_elements: int = MAX_ARRAY_ELEMENTS) -> None:
    """Check a run's .npy / .npz by its headers alone, before anything is loaded: every
    member a plain (non-object) array, at most :data:`ARRAY_MEMBERS_MAX` of them, their
    elements together at most `max_elements` (and the .npz members' uncompressed sizes
    no larger than those arrays). A RunFileError names the file and the sizes: a small
    compressed file can inflate to gigabytes."""
    import zipfile

    path = Path(path)
    headers: list[tuple[str, tuple[int, ...], Any, int]] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                if len(infos) > ARRAY_MEMBERS_MAX:
                    raise ArrayRefusedError(
                        f"'{path}' holds {len(infos)} arrays (more than {ARRAY_MEMBERS_MAX})"
                    )
                for info in infos:
                    with zf.open(info) as fh:
                        shape, dtype = _npy_header(fh, f"{path}:{info.filename}")
                    headers.append((info.filename, shape, dtype, info.file_size))
        else:
            with open(path, "rb") as fh:
                shape, dtype = _npy_header(fh, str(path))
            headers.append((path.name, shape, dtype, path.stat().st_size))
    except (OSError, zipfile.BadZipFile) as exc:
        raise RunFileError(f"'{path}' cannot be read ({exc})") from None
    total = 0
    for name, shape, dtype, stored in headers:
        if dtype.hasobject:
            raise ArrayRefusedError(f"'{path}': array '{name}' holds Python objects (refused)")
        count = math.prod(shape)
        total += count
        if stored > count * dtype.itemsize + 4096 + 65536:
            raise ArrayRefusedError(
                f"'{path}': member '{name}' is {stored} bytes for a {shape} {dtype} array"
            )
    if total > max_elements:
        raise ArrayRefusedError(
            f"'{path}' holds {total} array elements, more than the {max_elements} a run "
            f"of this size writes (shapes {[h[1] for h in headers][:4]}); refused before "
            "loading"
        )


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
    """Write and flush `data`; an OSError names `path` (the one choke point)."""
    try:
        fh.write(data)
        fh.flush()
    except OSError as exc:
        raise _named(exc, path) from exc


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` naming `path` when it names no file."""
    if exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, str(path))
    return exc


def _fsync(fd: int, path: Path) -> None:
    """``os.fsync(fd)``; an OSError names `path`."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _named(exc, path) from exc


SYNC_THREADS = 8
"""Files :func:`sync_files` fsyncs at once, on the process's kept threads
(:func:`tdlens.threads.parallel_map`). A journalling file system (ext4, XFS) commits the
fsyncs that wait together in one journal commit: the 14 tables of a seed run synced before
a checkpoint took 16-170 ms (median 40-51) one after another while other sessions wrote to
the shared disk, 1-2 ms eight at a time, and ~2 ms either way on a quiet disk
(BENCHMARKS.md, issue 28 session 11)."""


def _sync_one(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _fsync(fd, Path(path))
    finally:
        os.close(fd)


def sync_files(paths: Iterable[str | Path]) -> None:
    """fsync each file of `paths` that exists (appends made with a ``pending`` set), up to
    SYNC_THREADS at once (:data:`SYNC_THREADS`); it returns once none runs, and a failing
    fsync is raised (the first in the order of `paths`, naming its file)."""
    parallel_map(_sync_one, paths, SYNC_THREADS)


def refuse_symlink(path: Path) -> None:
    """RunFileError when `path` is a symbolic link: run files are never written through
    (or in place of) a link, which could point anywhere (docs/faults.md)."""
    if path.is_symlink():
        raise RunFileError(
            f"'{path}' is a symbolic link; tdlens does not write through links in a run "
            "directory (replace it with a regular file or remove it)"
        )


def open_nofollow(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``; a symbolic link at `path` is a RunFileError
    naming it (the check and the open are one system call: no race)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_symlink(Path(path))
        raise


def find_symlinks(run_dir: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Symbolic links inside `run_dir` (not following any; top-level entries named in
    `skip` are not searched)."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        if Path(root) == Path(run_dir):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(root, name)):
                found.append(Path(root) / name)
    return sorted(found)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename);
    a symbolic link at `path` is refused (RunFileError), not replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), file_mode())
            _write(fh, data, path)
            _fsync(fh.fileno(), path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars Python numbers.

    A list or tuple of Python floats (a figure's series: most of a report page's values)
    is copied in one pass, without a call per item, when its sum is finite (then so is
    every item); otherwise item by item, as any other list."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(type(v) is float for v in value) and math.isfinite(sum(value)):
            return list(value)
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
    """Append-only CSV (and optional JSONL twin) with a fixed header, flushed per row and
    fsynced per row, or with `pending` later (:func:`append_text`)."""

    def __init__(
        self,
        csv_path: str | Path,
        columns: Sequence[str],
        jsonl: bool = False,
        pending: set[Path] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.columns = list(columns)
        self.pending = pending
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
        append_text(self.csv_path, _csv_line(cells), self.pending)
        if self.jsonl_path is not None:
            record = {c: to_jsonable(row.get(c)) for c in self.columns}
            append_text(self.jsonl_path, json.dumps(record, allow_nan=False) + "\n", self.pending)


def _csv_line(cells: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(cells))
    return buf.getvalue()


def append_text(path: str | Path, text: str, pending: set[Path] | None = None) -> None:
    """Append `text` to `path` (created if missing), flushed and fsynced; with `pending`,
    flushed only and `path` added to it for a later :func:`sync_files` (an fsync costs
    0.4-3 ms here, and a run appends ~4 rows an iteration). A symbolic link at `path` is
    refused (RunFileError), never appended through."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        _write(fh, text, Path(path))
        if pending is None:
            _fsync(fh.fileno(), Path(path))
        else:
            pending.add(Path(path))


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
