"""The files of one run directory as the runner writes them (docs/model.md §7, §15).

:class:`RunFiles` owns every write of a run but its checkpoints: config.json, status.json
(every change forced to disk, heartbeats at most every ``HEARTBEAT_S``), stdout.log, the
probe tables, arrays and rounds of each probe round, and the truncation of every table to
a checkpoint on resume. All of it goes through :mod:`tdlens.rundir.files` (atomic whole
files, flushed appends), so a crash leaves old or new content, never half of it. The
appends (log lines, learning-curve and probe rows) reach the disk at :meth:`RunFiles.sync`,
which the runner calls before each checkpoint and status change at the end: one fsync per
table and checkpoint instead of one per row (~0.4-3 ms each here; issue 28 session 9).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import RunConfig
from tdlens.probes import registry
from tdlens.probes.manager import ProbeRound
from tdlens.rundir.files import (
    TableWriter,
    append_text,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_csv_header,
    sync_files,
    to_jsonable,
    truncated_tables,
)
from tdlens.rundir.read import CURVES_FILE, gz_twin, read_table_text, table_files

HEARTBEAT_S = 2.0
"""status.json's updated_at is refreshed at least this often while a run works."""
DEMOTED = ("rho_hist",)
"""Arrays kept at full precision in their newest round only (the report reads the newest
raw-rho sample, for its histogram): once a newer round is saved, an older one is stored
as float16 when every value round-trips within ``HALF_RTOL`` (4x smaller: 8 KB instead
of 32 KB for the default 4096 ratios), else as float32 (2x)."""
HALF_RTOL = 1e-3


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunFiles:
    """Writes the files of the run directory `path` (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.status: dict[str, Any] = {}
        self._last_heartbeat = 0.0
        self._pending: set[Path] = set()
        """Files appended to since the last :meth:`sync`."""

    def sync(self) -> None:
        """fsync every file appended to since the last call (``files.sync_files``)."""
        sync_files(sorted(self._pending))
        self._pending.clear()

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_json(self.path / "config.json", cfg.to_dict())

    def log(self, text: str) -> None:
        append_text(self.path / "stdout.log", f"[{now()}] {text}\n", self._pending)

    def write_status(self, force: bool = True, **updates: Any) -> None:
        """Update status.json's fields; written now when `force`, else as a heartbeat."""
        self.status.update(updates)
        self.status["updated_at"] = now()
        t = time.monotonic()
        if force or t - self._last_heartbeat >= HEARTBEAT_S:
            atomic_write_json(self.path / "status.json", self.status)
            self._last_heartbeat = t

    def curves(self, columns: tuple[str, ...], later: tuple[str, ...] = ()) -> TableWriter:
        """The learning-curve table (created with `columns`, or checked against them).

        A table written before the `later` columns existed (its header is `columns`
        without them) is continued with its own header: a resumed old run keeps its file.
        """
        path = self.path / "learning_curves.csv"
        if later and path.exists():
            header = read_csv_header(path)
            if header == [c for c in columns if c not in later]:
                return TableWriter(path, header, pending=self._pending)
        return TableWriter(path, columns, pending=self._pending)

    def write_probe_round(self, rnd: ProbeRound) -> None:
        """One probe round: a row per probe table (with its JSONL twin), its arrays, and
        its timings in rounds.csv (registry columns) and rounds.jsonl (every breakdown)."""
        folder = self.path / "probes"
        folder.mkdir(exist_ok=True)
        for name, prow in rnd.rows.items():
            path = folder / f"{name}.csv"
            TableWriter(path, list(prow), jsonl=True, pending=self._pending).append(prow)
        for fname, arr in rnd.arrays.items():
            _save_array(folder / fname, arr)
            prefix = fname.rsplit("_", 1)[0]
            if prefix in DEMOTED:
                _demote_older(folder, prefix, rnd.n)
        timing = {
            "iter": rnd.n,
            "reason": rnd.reason,
            **{f"{k}_s": v for k, v in rnd.timings.items()},
        }
        columns = registry.round_columns()
        rounds = TableWriter(folder / "rounds.csv", columns, pending=self._pending)
        rounds.append({k: timing.get(k) for k in columns})
        append_text(
            folder / "rounds.jsonl",
            json.dumps(to_jsonable(timing), allow_nan=False) + "\n",
            self._pending,
        )

    def expand_tables(self) -> None:
        """Store each gzip-compressed table ``X.gz`` (a compacted sweep run's,
        :mod:`tdlens.sweeps.compact`) as the plain ``X`` again, the same bytes
        (:func:`tdlens.rundir.read.read_table_text`), so a run that goes on (a resume, a
        branch) appends to it; where both exist the gzip twin is the table
        (:func:`tdlens.rundir.read.table_file`) and replaces the plain one."""
        probes_dir = self.path / "probes"
        tables = [self.path / CURVES_FILE, probes_dir / "rounds.jsonl"]
        tables += [probes_dir / f"{name}.csv" for name in table_files(probes_dir)]
        for path in tables:
            twin = gz_twin(path)
            if not twin.is_file():
                continue
            atomic_write_text(path, read_table_text(path))  # the twin's text
            twin.unlink()

    def cut_tables(self, next_iter: int) -> None:
        """Keep only the rows (and probe arrays) of iterations before `next_iter`.

        Compressed tables are stored plain first (:meth:`expand_tables`). Every table is
        read and checked first; one that cannot be cut (a non-numeric ``iter``) raises
        RunFileError before any table is rewritten.
        """
        self.expand_tables()
        probes_dir = self.path / "probes"
        tables = [self.path / "learning_curves.csv"]
        if probes_dir.is_dir():
            tables += sorted(probes_dir.glob("*.csv"))
        planned: dict[Path, str] = {}
        for csv_path in tables:
            planned.update(truncated_tables(csv_path, next_iter))
        for path, text in planned.items():
            atomic_write_text(path, text)
        if probes_dir.is_dir():
            for npy in list(probes_dir.glob("*_[0-9][0-9][0-9][0-9].np[yz]")):
                if int(npy.stem.rsplit("_", 1)[1]) >= next_iter:
                    npy.unlink()


