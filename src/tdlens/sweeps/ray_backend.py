"""The Ray backend of a sweep (docs/model.md §11): optional, imported lazily.

Without an address a local single-node Ray is started (``num_cpus=jobs``, dashboard off,
a small object store) on the loopback interface only. With ``--address HOST:PORT`` (or
``auto``: the cluster ``ray start`` last started on this machine) the driver joins that
cluster, whose nodes need tdlens installed (docs/cluster.md):

- the address is checked first (``HOST:PORT`` or ``auto``), then that something answers
  there, so a wrong or unreachable address is one clear error (exit 2), never minutes of
  Ray's retry warnings;
- token authentication (Ray's default for new clusters): when ``RAY_AUTH_MODE`` is unset
  and a token is found where Ray documents it (``RAY_AUTH_TOKEN``, the file
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``), the driver sends it, as Ray itself
  does for ``address="auto"``; a cluster that refuses the driver is an error naming those
  settings.

Workers may share no filesystem with the driver: each runs in a temporary folder (seeded
with the run directory's files when resuming). A run is a streaming-generator task: after
each checkpoint it yields the run directory's files as bytes, and its outcome with every
file at the end; the driver writes them atomically into the sweep directory (status.json
last) as they come and deletes files the run no longer has (a resume truncates). Ray's
own task retries are off; the driver retries instead: a run whose Ray worker or node dies
is submitted again (``retries`` times, resumed from the last checkpoint that came back, if
any) and then recorded ``failed`` with the reason; ``--resume`` retries it.

The sweep's halt code (as the local pool's: GO, DRAIN or a signal number) lives in Ray's
key-value store under a key of its own, which every task reads as it starts and a running
task every ``HALT_POLL_S``:

- Ctrl-C, SIGTERM or SIGHUP: the driver sets the signal; each running run stops after its
  iteration with a checkpoint (``incomplete``, its reason naming that signal), queued runs
  never start, and the driver collects their files for up to ``RAY_STOP_TIMEOUT_S``. (Not
  ``ray.cancel``: its KeyboardInterrupt may land outside the run's generator, which then
  ends with no outcome and no files.)
- a full disk: a run that fails on it sets DRAIN before its task ends (so the run that
  takes its CPU never starts), and so does the driver when it cannot write a run's files
  (that run is failed naming the driver's file). As on the local pool: no new run starts,
  the running ones go on, ``--resume`` finishes the sweep once there is space.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from tdlens.rundir.files import atomic_write_bytes
from tdlens.sweeps.backends import (
    DEFAULT_RETRIES,
    DRAIN,
    GO,
    NOT_STARTED,
    SKIP_FILES,
    BackendError,
    OutcomeFn,
    RetryFn,
    RunOutcome,
    RunTask,
    TaskFn,
    died_outcome,
    disk_full,
    failed_outcome,
    mark_status,
    out_of_retries,
    resumable,
    signal_of,
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
    """Write `files` into `folder` atomically and delete stale files: the tables first,
    then the checkpoints, then the stale files go, status.json last. A driver killed
    midway then never holds a checkpoint whose rows it lacks (a resume from it would skip
    them for good), nor a final status beside an older snapshot's files (a compacted
    run's plain tables from before it was compacted)."""
    folder = Path(folder)
    for rel in files:
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"refusing to write outside the run directory: {rel!r}")
    order = sorted(files, key=lambda r: r.startswith("checkpoints/"))
    for rel in (r for r in order if r != "status.json"):
        atomic_write_bytes(folder / rel, files[rel])
    for p in sorted(folder.rglob("*"), reverse=True):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and p.name not in SKIP_FILES and rel not in files:
            p.unlink()
    if "status.json" in files:
        atomic_write_bytes(folder / "status.json", files["status.json"])


