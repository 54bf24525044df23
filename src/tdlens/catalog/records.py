"""One run directory as a flat record: status, health, timings, final metrics, regime.

Reads the run through :func:`tdlens.rundir.read.load_run` (config.json, status.json,
learning_curves.csv, probes/fixed_point_probe.csv, probes/stability_probe.csv,
probes/rounds.csv and run_report.json's ``health.status``). A missing or corrupt file
gives missing values (and a line in ``problems``), never an exception, so a half-written
or failed run still has a row.

Final metrics: the last learning-curve row whose td_loss is finite (the dense columns of
``CURVE_METRICS``), the last fixed-point round (``FIXED_POINT_METRICS``) and the last
stability round (``STABILITY_METRICS``); missing columns are simply absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdlens.rundir.read import RunData, load_run
from tdlens.scores import Regime, label_regime, series_of

CURVE_METRICS: tuple[str, ...] = (
    "td_loss",
    "critic_teacher_error",
    "tracking_gap",
    "w_norm",
    "mean_rho2",
    "delta_w_norm",
)
FIXED_POINT_METRICS: tuple[str, ...] = ("value_gap", "w_gap", "noise_floor", "w_sharp_drift")
STABILITY_METRICS: tuple[str, ...] = (
    "eig_min_real",
    "critical_step",
    "fastest_timescale",
    "growth_timescale",
    "critical_alpha_w",
)
FINAL_METRICS: tuple[str, ...] = (*CURVE_METRICS, *FIXED_POINT_METRICS, *STABILITY_METRICS)
"""Every final metric a record may carry, in display order."""

Rows = list[dict[str, float | str | None]]


@dataclass
class RunRecord:
    """A run directory summarised (module docstring); ``params`` are its swept values."""

    run_id: str
    path: Path
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    config_hash: str | None = None
    status: str | None = None
    reason: str | None = None
    health: str | None = None
    iters: int = 0
    outer_iters: int = 0
    seconds: float = math.nan
    started_at: str | None = None
    finished_at: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    regime: str = "n/a"
    regime_reason: str = ""
    problems: list[str] = field(default_factory=list)
    parent: str | None = None
    """A branch's parent run directory (its branch.json), else None."""

    def flat(self) -> dict[str, Any]:
        """One flat row: identity, swept values, status, regime, then FINAL_METRICS."""
        row: dict[str, Any] = {"run_id": self.run_id}
        row.update(self.params)
        row.update(
            status=self.status,
            health=self.health,
            regime=self.regime,
            iters=self.iters,
            outer_iters=self.outer_iters,
            seconds=self.seconds,
        )
        row.update({m: self.metrics.get(m, math.nan) for m in FINAL_METRICS})
        row.update(
            regime_reason=self.regime_reason,
            config_hash=self.config_hash,
            reason=self.reason,
            path=str(self.path),
        )
        return row


def _number(cell: Any) -> float:
    return float(cell) if isinstance(cell, int | float) else math.nan


def last_values(rows: Rows, names: Sequence[str], key: str | None = None) -> dict[str, float]:
    """`names` from the last row (whose `key` column is finite, when `key` is given)."""
    for row in reversed(rows):
        if key is None or math.isfinite(_number(row.get(key))):
            return {n: _number(row[n]) for n in names if n in row}
    return {}


def _seconds(curves: Rows, rounds: Rows) -> float:
    total = sum(_number(r.get("iter_time_s")) for r in curves if r.get("iter_time_s") is not None)
    total += sum(_number(r.get("total_s")) for r in rounds if r.get("total_s") is not None)
    return float(total) if curves else math.nan


def _config_hash(config: dict[str, Any]) -> str | None:
    from tdlens.config import ConfigError, parse_config

    try:
        return parse_config(config).config_hash() if config else None
    except ConfigError:
        return None


def load_record(run_dir: str | Path, params: dict[str, Any] | None = None) -> RunRecord:
    """Read one run directory into a RunRecord (never raises on bad files)."""
    return record_from(load_run(run_dir), params)


def record_from(data: RunData, params: dict[str, Any] | None = None) -> RunRecord:
    """The RunRecord of a run directory already read by :func:`tdlens.rundir.read.load_run`."""
    run_dir, config, status = data.run_dir, data.config_data, data.status
    curves, rounds = list(data.curves.rows), list(data.rounds.rows)
    fixed = list(data.probe("fixed_point_probe").rows)
    stab = list(data.probe("stability_probe").rows)
    health = data.report.get("health")
    series = series_of(data)
    outer = series.outer_iters
    regime: Regime = label_regime(series)
    metrics = last_values(curves, CURVE_METRICS, key="td_loss")
    metrics.update(last_values(fixed, FIXED_POINT_METRICS, key="value_gap"))
    metrics.update(last_values(stab, STABILITY_METRICS))
    return RunRecord(
        run_id=run_dir.name,
        path=run_dir,
        params=dict(params or {}),
        name=config.get("name"),
        config_hash=status.get("config_hash") or _config_hash(config),
        status=status.get("status") or ("not started" if not config else None),
        reason=status.get("reason"),
        health=health.get("status") if isinstance(health, dict) else None,
        iters=len(curves),
        outer_iters=outer,
        seconds=_seconds(curves, rounds),
        started_at=status.get("started_at"),
        finished_at=status.get("updated_at"),
        metrics=metrics,
        regime=regime.label,
        regime_reason=regime.reason,
        problems=list(data.problems),
        parent=_parent_of(run_dir),
    )


def _parent_of(run_dir: Path) -> str | None:
    """The parent run directory named by run_dir/branch.json (a branch), else None."""
    from tdlens.runs.branch import read_branch

    parent = (read_branch(run_dir) or {}).get("parent")
    return str(parent) if isinstance(parent, str) else None


@dataclass
class ConfigRow:
    """The runs of one config (same swept values but the seed)."""

    key: tuple[Any, ...]
    params: dict[str, Any]
    records: list[RunRecord]


@dataclass
class SweepSummary:
    """A sweep's summary tables (:mod:`tdlens.sweeps.summary`) and the files written."""

    sweep_dir: Path
    name: str
    axes: list[dict[str, Any]]
    metric: str
    records: list[RunRecord]
    configs: list[dict[str, Any]]
    marginals: list[dict[str, Any]]
    boundary: list[dict[str, Any]]
    paths: list[Path]
