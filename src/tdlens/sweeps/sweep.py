"""The sweep driver: plan, run on a backend, record, summarize (docs/model.md §11).

``prepare_sweep`` turns a spec (or, on resume, a sweep directory) into a
:class:`PreparedSweep` without writing anything (``--dry-run`` stops there).
``execute_sweep`` writes plan.json atomically, then runs every run that is not finished:

- a new sweep runs everything in ``<output-dir>/<timestamp>_<name>/runs/<run_id>/``;
- on resume, runs whose status is ``complete`` or ``diverged`` (final results) are skipped,
  runs with a config.json (``incomplete``, ``failed``, or ``running`` after a crash) resume
  from their latest checkpoint, and folders without one start over.

Each finished run is recorded as it arrives (sweep.json, the catalog); at the end the
summaries are written and the sweep is indexed in the catalog. Only this driver process
writes sweep.json and the catalog rows of its runs. On resume, sweep.json's entries of the
runs skipped as final are corrected from their status.json.

SIGTERM and SIGHUP stop the sweep as Ctrl-C does (:func:`tdlens.sweeps.backends.stop_signals`;
sweep.json records ``interrupted`` and the signal). A run that fails on a full disk (or
whose files the driver cannot write there) stops the sweep, on either backend, from
starting new runs (``stopped`` in sweep.json); a failed run whose worker could not write
its status.json is marked failed by the driver.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdlens.catalog import store as cat
from tdlens.catalog.records import load_record
from tdlens.rundir.files import atomic_write_json, atomic_write_text, read_json
from tdlens.sweeps.backends import (
    DEFAULT_RETRIES,
    FINAL_STATUSES,
    RetryFn,
    RunOutcome,
    RunTask,
    TaskFn,
    clear_unstarted,
    disk_full,
    execute_task,
    mark_status,
    run_local,
    signal_of,
    stop_signals,
)
from tdlens.sweeps.plan import (
    SWEEP_FILE,
    find_sweep_dir,
    is_sweep_dir,
    new_sweep_dir,
    plan_dict,
    read_plan,
    run_dir,
    runs_from_plan,
    write_plan,
)
from tdlens.sweeps.ray_backend import run_ray
from tdlens.sweeps.spec import (
    PlannedRun,
    SweepSpec,
    SweepSpecError,
    base_data,
    load_spec,
    make_plan,
)

BACKENDS = ("local", "ray")


@dataclass
class PreparedSweep:
    """A sweep ready to run: its directory (created by execute_sweep), plan and runs."""

    sweep_dir: Path
    plan: dict[str, Any]
    runs: list[PlannedRun]
    resume: bool
    spec_text: str | None = None
    """An inline sweep's spec as YAML, written to the sweep directory as spec.yaml."""


@dataclass
class SweepResult:
    sweep_dir: Path
    total: int
    skipped: int
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    summary_paths: list[Path] = field(default_factory=list)
    summary_error: str | None = None
    catalog_error: str | None = None
    record_error: str | None = None
    """sweep.json could not be written (e.g. a full disk); the runs' own files hold the truth."""
    stopped: str | None = None
    """Why no new run was started (a full disk), or None."""

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes.values()))


def prepare_sweep(
    spec_arg: str | Path | SweepSpec, output_dir: Path, resume: bool = False
) -> PreparedSweep:
    """Parse the spec (or read the sweep directory) into a plan; writes nothing.

    With ``resume``, `spec_arg` may be the sweep directory itself; for a spec file the sweep
    directory is `output_dir` when it holds a plan, else its latest ``*_<name>`` sweep.
    A SweepSpec without a file (an inline sweep) is written into the sweep as spec.yaml.
    """
    if isinstance(spec_arg, SweepSpec):
        return _prepare_inline(spec_arg, output_dir, resume)
    spec_arg = Path(spec_arg)
    if resume and spec_arg.is_dir():
        if not is_sweep_dir(spec_arg):
            raise SweepSpecError(f"--resume: '{spec_arg}' is not a sweep directory (no plan.json)")
        plan = read_plan(spec_arg)
        return PreparedSweep(spec_arg, plan, runs_from_plan(plan), resume=True)
    return _prepare_spec(load_spec(spec_arg), output_dir, resume)


def _prepare_inline(spec: SweepSpec, output_dir: Path, resume: bool) -> PreparedSweep:
    from tdlens.sweeps.inline import SWEEP_YAML, spec_yaml

    prepared = _prepare_spec(spec, output_dir, resume)
    if not prepared.resume and spec.source is None:
        prepared.plan["spec_file"] = str(prepared.sweep_dir / SWEEP_YAML)
        prepared.spec_text = spec_yaml(spec)
    return prepared


