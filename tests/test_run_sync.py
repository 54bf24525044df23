"""When a run's appended rows reach the disk (issue 28 session 9, docs/model.md §7).

Appends (log lines, learning-curve and probe rows) are flushed at once and fsynced by
``RunFiles.sync`` before each checkpoint and before the final status: every row a
checkpoint covers is on disk before the checkpoint is, with one fsync per table and
checkpoint instead of one per row. Whole files (checkpoints, arrays, status.json) are
still fsynced before their rename.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from tdlens.config import load_config
from tdlens.rundir import files
from tdlens.runs.runner import Runner

PROBED = [
    "env.feature_dim=32",
    "env.actor_feature_dim=8",
    "probes.every=3",
    "probes.distribution.permutations=0",
    "outer_iters=9",
    "checkpoint_every=2",
]


def record_io(monkeypatch) -> list[tuple[str, str]]:
    """Every write (``files._write``) and fsync (``files._fsync``) of the run, in order, as
    (what, file name); a checkpoint's atomic write names its target ``ckpt_*.npz``."""
    events: list[tuple[str, str]] = []
    write, fsync = files._write, files._fsync

    def logged_write(fh, data, path: Path) -> None:
        events.append(("write", Path(path).name))
        write(fh, data, path)

    def logged_fsync(fd: int, path: Path) -> None:
        events.append(("fsync", Path(path).name))
        fsync(fd, path)

    monkeypatch.setattr(files, "_write", logged_write)
    monkeypatch.setattr(files, "_fsync", logged_fsync)
    return events


def test_rows_are_synced_before_each_checkpoint_and_the_final_status(tmp_path, monkeypatch):
    events = record_io(monkeypatch)
    cfg = load_config("configs/sanity.yaml", PROBED)
    assert Runner(cfg, tmp_path / "run").run().status == "complete"
    dirty: set[str] = set()
    checkpoints = 0
    for k, (what, name) in enumerate(events):
        if what == "write" and name.endswith((".csv", ".jsonl", ".log")):
            dirty.add(name)
        elif what == "fsync":
            dirty.discard(name)
            if name.startswith("ckpt_"):
                assert not dirty, f"{sorted(dirty)} not synced before {name} (event {k})"
                checkpoints += 1
    assert checkpoints == 5  # after 2, 4, 6, 8 and all 9 iterations
    final_status = max(k for k, e in enumerate(events) if e == ("fsync", "status.json"))
    assert not {
        name
        for what, name in events[:final_status]
        if what == "write" and name.endswith((".csv", ".jsonl"))
    } - {name for what, name in events[:final_status] if what == "fsync"}


def test_one_fsync_per_table_and_checkpoint_not_per_row(tmp_path, monkeypatch):
    events = record_io(monkeypatch)
    cfg = load_config("configs/sanity.yaml", PROBED)
    assert Runner(cfg, tmp_path / "run").run().status == "complete"
    rows = sum(1 for e in events if e == ("write", "learning_curves.csv"))
    synced = sum(1 for e in events if e == ("fsync", "learning_curves.csv"))
    assert rows == 10  # the header (an atomic write) and 9 rows
    assert synced == 1 + 5  # the header, then before each of the 5 checkpoints


def _tables(tmp_path: Path, n: int) -> list[Path]:
    paths = [tmp_path / f"t{i}.csv" for i in range(n)]
    for path in paths:
        path.write_text("x\n")
    return paths


def test_sync_files_overlaps_its_fsyncs(tmp_path, monkeypatch):
    """SYNC_THREADS fsyncs wait at once (one journal commit): one after another, the
    barrier below would never fill and time out."""
    barrier = threading.Barrier(files.SYNC_THREADS, timeout=20)
    monkeypatch.setattr(files, "_fsync", lambda fd, path: barrier.wait())
    files.sync_files(_tables(tmp_path, files.SYNC_THREADS))


def test_sync_files_syncs_every_file_and_raises_a_failure(tmp_path, monkeypatch):
    """Every existing file is synced once (a missing one skipped); a failing fsync is
    raised, the first of the failures in the order given, naming its file."""
    paths = _tables(tmp_path, 12)
    synced: list[str] = []
    fsync = files._fsync

    def logged(fd: int, path: Path) -> None:
        synced.append(path.name)
        fsync(fd, path)

    monkeypatch.setattr(files, "_fsync", logged)
    files.sync_files([*paths, tmp_path / "missing.csv"])
    assert sorted(synced) == sorted(path.name for path in paths)

    def failing(fd: int, path: Path) -> None:
        if path.name in ("t3.csv", "t7.csv"):
            raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(files, "_fsync", failing)
    with pytest.raises(OSError, match=r"t3\.csv"):
        files.sync_files(paths)
