"""Execution backends of a sweep: a local process pool and Ray (docs/model.md §11).

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
Ctrl-C, SIGTERM or SIGHUP to the driver (:func:`stop_signals` turns the latter two into
:class:`StopSignal`, a KeyboardInterrupt that names its signal): local workers ignore
SIGINT and SIGHUP and watch a shared halt code instead, so the running runs stop after
their current iteration with a checkpoint (``incomplete``, the reason naming the signal)
and queued runs never start; Ray tasks are cancelled (a KeyboardInterrupt inside the run,
with the same effect, the driver's signal read from the sweep's halt code in Ray) and
their files collected. Local workers die with their driver
(:func:`die_with_parent`), so a driver killed outright (kill -9) leaves no worker running.

A run that fails on a full disk (``ENOSPC``/``EDQUOT`` in its reason) halts the sweep the
same way but gently (the local pool's shared code, Ray's halt code: DRAIN): no new run
starts, the running ones go on to their end, and ``--resume`` finishes the sweep once
there is space.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import gc
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
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
GO, DRAIN = 0, -1
"""Halt codes shared by a local pool's workers: go on, or start no new run (a full disk);
a positive code is the signal that stops the sweep (running runs checkpoint and stop)."""
DISK_FULL = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
"""How a run's failure reason says that the disk (or the user's quota) is full."""
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Signals a sweep driver treats as Ctrl-C (SIGINT is Python's KeyboardInterrupt already)."""
PARENT_POLL_S = 0.5
"""Where no parent-death signal exists, how often a worker checks that its driver lives."""


def out_of_retries(attempts: int, retries: int) -> bool:
    """Whether a run whose worker died on its `attempts`-th attempt gets no other: the
    first attempt and `retries` retries, ``retries + 1`` attempts in all (both backends)."""
    return attempts > retries


class BackendError(RuntimeError):
    """The backend cannot be used (Ray missing, cluster unreachable, bad --jobs)."""


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP received by a sweep driver: handled exactly like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: a StopSignal's, else SIGINT (Ctrl-C)."""
    return int(getattr(exc, "signum", signal.SIGINT))


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopSignal(signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`StopSignal` in the main thread (the
    default would kill the driver at once and orphan its workers); restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def disk_full(reason: str | None) -> bool:
    """Whether a failure reason says the disk (or quota) is full."""
    return bool(reason) and any(text in str(reason) for text in DISK_FULL)


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
    """Process-wide state of a worker: a local pool's shared halt code (GO, DRAIN or a
    signal number), a Ray task's stop event (a threading.Event) and, in a Ray task, where
    run-directory snapshots go."""

    halt: Any = None
    stop: Any = None
    snapshot: Callable[[Path], None] | None = None


def _init_worker(halt: Any, parent_pid: int) -> None:
    """Pool initializer: keep the shared halt code; SIGINT and SIGHUP (sent to the whole
    terminal group) are the driver's to handle; die with the driver; at exit, freeze the
    heap (:func:`gc.freeze`) so the interpreter's exit does not walk every object with
    the cyclic collector (0.3-0.6 s a worker, which the pool's shutdown waits for; see
    :func:`tdlens.cli.main`)."""
    _Worker.halt = halt
    atexit.register(gc.freeze)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(parent_pid)


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that forked it exits."""


def die_with_parent(parent_pid: int) -> None:
    """End this process when the process `parent_pid` (its driver) is gone.

    On Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills it the moment the
    driver dies, even by kill -9), then a check that the driver did not die before. A
    local pool's workers are spawned by the driver's main thread, which lives as long as
    the driver. Elsewhere a daemon thread polls ``getppid()`` every PARENT_POLL_S and
    exits the process once it changed (the driver died and the worker was re-parented).
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="tdlens-parent-watch", daemon=True).start()


def _halt_code() -> int:
    """GO, DRAIN, or the signal that stops the sweep (a Ray task's stop event: the signal
    it carries as ``signum``, else SIGINT)."""
    if _Worker.halt is not None:
        return int(_Worker.halt.value)
    if _Worker.stop is not None and _Worker.stop.is_set():
        return int(getattr(_Worker.stop, "signum", signal.SIGINT))
    return GO


