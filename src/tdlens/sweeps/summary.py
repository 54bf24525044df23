"""Sweep summaries: per-run and per-config tables, heatmaps, stability boundary (docs/model.md §11).

``summarize(sweep_dir)`` reads plan.json and every run directory (never the learner) and
writes, into the sweep directory:

- ``summary.csv``: one row per run (swept values, status, health, regime, final metrics);
- ``summary_configs.csv``: one row per config (the runs that differ only by seed):
  for each of ``AGG_METRICS`` the mean, interquartile mean and the IQM's 95%
  stratified-bootstrap interval over seeds (:mod:`tdlens.sweeps.seed_stats`; ``1 seed``, never
  an interval, for one seed), plus regime counts per family (``n_<family>``);
- ``summary.json``: both tables, per-axis marginals split by regime family, the stability
  boundary, thresholds;
- ``summary.md`` and ``summary.html`` (self-contained: inline PNG heatmaps), rendered by
  :mod:`tdlens.sweeps.summary_render`.

Heatmaps: the chosen metric (``--metric``; default the final value_gap when any run has
one, else td_loss), averaged over seeds (config mean) and then over the axes not shown,
for every pair of swept axes. Stability boundary: for each slice (a value of every swept
axis but alpha_w and the seed), the largest alpha_w whose config has no diverged run, and
the smallest alpha_w that diverged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.catalog.records import (
    FINAL_METRICS,
    ConfigRow,
    RunRecord,
    SweepSummary,
    load_record,
)
from tdlens.rundir.files import atomic_write_text, to_jsonable
from tdlens.scores import NOT_AVAILABLE, REGIME_DOC, REGIMES, regime_family, thresholds
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.seed_stats import (
    BOOTSTRAP_SEED,
    aggregate,
    bootstrap_ci,
    interval_text,
    iqm,
    iqm_stat,
)
from tdlens.sweeps.spec import SEED_AXIS
from tdlens.sweeps.summary_render import AGG_METRICS, csv_text, html_page, markdown

BOUNDARY_AXIS = "alpha_w"
SEVERITY = ("diverged", "frozen", "plateau", "learning", NOT_AVAILABLE)
"""Tie-break order of a config's majority regime (most severe first)."""


class SummaryError(ValueError):
    """A summary cannot be made as asked (unknown metric, not a sweep directory)."""


# --------------------------------------------------------------------------- tables


def group_configs(records: Sequence[RunRecord], grid_keys: Sequence[str]) -> list[ConfigRow]:
    """Runs grouped by their swept values other than the seed, in plan order."""
    groups: dict[tuple[Any, ...], ConfigRow] = {}
    for rec in records:
        key = tuple(json.dumps(rec.params.get(k), sort_keys=True) for k in grid_keys)
        if key not in groups:
            groups[key] = ConfigRow(key, {k: rec.params.get(k) for k in grid_keys}, [])
        groups[key].records.append(rec)
    return list(groups.values())


def majority_regime(labels: Sequence[str]) -> str:
    """The most common label; ties go to the most severe (diverged > frozen > ...)."""
    if not labels:
        return NOT_AVAILABLE
    counts = Counter(labels)
    top = max(counts.values())
    return min((lab for lab, c in counts.items() if c == top), key=_severity)


def _severity(label: str) -> int:
    family = regime_family(label)
    return SEVERITY.index(family) if family in SEVERITY else len(SEVERITY)


def regime_counts(labels: Sequence[str]) -> dict[str, int]:
    """``n_<family>`` for every regime family (and ``n_na``): the runs of each."""
    families = Counter(regime_family(lab) for lab in labels)
    counts = {f"n_{f}": families.get(f, 0) for f in REGIMES}
    counts["n_na"] = families.get(NOT_AVAILABLE, 0)
    return counts


def config_row(group: ConfigRow, index: int) -> dict[str, Any]:
    """One config: swept values, run counts, regimes and seed aggregates of AGG_METRICS."""
    labels = [r.regime for r in group.records]
    row: dict[str, Any] = dict(group.params)
    row.update(
        runs=len(group.records),
        regime=majority_regime(labels),
        regimes=" ".join(f"{k}={v}" for k, v in sorted(Counter(labels).items())),
        **regime_counts(labels),
        diverged=sum(regime_family(r.regime) == "diverged" for r in group.records),
        complete=sum(r.status == "complete" for r in group.records),
        failed=sum(r.status == "failed" for r in group.records),
    )
    for m_index, metric in enumerate(AGG_METRICS):
        rng = np.random.default_rng([BOOTSTRAP_SEED, index, m_index])
        agg = aggregate([r.metrics.get(metric, math.nan) for r in group.records], rng)
        for stat in ("n", "mean", "iqm", "ci_low", "ci_high", "ci"):
            row[f"{metric}_{stat}"] = agg[stat]
    return row


