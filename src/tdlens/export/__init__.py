"""Export runs and sweeps to TensorBoard event files and to an MLflow tracking store.

Both exporters read a run through the run directory's read model
(``tdlens.rundir.read.load_run``, as ``tdlens.open_run`` does) and export the same things:

- every numeric column of ``learning_curves.csv`` as ``curves/<column>`` and of each probe
  table as ``<probe>/<column>`` (e.g. ``fixed_point_probe/value_gap``), one point per
  row at the row's ``iter``; empty cells are not exported (text columns neither);
- the run's status, health and regime label;
- the report (TensorBoard: as text, with the report's plots as images; MLflow: its files
  as artifacts).

Exporting the same run again replaces what the earlier export wrote: a TensorBoard run
folder is ``<out>/<run id>`` (``<out>/<sweep>/<run id>`` for a sweep's runs) and is
rewritten; an MLflow run is found by its ``tdlens_run_id`` tag and left alone when the run
did not change since (its files hash to the ``tdlens_fingerprint`` tag), else replaced.
The libraries are optional extras: ``pip install "tdlens[tensorboard]"`` or
``"tdlens[mlflow]"``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from tdlens.catalog.records import RunRecord, record_from
from tdlens.rundir.files import RunFileError
from tdlens.rundir.read import RunData, load_run, read_table_text, table_file, table_files

RUN_FILES: tuple[str, ...] = (
    "config.json",
    "status.json",
    "learning_curves.csv",
    "run_report.md",
    "run_report.json",
    "run_report.html",
)
"""The files of a run whose content decides whether an export is up to date."""
ARTIFACTS: tuple[str, ...] = (
    "run_report.md",
    "run_report.json",
    "run_report.html",
    "config.json",
    "status.json",
)
"""The run files an MLflow export attaches as artifacts (those that exist)."""


class ExportError(ValueError):
    """Bad input to an exporter (not a run, bad URI, library missing); names the problem."""


@dataclass(frozen=True)
class Target:
    """One run to export: its files as read, its catalog record, and its sweep's name
    (None for a stand-alone run)."""

    data: RunData
    record: RunRecord
    sweep: str | None = None

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.data.run_dir

    @property
    def run_id(self) -> str:
        """The run directory's name (the catalog's run id)."""
        return self.data.run_dir.name


def _target(run_dir: Path, sweep: str | None = None) -> Target:
    data = load_run(run_dir)
    return Target(data, record_from(data), sweep)


def targets(path: str | Path) -> list[Target]:
    """The runs of a run directory (one) or of a sweep directory (each run started)."""
    from tdlens.sweeps.plan import read_plan
    from tdlens.sweeps.plan import run_dir as sweep_run_dir

    path = Path(path)
    if (path / "plan.json").is_file():
        plan = read_plan(path)
        name = str(plan.get("name") or path.name)
        found = [sweep_run_dir(path, entry["run_id"]) for entry in plan["runs"]]
        return [_target(d, name) for d in found if (d / "config.json").is_file()]
    if (path / "config.json").is_file():
        return [_target(path)]
    raise ExportError(f"'{path}' is neither a run directory (config.json) nor a sweep (plan.json)")


def scalar_series(data: RunData) -> dict[str, list[tuple[int, float]]]:
    """Every exported series of a run: ``tag -> [(iter, value), ...]`` (module docstring).

    Read from the run's tables, so an empty cell (None) is told from a NaN the run wrote.
    """
    tables = {"curves": data.curves, **dict(sorted(data.probes.items()))}
    series: dict[str, list[tuple[int, float]]] = {}
    for table_name, table in tables.items():
        steps = table.iters()
        for column in table.numeric_columns():
            if column == "iter":
                continue
            points = []
            for step, row in zip(steps, table.rows, strict=True):
                cell = row.get(column)
                if isinstance(cell, float) and math.isfinite(step):
                    points.append((int(step), cell))
            if points:
                series[f"{table_name}/{column}"] = points
    return series


def fingerprint(run_dir: Path) -> str:
    """A hash of the run's files (RUN_FILES and the probe tables): changes when they do.

    A table is hashed by its bytes as written (:func:`tdlens.rundir.read.read_table_text`),
    so a compacted sweep run (``learning_curves.csv.gz``) hashes as the run it was.
    """
    digest = hashlib.sha256()
    tables = [Path("probes") / f"{name}.csv" for name in table_files(run_dir / "probes")]
    for name in [*RUN_FILES, *tables]:
        path = run_dir / name
        found = table_file(path) if path.suffix == ".csv" else path
        if found is None or not found.is_file():
            continue
        try:
            data = found.read_bytes() if found == path else read_table_text(path).encode()
        except RunFileError:
            data = found.read_bytes()  # an unreadable table still hashes
        digest.update(path.name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def tags(target: Target) -> dict[str, str]:
    """Status, health, regime and identity of a run, as strings (empty when unknown)."""
    health = target.data.report.get("health") or {}
    out = {
        "tdlens_run_id": target.run_id,
        "tdlens_path": str(target.path.resolve()),
        "status": str(target.data.status.get("status") or ""),
        "health": str(health.get("status") or ""),
        "regime": str(target.record.regime or ""),
    }
    if target.sweep:
        out["tdlens_sweep"] = target.sweep
    return out
