"""The files of one run directory as the runner writes them (SPEC 7, 15).

:class:`RunFiles` owns every write of a run but its checkpoints: config.json, status.json
(every change forced to disk, heartbeats at most every ``HEARTBEAT_S``), stdout.log, the
probe tables, arrays and rounds of each probe round, and the truncation of every table to
a checkpoint on resume. All of it goes through :mod:`tdlens.rundir.files` (atomic whole
files, flushed appends), so a crash leaves old or new content, never half of it.
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
    to_jsonable,
    truncate_table,
)

HEARTBEAT_S = 2.0
"""status.json's updated_at is refreshed at least this often while a run works."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunFiles:
    """Writes the files of the run directory `path` (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.status: dict[str, Any] = {}
        self._last_heartbeat = 0.0

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_json(self.path / "config.json", cfg.to_dict())

    def log(self, text: str) -> None:
        append_text(self.path / "stdout.log", f"[{now()}] {text}\n")

    def write_status(self, force: bool = True, **updates: Any) -> None:
        """Update status.json's fields; written now when `force`, else as a heartbeat."""
        self.status.update(updates)
        self.status["updated_at"] = now()
        t = time.monotonic()
        if force or t - self._last_heartbeat >= HEARTBEAT_S:
            atomic_write_json(self.path / "status.json", self.status)
            self._last_heartbeat = t

    def curves(self, columns: tuple[str, ...]) -> TableWriter:
        """The learning-curve table (created with `columns`, or checked against them)."""
        return TableWriter(self.path / "learning_curves.csv", columns)

    def write_probe_round(self, rnd: ProbeRound) -> None:
        """One probe round: a row per probe table (with its JSONL twin), its arrays, and
        its timings in rounds.csv (registry columns) and rounds.jsonl (every breakdown)."""
        folder = self.path / "probes"
        folder.mkdir(exist_ok=True)
        for name, prow in rnd.rows.items():
            TableWriter(folder / f"{name}.csv", list(prow), jsonl=True).append(prow)
        for fname, arr in rnd.arrays.items():
            _save_array(folder / fname, arr)
        timing = {
            "iter": rnd.n,
            "reason": rnd.reason,
            **{f"{k}_s": v for k, v in rnd.timings.items()},
        }
        columns = registry.round_columns()
        TableWriter(folder / "rounds.csv", columns).append({k: timing.get(k) for k in columns})
        append_text(
            folder / "rounds.jsonl", json.dumps(to_jsonable(timing), allow_nan=False) + "\n"
        )

    def cut_tables(self, next_iter: int) -> None:
        """Keep only the rows (and probe arrays) of iterations before `next_iter`."""
        truncate_table(self.path / "learning_curves.csv", next_iter)
        probes_dir = self.path / "probes"
        if probes_dir.is_dir():
            for csv_path in probes_dir.glob("*.csv"):
                truncate_table(csv_path, next_iter)
            for npy in list(probes_dir.glob("*_[0-9][0-9][0-9][0-9].np[yz]")):
                if int(npy.stem.rsplit("_", 1)[1]) >= next_iter:
                    npy.unlink()


def _save_array(path: Path, arr: Any) -> None:
    """Save an array (.npy) or a dict of arrays (.npz, zlib-compressed) atomically,
    without pickles."""
    buf = io.BytesIO()
    if path.suffix == ".npz":
        np.savez_compressed(buf, **arr)
    else:
        np.save(buf, np.asarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
