"""run_report.md (docs/model.md §8): the verdict card, the seed report's sections, in its order and
format, then ours.

The verdict card (regime, health, why, next, key numbers: :mod:`tdlens.report.card`) is a
block quote under the title, before the first section. Seed sections: Run Info, Health,
Scale Checks, Core Metrics, Probe Metrics (one table per
probe), Samples (Head), Samples (Tail), Next Steps. Ours after them: Critic Dynamics,
Rho Audit, Theory Overlay, Timings, Status, Files. Numbers via :func:`tdlens.pages.fmt.fmt`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.pages.fmt import fmt, fmt_count, fmt_param, fmt_ratio
from tdlens.report.build import PAGE_SECTIONS, SAMPLE_COLUMNS, Report
from tdlens.report.series_stats import STAT_COLUMNS, Stats
from tdlens.rundir.files import RunFileError, read_json

MISSING_CELL = "missing"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A pipe table: header, ``| --- |`` separator, rows."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def stats_rows(stats: dict[str, Stats | None]) -> list[list[str]]:
    """One row per metric: name then the five stats (``missing`` for an absent column)."""
    rows = []
    for name, s in stats.items():
        if s is None:
            rows.append([name, *([MISSING_CELL] * len(STAT_COLUMNS))])
        else:
            rows.append([name, *(fmt(v) for v in s.as_dict().values())])
    return rows


def key_hparams(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in hparams.items()) or "unavailable"


def md_code(text: str) -> str:
    """`text` as a Markdown code span, shown as written whatever it holds (``*``, ``_``,
    ``[``, ``<``, backticks): the fence is one backtick longer than its longest run."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def section_run_info(r: Report) -> list[str]:
    info = r.run_info
    return [
        "## Run Info",
        f"- run_dir: {md_code(str(info['run_dir']))}",
        f"- timestamp: {info['timestamp'] or 'unknown'}",
        f"- seed: {fmt(info['seed'])}",
        f"- key_hparams: {key_hparams(info['key_hparams'])}",
        f"- name: {md_code(info['name']) if info['name'] else 'unknown'}",
        f"- config_hash: {info['config_hash']}",
        f"- schedules: {info['schedules'] or 'unknown'}",
    ]


def section_health(r: Report) -> list[str]:
    lines = [
        "## Health",
        f"- status: {r.health_line}",
        f"- regime: {r.regime.label} ({r.regime.reason})",
    ]
    lines += [f"- {c.name}: {c.verdict} ({c.detail})" for c in r.checks]
    return lines


def section_scale(r: Report) -> list[str]:
    s = r.scale
    probe = s["stability_probe_step_scale"]
    ratio = f"{fmt_ratio(s['stability_probe_step_scale_ratio'])} (expect ~1.0)"
    if s["verdict"] == "FAIL":
        ratio += " FAIL: the stability probe and the trainer use different step scales"
    return [
        "## Scale Checks",
        f"- train_step_scale: {fmt(s['train_step_scale'])}",
        "- stability_probe_step_scale: "
        + (fmt(probe) if probe is not None else "missing (no stability probe ran)"),
        f"- stability_probe_step_scale_ratio: {ratio}",
    ]


def section_verdict(r: Report) -> list[str]:
    """The card as a block quote (no heading: the seed's sections come first)."""
    v = r.verdict
    health = f"{v.health} ({'; '.join(v.reasons)})" if v.reasons else v.health
    lines = [
        f"> **Verdict: {v.headline}** ({v.regime_reason}); health {health}",
        ">",
        f"> **Why:** {v.why}",
        ">",
        f"> **Next:** {v.next}",
    ]
    if v.steps:
        lines += [">", f"> **Steps:** {v.steps}"]
    if v.key_numbers:
        lines += [">", "> **Key numbers** (95% intervals where known):"]
        lines += [f"> - {k.text()}" for k in v.key_numbers]
    return lines


def section_settings(r: Report) -> list[str]:
    """Probe settings (constant over the run) in one table, under Probe Metrics."""
    if not r.settings:
        return []
    rows = [[probe, col, fmt(value)] for probe, col, value in r.settings]
    return [
        "",
        "### settings (constant over the run)",
        *md_table(["probe", "setting", "value"], rows),
    ]


def section_core(r: Report) -> list[str]:
    return ["## Core Metrics", *md_table(["metric", *STAT_COLUMNS], stats_rows(r.core))]


def section_probes(r: Report) -> list[str]:
    lines = ["## Probe Metrics"]
    for i, p in enumerate(r.probes):
        if i:
            lines.append("")
        lines.append(f"### {p.name}")
        if p.iters:
            lines += [f"- rounds: {p.rows}, iterations {p.iters[0]}-{p.iters[1]}", ""]
        if p.note:
            lines.append(f"- {p.note}")
            continue
        lines += md_table(["metric", *STAT_COLUMNS], stats_rows(p.stats))
        if p.text_columns:
            lines.append(
                "- text columns (last): "
                + ", ".join(f"{k}={v if v is not None else '-'}" for k, v in p.text_columns.items())
            )
    return lines + section_settings(r)


def section_samples(title: str, rows: list[list[Any]]) -> list[str]:
    lines = [f"## {title}", *md_table(SAMPLE_COLUMNS, [[fmt(c) for c in row] for row in rows])]
    return lines if rows else [*lines, "- no rows"]


def section_next_steps(r: Report) -> list[str]:
    advice = [f"- Predicted by the first probe (verdict.advice): {a['why']}." for a in r.advice]
    explained = explain_line(r.data.run_dir)
    steps = [f"- {step.message}" for step in r.next_steps]
    return ["## Next Steps", *steps, *advice, *([f"- {explained}"] if explained else [])]


def explain_line(run_dir: Path) -> str | None:
    """A link to explain.md and what its twins said of the label (``tdlens explain``,
    docs/model.md §16); None when the run has no explain.json."""
    path = Path(run_dir) / "explain.json"
    if not path.is_file():
        return None
    try:
        result = read_json(path)
        label, word = str(result["label"]), str(result["label_verdict"])
    except (RunFileError, OSError, ValueError, KeyError, TypeError):
        return "Explain ([explain.md](explain.md)): explain.json is unreadable; rerun it"
    if word == "refuted":
        return (
            f"Explain ([explain.md](explain.md)): its intervention twins REFUTED the label "
            f"{label}: the intervention did not lower value_gap beyond 2 combined SEs"
        )
    return f"Explain ([explain.md](explain.md)): label {label} {word} by intervention twins"


DYNAMICS_NOTES = {
    "eta": "expected critic step alpha_w s B T",
    "critical_step": "largest stable eta",
    "critical_alpha_w": "alpha_w at the critical step",
    "eig_min_real_is_bound": "1: eig_min_real is a certified lower bound, not the exact minimum",
    "sampling_trainer": "1: probe batches drawn as the trainer draws them, 0: one chain",
    **{
        f"{k}_{e}": f"{'lower' if e == 'lo' else 'upper'} end of the 95% cluster-bootstrap interval"
        for k in (
            "critical_step",
            "eig_max_real",
            "eig_min_real",
            "fastest_timescale",
            "slowest_timescale",
        )
        for e in ("lo", "hi")
    },
}


def section_dynamics(r: Report) -> list[str]:
    d = r.dynamics
    if not d:
        return ["## Critic Dynamics", "- no stability or fixed-point probe ran"]
    run = d.get("run_iters")
    lines = ["## Critic Dynamics"]
    for key, value in d.items():
        note = DYNAMICS_NOTES.get(key)
        if key.endswith("_timescale") and value is not None:
            note = f"iterations, ~{fmt_count(value)}; run: {fmt(run)}"
        lines.append(f"- {key}: {fmt(value)}" + (f" ({note})" if note else ""))
    return lines


def section_rho_audit(r: Report) -> list[str]:
    check = next((c for c in r.checks if c.name == "rho_audit"), None)
    audit = r.data.probe("rho_audit")
    lines = ["## Rho Audit", f"- verdict: {check.verdict} ({check.detail})" if check else "-"]
    pairs = (
        ("rho_mean_emp", "rho_mean_theory", "rho_mean_z", "E_mu[rho]"),
        ("rho2_mean_emp", "rho2_mean_theory", "rho2_mean_z", "E_mu[rho^2]"),
        ("clipped_mean_emp", "clipped_mean_theory", "clipped_mean_z", "E_mu[min(rho, c)]"),
        ("rho_max_emp", "rho_sup_theory", None, "max rho vs sup"),
    )
    if len(audit):
        for emp, theory, z, label in pairs:
            if audit.has(emp):
                zs = f", z = {fmt(audit.last(z))}" if z and audit.has(z) else ""
                lines.append(
                    f"- {label}: empirical {fmt(audit.last(emp))}, theory "
                    f"{fmt(audit.last(theory))}{zs} (iter {fmt(audit.last('iter'))})"
                )
    return lines


def theory_rows(t: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the overlay at the measured iterations: measured value_gap and
    each prediction (the band's lo and hi, the curves) interpolated there."""
    x_pred = np.asarray(t.get("pred_iters", []), float)
    band = t.get("band") or {}
    preds = {f"band {k}": band[k] for k in ("lo", "hi") if band.get(k)}
    preds.update(t.get("curves", {}))
    header = ["iteration", "measured value_gap", *(f"predicted {k}" for k in preds)]
    rows = []
    for it, gap in zip(t["measured_iters"], t["value_gap"], strict=True):
        cells = [fmt(it), fmt(gap)]
        for values in preds.values():
            inside = len(x_pred) and x_pred.min() <= it <= x_pred.max()
            cells.append(fmt(float(np.interp(it, x_pred, values))) if inside else "-")
        rows.append(cells)
    return header, rows


def section_theory(r: Report) -> list[str]:
    t = r.theory
    lines = [
        "## Theory Overlay",
        f"- value_gap measured at {len(t['value_gap'])} probes",
        f"- prediction: {t['source']}",
    ]
    if t["source"].startswith("probes/"):
        lines += theory_lines(t)
    if t["value_gap"]:
        lines += ["", *md_table(*theory_rows(t))]
    return lines


def theory_lines(t: dict) -> list[str]:
    """The comparison of the theory overlay in words (markdown and HTML)."""
    ratios = [x for x in t.get("ratio_first", []) if x == x]
    span = f"{fmt(min(ratios))}-{fmt(max(ratios))}" if ratios else "n/a"
    schedule = (
        [
            f"- the band follows schedules.alpha_w = {t['schedule']}; value_gap_floor is the "
            "constant base step's floor, the level annealing goes below"
        ]
        if t.get("schedule")
        else []
    )
    return [
        *schedule,
        f"- measured value_gap inside the predicted band at {fmt(100 * t['inside_fraction'])}% "
        f"of probes; measured/predicted (first probe) {span}: the smallest and largest ratio "
        "of each probe's value_gap to the first probe's predicted mean path at that "
        "iteration (1 = on the prediction)",
        f"- decay rate per iteration: fitted {fmt(t['fitted_rate'])}, predicted "
        f"{fmt(t['predicted_rate'])}",
        f"- value_gap_floor {fmt(t['floor'])} (the trainer's stationary floor"
        + ("; inf: the predicted noise grows, there is none" if t["floor"] == np.inf else "")
        + "); probe_floor "
        f"{fmt(t.get('probe_floor'))} (the lowest value_gap a probe can measure, "
        "hypot(value_gap_floor, value_noise_floor / 2)): the mean path reaches probe_floor "
        + (
            f"{fmt(t['iters_to_floor'])} iterations after the first probe"
            if t["iters_to_floor"] != float("inf")
            else "not within the run"
        ),
    ]


def section_timings(r: Report) -> list[str]:
    rows = [
        [name, fmt(v["count"]), fmt(v["mean"]), fmt(v["max"]), fmt(v["total"])]
        for name, v in r.timings.items()
    ]
    return ["## Timings", *md_table(["what", "count", "mean_s", "max_s", "total_s"], rows)]


def section_status(r: Report) -> list[str]:
    lines = ["## Status"]
    for key, value in r.status.items():
        if key != "traceback":
            lines.append(f"- {key}: {value if value is not None else '-'}")
    if "traceback" in r.status:
        lines += ["- traceback:", "```", str(r.status["traceback"]).rstrip("\n"), "```"]
    return lines


def section_files(r: Report) -> list[str]:
    return ["## Files", *(f"- {p}" for p in r.problems)] if r.problems else []


SECTIONS: dict[str, Callable[[Report], list[str]]] = {
    "verdict": section_verdict,
    "run_info": section_run_info,
    "health": section_health,
    "scale": section_scale,
    "core": section_core,
    "probes": section_probes,
    "samples_head": lambda r: section_samples("Samples (Head)", r.samples_head),
    "samples_tail": lambda r: section_samples("Samples (Tail)", r.samples_tail),
    "next_steps": section_next_steps,
    "dynamics": section_dynamics,
    "rho_audit": section_rho_audit,
    "theory": section_theory,
    "timings": section_timings,
    "status": section_status,
    "files": section_files,
}
"""Each of build.PAGE_SECTIONS as Markdown lines ([] = left out)."""
if tuple(SECTIONS) != PAGE_SECTIONS:
    raise ImportError(f"render_md sections {tuple(SECTIONS)} differ from {PAGE_SECTIONS}")


def render_md(r: Report) -> str:
    """The whole run_report.md text (sections separated by blank lines)."""
    sections = [["# Run Report"], *(SECTIONS[name](r) for name in PAGE_SECTIONS)]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"
