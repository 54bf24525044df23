"""The sweep directory and its plan file (docs/model.md §7 and §11).

Layout of ``<output-dir>/<YYYYmmdd_HHMMSS>_<name>/``::

    plan.json        every run id, its swept values and resolved config hash (written once,
                     atomically, before any run starts); also the resolved base config, so
                     the sweep can be resumed from this folder alone
    sweep.json       progress: backend, jobs, times, and the status of each finished run
    runs/<run_id>/   one run directory per run (docs/model.md §7)
    summary.*        summaries (:mod:`tdlens.sweeps.summary`)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tdlens.config import ConfigError
from tdlens.rundir.files import RunFileError, atomic_write_json, read_json, timestamped_dir
from tdlens.sweeps.spec import PlannedRun, SweepSpec, SweepSpecError, resolve_run

PLAN_FILE = "plan.json"
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
PLAN_FORMAT = 1


def plan_dict(spec: SweepSpec, runs: list[PlannedRun], base: dict[str, Any]) -> dict[str, Any]:
    """The content of plan.json (JSON-ready)."""
    return {
        "format": PLAN_FORMAT,
        "name": spec.name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "spec_file": str(spec.source) if spec.source else None,
        "spec": spec.raw,
        "base_file": str(spec.base),
        "base_config": base,
        "axes": [{"key": a.key, "values": list(a.values)} for a in spec.all_axes],
        "runs": [
            {
                "run_id": r.run_id,
                "index": r.index,
                "overrides": r.params,
                "config_hash": r.config_hash,
            }
            for r in runs
        ],
    }


def new_sweep_dir(output_dir: Path, name: str) -> Path:
    """``<output_dir>/<YYYYmmdd_HHMMSS>_<name>`` (suffixed when taken)."""
    return timestamped_dir(output_dir, name)


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def find_sweep_dir(output_dir: Path, name: str) -> Path | None:
    """`output_dir` itself if it holds a plan, else its latest ``*_<name>`` sweep folder."""
    output_dir = Path(output_dir)
    if is_sweep_dir(output_dir):
        return output_dir
    if not output_dir.is_dir():
        return None
    found = sorted(
        p
        for p in output_dir.iterdir()
        if p.is_dir() and is_sweep_dir(p) and read_plan(p).get("name") == name
    )
    return found[-1] if found else None


def write_plan(sweep_dir: Path, plan: dict[str, Any]) -> None:
    atomic_write_json(Path(sweep_dir) / PLAN_FILE, plan)


def read_plan(sweep_dir: Path) -> dict[str, Any]:
    """plan.json of a sweep directory; a clear RunFileError when missing or corrupt."""
    data = read_json(Path(sweep_dir) / PLAN_FILE)
    if not isinstance(data, dict) or "runs" not in data or "base_config" not in data:
        raise RunFileError(f"'{Path(sweep_dir) / PLAN_FILE}' is not a sweep plan")
    return data


def runs_from_plan(plan: dict[str, Any]) -> list[PlannedRun]:
    """Rebuild every PlannedRun of a plan and check each config hash against the plan."""
    runs = []
    for entry in plan["runs"]:
        try:
            run = resolve_run(plan["base_config"], entry["overrides"], int(entry["index"]))
        except (ConfigError, KeyError, TypeError) as exc:
            raise RunFileError(f"plan entry {entry.get('run_id')!r}: {exc}") from None
        if run.run_id != entry["run_id"] or run.config_hash != entry["config_hash"]:
            raise SweepSpecError(
                f"plan entry '{entry['run_id']}' resolves to '{run.run_id}' with this version "
                "of tdlens (config defaults changed?); start a new sweep"
            )
        runs.append(run)
    return runs


def run_dir(sweep_dir: Path, run_id: str) -> Path:
    return Path(sweep_dir) / RUNS_DIR / run_id
