"""Run lifecycle: the training loop around the learner and probes (docs/model.md §7, §15).

``Runner(cfg, run_dir).run()`` checks the memory and disk the run will need
(:mod:`tdlens.runs.budget`), creates (or, with resume, reopens) a run directory, holds its
lock, and for n = start..outer_iters-1: runs outer iteration n, stops with status
``diverged`` on non-finite parameters, runs a probe round when the schedule says so,
appends the learning-curve row (flushed), checkpoints every ``checkpoint_every``
iterations (keeping the newest ``checkpoint_keep``), and finally writes the report.

Every exit path ends with an honest status.json: SIGINT/SIGTERM/SIGHUP finish the current
iteration, checkpoint, mark the run ``incomplete`` with the reason and return exit code
130/143/129; any exception (MemoryError, a full disk, a bug) marks it ``failed`` with a
one-line reason and the traceback and returns exit code 1. What cannot be written then (a
full disk) is listed in ``RunResult.unwritten``. A fresh run that fails before its first
status leaves no directory behind.

The loop commits an iteration (``LoopState``) only once its row is written, so the
checkpoint of a failure is always the state after a whole iteration and its probe round.

Hooks: ``write_report(run_dir)`` writes the report at the end (and every ``report_every``
iterations; the caller passes :func:`tdlens.report.write_report`, so the runner does not
depend on the report); ``on_start(run_dir)`` runs once the status says ``running`` (the
CLI indexes the run in the catalog then); ``on_progress(Progress)`` after each iteration;
``on_iteration(n, result)`` sees every iteration's full result (the sanity suite observes
every ratio and TD target through it); without that hook the iteration keeps no bar_phi
in its batch (``keep_bar_phi=False`` of :func:`tdlens.learner.outer_iteration`).

Resume loads the newest checkpoint that verifies (skipping corrupt ones, and saying so),
truncates every table to its rows and continues; because all random draws are keyed by
(seed, stream, iteration, chain) the result is bit-identical to an uninterrupted run
(every column but iter_time_s). It never discards rows silently: a config.json that does
not match its checkpoints (or status.json's config_hash), a symbolic link in the run
directory, or a table whose ``iter`` is not a number is a RunDirError before anything is
changed; temporary files of writes a kill cut short are removed. ``restart=True`` starts
a run over on purpose from its config.json, its old files moved to
``previous/<YYYYmmdd_HHMMSS>/``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import (
    ConfigError,
    RunConfig,
    check_name,
    config_differences,
    config_from_json,
)
from tdlens.features import FeatureMaps, Workspace, make_feature_maps
from tdlens.learner import METRIC_COLUMNS, IterationResult, Params, init_params, outer_iteration
from tdlens.probes import registry
from tdlens.probes.manager import ProbeManager
from tdlens.rundir.files import (
    RunFileError,
    find_symlinks,
    read_json,
    timestamped_dir,
)
from tdlens.rundir.lock import RunLock
from tdlens.runs.budget import check_resources
from tdlens.runs.checkpoint import (
    Checkpoint,
    newest_valid_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tdlens.runs.writer import RunFiles, now


def curve_columns() -> tuple[str, ...]:
    """learning_curves.csv: the learner's columns, then every registered probe's summary
    columns (empty where no probe ran)."""
    return (*METRIC_COLUMNS, *registry.summary_columns())


SCHEDULE_COLUMNS = ("alpha_w_t", "alpha_pi_t")
"""Learning-curve columns added with the step-size schedules; a run without them was
constant (alpha_w, alpha_pi of its config.json) and a resume continues its old table."""
DIVERGENCE_COLUMNS = ("td_loss", "w_norm", "critic_teacher_error", "tracking_gap")
"""A run diverges when its parameters or any of these metrics are not finite."""
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
FINISHED = ("complete", "diverged")
"""Statuses a resume has nothing to add to."""
PREVIOUS_DIR = "previous"
"""``--restart`` moves a run's old files to ``previous/<YYYYmmdd_HHMMSS>/``."""


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, not a run, wrong config)."""


class RunFinishedError(RunDirError):
    """``--resume`` of a run that already finished: nothing to do, nothing rewritten."""


@dataclass
class Progress:
    """What the loop reports after each iteration (for progress bars and logs)."""

    n: int
    outer_iters: int
    metrics: dict[str, float]
    probe_reason: str | None = None
    probe_seconds: float = 0.0
    status: str = "running"


@dataclass
class RunResult:
    """How a run ended; `unwritten` lists the files a failure could not write (full disk)."""

    run_dir: Path
    status: str
    reason: str | None
    exit_code: int
    next_iter: int
    report_paths: list[Path] = field(default_factory=list)
    unwritten: list[str] = field(default_factory=list)
    resumed_from: str | None = None


@dataclass(frozen=True)
class LoopState:
    """The committed state after ``next_iter`` whole iterations (what a checkpoint holds)."""

    next_iter: int
    params: Params | None
    td_loss_history: tuple[float, ...]
    probe_state: dict[str, Any]


def failure_reason(exc: BaseException, n: int) -> str:
    """One line saying what went wrong at iteration `n` (out of memory, a full disk...)."""
    if isinstance(exc, MemoryError):
        text = f"out of memory at iteration {n}: {exc or 'MemoryError'}"
    elif isinstance(exc, OSError) and exc.errno is not None:
        where = f" writing '{exc.filename}'" if exc.filename else ""
        text = f"{os.strerror(exc.errno)}{where} at iteration {n}"
    else:
        text = f"{type(exc).__name__} at iteration {n}: {exc}"
    return " ".join(text.split())


def default_run_dir(output_dir: Path, name: str) -> Path:
    """``<output_dir>/<YYYYmmdd_HHMMSS>_<name>`` (suffixed when taken); `name` must pass
    :func:`tdlens.config.check_name` (it can never step out of `output_dir`)."""
    try:
        check_name(name)
    except ConfigError as exc:
        raise RunDirError(str(exc)) from None
    return timestamped_dir(output_dir, name)


class Runner:
    """Runs one config in one run directory (see the module docstring)."""

    def __init__(
        self,
        cfg: RunConfig | None,
        run_dir: str | Path,
        resume: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        handle_signals: bool = True,
        on_iteration: Callable[[int, IterationResult], None] | None = None,
        write_report: Callable[[Path], list[Path]] | None = None,
        force: bool = False,
        on_start: Callable[[Path], None] | None = None,
        restart: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.restart = restart
        self.write_report = write_report
        self.resume = resume
        self.force = force
        self.on_progress = on_progress
        self.on_iteration = on_iteration
        self.on_start = on_start
        self.handle_signals = handle_signals
        self._stop_signal: int | None = None
        self.files = RunFiles(self.run_dir)
        self._state = LoopState(0, None, (), {})
        self._unwritten: list[str] = []
        self._resumed_from: str | None = None
        self._restarted_from: Path | None = None
        if resume and restart:
            raise RunDirError("--resume and --restart exclude each other; choose one")
        if resume or restart:
            links = find_symlinks(self.run_dir, skip=(PREVIOUS_DIR,))
            if links:
                raise RunDirError(
                    f"run directory '{self.run_dir}' holds symbolic link(s) "
                    f"{', '.join(repr(str(p.relative_to(self.run_dir))) for p in links[:3])}; "
                    "tdlens does not write through links in a run directory (replace them "
                    "with regular files or remove them); nothing was changed"
                )
        if resume:
            self.cfg = self._open_for_resume(cfg)
        elif restart:
            self.cfg = self._open_for_restart(cfg)
        else:
            if cfg is None:
                raise ValueError("a config is needed for a new run")
            try:
                check_name(cfg.name)
            except ConfigError as exc:
                raise RunDirError(str(exc)) from None
            check_creatable(self.run_dir)
            if self.run_dir.is_dir() and any(self.run_dir.iterdir()):
                raise RunDirError(
                    f"run directory '{self.run_dir}' already exists; pass --resume to continue "
                    "it or choose another --output-dir/--name"
                )
            self.cfg = cfg
        if not force:
            check_resources(self.cfg, self.run_dir)

    def _open_for_resume(self, cfg: RunConfig | None) -> RunConfig:
        if not self.run_dir.exists():
            raise RunDirError(f"--resume: run directory '{self.run_dir}' does not exist")
        if not (self.run_dir / "config.json").is_file():
            raise RunDirError(f"--resume: '{self.run_dir}' is not a run directory (no config.json)")
        saved = config_from_json(self.run_dir / "config.json")
        if cfg is not None and cfg.config_hash() != saved.config_hash():
            raise RunDirError(
                f"--resume: the given config differs from '{self.run_dir}/config.json'; "
                "resume with the run's own config"
            )
        status_path = self.run_dir / "status.json"
        old = read_json(status_path) if status_path.is_file() else {}
        if old.get("status") in FINISHED:
            raise RunFinishedError(
                f"run '{self.run_dir}' is already {old['status']} "
                f"({old.get('next_iter')} of {old.get('outer_iters')} iterations); nothing to "
                f"resume (`tdlens report {self.run_dir}` rewrites its report)"
            )
        self._check_matches_checkpoints(saved, old)
        return saved

    def _check_matches_checkpoints(self, saved: RunConfig, status: dict[str, Any]) -> None:
        """Refuse (RunDirError, nothing touched) when config.json is not the config its
        checkpoints, or its status.json, were written with: resuming would discard their
        rows. Names the differing keys when the checkpoint carries its config."""
        found = newest_valid_checkpoint(self.run_dir, saved.config_hash())
        restart = f"`tdlens run {self.run_dir} --restart` starts over (keeping the old files)"
        if found.foreign:
            path, ckpt = found.foreign[0]
            if ckpt.config is not None:
                keys = config_differences(saved.to_dict(), ckpt.config)
                what = "differing keys: " + ", ".join(keys or ["none (same values)"])
            else:
                what = (
                    f"config hash {ckpt.config_hash} vs {saved.config_hash()}; the checkpoint "
                    "predates stored configs, so the keys cannot be named"
                )
            raise RunDirError(
                f"--resume: '{self.run_dir}/config.json' does not match checkpoint "
                f"'{path.name}' ({what}); resuming would discard its rows. Restore the "
                f"config, or {restart}"
            )
        written = status.get("config_hash")
        if found.checkpoint is None and written and written != saved.config_hash():
            raise RunDirError(
                f"--resume: '{self.run_dir}/config.json' (hash {saved.config_hash()}) is not "
                f"the config the run was started with (hash {written}, status.json); "
                f"restore it, or {restart}"
            )

    def _open_for_restart(self, cfg: RunConfig | None) -> RunConfig:
        """``--restart``: the run directory's own config.json (or `cfg`), started over."""
        if not self.run_dir.is_dir() or not (self.run_dir / "config.json").is_file():
            raise RunDirError(f"--restart: '{self.run_dir}' is not a run directory")
        saved = cfg if cfg is not None else config_from_json(self.run_dir / "config.json")
        try:
            check_name(saved.name)
        except ConfigError as exc:
            raise RunDirError(str(exc)) from None
        return saved

    def _move_to_previous(self) -> Path:
        """Move every file of the run (but ``previous/`` and the held ``.lock``) to
        ``previous/<YYYYmmdd_HHMMSS>/`` (renames within one directory: nothing copied)."""
        keep = {PREVIOUS_DIR, ".lock"}
        stamp = time.strftime("%Y%m%d_%H%M%S")
        target, k = self.run_dir / PREVIOUS_DIR / stamp, 2
        while target.exists():
            target, k = self.run_dir / PREVIOUS_DIR / f"{stamp}_{k}", k + 1
        target.mkdir(parents=True)
        for entry in sorted(self.run_dir.iterdir()):
            if entry.name not in keep:
                os.replace(entry, target / entry.name)
        return target

    # ------------------------------------------------------------------ files

    def _checkpoint(self, state: LoopState) -> None:
        """Save `state`, the rows it covers synced to disk first (``RunFiles.sync``)."""
        self.files.sync()
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                params=state.params,
                next_iter=state.next_iter,
                td_loss_history=np.asarray(state.td_loss_history, dtype=np.float64),
                probe_state=state.probe_state,
                config_hash=self.cfg.config_hash(),
                config=self.cfg.to_dict(),
            ),
        )
        prune_checkpoints(self.run_dir, self.cfg.checkpoint_keep)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self._stop_signal = signum
        self.files.log(f"received {signal.Signals(signum).name}: stopping after this iteration")

    def request_stop(self, signum: int) -> None:
        """Stop after the current iteration as if `signum` had arrived (a sweep worker told
        by its driver): checkpoint, status ``incomplete`` naming the signal."""
        if self._stop_signal is None:
            self._on_signal(signum, None)

    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in EXIT_SIGNAL}

    # ------------------------------------------------------------------ main

    def run(self) -> RunResult:
        """Run (or resume) to the end, an interruption, divergence or failure.

        Raises :class:`RunDirError` before anything is written when the directory cannot be
        made. (The constructor raises :class:`tdlens.runs.budget.ResourceError` when the
        machine cannot take the run, unless ``force``.)
        """
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"cannot create run directory '{self.run_dir}': {exc.strerror}"
                + (f" ('{exc.filename}')" if exc.filename else "")
            ) from None
        with RunLock(self.run_dir):
            if self.restart:
                self._restarted_from = self._move_to_previous()
            previous = self._install_signals()
            try:
                return self._run_locked(created)
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    def _prepare(self) -> LoopState:
        """Fresh run: write config.json. Resume: cut tables back to the checkpoint."""
        if not self.resume:
            self.files.write_config(self.cfg)
            if self._restarted_from is not None:
                self.files.log(
                    f"restarted on purpose (--restart); the old files are in "
                    f"'{self._restarted_from.relative_to(self.run_dir)}'"
                )
            return LoopState(0, None, (), {})
        for tmp in remove_stale_temps(self.run_dir):
            self.files.log(f"removed '{tmp.relative_to(self.run_dir)}' (a write cut short)")
        found = newest_valid_checkpoint(self.run_dir, self.cfg.config_hash())
        for why in found.skipped:
            self.files.log(f"skipped {why}")
        if found.checkpoint is None:
            state = LoopState(0, None, (), {})
            self._resumed_from = "the start (no checkpoint)"
        else:
            ckpt = found.checkpoint
            history = tuple(map(float, ckpt.td_loss_history))
            state = LoopState(ckpt.next_iter, ckpt.params, history, ckpt.probe_state)
            self._resumed_from = (
                f"'{found.path.name}' ({ckpt.next_iter} iterations done; continuing at "
                f"iteration {ckpt.next_iter})"
            )
        if found.skipped:
            self._resumed_from += " after skipping: " + "; ".join(found.skipped)
        self.files.cut_tables(state.next_iter)
        return state

    def _run_locked(self, created: bool) -> RunResult:
        old_status = {}
        if self.resume and (self.run_dir / "status.json").exists():
            old_status = read_json(self.run_dir / "status.json")
        try:
            self._state = self._prepare()
            self.files.status = {
                "status": "running",
                "reason": None,
                "next_iter": self._state.next_iter,
                "outer_iters": self.cfg.outer_iters,
                "started_at": old_status.get("started_at", now()),
                "resumed_at": now() if self.resume else None,
                "resumed_from": self._resumed_from,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "config_hash": self.cfg.config_hash(),
            }
            self.files.write_status()
        except RunFileError as exc:
            if not self.resume:
                raise
            reason = f"cannot resume: {' '.join(str(exc).split())}; no table was changed"
            self._attempt(
                "status.json",
                lambda: self.files.write_status(
                    **{**old_status, "status": "failed", "reason": reason, "exit_code": 2}
                ),
            )
            raise RunDirError(f"--resume: {exc}; no table was changed") from None
        except OSError as exc:
            if created and not self.resume:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                raise RunDirError(
                    f"{failure_reason(exc, 0)}; nothing was kept of '{self.run_dir}'"
                ) from None
            raise
        try:
            if self.on_start is not None:
                self.on_start(self.run_dir)
            self._train()
        except KeyboardInterrupt:
            self._stop_signal = self._stop_signal or signal.SIGINT
        except Exception as exc:
            return self._finish_failed(exc)
        if self._state.next_iter < self.cfg.outer_iters:
            return self._finish_interrupted()
        return self._finish("complete", None, 0, checkpoint=False)

    def _train(self) -> None:
        """The loop; returns at the end or a stop signal, raises _Diverged or any failure."""
        cfg = self.cfg
        start = self._state.next_iter
        self.files.log(
            f"{'resuming' if self.resume else 'starting'} at iteration {start} of {cfg.outer_iters}"
            + (f" from {self._resumed_from}" if self._resumed_from else "")
        )
        if not cfg.sigma_condition_ok:
            self.files.log(
                f"warning: sigma_pi^2 = {cfg.sigma_pi**2:.4g} >= 2 sigma_mu^2 = "
                f"{2 * cfg.sigma_mu**2:.4g} with rho unclipped: E_mu[rho^2] is infinite "
                "(docs/model.md §3)"
            )
        maps = make_feature_maps(cfg)
        if self._state.params is None:
            self._state = replace(self._state, params=init_params(cfg, maps))
        probes = self._make_probes(maps, self._state.probe_state)
        if probes is not None and not self._state.probe_state:
            self._state = replace(self._state, probe_state=probes.state_dict())
        curves = self.files.curves(curve_columns(), later=SCHEDULE_COLUMNS)
        workspace = Workspace()
        while self._state.next_iter < cfg.outer_iters and self._stop_signal is None:
            state = self._state
            n = state.next_iter
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is handled
                # bar_phi only for an on_iteration hook (the sanity suite reads the batch,
                # and its twins replace outer_iteration with a five-argument call)
                lean = {} if self.on_iteration is not None else {"keep_bar_phi": False}
                result = outer_iteration(cfg, maps, state.params, n, workspace, **lean)
            if not result.params.is_finite() or not all(
                math.isfinite(result.metrics[k]) for k in DIVERGENCE_COLUMNS
            ):
                raise _Diverged(result)
            if self.on_iteration is not None:
                self.on_iteration(n, result)
            history = (*state.td_loss_history, result.metrics["td_loss"])
            row: dict[str, Any] = dict(result.metrics)
            params, delta = result.params, result.delta
            del result  # its batch holds the features, which a probe round releases
            probe_reason, probe_s = self._maybe_probe(
                probes, n, history, params, delta, row, workspace
            )
            old_table = [k for k in SCHEDULE_COLUMNS if k not in curves.columns]
            curves.append({k: v for k, v in row.items() if k not in old_table})
            self._state = LoopState(
                n + 1,
                params,
                history,
                probes.state_dict() if probe_reason is not None else state.probe_state,
            )
            self._after_iteration(row, probe_reason, probe_s)

    def _after_iteration(
        self, row: dict[str, Any], probe_reason: str | None, probe_s: float
    ) -> None:
        cfg, n = self.cfg, self._state.next_iter
        if n % cfg.checkpoint_every == 0 or n == cfg.outer_iters:
            self._checkpoint(self._state)
        if cfg.report_every and n % cfg.report_every == 0 and n < cfg.outer_iters:
            self._report()
        self.files.write_status(force=probe_reason is not None, next_iter=n)
        self.files.log(
            f"iter {n - 1} td_loss={row['td_loss']:.4g} w_norm={row['w_norm']:.6g} "
            f"mean_rho2={row['mean_rho2']:.4g}"
            + (f" probes({probe_reason}) {probe_s:.2f}s" if probe_reason else "")
        )
        if self.on_progress is not None:
            self.on_progress(Progress(n - 1, cfg.outer_iters, row, probe_reason, probe_s))

    def _make_probes(self, maps: FeatureMaps, state: dict[str, Any] | None) -> ProbeManager | None:
        if not self.cfg.probes.enabled:
            return None
        manager = ProbeManager(self.cfg, maps)
        if state:
            manager.load_state_dict(state)
        return manager

    def _maybe_probe(
        self,
        probes: ProbeManager | None,
        n: int,
        history: tuple[float, ...],
        params: Params,
        delta: np.ndarray,
        row: dict[str, Any],
        workspace: Workspace,
    ) -> tuple[str | None, float]:
        """Run a probe round after iteration n if due; write its tables into probes/.

        The round does not read the training `workspace`: its buffers (the iteration's
        features, 2 B T D f bytes, 52 MB at the seed settings) are released first, so they
        are not resident beside the round's, and the next iteration maps them afresh
        (BENCHMARKS.md, "Issue 28, session 9")."""
        if probes is None or self._stop_signal is not None:
            return None, 0.0
        reason = probes.due(n, history)
        if reason is None:
            return None, 0.0
        t0 = time.perf_counter()
        workspace.release_all()
        rnd = probes.run(n, params, delta, row["td_loss"], reason)
        unknown = set(rnd.summary) - set(registry.summary_columns())
        if unknown:
            raise RunFileError(f"probe summary has columns not in learning_curves: {unknown}")
        row.update(rnd.summary)
        row["probe_reason"] = reason
        self.files.write_probe_round(rnd)
        return reason, time.perf_counter() - t0

    # ------------------------------------------------------------------ endings

    def _attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a step of a run's ending; a failure (a full disk) is noted, not raised."""
        try:
            return fn()
        except Exception as exc:
            self._unwritten.append(f"{what} ({' '.join(str(exc).split())})")
            return None

    def _finish(
        self,
        status: str,
        reason: str | None,
        exit_code: int,
        checkpoint: bool = True,
        **extra: Any,
    ) -> RunResult:
        state = self._state
        if checkpoint and state.next_iter > 0 and state.params is not None:
            self._attempt("checkpoint", lambda: self._checkpoint(state))
        self._attempt("tables", self.files.sync)
        self._attempt(
            "status.json",
            lambda: self.files.write_status(
                status=status,
                reason=reason,
                next_iter=state.next_iter,
                exit_code=exit_code,
                **extra,
            ),
        )
        self._attempt(
            "stdout.log", lambda: self.files.log(status + (f": {reason}" if reason else ""))
        )
        reports = self._report()
        return RunResult(
            self.run_dir,
            status,
            reason,
            exit_code,
            state.next_iter,
            reports or [],
            self._unwritten,
            self._resumed_from,
        )

    def _finish_diverged(self, result: IterationResult) -> RunResult:
        n = self._state.next_iter
        bad = [
            name
            for name, arr in (
                ("w", result.params.w),
                ("theta_pi", result.params.theta_pi),
                ("theta_mu", result.params.theta_mu),
            )
            if not np.all(np.isfinite(arr))
        ] or [k for k in DIVERGENCE_COLUMNS if not math.isfinite(result.metrics[k])]
        kept = f"rows up to iteration {n - 1} kept" if n > 0 else "no finite row to keep"
        reason = (
            f"non-finite {', '.join(bad)} at iteration {n} "
            f"(td_loss={result.metrics['td_loss']:.4g}); {kept}"
        )
        return self._finish("diverged", reason, 0)

    def _finish_interrupted(self) -> RunResult:
        signum = self._stop_signal or signal.SIGINT
        name = signal.Signals(signum).name
        n = self._state.next_iter
        reason = f"interrupted by {name} after {n} of {self.cfg.outer_iters} iterations"
        return self._finish("incomplete", reason, EXIT_SIGNAL.get(signum, 130))

    def _finish_failed(self, exc: BaseException) -> RunResult:
        if isinstance(exc, _Diverged):
            return self._finish_diverged(exc.result)
        tb = "".join(traceback.format_exception(exc))
        reason = failure_reason(exc, self._state.next_iter)
        return self._finish("failed", reason, 1, traceback=tb)

    def _report(self) -> list[Path] | None:
        if self.write_report is None:
            return []
        try:
            return self.write_report(self.run_dir)
        except Exception as exc:  # the run's own files must survive a report bug
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            self._unwritten.append(f"run report ({why})")
            self._attempt("stdout.log", lambda: self.files.log(f"report failed: {why}"))
            self._attempt("status.json", lambda: self.files.write_status(report_error=why))
            return []


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes a kill cut short (``.ckpt_*.tmp`` in
    checkpoints/, ``.<name>.*.tmp`` beside any run file); call only holding the lock."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "probes"):
        if folder.is_dir() and not folder.is_symlink():
            for tmp in sorted(folder.glob(".*.tmp")):
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def check_creatable(run_dir: Path) -> None:
    """Raise RunDirError unless `run_dir` is a folder or can be made (nothing is made)."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
    if not folder.is_dir():
        where = "is a file" if folder == run_dir else f"cannot be made: '{folder}' is a file"
        raise RunDirError(f"run directory '{run_dir}' {where}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory '{run_dir}' cannot be made: no permission in '{folder}'")


class _Diverged(Exception):
    """Raised inside the loop when an iteration produced non-finite parameters or metrics."""

    def __init__(self, result: IterationResult) -> None:
        super().__init__("diverged")
        self.result = result
