"""The Ray backend of a sweep (SPEC section 11): optional, imported lazily.

Without an address a local Ray is started (``num_cpus=jobs``, dashboard off, a small
object store); with ``--address`` the driver joins that cluster, whose nodes need tdlens
installed. Workers may share no filesystem with the driver: each runs in a temporary
folder (seeded with the run directory's files when resuming) and returns every file as
bytes; the driver writes them atomically into the sweep directory (status.json last) and
deletes files the run no longer has (a resume truncates). A dead Ray worker leaves the run
``incomplete``; Ray's own retries are off (a crash that repeats would only crash again).
On Ctrl-C the tasks are cancelled (a KeyboardInterrupt inside each run, which then stops
with a checkpoint) and their files collected for up to ``RAY_STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tdlens.rundir.files import atomic_write_bytes, atomic_write_json
from tdlens.sweeps.backends import (
    SKIP_FILES,
    BackendError,
    OutcomeFn,
    RunOutcome,
    RunTask,
    TaskFn,
    died_outcome,
    failed_outcome,
)


def pack_dir(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative POSIX path -> bytes), without lock files."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in SKIP_FILES
    }


def unpack_dir(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `folder` atomically, status.json last, and delete stale files."""
    folder = Path(folder)
    for rel in sorted(files, key=lambda r: r == "status.json"):
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"refusing to write outside the run directory: {rel!r}")
        atomic_write_bytes(target, files[rel])
    for p in sorted(folder.rglob("*"), reverse=True):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and p.name not in SKIP_FILES and rel not in files:
            p.unlink()


def execute_shipped(fn: TaskFn, task: RunTask) -> RunOutcome:
    """Run `task` in a temporary folder and return the run directory's files with it."""
    with tempfile.TemporaryDirectory(prefix="tdlens_run_") as tmp:
        local = Path(tmp) / task.run_id
        if task.files:
            unpack_dir(local, task.files)
        outcome = fn(replace(task, run_dir=str(local), files=None))
        outcome.files = pack_dir(local)
        return outcome


RAY_STOP_TIMEOUT_S = 120.0
"""After Ctrl-C, how long the driver waits for cancelled Ray runs to hand back their files."""


def import_ray() -> Any:
    """Import Ray lazily, with the install hint when it is missing."""
    try:
        import ray
    except ImportError:
        raise BackendError(
            '--backend ray needs the optional dependency Ray: pip install -e ".[ray]" '
            "(or pip install 'ray[default]')"
        ) from None
    return ray


def _ray_init(ray: Any, jobs: int, address: str | None) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    common = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(
                num_cpus=jobs,
                include_dashboard=False,
                object_store_memory=256 * 2**20,
                **common,
            )
    except Exception as exc:
        target = f"the Ray cluster at '{address}'" if address else "a local Ray"
        raise BackendError(f"--backend ray: cannot start {target}: {exc}") from None
    return True


def _ray_entry(fn: TaskFn, task: RunTask) -> RunOutcome:
    return execute_shipped(fn, task)


def run_ray(
    tasks: Iterable[RunTask],
    jobs: int,
    on_outcome: OutcomeFn,
    fn: TaskFn,
    address: str | None = None,
) -> None:
    """Run every task as a Ray task (one CPU each); files travel as bytes (module docstring)."""
    if jobs < 1:
        raise BackendError(f"--jobs: expected >= 1, got {jobs}")
    tasks = list(tasks)
    if not tasks:
        return
    ray = import_ray()
    started = _ray_init(ray, jobs, address)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_entry)
        fn_ref = ray.put(fn)
        refs: dict[Any, RunTask] = {}
        for task in tasks:
            shipped = replace(task, files=pack_dir(Path(task.run_dir)) if task.resume else None)
            refs[remote.remote(fn_ref, shipped)] = task
        try:
            _collect_ray(ray, refs, on_outcome)
        except KeyboardInterrupt:
            for ref in refs:  # KeyboardInterrupt in running tasks: they checkpoint and return
                ray.cancel(ref, force=False)
            _collect_ray(ray, refs, on_outcome, timeout=RAY_STOP_TIMEOUT_S)
            raise
    finally:
        if started:
            ray.shutdown()


def _collect_ray(
    ray: Any, refs: dict[Any, RunTask], on_outcome: OutcomeFn, timeout: float | None = None
) -> None:
    """Record outcomes as Ray tasks finish (until `timeout` seconds, if given)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while refs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=left)
        if not ready:
            return
        task = refs.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.TaskCancelledError:
            continue
        except ray.exceptions.RayTaskError as exc:  # raised by the task, not a crash
            on_outcome(failed_outcome(task, exc))
            continue
        except ray.exceptions.RayError as exc:
            on_outcome(crashed_outcome(task, f"Ray worker died ({type(exc).__name__})"))
            continue
        _receive(task, outcome)
        on_outcome(outcome)


def crashed_outcome(task: RunTask, why: str) -> RunOutcome:
    """A run whose Ray worker died: its files are lost with the worker, so the driver writes
    config.json and an ``incomplete`` status.json; --resume then runs it from the start."""
    run_dir = Path(task.run_dir)
    if not (run_dir / "config.json").is_file():
        atomic_write_json(run_dir / "config.json", task.config)
        atomic_write_json(run_dir / "status.json", {"status": "running", "next_iter": 0})
    return died_outcome(task, f"{why}; continue with --resume")


def _receive(task: RunTask, outcome: RunOutcome) -> None:
    """Write a Ray outcome's files into the driver's run directory."""
    files, outcome.files = outcome.files, None
    if files is None:
        return
    run_dir = Path(task.run_dir)
    if run_dir.exists() and not files:
        return
    unpack_dir(run_dir, files)
