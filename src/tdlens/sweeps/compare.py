"""Side-by-side comparison of runs and sweeps in one self-contained HTML page (docs/model.md §11).

Each target is a run directory (config.json), a sweep directory (plan.json: all its runs),
or, when no such path exists, a run id (or id prefix) or sweep name looked up in the
catalog. The page holds: a table with one column per run (status, health, regime, final
metrics), the config keys whose values differ between the runs, and overlaid curves of
the core metrics against the iteration (value_gap from the fixed-point probe table), as
interactive figures (zoom, hover, legend toggles, linear/log). Runs are labelled by their
run directory's name (never an absolute path) and each run keeps one colour, dash and
marker in every figure. Every string is escaped (:mod:`tdlens.sweeps.html`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.catalog import store as cat
from tdlens.catalog.records import FINAL_METRICS, RunRecord, record_from
from tdlens.config import flatten
from tdlens.pages import kit as H
from tdlens.pages.fmt import fmt
from tdlens.rundir.files import atomic_write_text
from tdlens.rundir.read import load_run
from tdlens.sweeps.html import curves_figure
from tdlens.sweeps.plan import is_sweep_dir, read_plan, run_dir

CURVES: tuple[tuple[str, bool], ...] = (
    ("td_loss", True),
    ("w_norm", False),
    ("critic_teacher_error", False),
    ("tracking_gap", False),
    ("mean_rho2", False),
)
"""Learning-curve columns drawn (name, log scale)."""
MAX_RUNS = 200


class CompareError(ValueError):
    """A target is neither a run, a sweep, nor known to the catalog."""


@dataclass
class RunView:
    record: RunRecord
    config: dict[str, Any]
    curves: list[dict[str, Any]]
    value_gap: list[dict[str, Any]]


def resolve_targets(targets: Sequence[str], catalog: Path | None) -> list[Path]:
    """Run directories of every target, in order, without duplicates."""
    found: list[Path] = []
    for target in targets:
        path = Path(target)
        if (path / "config.json").is_file():
            found.append(path)
        elif is_sweep_dir(path):
            found += [run_dir(path, e["run_id"]) for e in read_plan(path)["runs"]]
        else:
            found += _from_catalog(target, catalog)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if len(unique) > MAX_RUNS:
        raise CompareError(f"{len(unique)} runs to compare; at most {MAX_RUNS}")
    return unique


def _from_catalog(target: str, catalog: Path | None) -> list[Path]:
    path = cat.catalog_path(catalog)
    hint = f"'{target}' is not a run directory, a sweep directory"
    if not path.is_file():
        raise CompareError(f"{hint}, and there is no catalog at '{path}'")
    runs = cat.find_runs(path, target)
    if runs:
        return [Path(r["path"]) for r in runs]
    sweeps = cat.find_sweeps(path, target)
    if sweeps:
        return [Path(r["path"]) for r in cat.query_runs(path, sweep=sweeps[0]["name"])]
    raise CompareError(f"{hint}, a run id or a sweep name in the catalog '{path}'")


def load_view(path: Path) -> RunView:
    data = load_run(path)
    return RunView(
        record_from(data),
        data.config_data,
        list(data.curves.rows),
        list(data.probe("fixed_point_probe").rows),
    )


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Dotted config keys whose values are not all equal (name excluded)."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if k != "name" and len({repr(f.get(k)) for f in flat}) > 1]


def _series(rows: list[dict[str, Any]], column: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (float(r["iter"]), float(r[column]))
        for r in rows
        if isinstance(r.get("iter"), float) and isinstance(r.get(column), float)
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    arr = np.array(pts)
    return arr[:, 0], arr[:, 1]


def compare_html(views: Sequence[RunView]) -> str:
    """The comparison page (module docstring)."""
    labels = [v.record.run_id for v in views]
    fields = [
        "run_dir",
        "status",
        "health",
        "regime",
        "regime_reason",
        "iters",
        "outer_iters",
        "seconds",
        "config_hash",
    ]
    rows = [["name", *[v.record.name for v in views]]]
    for f in fields:
        if f == "run_dir":
            rows.append([f, *[Path(str(v.record.flat().get("path"))).name for v in views]])
            continue
        rows.append([f, *[v.record.flat().get(f) for v in views]])
    rows = [r for r in rows[:2] if r[1:] != labels] + rows[2:]  # no copies of the header
    for m in FINAL_METRICS:
        rows.append([m, *[v.record.metrics.get(m) for v in views]])
    diff = differing_keys([v.config for v in views])
    regimes = Counter(str(v.record.regime) for v in views)
    health = Counter(str(v.record.health) for v in views)
    card = (
        '<section class="card" id="verdict">'
        f"<p><b>{len(views)} runs</b>: regimes "
        + H.esc(", ".join(f"{k}={n}" for k, n in sorted(regimes.items())))
        + "; health "
        + H.esc(", ".join(f"{k}={n}" for k, n in sorted(health.items())))
        + "</p><p>they differ in: "
        + H.esc(", ".join(diff) or "nothing (same config)")
        + "</p></section>"
    )
    body = [card, "<h2>Final metrics and health</h2>", H.table(["", *labels], rows)]
    if diff:
        flat = [flatten(v.config) for v in views]
        body += [
            "<h2>Config keys that differ</h2>",
            H.table(["key", *labels], [[k, *[_text(f.get(k)) for f in flat]] for k in diff]),
        ]
    figs = []
    for column, log in CURVES:
        series = [(lab, *_series(v.curves, column)) for lab, v in zip(labels, views, strict=True)]
        series = [s for s in series if s[1].size]
        if series:
            positive = all(np.all(s[2] > 0) for s in series)
            figs.append(curves_figure(series, column, log=log and positive))
    series = [
        (lab, *_series(v.value_gap, "value_gap")) for lab, v in zip(labels, views, strict=True)
    ]
    series = [s for s in series if s[1].size]
    if series:
        figs.append(curves_figure(series, "value_gap (fixed-point probe)"))
    if figs:
        body.append(
            "<h2>Curves</h2><p class='doc'>Click a run in a legend to hide it; drag to zoom, "
            "double-click to reset.</p><div class='plots'>"
            + "".join(H.plot(f) for f in figs)
            + "</div>"
        )
    return H.page(f"Comparison of {len(views)} run(s)", "\n".join(body))


def _text(value: Any) -> str:
    return fmt(value) if isinstance(value, float) else str(value)


def compare(targets: Sequence[str], out: Path, catalog: Path | None = None) -> Path:
    """Resolve `targets`, write the comparison HTML to `out`, return its path."""
    paths = resolve_targets(targets, catalog)
    if not paths:
        raise CompareError("nothing to compare")
    views = [load_view(p) for p in paths]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, compare_html(views))
    return out
