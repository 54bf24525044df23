"""One process per run directory (docs/model.md §15): an exclusive flock on ``.lock``.

The kernel drops the lock when the holder dies (even by kill -9), so a stale lock file
never blocks a later ``--resume``, and :func:`lock_is_held` tells a live run from a dead
one. A clean release deletes the file while still holding the lock; an acquirer that locked
a file since unlinked (it lost that race) opens the path again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from tdlens.rundir.files import open_nofollow


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """Context manager holding ``run_dir/.lock`` exclusively; the file goes on release.
    A symbolic link at ``.lock`` is refused (RunFileError), never truncated through."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(
                    f"run directory '{self.path.parent}' is in use by another process "
                    f"(pid {holder})"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and deleted it meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_is_held(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir/.lock`` (this one included)."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return False