def _stop_requested() -> bool:
    return _halt_code() > 0


def _check_stop(progress: Any) -> None:
    """Runner progress hook: stop after this iteration when the driver asks (-> incomplete)."""
    if _stop_requested():
        raise KeyboardInterrupt


def progress_hook(
    task: RunTask, on_stop: Callable[[int], None] | None = None
) -> Callable[[Any], None] | None:
    """The Runner progress hook of a worker (None when there is nothing to do): in a Ray
    task, a snapshot of the run directory after each checkpoint (streamed back to the
    driver, so a run lost with its node resumes from it); then the stop check, which
    calls ``on_stop(signal)`` (the Runner then stops after this iteration with that
    signal as its reason) or, without it, raises KeyboardInterrupt (SIGINT)."""
    if _Worker.halt is None and _Worker.stop is None and _Worker.snapshot is None:
        return None
    every = int(task.config.get("checkpoint_every") or 0)
    run_dir = Path(task.run_dir)

    def hook(progress: Any) -> None:
        done = progress.n + 1  # iterations finished; the runner checkpointed at `every`
        last = done >= progress.outer_iters  # the final files come with the outcome
        if _Worker.snapshot is not None and every and done % every == 0 and not last:
            _Worker.snapshot(run_dir)
        if on_stop is None:
            _check_stop(progress)
            return
        code = _halt_code()  # read once: a second read could see a stop the first missed
        if code > 0:
            on_stop(code)

    return hook


def as_found(task: RunTask) -> RunTask | RunOutcome:
    """`task` as its run directory stands when a worker picks it up (another process, e.g.
    a worker orphaned by an earlier driver, may have moved it on since it was planned):
    a finished run is its outcome as it is (nothing rewritten), a run with a config.json
    resumes, and a folder without one (a start that never wrote its config) starts over."""
    from tdlens.rundir.lock import lock_is_held
    from tdlens.runs.runner import FINISHED

    run_dir = Path(task.run_dir)
    if not run_dir.is_dir() or lock_is_held(run_dir):
        return task  # a live holder: the Runner refuses it with the holder's pid
    if not (run_dir / "config.json").is_file():
        clear_unstarted(run_dir)
        return replace(task, resume=False)
    status = _status_of(run_dir)
    if status.get("status") in FINISHED:
        return RunOutcome(
            task.run_id,
            str(status["status"]),
            status.get("reason"),
            0,
            int(status.get("next_iter") or 0),
        )
    return replace(task, resume=True)


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
    halt = _halt_code()
    if halt != GO:
        why = "the disk was full" if halt == DRAIN else "the sweep was interrupted"
        return RunOutcome(task.run_id, NOT_STARTED, f"{why} first")
    try:
        found = as_found(task)
        if isinstance(found, RunOutcome):
            return found
        task = found
        with threadpool_limits(limits=1):
            cfg = None if task.resume else parse_config(task.config)
            # a sweep run writes run_report.md/.json only: the HTML page embeds plotly.js
            # (~4.6 MB a run); `tdlens report RUN` makes it on demand. The driver checked
            # the memory and disk of the whole sweep (tdlens.runs.budget), hence force.
            runner = Runner(
                cfg,
                Path(task.run_dir),
                resume=task.resume,
                handle_signals=False,
                write_report=functools.partial(write_report, html=False),
                force=True,
            )
            runner.on_progress = progress_hook(task, runner.request_stop)
            result = runner.run()
        if result.status in FINAL_STATUSES:
            prune_checkpoints(Path(task.run_dir), 1)  # a final run keeps its final checkpoint only
            compact_finished(Path(task.run_dir))
        outcome = RunOutcome(
            task.run_id,
            result.status,
            result.reason,
            result.exit_code,
            result.next_iter,
            time.perf_counter() - t0,
        )
    except Exception as exc:  # a run must never stop the sweep
        outcome = failed_outcome(task, exc, time.perf_counter() - t0)
    if outcome.status == "failed" and disk_full(outcome.reason):
        drain()
    return outcome


