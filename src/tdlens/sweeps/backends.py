"""Execution backends of a sweep: a local process pool and Ray (SPEC section 11).

Both run :func:`execute_task` once per run, with the config's ``threads = 1``, BLAS held
to one thread (``threadpoolctl``) and ``handle_signals=False``, so a run's learning curves
are bit-identical whatever the backend and the number of workers.

- ``local``: ``concurrent.futures.ProcessPoolExecutor`` (spawn context, ``jobs`` workers)
  writing straight into the sweep's run directories. A worker that dies (kill -9, out of
  memory) breaks the pool; the runs it and its siblings were running, and the runs not yet
  started, go to a fresh pool, where the started ones resume from their checkpoints. The
  run whose worker died is charged an attempt (its siblings, terminated by the broken pool,
  are not); after ``retries`` retries it is recorded ``failed`` with the reason (the exit
  code or signal of its worker), the other runs go on, and ``--resume`` retries it.
- ``ray``: :mod:`tdlens.sweeps.ray_backend` (optional dependency, ``pip install -e
  ".[ray]"``); workers may share no filesystem with the driver.

A run that raises never stops the sweep: :func:`execute_task` catches everything and
returns a ``failed`` outcome with the traceback (also written to the run's status.json).
Ctrl-C in the driver: local workers ignore SIGINT and watch a stop event instead, so the
running runs stop after their current iteration with a checkpoint (``incomplete``) and
queued runs never start; Ray tasks are cancelled (a KeyboardInterrupt inside the run, with
the same effect) and their files collected.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tdlens.rundir.files import atomic_write_json, read_json

TaskFn = Callable[["RunTask"], "RunOutcome"]
OutcomeFn = Callable[["RunOutcome"], None]
RetryFn = Callable[["RunTask", int, str], None]
"""Told of each retry: the task, the attempt about to start (2, 3, ...) and why."""
DEFAULT_RETRIES = 2
"""How many times a run whose worker process (or node) died is retried before it fails."""
NOT_STARTED = "not started"
FINAL_STATUSES = frozenset({"complete", "diverged"})
"""Run statuses that a sweep's --resume skips: their run keeps only its final checkpoint."""
SKIP_FILES = frozenset({".lock"})
"""Files never shipped between Ray workers and the driver."""


class BackendError(RuntimeError):
    """The backend cannot be used (Ray missing, cluster unreachable, bad --jobs)."""


@dataclass(frozen=True)
class RunTask:
    """What a worker needs to run (or resume) one run.

    ``config`` is the resolved config dict (with ``threads = 1``); ``files`` are the run
    directory's files (relative path -> bytes) shipped to a Ray worker for a resume.
    """

    run_id: str
    run_dir: str
    config: dict[str, Any]
    resume: bool = False
    files: dict[str, bytes] | None = None


@dataclass
class RunOutcome:
    """How a run ended, as seen by the worker (or the driver when the worker died)."""

    run_id: str
    status: str
    reason: str | None = None
    exit_code: int | None = None
    next_iter: int = 0
    seconds: float = 0.0
    error: str | None = None
    files: dict[str, bytes] | None = field(default=None, repr=False)
    attempts: int = 1


# --------------------------------------------------------------------------- worker side


def _status_of(run_dir: Path) -> dict[str, Any]:
    try:
        data = read_json(run_dir / "status.json")
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def mark_status(run_dir: Path, status: str, reason: str, **extra: Any) -> None:
    """Record `status` in run_dir/status.json unless the run already ended otherwise."""
    run_dir = Path(run_dir)
    old = _status_of(run_dir)
    if old.get("status") not in (None, "running"):
        return
    atomic_write_json(run_dir / "status.json", {**old, "status": status, "reason": reason, **extra})


class _Worker:
    """Process-wide state of a worker: the driver's stop event (a local pool worker; a Ray
    task sets a threading.Event) and, in a Ray task, where run-directory snapshots go."""

    stop: Any = None
    snapshot: Callable[[Path], None] | None = None


def _init_worker(stop: Any) -> None:
    """Pool initializer: keep the driver's stop event; Ctrl-C is the driver's to handle."""
    _Worker.stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_requested() -> bool:
    return _Worker.stop is not None and _Worker.stop.is_set()


def _check_stop(progress: Any) -> None:
    """Runner progress hook: stop after this iteration when the driver asks (-> incomplete)."""
    if _stop_requested():
        raise KeyboardInterrupt