def _prepare_spec(spec: SweepSpec, output_dir: Path, resume: bool) -> PreparedSweep:
    runs = make_plan(spec)
    plan = plan_dict(spec, runs, base_data(spec))
    if not resume:
        return PreparedSweep(new_sweep_dir(output_dir, spec.name), plan, runs, resume=False)
    found = find_sweep_dir(output_dir, spec.name)
    if found is None:
        raise SweepSpecError(
            f"--resume: no sweep '{spec.name}' in '{output_dir}'; pass the sweep directory"
        )
    old_ids = [r["run_id"] for r in read_plan(found)["runs"]]
    if old_ids != [r.run_id for r in runs]:
        raise SweepSpecError(
            f"--resume: the spec's plan differs from the plan in '{found}' "
            "(different grid or base config); start a new sweep"
        )
    return PreparedSweep(found, read_plan(found), runs, resume=True)


def make_tasks(prepared: PreparedSweep) -> tuple[list[RunTask], list[str]]:
    """Tasks for the runs to (re)run, and the ids skipped as already final (module doc)."""
    tasks, skipped = [], []
    for run in prepared.runs:
        rd = run_dir(prepared.sweep_dir, run.run_id)
        config = run.config.model_copy(update={"threads": 1}).to_dict()
        status = _status(rd)
        if prepared.resume and status in FINAL_STATUSES:
            skipped.append(run.run_id)
            continue
        resume = prepared.resume and (rd / "config.json").is_file()
        if not resume:
            clear_unstarted(rd)
        tasks.append(RunTask(run.run_id, str(rd), config, resume=resume))
    return tasks, skipped


def _status_data(rd: Path) -> dict[str, Any]:
    try:
        data = read_json(rd / "status.json")
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _status(rd: Path) -> str | None:
    return _status_data(rd).get("status")


def _mark_failed(rd: Path, outcome: RunOutcome) -> None:
    """A failed run whose status.json still says running (its worker could not write it,
    e.g. on a full disk, and has let go of the run): mark it failed with the reason."""
    from tdlens.rundir.lock import lock_is_held

    try:
        if _status(rd) == "running" and not lock_is_held(rd):
            mark_status(rd, "failed", outcome.reason or "failed")
    except OSError:
        pass  # the disk is still full: runs list shows it as crashed, --resume continues it


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Recorder:
    """Records each outcome in sweep.json and the catalog (driver process only)."""

    def __init__(
        self,
        prepared: PreparedSweep,
        result: SweepResult,
        catalog: Path | None,
        info: dict[str, Any],
        on_outcome: Callable[[RunOutcome, int, int], None] | None,
        total: int,
    ) -> None:
        self.prepared = prepared
        self.result = result
        self.catalog = catalog
        self.on_outcome = on_outcome
        self.total = total
        self.params = {r.run_id: r.params for r in prepared.runs}
        path = prepared.sweep_dir / SWEEP_FILE
        old = read_json(path) if path.is_file() else {}
        self.state: dict[str, Any] = {**old, **info, "runs": dict(old.get("runs", {}))}
        self.state.pop("stopped", None)
        self.state.pop("signal", None)
        self.path = path

    def correct(self, run_ids: list[str]) -> None:
        """Set the sweep.json entries of runs skipped as final to their status.json (an
        earlier driver may have died before recording them, or recorded a stale failure)."""
        runs = self.state["runs"]
        for run_id in run_ids:
            status = _status_data(run_dir(self.prepared.sweep_dir, run_id))
            entry = runs.get(run_id, {})
            if entry.get("status") != status.get("status"):
                runs[run_id] = {
                    **entry,
                    "status": status.get("status"),
                    "reason": status.get("reason"),
                    "finished_at": status.get("updated_at"),
                }

    def save(self, **extra: Any) -> None:
        """Write sweep.json; a failure (a full disk) is kept in result.record_error."""
        self.state.update(extra, updated_at=_now())
        done = Counter(v.get("status") for v in self.state["runs"].values())
        self.state["counts"] = dict(done)
        try:
            atomic_write_json(self.path, self.state)
        except OSError as exc:
            self.result.record_error = f"{exc.strerror or exc} writing '{self.path}'"
        else:
            self.result.record_error = None

    def __call__(self, outcome: RunOutcome) -> None:
        self.result.outcomes[outcome.run_id] = outcome
        if outcome.status == "failed":
            _mark_failed(run_dir(self.prepared.sweep_dir, outcome.run_id), outcome)
            if disk_full(outcome.reason) and self.result.stopped is None:
                self.result.stopped = (
                    f"run {outcome.run_id} failed on a full disk ({outcome.reason}); no new "
                    "run was started: free space, then continue with --resume"
                )
                self.state["stopped"] = self.result.stopped
        self.state["runs"][outcome.run_id] = {
            "status": outcome.status,
            "reason": outcome.reason,
            "seconds": outcome.seconds,
            "attempts": outcome.attempts,
            "finished_at": _now(),
        }
        self.save()
        if self.catalog is not None and self.result.catalog_error is None:
            rd = run_dir(self.prepared.sweep_dir, outcome.run_id)
            try:
                record = load_record(rd, self.params.get(outcome.run_id))
                cat.index_runs(
                    self.catalog, [record], self.prepared.plan.get("name"), self.prepared.sweep_dir
                )
            except cat.CatalogError as exc:
                self.result.catalog_error = str(exc)
        if self.on_outcome is not None:
            self.on_outcome(outcome, len(self.result.outcomes), self.total)