def execute_shipped(fn: TaskFn, task: RunTask) -> RunOutcome:
    """Run `task` in a temporary folder and return the run directory's files with it.

    A file the run names in its reason (``No space left on device writing '<file>'``) is
    named as the sweep's copy of it, ``task.run_dir/...``, with the worker's host."""
    with tempfile.TemporaryDirectory(prefix="tdlens_run_") as tmp:
        local = Path(tmp) / task.run_id
        if task.files:
            unpack_dir(local, task.files)
        outcome = fn(replace(task, run_dir=str(local), files=None))
        outcome.files = pack_dir(local)
        if outcome.reason and str(local) in outcome.reason:
            where = f" (in the Ray worker's copy on {socket.gethostname()})"
            outcome.reason = outcome.reason.replace(str(local), task.run_dir) + where
            outcome.error = (outcome.error or "").replace(str(local), task.run_dir) or None
            status = outcome.files.get("status.json")
            if status is not None:  # the same path as JSON text
                quoted = [json_text(p).encode() for p in (str(local), task.run_dir)]
                outcome.files["status.json"] = status.replace(*quoted)
        return outcome


def json_text(text: str) -> str:
    """`text` as it appears inside a JSON string (escaped, without the quotes)."""
    return json.dumps(text)[1:-1]


HALT_PREFIX = "tdlens:halt:"
"""Ray key-value store keys of the sweeps' halt codes (module docstring); no key: GO."""


def read_halt(key: str | None) -> int:
    """The halt code under `key` (GO when there is none, or no key)."""
    if key is None:
        return GO
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(key)
    return GO if value is None else int(value)


def set_halt(key: str | None, code: int, overwrite: bool = True) -> None:
    """Set the halt code under `key`; without `overwrite`, only when it is still GO."""
    if key is None:
        return
    from ray.experimental import internal_kv

    if overwrite or read_halt(key) == GO:
        internal_kv._internal_kv_put(key, str(int(code)).encode(), overwrite=True)


class _StopEvent(threading.Event):
    """A Ray task's stop event, with the signal the driver stopped the sweep with."""

    signum: int = int(signal.SIGINT)


RAY_STOP_TIMEOUT_S = 120.0
"""After Ctrl-C, how long the driver waits for stopped Ray runs to hand back their files."""
HALT_POLL_S = 0.5
"""How often a running Ray task reads the sweep's halt code (a signal stops its run)."""
PROBE_TIMEOUT_S = 5.0
"""How long the driver waits for the cluster's address to accept a connection."""
LOOPBACK = "127.0.0.1"
AUTH_HELP = (
    "the cluster uses token authentication: give this machine the cluster's token "
    "(on the head: `ray get-auth-token`) as RAY_AUTH_TOKEN, or in a file named by "
    "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (see docs/cluster.md)"
)
_ADDRESS = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})$"
)


def import_ray(address: str | None = None) -> Any:
    """Import Ray lazily, with the install hint when it is missing.

    With a cluster `address`, token authentication is set up first (module docstring), so
    that Ray reads it when it loads.
    """
    if address:
        parse_address(address)
        enable_token_auth()
    try:
        import ray
    except ImportError:
        raise BackendError(
            '--backend ray needs the optional dependency Ray: pip install -e ".[ray]" '
            "(or pip install 'ray[default]')"
        ) from None
    return ray


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` address, None for ``auto``; else BackendError."""
    if address == "auto":
        return None
    m = _ADDRESS.match(address.strip())
    port = int(m["port"]) if m else 0
    if m is None or not 0 < port < 65536:
        raise BackendError(
            f"--address '{address}': expected HOST:PORT of the cluster's head node "
            "(e.g. 10.0.0.5:6379, the port given to `ray start --head --port`) or auto"
        )
    return (m["v6"] or m["host"]), port


def token_source() -> str | None:
    """Where Ray would read an authentication token from, or None when there is none:
    ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        try:
            if path.read_text().strip():
                return f"RAY_AUTH_TOKEN_PATH={named}"
        except OSError as exc:
            raise BackendError(
                f"RAY_AUTH_TOKEN_PATH={named}: cannot read the token ({exc.strerror})"
            ) from None
        raise BackendError(f"RAY_AUTH_TOKEN_PATH={named}: the token file is empty")
    default = Path.home() / ".ray" / "auth_token"
    try:
        return str(default) if default.read_text().strip() else None
    except OSError:
        return None


def enable_token_auth() -> str | None:
    """Send the token to the cluster when ``RAY_AUTH_MODE`` is unset and a token exists
    (what Ray does for ``address="auto"`` only); returns where the token comes from."""
    if os.environ.get("RAY_AUTH_MODE"):
        return token_source() if os.environ["RAY_AUTH_MODE"].lower() == "token" else None
    source = token_source()
    if source is None:
        return None
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray already loaded its config: make it read RAY_AUTH_MODE again
        from ray._raylet import Config

        Config.initialize("")
    except Exception:
        pass
    return source


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """BackendError unless something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise BackendError(
            f"--address {host}:{port}: no Ray cluster answers there ({why}); start its "
            f"head with `ray start --head --port={port}` or check the address "
            "(docs/cluster.md)"
        ) from None


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Path]:
    """Send this process's stderr (fd 2: Ray's C++ warnings) to a temporary file."""
    with tempfile.TemporaryDirectory(prefix="tdlens_ray_") as tmp:
        path = Path(tmp) / "stderr.txt"
        saved = os.dup(2)
        try:
            with open(path, "wb") as fh:
                os.dup2(fh.fileno(), 2)
                try:
                    yield path
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)


@contextlib.contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """Keep a local single-node Ray on 127.0.0.1.

    Ray rewrites 127.0.0.1 to the machine's first non-loopback address unless its
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` switch is off (Ray's setting for single-node
    machines); this turns it off while the local Ray starts, and for its processes.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # another Ray layout: its default address applies
        yield
        return
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env, old_flag = os.environ.get(key), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env


