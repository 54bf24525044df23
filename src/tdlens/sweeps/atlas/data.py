"""The atlas's data: a sweep's plan and records as points on the diagrams
(:class:`AtlasPoint`: step ratio, mismatch, beta, alpha_w, eig_min_real).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.catalog.records import RunRecord, last_values, load_record
from tdlens.rundir.read import load_run
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.spec import SEED_AXIS

MISMATCH_KEYS: tuple[str, ...] = ("theta_mu_offset_scale", "sigma_pi", "sigma_mu")
"""Mismatch axes in order of preference (sigma_pi is shown as sigma_pi / sigma_mu,
sigma_mu as sigma_mu / sigma_pi)."""


class AtlasError(ValueError):
    """The sweep cannot be drawn as an atlas (no mismatch or alpha_w axis)."""


@dataclass(frozen=True)
class AtlasPoint:
    """One run placed on the diagrams."""

    record: RunRecord
    step_ratio: float
    mismatch: float
    beta: float
    alpha_w: float
    eig_min_real: float
    eig_lo: float = math.nan
    eig_hi: float = math.nan
    seed: int = 0

    @property
    def grid_point(self) -> tuple[tuple[str, Any], ...]:
        """The run's swept values without the seed: the same for every seed of a point."""
        return tuple(sorted((k, v) for k, v in self.record.params.items() if k != SEED_AXIS))


def _param(rec: RunRecord, base: dict[str, Any], key: str) -> float:
    """A swept value of the run, else the base config's (dotted keys), as float."""
    if key in rec.params:
        return float(rec.params[key])
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else math.nan


def mismatch_name(mkey: str) -> str:
    """How the mismatch axis is labelled (a ratio for the action widths)."""
    return {"sigma_pi": "sigma_pi / sigma_mu", "sigma_mu": "sigma_mu / sigma_pi"}.get(mkey, mkey)


def _eig_interval(rec: RunRecord) -> tuple[float, float]:
    """``(eig_min_real_lo, eig_min_real_hi)`` of the run's latest stability round (NaN when
    the probe does not write them or the run has none)."""
    rows = list(load_run(rec.path).probe("stability_probe").rows) if rec.path.is_dir() else []
    got = last_values(rows, ("eig_min_real_lo", "eig_min_real_hi"))
    return got.get("eig_min_real_lo", math.nan), got.get("eig_min_real_hi", math.nan)


def mismatch_key(swept: Sequence[str]) -> str:
    """The first of MISMATCH_KEYS that the sweep varies."""
    for key in MISMATCH_KEYS:
        if key in swept:
            return key
    raise AtlasError(
        f"the sweep varies none of {', '.join(MISMATCH_KEYS)}: no mismatch axis to draw"
    )


def atlas_points(records: Sequence[RunRecord], base: dict[str, Any], mkey: str) -> list[AtlasPoint]:
    """Every run at ``(alpha_w / critical_step, mismatch)`` (module docstring)."""
    crit = np.array([r.metrics.get("critical_step", math.nan) for r in records])
    fallback = float(np.median(crit[np.isfinite(crit)])) if np.isfinite(crit).any() else math.nan
    points = []
    for rec, c in zip(records, crit, strict=True):
        alpha = _param(rec, base, "alpha_w")
        mismatch = _param(rec, base, mkey)
        if mkey == "sigma_mu":
            mismatch /= _param(rec, base, "sigma_pi")
        if mkey == "sigma_pi":
            mismatch /= _param(rec, base, "sigma_mu")
        c = c if math.isfinite(c) else fallback
        points.append(
            AtlasPoint(
                rec,
                alpha / c if c > 0 else math.nan,
                round(mismatch, 12),
                _param(rec, base, "beta"),
                alpha,
                rec.metrics.get("eig_min_real", math.nan),
                *_eig_interval(rec),
                int(rec.params.get(SEED_AXIS, base.get(SEED_AXIS) or 0)),
            )
        )
    return points


@dataclass(frozen=True)
class AtlasSweep:
    """One sweep read for the atlas: its plan, mismatch key and points.

    ``points`` are the runs at the sweep's first seed (what the diagrams, the label tables
    and the representative runs show); ``seed_points`` every run of every seed (empty when
    the sweep has one seed), which only the seed-agreement table reads.
    """

    plan: dict[str, Any]
    mkey: str
    points: list[AtlasPoint]
    seed_points: list[AtlasPoint] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        """The sweep's seeds, first (drawn) seed first."""
        return sorted({p.seed for p in self.seed_points or self.points})

    @property
    def spec_name(self) -> str:
        return Path(str(self.plan.get("spec_file") or f"{self.plan.get('name')}.yaml")).name


def read_sweep(sweep_dir: Path, need_step: bool) -> AtlasSweep:
    """A sweep's plan and points; ``need_step``: it must vary alpha_w (AtlasError)."""
    plan = read_plan(sweep_dir)
    swept = [a["key"] for a in plan.get("axes", []) if a["key"] != SEED_AXIS]
    if need_step and "alpha_w" not in swept:
        raise AtlasError(f"{sweep_dir.name}: the sweep does not vary alpha_w: no step axis to draw")
    mkey = mismatch_key(swept)
    records = [
        load_record(run_dir(sweep_dir, e["run_id"]), e.get("overrides", {})) for e in plan["runs"]
    ]
    points = atlas_points(records, plan.get("base_config") or {}, mkey)
    first = min(p.seed for p in points) if points else 0
    drawn = [p for p in points if p.seed == first]
    return AtlasSweep(plan, mkey, drawn, points if len(drawn) < len(points) else [])