def execute_sweep(
    prepared: PreparedSweep,
    backend: str = "local",
    jobs: int = 1,
    address: str | None = None,
    catalog: Path | None = None,
    on_outcome: Callable[[RunOutcome, int, int], None] | None = None,
    fn: TaskFn = execute_task,
    metric: str | None = None,
    retries: int = DEFAULT_RETRIES,
    on_retry: RetryFn | None = None,
) -> SweepResult:
    """Run the prepared sweep (module docstring); returns the outcomes and summary paths.

    A run whose worker process (or Ray node) dies is retried up to `retries` times, from
    its checkpoint when there is one, and then recorded failed with the reason.
    """
    if backend not in BACKENDS:
        raise SweepSpecError(f"--backend '{backend}': choose one of {', '.join(BACKENDS)}")
    sweep_dir = prepared.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not prepared.resume:
        write_plan(sweep_dir, prepared.plan)
        if prepared.spec_text is not None:
            atomic_write_text(Path(str(prepared.plan["spec_file"])), prepared.spec_text)
    tasks, skipped = make_tasks(prepared)
    result = SweepResult(sweep_dir, len(prepared.runs), len(skipped))
    info = {
        "name": prepared.plan.get("name"),
        "backend": backend,
        "jobs": jobs,
        "address": address,
        "retries": retries,
        "started_at": _now(),
        "finished_at": None,
        "total_runs": len(prepared.runs),
    }
    record = _Recorder(prepared, result, catalog, info, on_outcome, len(tasks))
    record.correct(skipped)
    record.save()
    _index_sweep(result, catalog, prepared, backend=backend, jobs=jobs)
    t0 = time.perf_counter()
    interrupted = False
    signame: str | None = None
    try:
        with stop_signals():
            if backend == "local":
                run_local(tasks, jobs, record, fn, retries=retries, on_retry=on_retry)
            else:
                run_ray(
                    tasks, jobs, record, fn, address=address, retries=retries, on_retry=on_retry
                )
    except KeyboardInterrupt as exc:
        interrupted = True
        signame = signal.Signals(signal_of(exc)).name
        raise
    finally:
        record.save(
            finished_at=_now(),
            wall_seconds=time.perf_counter() - t0,
            interrupted=interrupted,
            signal=signame,
        )
        if not interrupted:
            _finish(result, prepared, catalog, metric, backend, jobs)
    return result


def _index_sweep(
    result: SweepResult, catalog: Path | None, prepared: PreparedSweep, **fields: Any
) -> None:
    if catalog is None or result.catalog_error is not None:
        return
    plan = prepared.plan
    try:
        cat.index_sweep(
            catalog,
            prepared.sweep_dir,
            name=plan.get("name"),
            created_at=plan.get("created_at"),
            n_runs=len(plan["runs"]),
            axes=plan.get("axes"),
            spec=plan.get("spec"),
            **fields,
        )
    except cat.CatalogError as exc:
        result.catalog_error = str(exc)


def _finish(
    result: SweepResult,
    prepared: PreparedSweep,
    catalog: Path | None,
    metric: str | None,
    backend: str,
    jobs: int,
) -> None:
    from tdlens.sweeps.summary import summarize

    try:
        summary = summarize(prepared.sweep_dir, metric)
        result.summary_paths = summary.paths
        counts = dict(Counter(r.status for r in summary.records))
    except Exception as exc:  # the runs are safe on disk; `tdlens summarize` can retry
        result.summary_error = f"{type(exc).__name__}: {exc}"
        counts, summary = result.counts, None
    if summary is not None and catalog is not None and result.catalog_error is None:
        try:
            cat.index_runs(catalog, summary.records, summary.name, prepared.sweep_dir)
        except cat.CatalogError as exc:
            result.catalog_error = str(exc)
    _index_sweep(result, catalog, prepared, finished_at=_now(), counts=counts)