def compact_finished(run_dir: Path) -> None:
    """:func:`tdlens.sweeps.compact.compact_run` on a final sweep run; a failure leaves the
    run as written (a line in its stdout.log), never fails it."""
    from tdlens.rundir.files import RunFileError
    from tdlens.runs.writer import RunFiles
    from tdlens.sweeps.compact import compact_run

    try:
        compact_run(run_dir)
    except (OSError, ValueError, RunFileError) as exc:
        try:
            RunFiles(run_dir).log(f"compaction skipped: {type(exc).__name__}: {exc}")
        except OSError:
            pass


def drain() -> None:
    """Start no new run in this local pool (its running runs go on): a full disk. Set by
    the worker that met it, so the run it would pick up next never starts."""
    if _Worker.halt is not None and _Worker.halt.value == GO:
        _Worker.halt.value = DRAIN


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
    Ctrl-C (or SIGTERM, SIGHUP: :class:`StopSignal`) cancels the queued runs; the running
    ones checkpoint and stop (incomplete). After a full disk no new run starts.
    """
    if jobs < 1:
        raise BackendError(f"--jobs: expected >= 1, got {jobs}")
    if retries < 0:
        raise BackendError(f"--retries: expected >= 0, got {retries}")
    pending = list(tasks)
    attempts = {t.run_id: 1 for t in pending}
    ctx = mp.get_context("spawn")
    halt = ctx.Value("i", GO)
    while pending:
        if halt.value != GO:
            return  # a full disk: the runs left over are for --resume
        before = {t.run_id: status_fingerprint(Path(t.run_dir)) for t in pending}
        broken, exits, finished = _pool_round(pending, jobs, ctx, halt, on_outcome, fn, attempts)
        started = [t for t in broken if status_fingerprint(Path(t.run_dir)) != before[t.run_id]]
        culprits = _culprits(started, exits)
        pending = []
        for task in broken:
            if task not in started:
                pending.append(task)  # never started: it simply goes to the next pool
                continue
            if task.run_id in culprits:
                why = f"worker process died ({culprits[task.run_id]})"
                if out_of_retries(attempts[task.run_id], retries):
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
    halt: Any,
    on_outcome: OutcomeFn,
    fn: TaskFn,
    attempts: dict[str, int],
) -> tuple[list[RunTask], dict[int, int | None], int]:
    """One process pool over `tasks`: (tasks lost to a broken pool, the exit code of each
    worker pid, outcomes delivered).

    On Ctrl-C (or a StopSignal) the halt code becomes the signal: running runs end after
    their iteration (incomplete, checkpointed, the reason naming the signal), queued ones
    come back ``not started``; their outcomes are recorded before the interrupt goes on.
    A second signal stops waiting.
    """
    broken: list[RunTask] = []
    finished = 0
    pool = ProcessPoolExecutor(
        min(jobs, len(tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(halt, os.getpid()),
    )
    futures: dict[Future[RunOutcome], RunTask] = {pool.submit(fn, t): t for t in tasks}
    workers = dict(getattr(pool, "_processes", None) or {})  # pid -> Process, for exit codes
    not_done = set(futures)
    interrupted: KeyboardInterrupt | None = None
    ready: list[Future[RunOutcome]] = []

    def deliver(fut: Future[RunOutcome]) -> None:
        nonlocal finished
        task = futures[fut]
        try:
            outcome = fut.result()
        except BrokenProcessPool:
            broken.append(task)
            return
        except Exception as exc:  # raised outside execute_task, or unpicklable
            outcome = failed_outcome(task, exc)
        finished += 1
        if outcome.status == NOT_STARTED:
            return
        outcome.attempts = attempts.get(task.run_id, 1)
        if outcome.status == "failed" and disk_full(outcome.reason) and halt.value == GO:
            halt.value = DRAIN
        on_outcome(outcome)

    try:
        while not_done or ready:
            try:  # a signal while waiting or recording: stop the runs, record what comes
                if not ready:
                    done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                    ready = list(done)
                while ready:
                    deliver(ready.pop())
            except KeyboardInterrupt as exc:
                halt.value = signal_of(exc)
                if interrupted is not None:
                    raise
                interrupted = exc
    finally:
        pool.shutdown(wait=interrupted is None, cancel_futures=True)
    if interrupted is not None:
        raise interrupted
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
