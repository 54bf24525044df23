"""run_report.html (docs/model.md §8): one self-contained page with the markdown's content and
plots.

The verdict card comes first (regime, health, why, next, key numbers), then the seed's
sections. No network: CSS is inline and the figures are plotly charts whose library is
embedded once (:mod:`tdlens.pages.kit`, :mod:`tdlens.pages.plots`). Every string that
comes from the run (config values, run name, paths, status reason, traceback, table
names) goes through :func:`esc` (``html.escape`` with quotes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tdlens.pages import plots
from tdlens.pages.fmt import fmt, fmt_count, fmt_ratio
from tdlens.pages.kit import esc, page, plot, table
from tdlens.probes import registry
from tdlens.report.build import PAGE_SECTIONS, SAMPLE_COLUMNS, Report
from tdlens.report.render_md import DYNAMICS_NOTES, MISSING_CELL, key_hparams, theory_lines
from tdlens.report.series_stats import STAT_COLUMNS, Stats
from tdlens.rundir.read import Table

CARD_REASONS = 2
"""Health reasons the card lists (the rest are counted), so it fits the first screen."""
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
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def plots_grid(figs: Sequence[dict[str, Any] | None], empty: str = "nothing to plot") -> str:
    """Figures side by side (two per row at 1280 px)."""
    divs = [plot(f) for f in figs if f is not None]
    if not divs:
        return f"<p><em>{esc(empty)}</em></p>"
    return '<div class="plots">' + "".join(divs) + "</div>"


def html_verdict(r: Report) -> str:
    """The verdict card."""
    v = r.verdict
    base = v.headline.split(":")[0]
    shown = v.reasons[:CARD_REASONS]
    more = len(v.reasons) - len(shown)
    text = "; ".join(shown) + (f"; {more} more under Health" if more > 0 else "")
    reasons = f" ({esc(text)})" if v.reasons else ""
    rows = "".join(
        f"<tr><td>{esc(k.name)}</td><td>{esc(fmt(k.value))}</td>"
        f"<td>{esc(f'[{fmt(k.lo)}, {fmt(k.hi)}]' if k.lo is not None else '-')}</td>"
        f'<td class="t">{esc(k.note)}</td></tr>'
        for k in v.key_numbers
    )
    numbers = (
        '<div class="scroll"><table><thead><tr><th>key number</th><th>value</th>'
        f"<th>95% interval</th><th>what</th></tr></thead><tbody>{rows}</tbody></table></div>"
        if rows
        else ""
    )
    steps = f"<p><b>Steps:</b> {esc(v.steps)}</p>" if v.steps else ""
    return (
        f'<section class="card c-{esc(base)}" id="verdict"><h2>Verdict</h2>'
        f'<p><span class="regime {esc(base)}">{esc(v.headline)}</span> '
        f"<small>({esc(v.regime_reason)})</small> &middot; health "
        f"{verdict(v.health)}{reasons}</p>"
        f"<p><b>Why:</b> {esc(v.why)}</p><p><b>Next:</b> {esc(v.next)}</p>{steps}"
        f"{numbers}</section>"
    )


def html_settings(r: Report) -> str:
    """Every probe's settings (constant over the run) in one table."""
    if not r.settings:
        return ""
    rows = [[probe, col, value] for probe, col, value in r.settings]
    return "<h2>Settings (constant over the run)</h2>" + table(["probe", "setting", "value"], rows)


def verdict(v: str | None) -> str:
    return f'<span class="{esc(v)}">{esc(v)}</span>' if v else "-"


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
            ("schedules", i["schedules"] or "unknown"),
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
    return (
        "<h2>Core Metrics</h2>"
        + stats_table(r.core, data.curves)
        + plots_grid(plots.plot_core(data, cols))
        + "<p class='doc'>Diamonds: probe rounds. Every y axis spans at least "
        "10% of the series' level, so a negligible change is drawn flat.</p>"
    )


def html_probes(r: Report) -> str:
    out = [
        "<h2>Probe Metrics</h2>",
        plots_grid(plots.plot_key_probes(r.data), "no probe series"),
    ]
    for p in r.probes:
        out.append(f"<h3>{esc(p.name)}</h3>")
        if p.note:
            out.append(f"<p>{esc(p.note)}</p>")
            continue
        span = f"{p.rows} rounds, iterations {p.iters[0]}-{p.iters[1]}; " if p.iters else ""
        out.append(
            f"<details><summary>{esc(span)}{len(p.stats)} metrics (last, min, max, "
            "mean and slope of the last k, series)</summary>"
            + stats_table(p.stats, r.data.probe(p.name))
            + "</details>"
        )
        if p.text_columns:
            out.append(items([(k, v if v is not None else "-") for k, v in p.text_columns.items()]))
        figures = registry.spec_of(p.name).figures_fn() if p.name in registry.names() else None
        if figures is not None:
            out.append(plots_grid(*figures(r.data)))
    out.append(html_settings(r))
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
    spec, caption = plots.plot_spectrum(r.data)
    return "<h2>Critic Dynamics</h2>" + items(pairs) + plots_grid([spec], caption)


def html_rho(r: Report) -> str:
    check = next((c for c in r.checks if c.name == "rho_audit"), None)
    spec, caption = plots.plot_rho(r.data)
    text = f"<p>verdict: {verdict(check.verdict)} ({esc(check.detail)})</p>" if check else ""
    return "<h2>Rho Audit</h2>" + text + plots_grid([spec], caption)


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
        + plots_grid([plots.plot_theory(t)], "no value_gap measured")
    )


def html_timings(r: Report) -> str:
    rows = [
        [k, fmt(v["count"]), fmt(v["mean"]), fmt(v["max"]), fmt(v["total"])]
        for k, v in r.timings.items()
    ]
    return "<h2>Timings</h2>" + table(["what", "count", "mean_s", "max_s", "total_s"], rows)


def html_status(r: Report) -> str:
    out = "<h2>Status</h2>" + items(
        [(k, "-" if v is None else str(v)) for k, v in r.status.items() if k != "traceback"]
    )
    if "traceback" in r.status:
        out += f"<pre>{esc(r.status['traceback'])}</pre>"
    return out


def html_files(r: Report) -> str:
    if not r.problems:
        return ""
    return "<h2>Files</h2>" + items([("problem", p) for p in r.problems])


SECTIONS: dict[str, Callable[[Report], str]] = {
    "verdict": html_verdict,
    "run_info": html_run_info,
    "health": html_health,
    "scale": html_scale,
    "core": html_core,
    "probes": html_probes,
    "samples_head": lambda r: html_samples("Samples (Head)", r.samples_head),
    "samples_tail": lambda r: html_samples("Samples (Tail)", r.samples_tail),
    "next_steps": html_next_steps,
    "dynamics": html_dynamics,
    "rho_audit": html_rho,
    "theory": html_theory,
    "timings": html_timings,
    "status": html_status,
    "files": html_files,
}
"""Each of build.PAGE_SECTIONS as HTML ("" = left out)."""
if tuple(SECTIONS) != PAGE_SECTIONS:
    raise ImportError(f"render_html sections {tuple(SECTIONS)} differ from {PAGE_SECTIONS}")


def render_html(r: Report) -> str:
    """The whole run_report.html text."""
    title = f"Run Report: {r.run_info.get('name') or r.run_info['run_dir']}"
    body = f"<h1>{esc(title)}</h1>" + "".join(SECTIONS[name](r) for name in PAGE_SECTIONS)
    return page(title, body, heading=False)
