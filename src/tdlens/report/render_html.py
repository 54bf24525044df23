"""run_report.html (SPEC 8): one self-contained page with the markdown's content and plots.

No network and no script: CSS is inline, plots are base64 PNGs (:mod:`tdlens.report.plots`).
Every string that comes from the run (config values, run name, paths, status reason,
traceback, table names) goes through :func:`esc` (``html.escape`` with quotes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdlens.report import plots
from tdlens.report.build import SAMPLE_COLUMNS, Report
from tdlens.report.fmt import fmt, fmt_count, fmt_ratio
from tdlens.report.kit import esc, page, table
from tdlens.report.render_md import DYNAMICS_NOTES, MISSING_CELL, key_hparams, theory_lines
from tdlens.report.stats import STAT_COLUMNS, Stats
from tdlens.rundir.read import Table

CORE_PLOT_COLUMNS = (
    "td_loss",
    "w_norm",
    "mean_rho2",
    "tracking_gap",
    "critic_teacher_error",
    "delta_w_norm",
)


def stats_table(stats: dict[str, Stats | None], source: Table | None = None) -> str:
    """The stats table; with a source table, a last column of SVG sparklines (the series)."""
    rows = [
        [name, *([MISSING_CELL] * 5)]
        if s is None
        else [name, *(fmt(v) for v in s.as_dict().values())]
        for name, s in stats.items()
    ]
    if source is None:
        return table(["metric", *STAT_COLUMNS], rows)
    t = source.iters()
    lines = [plots.sparkline(t, source.values(name)) for name in stats]
    head = "".join(f"<th>{esc(h)}</th>" for h in ("metric", *STAT_COLUMNS, "series"))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + f"<td>{svg}</td></tr>"
        for row, svg in zip(rows, lines, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def verdict(v: str | None) -> str:
    return f'<span class="{esc(v)}">{esc(v)}</span>' if v else "-"


def figure(uri: str | None, caption: str = "") -> str:
    if uri is None:
        return f"<p><em>{esc(caption or 'nothing to plot')}</em></p>"
    cap = esc(caption)
    return f'<figure><img alt="{cap}" src="{uri}"><figcaption>{cap}</figcaption></figure>'


def items(pairs: Sequence[tuple[str, str]]) -> str:
    """A list of ``key: value`` items (keys and values escaped here)."""
    return "<ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in pairs) + "</ul>"


def html_run_info(r: Report) -> str:
    i = r.run_info
    return "<h2>Run Info</h2>" + items(
        [
            ("run_dir", i["run_dir"]),
            ("timestamp", i["timestamp"] or "unknown"),
            ("seed", fmt(i["seed"])),
            ("key_hparams", key_hparams(i["key_hparams"])),
            ("name", i["name"] or "unknown"),
            ("config_hash", i["config_hash"]),
        ]
    )


def html_health(r: Report) -> str:
    reasons = "; ".join(r.health_reasons)
    out = [
        f"<h2>Health</h2><p>status: {verdict(r.health_status)}"
        + (f" ({esc(reasons)})" if reasons else "")
        + "</p>",
        f"<p>regime: <b>{esc(r.regime.label)}</b> ({esc(r.regime.reason)})</p>",
    ]
    rows = "".join(
        f"<tr><td>{esc(c.name)}</td><td>{verdict(c.verdict)}</td>"
        f"<td style='text-align:left'>{esc(c.detail)}</td></tr>"
        for c in r.checks
    )
    out.append(
        f"<table><thead><tr><th>check</th><th>verdict</th><th>observed</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return "".join(out)


def html_scale(r: Report) -> str:
    s = r.scale
    probe = s["stability_probe_step_scale"]
    return "<h2>Scale Checks</h2>" + items(
        [
            ("train_step_scale", fmt(s["train_step_scale"])),
            ("stability_probe_step_scale", fmt(probe) if probe is not None else "missing"),
            (
                "stability_probe_step_scale_ratio",
                f"{fmt_ratio(s['stability_probe_step_scale_ratio'])} (expect ~1.0)"
                + (" FAIL" if s["verdict"] == "FAIL" else ""),
            ),
        ]
    )


def html_core(r: Report) -> str:
    data = r.data
    cols = [c for c in CORE_PLOT_COLUMNS if data.curves.has(c)]
    uri = plots.plot_series(data.curves, cols, plots.probe_iters(data), "core metrics")
    return (
        "<h2>Core Metrics</h2>"
        + stats_table(r.core)
        + figure(uri, "core metrics vs iteration; dotted lines: probe rounds")
    )


def html_probes(r: Report) -> str:
    out = [
        "<h2>Probe Metrics</h2>",
        figure(plots.plot_key_probes(r.data), "key probe series with their references"),
    ]
    for p in r.probes:
        out.append(f"<h3>{esc(p.name)}</h3>")
        if p.note:
            out.append(f"<p>{esc(p.note)}</p>")
            continue
        out.append(stats_table(p.stats, r.data.probe(p.name)))
        if p.text_columns:
            out.append(items([(k, v if v is not None else "-") for k, v in p.text_columns.items()]))
        if p.name == "q_kernel_probe":
            out.append(figure(*plots.plot_q_kernel(r.data)))
    return "".join(out)


def html_samples(title: str, rows: list[list[Any]]) -> str:
    return f"<h2>{esc(title)}</h2>" + table(SAMPLE_COLUMNS, [[fmt(c) for c in row] for row in rows])


def html_next_steps(r: Report) -> str:
    return (
        "<h2>Next Steps</h2><ul>"
        + "".join(f"<li>{esc(s.message)}</li>" for s in r.next_steps)
        + "</ul>"
    )


def html_dynamics(r: Report) -> str:
    pairs = []
    for key, value in r.dynamics.items():
        note = DYNAMICS_NOTES.get(key)
        if key.endswith("_timescale") and value is not None:
            note = f"iterations, ~{fmt_count(value)}; run: {fmt(r.dynamics.get('run_iters'))}"
        pairs.append((key, fmt(value) + (f" ({note})" if note else "")))
    uri, caption = plots.plot_spectrum(r.data)
    return "<h2>Critic Dynamics</h2>" + items(pairs) + figure(uri, caption)


def html_rho(r: Report) -> str:
    check = next((c for c in r.checks if c.name == "rho_audit"), None)
    uri, caption = plots.plot_rho(r.data)
    text = f"<p>verdict: {verdict(check.verdict)} ({esc(check.detail)})</p>" if check else ""
    return "<h2>Rho Audit</h2>" + text + figure(uri, caption)


def html_theory(r: Report) -> str:
    t = r.theory
    return (
        "<h2>Theory Overlay</h2>"
        + items([("prediction", t["source"]), ("measured probes", str(len(t["value_gap"])))])
        + (
            "<ul>" + "".join(f"<li>{esc(x[2:])}</li>" for x in theory_lines(t)) + "</ul>"
            if t["source"].startswith("probes/")
            else ""
        )
        + figure(plots.plot_theory(t), "value_gap: measured vs expected dynamics")
    )


def html_tail(r: Report) -> str:
    rows = [
        [k, fmt(v["count"]), fmt(v["mean"]), fmt(v["max"]), fmt(v["total"])]
        for k, v in r.timings.items()
    ]
    out = [
        "<h2>Timings</h2>",
        table(["what", "count", "mean_s", "max_s", "total_s"], rows),
        "<h2>Status</h2>",
        items([(k, "-" if v is None else str(v)) for k, v in r.status.items() if k != "traceback"]),
    ]
    if "traceback" in r.status:
        out.append(f"<pre>{esc(r.status['traceback'])}</pre>")
    if r.problems:
        out.append("<h2>Files</h2>" + items([("problem", p) for p in r.problems]))
    return "".join(out)


def render_html(r: Report) -> str:
    """The whole run_report.html text."""
    title = f"Run Report: {r.run_info.get('name') or r.run_info['run_dir']}"
    body = "".join(
        [
            f"<h1>{esc(title)}</h1>",
            html_run_info(r),
            html_health(r),
            html_scale(r),
            html_core(r),
            html_probes(r),
            html_samples("Samples (Head)", r.samples_head),
            html_samples("Samples (Tail)", r.samples_tail),
            html_next_steps(r),
            html_dynamics(r),
            html_rho(r),
            html_theory(r),
            html_tail(r),
        ]
    )
    return page(title, body, heading=False)
