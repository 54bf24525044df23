"""The Python API: run tdlens and read its runs, sweeps and catalog from a notebook.

Everything here is re-exported from :mod:`tdlens`::

    import tdlens

    run = tdlens.run("sanity", overrides={"outer_iters": 5})   # a new run, returns a Run
    run = tdlens.open_run("outputs/runs/20261125_210000_sanity") # an existing one
    run.curves            # pandas DataFrame, one row per iteration
    run.probes["fixed_point_probe"]
    run.verdict           # health status and reasons, and the regime label
    tdlens.open_sweep("outputs/sweeps/20261125_211500_demo")    # one row per run
    tdlens.open_catalog()                                        # every cataloged run

`tdlens run` on the command line goes through the same functions (:func:`load_run_config`,
:func:`create_runner`, :func:`execute`), so both make the same run from the same config.
Runs are read through the one read model of a run directory (``tdlens.rundir.read``) and
the catalog's records (``tdlens.catalog.records``): a run reads the same here as in its
report, its sweep summary and the catalog.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdlens.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    check_name,
    find_config,
    parse_config,
    read_yaml,
    set_dotted,
)
from tdlens.pages.fmt import duration_text
from tdlens.rundir.files import RunFileError

if TYPE_CHECKING:
    import pandas as pd

    from tdlens.catalog.records import RunRecord
    from tdlens.rundir.read import RunData, Table
    from tdlens.runs.runner import Progress, Runner, RunResult

DEFAULT_CONFIG = "seed_plateau"
"""The config of ``tdlens run`` without arguments: the seed run."""
DEFAULT_OUTPUT_DIR = Path("outputs/runs")
"""The parent folder of new runs (each gets ``<time>_<name>``)."""

ConfigLike = str | Path | RunConfig | None
"""A shipped config name (``"sanity"``), a YAML path, or a RunConfig."""
OverridesLike = Mapping[str, Any] | Sequence[str] | None
"""Overrides as ``{"env.p_mix": 0.01}`` or as ``["env.p_mix=0.01"]`` (like ``--set``)."""


# --------------------------------------------------------------------------- configs


def config_path(config: str | Path | None = None) -> Path:
    """A config file: the path given, else a shipped config by name (``seed_plateau``...).

    Raises ConfigError naming the config and the shipped names when there is none.
    """
    return find_config(str(config) if config is not None else DEFAULT_CONFIG)


def load_run_config(
    config: ConfigLike = DEFAULT_CONFIG,
    overrides: OverridesLike = None,
    name: str | None = None,
) -> RunConfig:
    """The validated RunConfig of `config` with `overrides` (dotted keys) and `name` applied.

    Raises ConfigError naming the key (or file) on any problem, before anything is written.
    """
    if isinstance(config, RunConfig):
        data: dict[str, Any] = config.to_dict()
    else:
        data = read_yaml(config_path(config))
    if overrides is None:
        pass
    elif isinstance(overrides, Mapping):
        data = json.loads(json.dumps(data))
        for key, value in overrides.items():
            path = str(key).split(".")
            if not str(key) or any(not p for p in path):
                raise ConfigError(f"overrides: '{key}' is not a dotted config key")
            set_dotted(data, path, value, what="overrides: ")
    elif isinstance(overrides, str):
        raise ConfigError("overrides: expected a mapping or a list of 'key=value' strings")
    else:
        data = apply_overrides(data, list(overrides))
    if name:
        check_name(name)
        data = apply_overrides(data, [f"name={name}"])
    cfg = parse_config(data)
    check_name(cfg.name)
    return cfg


# --------------------------------------------------------------------------- running


def index_in_catalog(catalog: str | Path | None, run_dir: str | Path) -> tuple[Path, str | None]:
    """Index a run in the SQLite catalog; returns the catalog path and the error, if any.

    `catalog` None means ``$TDLENS_CATALOG`` or ``outputs/catalog.sqlite``. Errors are
    returned, not raised: a run is never lost because its catalog could not be updated.
    """
    from tdlens.catalog.store import CatalogError, catalog_path, index_run_dir

    path = catalog_path(catalog)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        index_run_dir(path, run_dir)
    except (OSError, sqlite3.Error, CatalogError) as exc:
        return path, str(exc)
    return path, None


def create_runner(
    cfg: RunConfig | None,
    run_dir: str | Path | None = None,
    *,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    resume: bool = False,
    force: bool = False,
    catalog: str | Path | None = None,
    on_catalog_error: Callable[[Path, str], None] | None = None,
    restart: bool = False,
) -> Runner:
    """A Runner for `cfg` in `run_dir` (default ``<output_dir>/<time>_<name>``).

    With `resume`, `run_dir` is the run to continue and `cfg` is None (its config.json
    is used). With `restart`, `run_dir` is a run started over from its config.json, its
    old files moved to ``previous/<time>/``. The run is indexed in the catalog when it
    starts; a catalog problem is passed to `on_catalog_error` (path, message). Raises
    ConfigError, RunDirError, RunFinishedError, RunFileError or ResourceError with a
    one-line message.
    """
    from tdlens.report import write_report
    from tdlens.runs.runner import RunDirError, Runner, default_run_dir

    if resume or restart:
        if run_dir is None:
            raise RunDirError(f"{'resume' if resume else 'restart'} needs the run directory")
        target = Path(run_dir)
    else:
        if cfg is None:
            raise ConfigError("a config is needed for a new run")
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise RunDirError(
                f"--output-dir '{output_dir}' is a file; it must be a folder (or not exist yet)"
            )
        target = Path(run_dir) if run_dir is not None else default_run_dir(output_dir, cfg.name)

    def on_start(path: Path) -> None:
        where, error = index_in_catalog(catalog, path)
        if error is not None and on_catalog_error is not None:
            on_catalog_error(where, error)

    return Runner(
        cfg,
        target,
        resume=resume,
        force=force,
        on_start=on_start,
        write_report=write_report,
        restart=restart,
    )


def progress_fields(p: Progress) -> str:
    """``iter 79 (80/80 done)``: the 0-based iteration n just finished (the ``iter`` of
    every table) and how many of the run's iterations are done (``n + 1``)."""
    return f"iter {p.n} ({p.n + 1}/{p.outer_iters} done)"


