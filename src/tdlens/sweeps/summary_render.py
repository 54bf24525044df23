"""Rendering of a sweep summary: CSV, Markdown and self-contained HTML (docs/model.md §11).

Tables as in :mod:`tdlens.sweeps.summary`; interactive heatmaps (plotly, embedded) of the
chosen metric over every pair of swept axes with more than one value: each cell is the
mean over the configs at that (x, y) of the config's seed-mean, i.e. averaged over the
axes not shown. The HTML runs table links every run's report (relative links, so a copied
sweep folder keeps working): run_report.html where ``tdlens report RUN`` made one, else
run_report.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from tdlens.catalog.records import ConfigRow, RunRecord, SweepSummary
from tdlens.pages import kit as H
from tdlens.pages.fmt import fmt
from tdlens.scores import REGIME_DOC, thresholds
from tdlens.sweeps.html import heatmap_figure
from tdlens.sweeps.spec import SEED_AXIS

AGG_METRICS: tuple[str, ...] = (
    "td_loss",
    "value_gap",
    "w_norm",
    "critic_teacher_error",
    "tracking_gap",
    "mean_rho2",
)
"""Metrics aggregated over seeds in the per-config rows."""


def heatmap_grid(
    groups: Sequence[ConfigRow], x_key: str, y_key: str, metric: str
) -> tuple[list[Any], list[Any], np.ndarray]:
    """``z[iy, ix]`` = mean over configs at (x, y) of the config's seed-mean of `metric`."""
    xs = list(dict.fromkeys(json.dumps(g.params[x_key]) for g in groups))
    ys = list(dict.fromkeys(json.dumps(g.params[y_key]) for g in groups))
    cells: dict[tuple[int, int], list[float]] = {}
    for g in groups:
        vals = np.array([r.metrics.get(metric, math.nan) for r in g.records])
        vals = vals[np.isfinite(vals)]
        if vals.size:
            ix, iy = xs.index(json.dumps(g.params[x_key])), ys.index(json.dumps(g.params[y_key]))
            cells.setdefault((iy, ix), []).append(float(vals.mean()))
    z = np.full((len(ys), len(xs)), np.nan)
    for (iy, ix), v in cells.items():
        z[iy, ix] = float(np.mean(v))
    return [json.loads(x) for x in xs], [json.loads(y) for y in ys], z


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as CSV (header = union of keys in first-seen order; NaN/None -> empty)."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in header])
    return buf.getvalue()


def _md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


UNFINISHED_COLUMNS = ("run_id", "status", "reason")
FINISHED = frozenset({"complete", "diverged"})


def unfinished(s: SweepSummary) -> list[dict[str, Any]]:
    """Runs that did not finish (failed, incomplete, crashed, ...): id, status, reason."""
    return [
        {"run_id": r.run_id, "status": r.status, "reason": r.reason}
        for r in s.records
        if r.status not in FINISHED
    ]


def _run_columns(grid_keys: Sequence[str], has_seed: bool) -> list[str]:
    keys = [*grid_keys, *([SEED_AXIS] if has_seed else [])]
    return [
        "run_id",
        *keys,
        "status",
        "health",
        "regime",
        "iters",
        "td_loss",
        "value_gap",
        "w_norm",
        "fastest_timescale",
        "growth_timescale",
    ]


def _config_columns(grid_keys: Sequence[str], metric: str) -> list[str]:
    cols = [*grid_keys, "runs", "regime", "regimes"]
    if metric in AGG_METRICS:
        cols += [f"{metric}_{s}" for s in ("n", "mean", "iqm", "ci")]
    return cols


MARGINAL_COLUMNS = ("axis", "value", "regime", "runs", "iqm", "ci")


def markdown(s: SweepSummary, grid_keys: Sequence[str], has_seed: bool) -> str:
    """summary.md: counts, regime definitions, config and run tables, boundary."""
    status = Counter(r.status for r in s.records)
    regimes = Counter(r.regime for r in s.records)
    parts = [
        f"# Sweep summary: {s.name}\n",
        f"- sweep directory: `{s.sweep_dir}`",
        f"- runs: {len(s.records)}; status: "
        + ", ".join(f"{k}={v}" for k, v in sorted(status.items(), key=lambda kv: str(kv[0]))),
        "- regimes: " + ", ".join(f"{k}={v}" for k, v in sorted(regimes.items())),
        "- axes: " + "; ".join(f"{a['key']} ({len(a['values'])} values)" for a in s.axes),
        f"- heatmap metric: {s.metric}\n",
    ]
    if bad := unfinished(s):
        parts += [
            "## Runs that did not finish (`tdlens sweep ... --resume` retries them)\n",
            _md_table(bad, UNFINISHED_COLUMNS),
        ]
    parts += [
        "## Regime labels\n",
        REGIME_DOC + "\n",
        "Thresholds: " + ", ".join(f"{k} = {v:g}" for k, v in thresholds().items()) + "\n",
        "## Configs (seeds aggregated: mean, IQM, 95% stratified-bootstrap CI of the IQM)\n",
        _md_table(s.configs, _config_columns(grid_keys, s.metric)),
    ]
    if s.boundary and nothing_diverged(s):
        parts += ["## Stability boundary\n", nothing_diverged_text(s) + "\n"]
    elif s.boundary:
        cols = list(s.boundary[0])
        parts += [
            "## Stability boundary (largest alpha_w without a diverged run)\n",
            _md_table(s.boundary, cols),
        ]
    if s.marginals:
        parts += [
            f"## Marginals of {s.metric} by regime (IQM, 95% CI stratified by config)\n",
            _md_table(s.marginals, MARGINAL_COLUMNS),
        ]
    parts += [
        "## Runs\n",
        _md_table([r.flat() for r in s.records], _run_columns(grid_keys, has_seed)),
    ]
    return "\n".join(parts)