def lower_precision(arr: np.ndarray) -> np.ndarray:
    """A float64 array as float16 when every finite value round-trips within
    ``HALF_RTOL`` relative (no overflow past 65504, no underflow), else as float32 when
    within 1e-7 (float32's own rounding is 6e-8), else unchanged; other dtypes unchanged.
    NaN and inf stay what they are."""
    a = np.asarray(arr)
    if a.dtype != np.float64:
        return a
    finite = a[np.isfinite(a)]
    for dtype, rtol in ((np.float16, HALF_RTOL), (np.float32, 1e-7)):
        with np.errstate(over="ignore"):
            back = finite.astype(dtype).astype(np.float64)
        if bool(np.all(np.abs(back - finite) <= rtol * np.abs(finite))):
            return a.astype(dtype)
    return a


def _demote_older(folder: Path, prefix: str, n: int) -> None:
    """Store the float64 ``<prefix>_<iter>.npy`` of rounds before `n` at lower precision."""
    for path in folder.glob(f"{prefix}_[0-9][0-9][0-9][0-9].npy"):
        if int(path.stem.rsplit("_", 1)[1]) < n:
            arr = np.load(path, allow_pickle=False)
            if arr.dtype == np.float64:
                _save_array(path, lower_precision(arr))


def _save_array(path: Path, arr: Any) -> None:
    """Save an array (.npy) or a dict of arrays (.npz, zlib-compressed) atomically,
    without pickles."""
    buf = io.BytesIO()
    if path.suffix == ".npz":
        np.savez_compressed(buf, **arr)
    else:
        np.save(buf, np.asarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