def probe_rounds_after(n: int, outer_iters: int, every: int | None) -> int:
    """Probe rounds the schedule runs after iteration n: one after each later iteration m
    with ``(m + 1) % every == 0``, ``outer_iters // every - (n + 1) // every`` of them, plus
    the last iteration's when it is not one of those (``every`` 0: only the last; None:
    probes off). Plateau-triggered rounds cannot be foreseen and are not counted."""
    if every is None or n >= outer_iters - 1:
        return 0
    scheduled = outer_iters // every - (n + 1) // every if every > 0 else 0
    return scheduled + int(every == 0 or outer_iters % every != 0)


class Eta:
    """Elapsed time and ETA of a run from its progress reports.

    The first iteration a process runs includes Numba's compile (seconds to a minute), so
    it gives no rate and no ETA (a 74 s run once said 8m22s): the rate comes from the
    iterations after it. After iteration n, with ``done`` iterations run since the first
    in ``t`` seconds of which ``probe_s`` went to probe rounds, and ``rounds`` rounds
    timed in all (taking ``round_s``):
    ``ETA = (outer_iters - n - 1) (t - probe_s) / done + rounds_left round_s / rounds``,
    ``rounds_left`` = :func:`probe_rounds_after` (before the first round is timed, rounds
    are not counted). Probe rounds are periodic and can take most of a run's time (the
    seed run: 16 rounds of ~40 s, iterations of ~0.5 s), so they are estimated apart.
    The clock starts when the object is made; a resumed run counts from where it resumed.
    """

    def __init__(
        self, probe_every: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        import time

        self.probe_every = probe_every
        self._clock = clock or time.monotonic
        self._start = self._clock()
        self._first: int | None = None
        self._first_done = 0.0  # when the first iteration (with the compile) ended
        self._probe_s = 0.0  # probe seconds after the first iteration
        self._round_s = 0.0  # probe seconds of every round
        self._rounds = 0

    def update(self, p: Progress) -> tuple[float, float | None]:
        """``(elapsed, eta)`` in seconds after progress report `p` (eta None at the end
        and after the first iteration, whose time includes the compile)."""
        now = self._clock()
        elapsed = now - self._start
        if p.probe_reason:
            self._round_s += p.probe_seconds
            self._rounds += 1
        if self._first is None:
            self._first, self._first_done = p.n, now
            return elapsed, None
        if p.probe_reason:
            self._probe_s += p.probe_seconds
        remaining = p.outer_iters - p.n - 1
        if remaining <= 0:
            return elapsed, None
        done = p.n - self._first
        eta = remaining * max(now - self._first_done - self._probe_s, 0.0) / done
        if self._rounds:
            rounds_left = probe_rounds_after(p.n, p.outer_iters, self.probe_every)
            eta += rounds_left * self._round_s / self._rounds
        return elapsed, eta


class PlainProgress:
    """One line per iteration on stdout, e.g.
    ``iter 78 (79/80 done, elapsed 7m30s, ETA 44s) td_loss=1.91e-05 w_norm=4.42894``,
    with the elapsed time and ETA of :class:`Eta` (``probe_every``: the config's
    ``probes.every``, None when probes are off).
    """

    def __init__(
        self, probe_every: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.eta = Eta(probe_every, clock)

    def __call__(self, p: Progress) -> None:
        print(self.line(p), flush=True)

    def line(self, p: Progress) -> str:
        """The line printed for `p`."""
        elapsed, eta = self.eta.update(p)
        timing = f"elapsed {duration_text(elapsed)}"
        if eta is not None:
            timing += f", ETA {duration_text(eta)}"
        probe = f" probes({p.probe_reason}) {p.probe_seconds:.2f}s" if p.probe_reason else ""
        return (
            f"iter {p.n} ({p.n + 1}/{p.outer_iters} done, {timing}) "
            f"td_loss={p.metrics['td_loss']:.4g} w_norm={p.metrics['w_norm']:.6g}{probe}"
        )


def probe_every(cfg: RunConfig) -> int | None:
    """The probe cadence :class:`Eta` needs: ``probes.every``, None when probes are off."""
    return cfg.probes.every if cfg.probes.enabled else None


def execute(runner: Runner, on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    """Run `runner` to its end, calling `on_progress` after every iteration (its numba
    kernels loaded first, compiled apart when the cache is cold:
    :func:`tdlens.runs.jitcache.load_kernels`)."""
    from tdlens.runs.jitcache import load_kernels

    load_kernels(runner.cfg)
    runner.on_progress = on_progress
    return runner.run()


def run(
    config: ConfigLike = DEFAULT_CONFIG,
    overrides: OverridesLike = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    *,
    name: str | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    resume: bool = False,
    force: bool = False,
    catalog: str | Path | None = None,
) -> Run:
    """Run the actor-critic with probes, write the run report, and return the Run.

    Args:
        config: a shipped config name (``"seed_plateau"``, ``"sanity"``...), a YAML path or a
            RunConfig. Ignored with `resume`.
        overrides: dotted keys to change, e.g. ``{"alpha_w": 0.8, "env.p_mix": 0.01}``.
        run_dir: the run directory (default: ``<output_dir>/<time>_<name>``); with `resume`,
            the run to continue.
        progress: print one line per iteration.
        name: the run's name (sets the config's ``name``).
        output_dir: the parent folder of new runs.
        resume: continue the run in `run_dir` from its newest checkpoint.
        force: start even when the estimated memory or disk exceeds what is free.
        catalog: the catalog to index the run in (default: ``$TDLENS_CATALOG`` or
            ``outputs/catalog.sqlite``).

    Raises:
        ConfigError: a bad config or override (the message names the key).
        RunDirError: the run directory exists already (or, with resume, is not a run).

    A run that diverges, fails or is interrupted still returns its Run: look at
    ``run.status`` and ``run.verdict``.
    """
    cfg = None if resume else load_run_config(config, overrides, name)
    runner = create_runner(
        cfg, run_dir, output_dir=output_dir, resume=resume, force=force, catalog=catalog
    )
    result = execute(runner, PlainProgress(probe_every(runner.cfg)) if progress else None)
    index_in_catalog(catalog, result.run_dir)
    return Run(result.run_dir, result)


# --------------------------------------------------------------------------- reading


def _frame(table: Table) -> pd.DataFrame:
    """A report Table as a DataFrame: its columns in header order, empty cells as NaN."""
    import pandas as pd

    frame = pd.DataFrame(list(table.rows), columns=list(table.columns))
    numeric = set(table.numeric_columns())
    for column in frame.columns:
        if column in numeric:
            frame[column] = frame[column].astype("float64")
    if "iter" in numeric and len(frame) and frame["iter"].notna().all():
        frame["iter"] = frame["iter"].astype("int64")
    return frame


class Run:
    """A run directory, read through the same readers as its report.

    Properties read the files on first use and keep them; call :meth:`reload` to see a
    run that is still going. A missing or corrupt file gives an empty table, and
    :attr:`problems` says which file.
    """

    def __init__(self, path: str | Path, result: RunResult | None = None) -> None:
        self.path = Path(path)
        self.result = result
        """How the run ended, when this Run was returned by :func:`tdlens.run`."""

    def __repr__(self) -> str:
        return f"Run('{self.path}', status={self.status!r})"

    def reload(self) -> Run:
        """Forget what was read (for a run that is still being written); returns self."""
        for key in ("data", "record"):
            self.__dict__.pop(key, None)
        return self

    @cached_property
    def data(self) -> RunData:
        """Everything the report reads (``tdlens.rundir.read.RunData``)."""
        from tdlens.rundir.read import load_run

        return load_run(self.path)

    @cached_property
    def record(self) -> RunRecord:
        """The run as the catalog sees it: final metrics, regime label, timings."""
        from tdlens.catalog.records import record_from

        return record_from(self.data)

    @property
    def config(self) -> RunConfig:
        """The resolved config (config.json) as a typed RunConfig."""
        if self.data.cfg is None:
            raise RunFileError(f"'{self.path}': no readable config.json ({self.problems})")
        return self.data.cfg

    @property
    def status(self) -> str | None:
        """``complete``, ``diverged``, ``incomplete``, ``failed``, ``running`` or ``crashed``."""
        return self.data.status.get("status")

    @property
    def status_info(self) -> dict[str, Any]:
        """The whole status.json (with a dead ``running`` run shown as ``crashed``)."""
        return dict(self.data.status)

    @property
    def problems(self) -> list[str]:
        """Files that were missing or corrupt when the run was read."""
        return list(self.data.problems)

    @property
    def curves(self) -> pd.DataFrame:
        """learning_curves.csv: one row per iteration, one column per metric."""
        return _frame(self.data.curves)

    @property
    def probes(self) -> dict[str, pd.DataFrame]:
        """Each probe table (probes/<name>.csv) by name, one row per probe round."""
        return {name: _frame(table) for name, table in sorted(self.data.probes.items())}

    @property
    def rounds(self) -> pd.DataFrame:
        """probes/rounds.csv: when each probe round ran, why, and how long it took."""
        return _frame(self.data.rounds)

    def array_names(self) -> dict[str, list[int]]:
        """The saved probe arrays (kernels, spectra, predictions): name -> iterations."""
        import re

        from tdlens.rundir.read import array_files

        names: set[str] = set()
        probe_dir = self.path / "probes"
        if probe_dir.is_dir():
            for path in probe_dir.iterdir():
                match = re.match(r"^(.+)_(\d+)\.np[yz]$", path.name)
                if match:
                    names.add(match.group(1))
        return {n: list(array_files(self.path, n)) for n in sorted(names)}

    def array(self, name: str, iteration: int | None = None) -> Any:
        """A saved probe array: the latest ``probes/<name>_<iter>.npy`` (or ``.npz``, as a
        dict of arrays), or the one at `iteration`. Raises KeyError listing what exists."""
        from tdlens.rundir.read import array_files, latest_array, load_array

        files = array_files(self.path, name)
        dim = self.data.cfg.env.feature_dim if self.data.cfg is not None else None
        if iteration is None:
            _, arr = latest_array(self.path, name, feature_dim=dim)
            if arr is not None:
                return arr
        elif iteration in files:
            arr = load_array(files[iteration], dim)
            if arr is not None:
                return arr
        known = ", ".join(f"{n} {its}" for n, its in self.array_names().items()) or "none"
        at = "" if iteration is None else f" at iteration {iteration}"
        raise KeyError(f"no readable array '{name}'{at} in '{self.path}' (saved: {known})")

    @property
    def branch(self) -> dict[str, Any] | None:
        """branch.json of a branch (an explain twin, or ``tdlens.runs.branch``): parent,
        parent_config_hash, checkpoint, checkpoint_sha256 (both null from the start), start,
        iteration, changed; None when the run is not a branch."""
        from tdlens.runs.branch import read_branch

        return read_branch(self.path)

    @property
    def report(self) -> dict[str, Any]:
        """run_report.json as a dict (empty when the run has no report yet)."""
        return self.data.report

    @property
    def verdict(self) -> dict[str, Any]:
        """What the run says: the report's verdict when it has one, else its health status
        and reasons with the regime label (learning, plateau, divergence...) and why."""
        given = self.report.get("verdict")
        if given is not None:
            return given
        health = self.report.get("health") or {}
        record = self.record
        return {
            "health": health.get("status"),
            "reasons": list(health.get("reasons") or []),
            "regime": record.regime,
            "regime_reason": record.regime_reason,
            "status": self.status,
        }

    @property
    def final(self) -> dict[str, float]:
        """The final metrics (last finite learning-curve row, last probe rounds)."""
        return dict(self.record.metrics)


def _records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def open_run(path: str | Path) -> Run:
    """An existing run directory as a :class:`Run`. Raises RunFileError when `path` is not
    a run directory (no config.json)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunFileError(f"'{path}' is not a run directory (no config.json)")
    return Run(path)


def open_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep directory as a DataFrame: one row per planned run, in plan order, with its
    swept values, status, health, regime, final metrics and path (runs not started yet
    have status ``not started``). Raises RunFileError when `path` has no plan.json."""
    from tdlens.catalog.records import load_record
    from tdlens.sweeps.plan import read_plan
    from tdlens.sweeps.plan import run_dir as sweep_run_dir

    path = Path(path)
    if not (path / "plan.json").is_file():
        raise RunFileError(f"'{path}' is not a sweep directory (no plan.json)")
    plan = read_plan(path)
    rows = [
        load_record(sweep_run_dir(path, entry["run_id"]), entry.get("overrides")).flat()
        for entry in plan["runs"]
    ]
    return _records_frame(rows)


def open_catalog(path: str | Path | None = None, where: str | None = None) -> pd.DataFrame:
    """The run catalog as a DataFrame, newest first: one row per run with its swept
    values, status (a dead ``running`` run as ``crashed``), health, regime and final
    metrics. `path` defaults to ``$TDLENS_CATALOG`` or ``outputs/catalog.sqlite``;
    `where` is an SQL condition as in ``tdlens runs list --where``."""
    from tdlens.catalog.store import catalog_path, query_runs
    from tdlens.rundir.status import observed_status

    rows = []
    for row in query_runs(catalog_path(path), where):
        if row.get("status") == "running":
            row = observed_status(row["path"], row)
        params = json.loads(row.pop("params") or "{}")
        row.pop("metrics", None)
        rows.append({"id": row.pop("id"), **params, **row})
    return _records_frame(rows)
