"""The atlas's twin table: each label's representative run tested by its intervention twin.

For every label of a sweep, the run the page offers to reproduce it
(:func:`~tdlens.sweeps.atlas.geometry._representatives`) is explained by ``tdlens
explain`` (:func:`tdlens.sweeps.explain.explain`: an unchanged control and one twin per
intervention of the label, branched from the run's newest kept checkpoint and run for
``iters`` iterations; for a ``diverged*`` label explain's own default, from the start for
the run's whole length, :func:`tdlens.sweeps.explain.branch_point`), or its
``explain.json`` is read when it exists for the same label (and, for a diverged label,
branched from the start). One row per twin:

- predicted: the run report's counterfactuals, i.e. the final value_gap at the run's
  last iteration with the intervention applied from the first probe round
  (``value_gap_end [lo, hi]``), against the unchanged run's (the entry whose ``set`` is
  ``{}``);
- measured: the twin's final value_gap ``g_twin`` against the control's ``g_control``
  after the twins' iterations (ln-line end over the last probe rounds,
  :func:`tdlens.sweeps.explain.final_value_gap`), with ``g_twin / g_control``;
- verdict: explain's, ``confirmed`` when ``ln g_control - ln g_twin > Z`` combined SEs
  (the off-policy twin: by the sign of eig_min_real, :func:`tdlens.sweeps.explain.
  sign_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdlens.config import ConfigError
from tdlens.pages.fmt import fmt
from tdlens.rundir.files import RunFileError, read_json
from tdlens.runs.runner import RunDirError
from tdlens.sweeps.atlas.data import AtlasPoint, AtlasSweep
from tdlens.sweeps.atlas.geometry import _representatives
from tdlens.sweeps.explain import EARLY_FAMILIES, ExplainError, explain, predicted_for


@dataclass(frozen=True)
class TwinRow:
    """One row of the twin table (module docstring)."""

    sweep: str
    label: str
    run: str
    intervention: str
    predicted: str
    measured: str
    verdict: str


Explainer = Callable[[Path, int | None], dict[str, Any]]
"""``(run_dir, iters) -> explain.json's content``: runs the twins (tests pass a fake);
iters None for a diverged label (explain's default: from the start, the whole run)."""


def is_early(label: str) -> bool:
    """Whether explain tests `label` from the start by default (the diverged family)."""
    return label.split(":", 1)[0] in EARLY_FAMILIES


def _explainer(jobs: int) -> Explainer:
    return lambda run_dir, iters: explain(run_dir, iters, jobs=jobs)


def read_or_explain(
    run_dir: Path, label: str, iters: int, run: Explainer
) -> tuple[dict[str, Any] | None, str]:
    """``(explain.json's content, "")`` of `run_dir`: the file when it tests `label` (a
    diverged label: from the start), else `run`'s result (`iters`, or None for a diverged
    label: explain's default, module docstring); ``(None, reason)`` when explain cannot
    test the run."""
    path = run_dir / "explain.json"
    if path.is_file():
        try:
            found = read_json(path)
        except (RunFileError, OSError, ValueError):
            found = None
        if isinstance(found, dict) and found.get("label") == label and "twins" in found:
            if not is_early(label) or found.get("iteration") == 0:
                return found, ""
    try:
        return run(run_dir, None if is_early(label) else iters), ""
    except (ExplainError, RunDirError, ConfigError, RunFileError) as exc:
        return None, str(exc)


def _gap(x: Any) -> str:
    if not isinstance(x, int | float):
        return "-"
    return "diverged" if math.isinf(x) else fmt(x)


def _predicted(twin: dict[str, Any], control: dict[str, Any] | None) -> str:
    pred = twin.get("predicted") or {}
    if not isinstance(pred.get("value_gap_end"), int | float):
        changes_a = "sigma_mu" in (twin.get("set") or {})
        return "not predicted (changes A)" if changes_a else "not predicted"
    text = (
        f"{_gap(pred['value_gap_end'])} [{_gap(pred.get('value_gap_end_lo'))}, "
        f"{_gap(pred.get('value_gap_end_hi'))}]"
    )
    ctrl = (control or {}).get("value_gap_end")
    return f"{text} vs {_gap(ctrl)}" if isinstance(ctrl, int | float) else text


def _final(m: dict[str, Any] | None) -> Any:
    """A measured final value_gap; inf for a run that diverged (explain.json writes inf as
    null, with ``status: diverged``)."""
    m = m or {}
    return math.inf if m.get("status") == "diverged" else m.get("value_gap")


def _interval(e: Any) -> str:
    """An eig_min_real interval of explain.json (``{"lo", "hi"}``) as ``[lo, hi]``."""
    if not isinstance(e, dict):
        return "-"
    return f"[{_gap(e.get('lo'))}, {_gap(e.get('hi'))}]"


def _measured(twin: dict[str, Any]) -> str:
    """The twin's final value_gap vs the control's (and their ratio); for a twin read by the
    sign of eig_min_real (diverged:off-policy), first the two eig_min_real intervals, the
    numbers its verdict rests on."""
    g_twin, g_ctrl = _final(twin.get("measured")), _final(twin.get("control"))
    text = f"{_gap(g_twin)} vs {_gap(g_ctrl)}"
    if isinstance(g_twin, int | float) and isinstance(g_ctrl, int | float):
        if math.isfinite(g_twin) and math.isfinite(g_ctrl) and g_ctrl > 0:
            text += f" (x{g_twin / g_ctrl:.3g})"
    if "eig_min_real" in twin:
        eig = _interval(twin["eig_min_real"])
        text = (
            f"eig_min_real {eig} vs {_interval(twin.get('control_eig_min_real'))}; value_gap {text}"
        )
    return text


def twin_rows(
    result: dict[str, Any] | None, sweep: str, label: str, run: str, why: str = ""
) -> list[TwinRow]:
    """The rows of one representative run from its explain.json content (module doc)."""
    if result is None:
        return [TwinRow(sweep, label, run, "-", "-", "-", f"not run: {why}")]
    if not result.get("twins"):
        return [TwinRow(sweep, label, run, "none", "-", "-", "untested")]
    parent = Path(str(result.get("parent", "")))
    control = predicted_for(parent, {}) if parent.is_dir() else None
    return [
        TwinRow(
            sweep,
            label,
            run,
            ", ".join(f"{k} = {_gap(v)}" for k, v in (t.get("set") or {}).items()),
            _predicted(t, control),
            _measured(t),
            str(t.get("verdict", "-")),
        )
        for t in result["twins"]
    ]


def run_values(p: AtlasPoint) -> str:
    """The run's swept values without the seed (``alpha_w 30, sigma_pi 0.45``): the row of
    the reproduce table it stands for."""
    return ", ".join(f"{k} {_gap(v) if isinstance(v, float) else v}" for k, v in p.grid_point)


def explain_representatives(
    sweeps: Sequence[AtlasSweep], iters: int, run: Explainer | None = None, jobs: int = 1
) -> list[TwinRow]:
    """Every label's representative run of every sweep, read or explained (module doc)."""
    run = run or _explainer(jobs)
    rows = []
    for sw in sweeps:
        name = str(sw.plan.get("name"))
        for label, p in _representatives(sw.points).items():
            result, why = read_or_explain(p.record.path, label, iters, run)
            rows += twin_rows(result, name, label, run_values(p), why)
    return rows


def twin_lines(rows: Sequence[TwinRow], iters: int) -> list[str]:
    """The twin table's Markdown (nothing without rows)."""
    if not rows:
        return []
    lines = [
        "## What each label's intervention twin did\n",
        "Each representative run above (one per label and sweep) explained by `tdlens "
        f"explain RUN_DIR --iters {iters}` (a diverged label: `tdlens explain RUN_DIR`): an "
        "unchanged control and the label's intervention twin, sharing the run's random "
        "streams. A diverged label claims its intervention would have prevented the "
        "divergence, so its twins branch from the start (iteration 0, the initial state) "
        "and run the run's whole length: the control diverges again as the run did, and "
        "the twin shows whether the change keeps it from diverging. Every other label's "
        "twins branch from the run's last checkpoint (the sweep keeps only the final one, "
        f"so they run {iters} iterations past the run's end). "
        "*Predicted*: the run report's final value_gap with the "
        "intervention applied from the first probe round, `value_gap_end [lo, hi]`, vs the "
        "unchanged run's. *Measured*: the twin's final value_gap vs the control's (ln-line "
        "end over the last probe rounds), and their ratio. *Verdict*: confirmed when the "
        "twin's ln value_gap is lower than the control's by more than 2 combined standard "
        "errors, else refuted; the `diverged:off-policy` twin (sigma_mu widened to "
        "sigma_pi) is read by the sign its label predicts: confirmed when its latest "
        "eig_min_real 95% interval lies above 0 while the control's lies below 0 (or the "
        "control diverged). The label `learning` names no intervention (untested). "
        "A family label (`plateau`, `diverged`) is given when no mechanism qualified: its "
        "intervention need not be predicted to help (compare the predicted values), and "
        "where it is not, `refuted` is what was predicted. The bare `diverged` twin "
        "lowers the step to a quarter, at most half the critical step; no intervention "
        "that lowers a step raises it.\n",
    ]
    for sweep in dict.fromkeys(r.sweep for r in rows):
        lines += [
            f"Sweep `{sweep}`:\n",
            "| label | verdict | run | intervention | predicted: twin vs unchanged | "
            "measured: twin vs control |",
            "| --- | --- | --- | --- | --- | --- |",
            *(
                f"| {r.label} | {r.verdict} | {r.run} | {r.intervention} | {r.predicted} | "
                f"{r.measured} |"
                for r in rows
                if r.sweep == sweep
            ),
            "",
        ]
    return lines