def progress_hook(task: RunTask) -> Callable[[Any], None] | None:
    """The Runner progress hook of a worker (None when there is nothing to do): in a Ray
    task, a snapshot of the run directory after each checkpoint (streamed back to the
    driver, so a run lost with its node resumes from it); then the stop check."""
    if _Worker.stop is None and _Worker.snapshot is None:
        return None
    every = int(task.config.get("checkpoint_every") or 0)
    run_dir = Path(task.run_dir)

    def hook(progress: Any) -> None:
        done = progress.n + 1  # iterations finished; the runner checkpointed at `every`
        last = done >= progress.outer_iters  # the final files come with the outcome
        if _Worker.snapshot is not None and every and done % every == 0 and not last:
            _Worker.snapshot(run_dir)
        _check_stop(progress)

    return hook


def execute_task(task: RunTask) -> RunOutcome:
    """Run (or resume) one run with one thread; never raises (a failure is an outcome).

    In a local pool worker, a stop requested by the driver (Ctrl-C) ends the run after its
    current iteration with a checkpoint (status incomplete), and a run not yet started is
    returned as ``not started``.
    """
    from threadpoolctl import threadpool_limits

    from tdlens.config import parse_config
    from tdlens.report import write_report
    from tdlens.runs.checkpoint import prune_checkpoints
    from tdlens.runs.runner import Runner

    t0 = time.perf_counter()
    run_dir = Path(task.run_dir)
    if _stop_requested():
        return RunOutcome(task.run_id, NOT_STARTED, "the sweep was interrupted first")
    try:
        with threadpool_limits(limits=1):
            cfg = None if task.resume else parse_config(task.config)
            # a sweep run writes run_report.md/.json only: the HTML page embeds plotly.js
            # (~4.6 MB a run); `tdlens report RUN` makes it on demand. The driver checked
            # the memory and disk of the whole sweep (tdlens.runs.budget), hence force.
            runner = Runner(
                cfg,
                run_dir,
                resume=task.resume,
                handle_signals=False,
                write_report=functools.partial(write_report, html=False),
                force=True,
            )
            runner.on_progress = progress_hook(task)
            result = runner.run()
        if result.status in FINAL_STATUSES:
            prune_checkpoints(run_dir, 1)  # a final run keeps its final checkpoint only
        return RunOutcome(
            task.run_id,
            result.status,
            result.reason,
            result.exit_code,
            result.next_iter,
            time.perf_counter() - t0,
        )
    except Exception as exc:  # a run must never stop the sweep
        return failed_outcome(task, exc, time.perf_counter() - t0)


def failed_outcome(task: RunTask, exc: BaseException, seconds: float = 0.0) -> RunOutcome:
    """A ``failed`` outcome with the traceback, also written to the run's status.json."""
    from tdlens.rundir.lock import RunLockedError

    tb = "".join(traceback.format_exception(exc))
    reason = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, RunLockedError):  # a locked run belongs to a live process
        try:
            mark_status(Path(task.run_dir), "failed", reason, traceback=tb)
        except OSError:
            pass
    return RunOutcome(task.run_id, "failed", reason, 1, 0, seconds, error=tb)


# --------------------------------------------------------------------------- driver side


