"""run_report.json (docs/model.md §8): the markdown's content machine-readably, NaN/inf -> null,
plus every check's observed values. Key order is fixed, so the bytes are reproducible."""

from __future__ import annotations

import json
from typing import Any

from tdlens.report.build import SAMPLE_COLUMNS, Report
from tdlens.report.series_stats import K_LAST, Stats
from tdlens.rundir.files import to_jsonable

SCHEMA = "tdlens.run_report/1"


def stats_json(stats: Stats | None) -> dict[str, Any]:
    """The five stats (and count), or ``{"missing": true}`` for an absent column."""
    if stats is None:
        return {"missing": True}
    return {**stats.as_dict(), "count": stats.count}


def report_dict(r: Report) -> dict[str, Any]:
    """The report as plain JSON-able data (sections in the markdown's order)."""
    return {
        "schema": SCHEMA,
        "verdict": {**r.verdict.as_dict(), "advice": r.advice},
        "run_info": r.run_info,
        "regime": {
            "label": r.regime.label,
            "reason": r.regime.reason,
            "evidence": r.regime.evidence,
            "counterfactuals": r.counterfactuals,
        },
        "health": {
            "status": r.health_status,
            "reasons": r.health_reasons,
            "line": r.health_line,
            "checks": [c.as_dict() for c in r.checks],
        },
        "scale_checks": r.scale,
        "core_metrics": {"k": K_LAST, "metrics": {k: stats_json(v) for k, v in r.core.items()}},
        "probe_metrics": {
            p.name: {
                "rows": p.rows,
                "note": p.note,
                "metrics": {k: stats_json(v) for k, v in p.stats.items()},
                "text_columns": p.text_columns,
                "settings": p.settings,
                "iters": list(p.iters) if p.iters else None,
            }
            for p in r.probes
        },
        "samples": {
            "columns": list(SAMPLE_COLUMNS),
            "head": r.samples_head,
            "tail": r.samples_tail,
        },
        "next_steps": [s.as_dict() for s in r.next_steps],
        "critic_dynamics": r.dynamics,
        "theory_overlay": r.theory,
        "timings": r.timings,
        "status": r.status,
        "problems": r.problems,
    }


def render_json(r: Report) -> str:
    """The whole run_report.json text."""
    return json.dumps(to_jsonable(report_dict(r)), indent=2, allow_nan=False) + "\n"