def _ray_init(ray: Any, jobs: int, address: str | None) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    common = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if not address:
        try:
            with _loopback_only(ray):
                ray.init(
                    num_cpus=jobs,
                    include_dashboard=False,
                    object_store_memory=256 * 2**20,
                    _node_ip_address=LOOPBACK,
                    **common,
                )
        except Exception as exc:
            raise BackendError(f"--backend ray: cannot start a local Ray: {exc}") from None
        return True
    target = parse_address(address)
    token = enable_token_auth()
    if target is not None:
        probe(*target)
        _check_auth(address, token)
    with _captured_stderr() as log:
        try:
            ray.init(address=address, **common)
            return True
        except Exception as exc:
            message = _join_error(address, exc, log.read_text(errors="replace"), token)
    raise BackendError(message)


@contextlib.contextmanager
def ray_session(jobs: int, address: str | None = None) -> Iterator[Any]:
    """Start (or join, with `address`) Ray for the block and shut it down after; the sweep's
    :func:`run_ray` then uses this session. Errors are BackendError (exit 2 in the CLI)."""
    ray = import_ray(address)
    started = _ray_init(ray, jobs, address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _is_auth_error(exc: BaseException, text: str = "") -> bool:
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text += " ".join(str(e) for e in chain)
    return (
        "InvalidAuthToken" in text
        or "Unauthenticated" in text
        or any(type(e).__name__ == "AuthenticationError" for e in chain)
    )


def _check_auth(address: str, token: str | None) -> None:
    """One request to the cluster's GCS: a refused token is an error at once (ray.init
    would retry it for ~20 s). Anything else is left to ray.init."""
    try:
        from ray._raylet import GcsClient
    except ImportError:
        return
    with _captured_stderr():
        try:
            GcsClient(address=address)
            return
        except Exception as exc:
            if not _is_auth_error(exc):
                return
    raise BackendError(_auth_message(address, token))


def _auth_message(address: str, token: str | None) -> str:
    used = f"the token from {token} was refused" if token else "no token was found"
    return (
        f"--address {address}: the Ray cluster refused this driver (authentication token "
        f"missing or incorrect): {used}; {AUTH_HELP}"
    )


def _join_error(address: str, exc: BaseException, stderr: str, token: str | None) -> str:
    """One message for a failed ray.init(address=...): what failed and what to set."""
    if _is_auth_error(exc, stderr):
        return _auth_message(address, token)
    first = _first_line(exc) or type(exc).__name__
    return f"--address {address}: cannot join the Ray cluster ({first})"


def _ray_stream(fn: TaskFn, task: RunTask, halt_key: str | None = None) -> Iterator[Any]:
    """The Ray task (a streaming generator): the run goes in a thread; each snapshot of
    its directory taken after a checkpoint is yielded (a dict of files) as it is made, and
    the RunOutcome last. A signal under `halt_key` (read every HALT_POLL_S), or ray.cancel
    (a KeyboardInterrupt here: SIGINT), asks the run to stop after its iteration, with a
    checkpoint and that signal as its reason, and it still yields its outcome. A sweep
    halted before the run starts yields it ``not started``; a run failed on a full disk
    sets DRAIN before the task ends."""
    from tdlens.sweeps import backends

    halt = read_halt(halt_key)
    if halt != GO:
        why = "the disk was full" if halt == DRAIN else "the sweep was interrupted"
        yield RunOutcome(task.run_id, NOT_STARTED, f"{why} first")
        return
    snapshots: queue.Queue[dict[str, bytes] | None] = queue.Queue()
    stop = _StopEvent()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["outcome"] = execute_shipped(fn, task)
        except BaseException as exc:  # handed to the task's thread below
            box["error"] = exc
        finally:
            snapshots.put(None)

    backends._Worker.stop, backends._Worker.snapshot = stop, lambda d: snapshots.put(pack_dir(d))
    try:
        worker = threading.Thread(target=run, name=f"tdlens-{task.run_id}", daemon=True)
        worker.start()
        polled = time.monotonic()
        while True:
            if halt_key is not None and time.monotonic() - polled >= HALT_POLL_S:
                polled, code = time.monotonic(), read_halt(halt_key)
                if code > 0 and not stop.is_set():  # the driver got a signal
                    stop.signum = code
                    stop.set()
            try:
                files = snapshots.get(timeout=HALT_POLL_S)
            except queue.Empty:
                continue
            except KeyboardInterrupt:  # ray.cancel
                stop.set()
                continue
            if files is None:
                break
            yield files
        worker.join()
    finally:
        backends._Worker.stop, backends._Worker.snapshot = None, None
    if "error" in box:
        raise box["error"]
    outcome: RunOutcome = box["outcome"]
    if outcome.status == "failed" and disk_full(outcome.reason):
        set_halt(halt_key, DRAIN, overwrite=False)
    yield outcome


def run_ray(
    tasks: Iterable[RunTask],
    jobs: int,
    on_outcome: OutcomeFn,
    fn: TaskFn,
    address: str | None = None,
    retries: int = DEFAULT_RETRIES,
    on_retry: RetryFn | None = None,
) -> None:
    """Run every task as a Ray task (one CPU each); files travel as bytes (module docstring).

    Outcomes are recorded as runs finish; a run whose worker or node died is submitted
    again up to `retries` times, then recorded failed. After a full disk (met by a run, or
    by the driver writing a run's files) no new run starts; a signal (a KeyboardInterrupt)
    stops the running ones with a checkpoint, their reason naming the signal.
    """
    if jobs < 1:
        raise BackendError(f"--jobs: expected >= 1, got {jobs}")
    if retries < 0:
        raise BackendError(f"--retries: expected >= 0, got {retries}")
    tasks = list(tasks)
    if not tasks:
        return
    ray = import_ray(address)
    started = _ray_init(ray, jobs, address)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")(_ray_stream)
        fn_ref = ray.put(fn)
        refs: dict[Any, RunTask] = {}
        attempts = {t.run_id: 1 for t in tasks}
        halt_key = f"{HALT_PREFIX}{uuid.uuid4().hex}"

        def submit(task: RunTask) -> None:
            shipped = replace(task, files=pack_dir(Path(task.run_dir)) if task.resume else None)
            refs[remote.remote(fn_ref, shipped, halt_key)] = task

        def lost(task: RunTask, why: str) -> None:
            n = attempts[task.run_id]
            if out_of_retries(n, retries):
                outcome = died_outcome(task, f"{why} on {n} attempt(s); retry with --resume")
                outcome.attempts = n
                on_outcome(outcome)
                return
            attempts[task.run_id] = n + 1
            if on_retry is not None:
                on_retry(task, n + 1, why)
            submit(resumable(task))

        for task in tasks:
            submit(task)
        try:
            _collect_ray(ray, refs, on_outcome, attempts, lost, halt_key)
        except KeyboardInterrupt as exc:  # running runs checkpoint and stop, queued ones
            set_halt(halt_key, signal_of(exc))  # never start (module docstring)
            _collect_ray(
                ray, refs, on_outcome, attempts, None, halt_key, timeout=RAY_STOP_TIMEOUT_S
            )
            raise
        finally:
            with contextlib.suppress(Exception):
                from ray.experimental import internal_kv

                internal_kv._internal_kv_del(halt_key)
    finally:
        if started:
            ray.shutdown()


def _collect_ray(
    ray: Any,
    refs: dict[Any, RunTask],
    on_outcome: OutcomeFn,
    attempts: dict[str, int],
    lost: Any,
    halt_key: str | None = None,
    timeout: float | None = None,
) -> None:
    """Write snapshots and record outcomes as the Ray tasks stream them (until `timeout`
    seconds, if given); a task whose worker or node died goes to `lost` (None: recorded
    failed at once, keeping the last snapshot's checkpoint). A run that failed on a full
    disk, or whose files the driver could not write, sets the halt code to DRAIN: such a
    run is failed naming the file; a snapshot that could not be written is skipped (the
    run goes on, and its final files are written whole)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while refs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=left)
        if not ready:
            return
        gen = ready[0]
        task = refs[gen]
        try:
            item = ray.get(next(gen))
        except StopIteration:  # ended without an outcome: treat as lost
            item = ray.exceptions.RayError("the task ended without an outcome")
        except ray.exceptions.TaskCancelledError:
            refs.pop(gen)
            continue
        except ray.exceptions.RayTaskError as exc:  # raised by the task, not a crash
            refs.pop(gen)
            on_outcome(failed_outcome(task, exc))
            continue
        except ray.exceptions.RayError as exc:
            item = exc
        if isinstance(item, dict):  # a snapshot after a checkpoint: the run goes on
            try:
                unpack_dir(Path(task.run_dir), item)
            except OSError as exc:
                if disk_full(exc.strerror):
                    set_halt(halt_key, DRAIN, overwrite=False)
            continue
        refs.pop(gen)
        if isinstance(item, BaseException):
            why = f"Ray worker or node lost ({type(item).__name__}: {_first_line(item)})"
            if lost is None:
                on_outcome(died_outcome(task, f"{why}; retry with --resume", "incomplete"))
            else:
                lost(task, why)
            continue
        if item.status == NOT_STARTED:  # the sweep was halted first: --resume runs it
            continue
        try:
            _receive(task, item)
        except OSError as exc:
            item = unwritten_outcome(task, item, exc)
        if item.status == "failed" and disk_full(item.reason):
            set_halt(halt_key, DRAIN, overwrite=False)
        item.attempts = attempts.get(task.run_id, 1)
        on_outcome(item)


def unwritten_outcome(task: RunTask, outcome: RunOutcome, exc: OSError) -> RunOutcome:
    """`outcome` of a run whose files the driver could not write (e.g. a full disk): failed,
    naming the file; the run directory keeps what was written (``--resume`` continues it
    from its last checkpoint there)."""
    where = f" writing '{exc.filename}'" if exc.filename else ""
    reason = (
        f"{exc.strerror or exc}{where} (the driver, receiving the run's files; the run "
        f"itself ended {outcome.status} at iteration {outcome.next_iter})"
    )
    with contextlib.suppress(OSError):  # the disk may still be full: sweep.json says it
        mark_status(Path(task.run_dir), "failed", reason)
    return RunOutcome(task.run_id, "failed", reason, 1, outcome.next_iter, outcome.seconds)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _receive(task: RunTask, outcome: RunOutcome) -> None:
    """Write a Ray outcome's files into the driver's run directory."""
    files, outcome.files = outcome.files, None
    if files is None:
        return
    run_dir = Path(task.run_dir)
    if run_dir.exists() and not files:
        return
    unpack_dir(run_dir, files)