def html_page(
    s: SweepSummary, grid_keys: Sequence[str], groups: Sequence[ConfigRow], has_seed: bool
) -> str:
    """summary.html: the markdown's content plus inline heatmaps."""
    status = Counter(r.status for r in s.records)
    regimes = Counter(r.regime for r in s.records)
    body = [
        '<section class="card" id="verdict">'
        f"<p><b>{len(s.records)} runs</b>: regimes "
        + H.esc(", ".join(f"{k}={v}" for k, v in sorted(regimes.items())))
        + "; status "
        + H.esc(", ".join(f"{k}={v}" for k, v in sorted(status.items(), key=lambda kv: str(kv[0]))))
        + "</p>"
        + "".join(f"<p>{H.esc(line)}</p>" for line in boundary_lines(s))
        + f"<p>sweep directory: <code>{H.esc(s.sweep_dir)}</code></p></section>",
    ]
    if bad := unfinished(s):
        body += [
            "<h2>Runs that did not finish (<code>tdlens sweep ... --resume</code> retries "
            "them)</h2>",
            H.table(list(UNFINISHED_COLUMNS), [[r[c] for c in UNFINISHED_COLUMNS] for r in bad]),
        ]
    body += [
        "<h2>Regime labels</h2>",
        f"<p class='doc'>{H.esc(REGIME_DOC)}<br>Thresholds: "
        + H.esc(", ".join(f"{k} = {v:g}" for k, v in thresholds().items()))
        + "</p>",
    ]
    plot_keys = [k for k in grid_keys if len({json.dumps(g.params[k]) for g in groups}) > 1]
    if len(plot_keys) >= 2:
        body.append(f"<h2>Heatmaps of final {H.esc(s.metric)}</h2><div class='plots'>")
        for x_key, y_key in itertools.combinations(plot_keys, 2):
            xs, ys, z = heatmap_grid(groups, x_key, y_key, s.metric)
            body.append(H.plot(heatmap_figure(z, xs, ys, x_key, y_key, s.metric)))
        body.append("</div>")
    if s.boundary and nothing_diverged(s):
        body += ["<h2>Stability boundary</h2>", f"<p>{H.esc(nothing_diverged_text(s))}</p>"]
    elif s.boundary:
        cols = list(s.boundary[0])
        body += [
            "<h2>Stability boundary</h2>",
            H.table(cols, [[r.get(c) for c in cols] for r in s.boundary]),
        ]
    cols = _config_columns(grid_keys, s.metric)
    body += [
        "<h2>Configs (seeds aggregated: mean, IQM, 95% stratified-bootstrap CI of the IQM)</h2>",
        H.table(cols, [[c.get(k) for k in cols] for c in s.configs]),
    ]
    if s.marginals:
        cols = list(MARGINAL_COLUMNS)
        body += [
            f"<h2>Marginals of {H.esc(s.metric)} by regime</h2>",
            H.table(cols, [[m.get(c) for c in cols] for m in s.marginals]),
        ]
    cols = _run_columns(grid_keys, has_seed)
    rows = [[run_link(s, r), *[r.flat().get(c) for c in cols[1:]]] for r in s.records]
    body += ["<h2>Runs</h2>", H.table(cols, rows)]
    return H.page(f"Sweep summary: {s.name}", "\n".join(body))


def nothing_diverged(s: SweepSummary) -> bool:
    """No config of any slice diverged: the boundary lies beyond the grid."""
    return all(
        not math.isfinite(float(row.get("smallest_diverged_alpha_w", math.nan)))
        for row in s.boundary
    )


def nothing_diverged_text(s: SweepSummary) -> str:
    """The boundary section of a sweep where nothing diverged, in words."""
    largest = [row.get("largest_stable_alpha_w") for row in s.boundary]
    top = max((float(v) for v in largest if v is not None), default=math.nan)
    return (
        f"Nothing diverged: every run is stable up to the largest alpha_w of the grid "
        f"({fmt(top)}), so the stability boundary lies beyond it."
    )


def boundary_lines(s: SweepSummary) -> list[str]:
    """One line per stability-boundary row: where alpha_w stops being stable (one line
    when nothing diverged)."""
    if s.boundary and nothing_diverged(s):
        return [nothing_diverged_text(s)]
    out = []
    for row in s.boundary:
        where = ", ".join(
            f"{k}={fmt(v)}"
            for k, v in row.items()
            if k not in ("largest_stable_alpha_w", "smallest_diverged_alpha_w", "monotone")
        )
        out.append(
            f"stable up to alpha_w = {fmt(row.get('largest_stable_alpha_w'))}, diverged from "
            f"{fmt(row.get('smallest_diverged_alpha_w'))}" + (f" at {where}" if where else "")
        )
    return out


def run_link(s: SweepSummary, r: RunRecord) -> H.Html:
    """The run id as a relative link to its run_report.html, or to its run_report.md when
    it has no HTML page (a sweep run writes none: ``tdlens report RUN`` makes it); plain
    text when the run lies outside the sweep directory."""
    try:
        rel = Path(r.path).resolve().relative_to(Path(s.sweep_dir).resolve())
    except ValueError:
        return H.Html(H.esc(r.run_id))
    page = "run_report.html" if (Path(r.path) / "run_report.html").is_file() else "run_report.md"
    href = quote(f"{rel.as_posix()}/{page}")
    return H.Html(f'<a href="{H.esc(href)}">{H.esc(r.run_id)}</a>')
