"""Run lifecycle: the training loop around the learner and probes (SPEC sections 7, 15).

``Runner(cfg, run_dir).run()`` creates (or, with resume, reopens) a run directory, holds
its lock, and for n = start..outer_iters-1: runs outer iteration n, stops with status
``diverged`` on non-finite parameters, runs a probe round when the schedule says so,
appends the learning-curve row (flushed), checkpoints every ``checkpoint_every``
iterations, and finally writes the report. SIGINT/SIGTERM finish the current iteration,
checkpoint, mark the run ``incomplete`` with the reason, write the report and return
exit code 130/143. An exception marks it ``failed`` with the traceback.

``on_iteration(n, result)`` sees every iteration's full result (the sanity suite observes
every ratio and TD target through it).

Resume truncates every table to the rows of the latest checkpoint and continues; because
all random draws are keyed by (seed, stream, iteration, chain) the result is
bit-identical to an uninterrupted run (every column but iter_time_s).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import RunConfig, config_from_json
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import METRIC_COLUMNS, IterationResult, Params, init_params, outer_iteration
from tdlens.runs.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from tdlens.runs.files import (
    RunFileError,
    TableWriter,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    timestamped_dir,
    to_jsonable,
    truncate_table,
)
from tdlens.runs.lock import RunLock
from tdlens.schema import PROBE_SUMMARY_COLUMNS

CURVE_COLUMNS: tuple[str, ...] = (*METRIC_COLUMNS, *PROBE_SUMMARY_COLUMNS)
ROUND_COLUMNS: tuple[str, ...] = (
    "iter",
    "reason",
    "rollout_s",
    "fixed_point_s",
    "stability_s",
    "distribution_s",
    "q_kernel_s",
    "rho_audit_s",
    "total_s",
)
"""probes/rounds.csv: seconds per probe of each round (rounds.jsonl has the breakdowns)."""
DIVERGENCE_COLUMNS = ("td_loss", "w_norm", "critic_teacher_error", "tracking_gap")
"""A run diverges when its parameters or any of these metrics are not finite."""
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_HEARTBEAT_S = 2.0


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, not a run, wrong config)."""


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
    run_dir: Path
    status: str
    reason: str | None
    exit_code: int
    next_iter: int
    report_paths: list[Path] = field(default_factory=list)