def marginal_rows(
    groups: Sequence[ConfigRow], grid_keys: Sequence[str], metric: str
) -> list[dict[str, Any]]:
    """Per axis value AND regime family: IQM of `metric` over those runs, 95% CI stratified
    by config (``1 seed`` when no config has two such runs). Split by regime so a frozen
    run and a diverged one are never averaged into one number."""
    rows = []
    for a_index, key in enumerate(grid_keys):
        values = list(dict.fromkeys(json.dumps(g.params[key]) for g in groups))
        for v_index, value in enumerate(values):
            members = [g for g in groups if json.dumps(g.params[key]) == value]
            families = sorted(
                {regime_family(r.regime) for g in members for r in g.records}, key=_severity
            )
            for f_index, family in enumerate(families):
                strata = []
                for g in members:
                    x = np.array(
                        [
                            r.metrics.get(metric, math.nan)
                            for r in g.records
                            if regime_family(r.regime) == family
                        ]
                    )
                    strata.append(x[np.isfinite(x)])
                pooled = np.concatenate(strata) if strata else np.zeros(0)
                rng = np.random.default_rng([BOOTSTRAP_SEED, 1_000 + a_index, v_index, f_index])
                lo, hi = bootstrap_ci(strata, iqm_stat, rng)
                rows.append(
                    {
                        "axis": key,
                        "value": json.loads(value),
                        "regime": family,
                        "metric": metric,
                        "runs": int(pooled.size),
                        "iqm": iqm(pooled) if pooled.size else math.nan,
                        "ci_low": lo,
                        "ci_high": hi,
                        "ci": interval_text(max((s.size for s in strata), default=0), lo, hi),
                    }
                )
    return rows


def stability_boundary(
    groups: Sequence[ConfigRow], grid_keys: Sequence[str], axis: str = BOUNDARY_AXIS
) -> list[dict[str, Any]]:
    """Per slice of the other axes: largest non-diverged `axis` value, smallest diverged one.

    A config counts as diverged when any of its runs (seeds) is labelled diverged.
    ``monotone`` is False when some diverged value lies below the largest stable one.
    """
    if axis not in grid_keys:
        return []
    others = [k for k in grid_keys if k != axis]
    slices: dict[str, list[tuple[float, bool]]] = {}
    slice_params: dict[str, dict[str, Any]] = {}
    for g in groups:
        sk = json.dumps([g.params[k] for k in others])
        slice_params[sk] = {k: g.params[k] for k in others}
        diverged = any(regime_family(r.regime) == "diverged" for r in g.records)
        slices.setdefault(sk, []).append((float(g.params[axis]), diverged))
    rows = []
    for sk, points in slices.items():
        stable = [a for a, d in points if not d]
        bad = [a for a, d in points if d]
        largest = max(stable) if stable else math.nan
        smallest_bad = min(bad) if bad else math.nan
        rows.append(
            {
                **slice_params[sk],
                f"largest_stable_{axis}": largest,
                f"smallest_diverged_{axis}": smallest_bad,
                "monotone": not (stable and bad and smallest_bad < largest),
            }
        )
    return rows


def default_metric(records: Sequence[RunRecord]) -> str:
    """value_gap when any run has a finite one, else td_loss."""
    if any(math.isfinite(r.metrics.get("value_gap", math.nan)) for r in records):
        return "value_gap"
    return "td_loss"


def summarize(sweep_dir: str | Path, metric: str | None = None) -> SweepSummary:
    """Read a sweep directory and write its summary files (module docstring)."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    axes = plan.get("axes", [])
    all_keys = [a["key"] for a in axes]
    grid_keys = [k for k in all_keys if k != SEED_AXIS]
    records = [
        load_record(run_dir(sweep_dir, e["run_id"]), e.get("overrides", {})) for e in plan["runs"]
    ]
    if metric is None:
        metric = default_metric(records)
    elif metric not in FINAL_METRICS:
        raise SummaryError(f"--metric '{metric}': choose one of {', '.join(FINAL_METRICS)}")
    groups = group_configs(records, grid_keys)
    s = SweepSummary(
        sweep_dir=sweep_dir,
        name=str(plan.get("name", sweep_dir.name)),
        axes=axes,
        metric=metric,
        records=records,
        configs=[config_row(g, i) for i, g in enumerate(groups)],
        marginals=marginal_rows(groups, grid_keys, metric),
        boundary=stability_boundary(groups, grid_keys),
        paths=[],
    )
    has_seed = SEED_AXIS in all_keys
    outputs = {
        "summary.csv": csv_text([r.flat() for r in records]),
        "summary_configs.csv": csv_text(s.configs),
        "summary.json": json.dumps(
            to_jsonable(
                {
                    "name": s.name,
                    "sweep_dir": str(sweep_dir),
                    "axes": axes,
                    "metric": metric,
                    "regimes": REGIME_DOC,
                    "thresholds": thresholds(),
                    "runs": [r.flat() for r in records],
                    "configs": s.configs,
                    "marginals": s.marginals,
                    "stability_boundary": s.boundary,
                }
            ),
            indent=1,
            allow_nan=False,
        )
        + "\n",
        "summary.md": markdown(s, grid_keys, has_seed),
        "summary.html": html_page(s, grid_keys, groups, has_seed),
    }
    for name, text in outputs.items():
        atomic_write_text(sweep_dir / name, text)
        s.paths.append(sweep_dir / name)
    return s