def status_fingerprint(run_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of status.json, or None; a change means a worker touched the run."""
    try:
        st = (Path(run_dir) / "status.json").stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def died_outcome(task: RunTask, why: str, status: str = "failed") -> RunOutcome:
    """The outcome of a run whose worker died for good: status.json says `status` with the
    reason `why` (written by the driver: config.json too when the run never wrote one, so
    ``--resume`` retries it from its latest checkpoint, or from the start)."""
    run_dir = Path(task.run_dir)
    if not (run_dir / "config.json").is_file():
        atomic_write_json(run_dir / "config.json", task.config)
        atomic_write_json(run_dir / "status.json", {"status": "running", "next_iter": 0})
    mark_status(run_dir, status, why)
    now = _status_of(run_dir)
    return RunOutcome(
        task.run_id,
        now.get("status", status),
        now.get("reason", why),
        now.get("exit_code", 1),
        int(now.get("next_iter") or 0),
    )


def exit_reason(exitcode: int | None) -> str:
    """A worker process's end in words: ``killed by SIGKILL (...)`` or ``exit code 3``."""
    if exitcode is None:
        return "unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (e.g. the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


def resumable(task: RunTask) -> RunTask:
    """`task` to run again: resumed when its run directory holds a config.json."""
    return replace(task, resume=(Path(task.run_dir) / "config.json").is_file(), files=None)


def run_local(
    tasks: Iterable[RunTask],
    jobs: int,
    on_outcome: OutcomeFn,
    fn: TaskFn,
    retries: int = DEFAULT_RETRIES,
    on_retry: RetryFn | None = None,
) -> None:
    """Run every task on a spawn process pool of `jobs` workers (see the module docstring).

    When the pool breaks, every run it held goes to a new pool (started runs resume from
    their checkpoints); the run whose worker died is charged an attempt and, past
    `retries` retries, recorded failed. A round in which nothing started fails the rest.
    Ctrl-C cancels the queued runs; the running ones checkpoint and stop (incomplete).
    """
    if jobs < 1:
        raise BackendError(f"--jobs: expected >= 1, got {jobs}")
    if retries < 0:
        raise BackendError(f"--retries: expected >= 0, got {retries}")
    pending = list(tasks)
    attempts = {t.run_id: 1 for t in pending}
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    while pending:
        before = {t.run_id: status_fingerprint(Path(t.run_dir)) for t in pending}
        broken, exits, finished = _pool_round(pending, jobs, ctx, stop, on_outcome, fn, attempts)
        started = [t for t in broken if status_fingerprint(Path(t.run_dir)) != before[t.run_id]]
        culprits = _culprits(started, exits)
        pending = []
        for task in broken:
            if task not in started:
                pending.append(task)  # never started: it simply goes to the next pool
                continue
            if task.run_id in culprits:
                why = f"worker process died ({culprits[task.run_id]})"
                if attempts[task.run_id] > retries:
                    outcome = died_outcome(
                        task, f"{why} on {attempts[task.run_id]} attempt(s); retry with --resume"
                    )
                    outcome.attempts = attempts[task.run_id]
                    on_outcome(outcome)
                    finished += 1
                    continue
                attempts[task.run_id] += 1
                if on_retry is not None:
                    on_retry(task, attempts[task.run_id], why)
            pending.append(resumable(task))
            finished += 1  # it ran: the next round makes progress
        if pending and not finished:  # nothing could run: do not loop forever
            for task in pending:
                on_outcome(RunOutcome(task.run_id, "failed", "the worker pool broke at start", 1))
            return


def _culprits(started: list[RunTask], exits: dict[int, int | None]) -> dict[str, str]:
    """The started runs whose own worker died (run id -> how), from status.json's pid and
    the pool's exit codes; a broken pool SIGTERMs the other workers, which are not charged.
    When no run can be blamed, every started run is."""
    blamed = {}
    for task in started:
        pid = _status_of(Path(task.run_dir)).get("pid")
        code = exits.get(pid) if isinstance(pid, int) else None
        if pid in exits and code != -signal.SIGTERM:
            blamed[task.run_id] = exit_reason(code)
    if not blamed:
        bad = [c for c in exits.values() if c not in (None, 0, -signal.SIGTERM)]
        how = exit_reason(bad[0]) if bad else "the process pool broke"
        blamed = {t.run_id: how for t in started}
    return blamed


def _pool_round(
    tasks: list[RunTask],
    jobs: int,
    ctx: Any,
    stop: Any,
    on_outcome: OutcomeFn,
    fn: TaskFn,
    attempts: dict[str, int],
) -> tuple[list[RunTask], dict[int, int | None], int]:
    """One process pool over `tasks`: (tasks lost to a broken pool, the exit code of each
    worker pid, outcomes delivered).

    On Ctrl-C the stop event is set: running runs end after their iteration (incomplete,
    checkpointed), queued ones come back ``not started``; their outcomes are recorded
    before the KeyboardInterrupt goes on. A second Ctrl-C stops waiting.
    """
    broken: list[RunTask] = []
    finished = 0
    pool = ProcessPoolExecutor(
        min(jobs, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(stop,)
    )
    futures: dict[Future[RunOutcome], RunTask] = {pool.submit(fn, t): t for t in tasks}
    workers = dict(getattr(pool, "_processes", None) or {})  # pid -> Process, for exit codes
    not_done = set(futures)
    interrupted = False
    try:
        while not_done:
            try:
                done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                stop.set()
                continue
            for fut in done:
                task = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    broken.append(task)
                    continue
                except Exception as exc:  # raised outside execute_task, or unpicklable
                    outcome = failed_outcome(task, exc)
                if outcome.status != NOT_STARTED:
                    outcome.attempts = attempts.get(task.run_id, 1)
                    on_outcome(outcome)
                finished += 1
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
    if interrupted:
        raise KeyboardInterrupt
    exits = {}
    for pid, proc in workers.items():
        proc.join(timeout=5)
        exits[pid] = proc.exitcode
    return broken, exits, finished


def clear_unstarted(run_dir: Path) -> None:
    """Remove a run folder that holds no config.json (a run that never really started)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and not (run_dir / "config.json").exists():
        shutil.rmtree(run_dir)


def default_jobs() -> int:
    """The number of cores (the default --jobs)."""
    return max(1, os.cpu_count() or 1)