def default_run_dir(output_dir: Path, name: str) -> Path:
    """``<output_dir>/<YYYYmmdd_HHMMSS>_<name>`` (suffixed when taken)."""
    return timestamped_dir(output_dir, name)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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
        report_html: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.report_html = report_html
        self.resume = resume
        self.on_progress = on_progress
        self.on_iteration = on_iteration
        self.handle_signals = handle_signals
        self._stop_signal: int | None = None
        self._status: dict[str, Any] = {}
        self._last_heartbeat = 0.0
        if resume:
            if not (self.run_dir / "config.json").is_file():
                raise RunDirError(
                    f"--resume: '{self.run_dir}' is not a run directory (no config.json)"
                )
            saved = config_from_json(self.run_dir / "config.json")
            if cfg is not None and cfg.config_hash() != saved.config_hash():
                raise RunDirError(
                    f"--resume: the given config differs from '{self.run_dir}/config.json'; "
                    "resume with the run's own config"
                )
            self.cfg = saved
        else:
            if cfg is None:
                raise ValueError("a config is needed for a new run")
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise RunDirError(
                    f"run directory '{self.run_dir}' already exists; pass --resume to continue "
                    "it or choose another --output-dir/--name"
                )
            self.cfg = cfg

    # ------------------------------------------------------------------ files

    def _log(self, text: str) -> None:
        with open(self.run_dir / "stdout.log", "a", encoding="utf-8") as fh:
            fh.write(f"[{_now()}] {text}\n")

    def _write_status(self, force: bool = True, **updates: Any) -> None:
        self._status.update(updates)
        self._status["updated_at"] = _now()
        now = time.monotonic()
        if force or now - self._last_heartbeat >= _HEARTBEAT_S:
            atomic_write_json(self.run_dir / "status.json", self._status)
            self._last_heartbeat = now

    def _checkpoint(
        self, params: Params, next_iter: int, history: list[float], probes: Any
    ) -> None:
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                params=params,
                next_iter=next_iter,
                td_loss_history=np.asarray(history),
                probe_state=probes.state_dict() if probes is not None else {},
                config_hash=self.cfg.config_hash(),
            ),
        )

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self._stop_signal = signum
        self._log(f"received {signal.Signals(signum).name}: stopping after this iteration")

    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in EXIT_SIGNAL}

    # ------------------------------------------------------------------ main

    def run(self) -> RunResult:
        """Run (or resume) to the end, an interruption, divergence or failure."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir):
            previous = self._install_signals()
            try:
                return self._run_locked()
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

    def _prepare(self) -> tuple[int, Params | None, list[float], dict[str, Any] | None]:
        """Fresh run: write config.json. Resume: cut tables back to the checkpoint."""
        if not self.resume:
            atomic_write_json(self.run_dir / "config.json", self.cfg.to_dict())
            return 0, None, [], None
        path = latest_checkpoint(self.run_dir)
        if path is None:
            self._cut_tables(0)
            return 0, None, [], None
        ckpt = load_checkpoint(path)
        if ckpt.config_hash != self.cfg.config_hash():
            raise RunFileError(f"checkpoint '{path}' belongs to another config")
        self._cut_tables(ckpt.next_iter)
        return ckpt.next_iter, ckpt.params, list(map(float, ckpt.td_loss_history)), ckpt.probe_state

    def _cut_tables(self, next_iter: int) -> None:
        truncate_table(self.run_dir / "learning_curves.csv", next_iter)
        probes_dir = self.run_dir / "probes"
        if probes_dir.is_dir():
            for csv_path in probes_dir.glob("*.csv"):
                truncate_table(csv_path, next_iter)
            for npy in list(probes_dir.glob("*_[0-9][0-9][0-9][0-9].np[yz]")):
                if int(npy.stem.rsplit("_", 1)[1]) >= next_iter:
                    npy.unlink()

    def _run_locked(self) -> RunResult:
        cfg = self.cfg
        old_status = {}
        if self.resume and (self.run_dir / "status.json").exists():
            old_status = read_json(self.run_dir / "status.json")
        start, params, history, probe_state = self._prepare()
        self._status = {
            "status": "running",
            "reason": None,
            "next_iter": start,
            "outer_iters": cfg.outer_iters,
            "started_at": old_status.get("started_at", _now()),
            "resumed_at": _now() if self.resume else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "config_hash": cfg.config_hash(),
        }
        self._write_status()
        self._log(
            f"{'resuming' if self.resume else 'starting'} at iteration {start} of {cfg.outer_iters}"
        )
        if not cfg.sigma_condition_ok:
            self._log(
                f"warning: sigma_pi^2 = {cfg.sigma_pi**2:.4g} >= 2 sigma_mu^2 = "
                f"{2 * cfg.sigma_mu**2:.4g}: E_mu[rho^2] is infinite (SPEC 6.3)"
            )
        maps = make_feature_maps(cfg)
        params = init_params(cfg, maps) if params is None else params
        probes = self._make_probes(maps, probe_state)
        curves = TableWriter(self.run_dir / "learning_curves.csv", CURVE_COLUMNS)
        workspace = Workspace()
        n = start
        try:
            while n < cfg.outer_iters:
                if self._stop_signal is not None:
                    break
                with np.errstate(over="ignore", invalid="ignore"):  # divergence is handled
                    result = outer_iteration(cfg, maps, params, n, workspace)
                if not result.params.is_finite() or not all(
                    math.isfinite(result.metrics[k]) for k in DIVERGENCE_COLUMNS
                ):
                    return self._finish_diverged(params, n, history, probes, result)
                if self.on_iteration is not None:
                    self.on_iteration(n, result)
                params = result.params
                history.append(result.metrics["td_loss"])
                row: dict[str, Any] = dict(result.metrics)
                probe_reason, probe_s = self._maybe_probe(probes, n, history, params, result, row)
                curves.append(row)
                n += 1
                if n % cfg.checkpoint_every == 0 or n == cfg.outer_iters:
                    self._checkpoint(params, n, history, probes)
                if cfg.report_every and n % cfg.report_every == 0 and n < cfg.outer_iters:
                    self._report()
                self._write_status(force=probe_reason is not None, next_iter=n)
                self._log(
                    f"iter {n - 1} td_loss={row['td_loss']:.4g} w_norm={row['w_norm']:.6g} "
                    f"mean_rho2={row['mean_rho2']:.4g}"
                    + (f" probes({probe_reason}) {probe_s:.2f}s" if probe_reason else "")
                )
                if self.on_progress is not None:
                    self.on_progress(Progress(n - 1, cfg.outer_iters, row, probe_reason, probe_s))
        except KeyboardInterrupt:
            self._stop_signal = self._stop_signal or signal.SIGINT
        except Exception as exc:
            return self._finish_failed(params, n, history, probes, exc)
        if n < cfg.outer_iters:
            return self._finish_interrupted(params, n, history, probes)
        return self._finish("complete", None, 0, params, n, history, probes, checkpoint=False)

    def _make_probes(self, maps: Any, state: dict[str, Any] | None) -> Any:
        if not self.cfg.probes.enabled:
            return None
        from tdlens.probes.manager import ProbeManager

        manager = ProbeManager(self.cfg, maps)
        if state:
            manager.load_state_dict(state)
        return manager

    def _maybe_probe(
        self,
        probes: Any,
        n: int,
        history: list[float],
        params: Params,
        result: IterationResult,
        row: dict[str, Any],
    ) -> tuple[str | None, float]:
        """Run a probe round after iteration n if due; write its tables into probes/."""
        if probes is None or self._stop_signal is not None:
            return None, 0.0
        reason = probes.due(n, history)
        if reason is None:
            return None, 0.0
        t0 = time.perf_counter()
        rnd = probes.run(n, params, result.delta, result.metrics["td_loss"], reason)
        unknown = set(rnd.summary) - set(PROBE_SUMMARY_COLUMNS)
        if unknown:
            raise RunFileError(f"probe summary has columns not in learning_curves: {unknown}")
        row.update(rnd.summary)
        row["probe_reason"] = reason
        self._write_probe_round(n, reason, rnd)
        return reason, time.perf_counter() - t0

    def _write_probe_round(self, n: int, reason: str, rnd: Any) -> None:
        folder = self.run_dir / "probes"
        folder.mkdir(exist_ok=True)
        for name, prow in rnd.rows.items():
            TableWriter(folder / f"{name}.csv", list(prow), jsonl=True).append(prow)
        for fname, arr in rnd.arrays.items():
            _save_array(folder / fname, arr)
        timing = {"iter": n, "reason": reason, **{f"{k}_s": v for k, v in rnd.timings.items()}}
        row = {k: timing.get(k) for k in ROUND_COLUMNS}
        TableWriter(folder / "rounds.csv", ROUND_COLUMNS).append(row)
        _append_jsonl(folder / "rounds.jsonl", timing)

    # ------------------------------------------------------------------ endings

    def _finish(
        self,
        status: str,
        reason: str | None,
        exit_code: int,
        params: Params,
        next_iter: int,
        history: list[float],
        probes: Any,
        checkpoint: bool = True,
        **extra: Any,
    ) -> RunResult:
        if checkpoint and next_iter > 0:
            self._checkpoint(params, next_iter, history, probes)
        self._write_status(
            status=status, reason=reason, next_iter=next_iter, exit_code=exit_code, **extra
        )
        self._log(f"{status}" + (f": {reason}" if reason else ""))
        reports = self._report()
        return RunResult(self.run_dir, status, reason, exit_code, next_iter, reports)

    def _finish_diverged(
        self, params: Params, n: int, history: list[float], probes: Any, result: IterationResult
    ) -> RunResult:
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
        return self._finish("diverged", reason, 0, params, n, history, probes)

    def _finish_interrupted(
        self, params: Params, n: int, history: list[float], probes: Any
    ) -> RunResult:
        signum = self._stop_signal or signal.SIGINT
        name = signal.Signals(signum).name
        reason = f"interrupted by {name} after {n} of {self.cfg.outer_iters} iterations"
        return self._finish(
            "incomplete", reason, EXIT_SIGNAL.get(signum, 130), params, n, history, probes
        )

    def _finish_failed(
        self, params: Params, n: int, history: list[float], probes: Any, exc: BaseException
    ) -> RunResult:
        tb = "".join(traceback.format_exception(exc))
        reason = f"{type(exc).__name__} at iteration {n}: {exc}"
        return self._finish("failed", reason, 1, params, n, history, probes, traceback=tb)

    def _report(self) -> list[Path]:
        try:
            from tdlens.report import write_report

            return write_report(self.run_dir, html=self.report_html)
        except Exception as exc:  # the run's own files must survive a report bug
            self._log(f"report failed: {type(exc).__name__}: {exc}")
            self._write_status(report_error=f"{type(exc).__name__}: {exc}")
            return []


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")


def _save_array(path: Path, arr: Any) -> None:
    """Save an array (.npy) or a dict of arrays (.npz) atomically, without pickles."""
    buf = io.BytesIO()
    if path.suffix == ".npz":
        np.savez(buf, **arr)
    else:
        np.save(buf, np.asarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
