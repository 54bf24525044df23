"""``tdlens explain RUN_DIR``: a regime label tested by real intervention twins
(docs/model.md §16).

A label is a claim about what would change the run. Explain branches the run
(:mod:`tdlens.runs.branch`) from one checkpoint into an unchanged *control* and one
*twin* per intervention of the label (:data:`INTERVENTIONS`, from the regime table
:data:`tdlens.regimes.REGIME_TABLE`, named as the counterfactual probe names them), runs
them all for the same ``iters`` iterations with probe rounds every ``probe_every(iters)``
iterations on a sweep backend (local process pool or Ray, :mod:`tdlens.sweeps.backends`),
and compares each twin's final value_gap with the control's:

- final value_gap (:func:`final_value_gap`): over the twin's last R probe rounds
  (``iter >= k``, R <= :data:`SE_ROUNDS`), the least-squares line
  ``g_r = a + b (t_r - t_R)`` through (iteration, ln value_gap) (log scale: a gap that
  relaxes or grows does so by factors, and a diverging control grows exponentially);
  the estimate is ``value_gap = exp(a)`` (the line at the last round, so a still-moving
  gap is not averaged with its past), with
  ``se(a) = s sqrt(1/R + (t_R - mean t)^2 / S_tt) * sqrt((1 + PHI) / (1 - PHI))``,
  ``s^2 = RSS / (R - 2)``. Successive rounds are autocorrelated (training noise relaxes
  at the slow modes' rate), and a lag-1 autocorrelation estimated from <= 8 residuals is
  biased low (measured: 2-SE coverage 73% for AR(1) noise with phi = 0.5 at R = 8), so
  the SE is inflated as for AR(1) noise at the fixed :data:`PHI` = 0.9 (x4.36): 2-SE
  coverage >= 90% for any phi <= 0.8 at R >= 4 (tests), about 90% at phi = 0.9, R = 8. A run
  that ended ``diverged`` has final value_gap ``inf``.
- verdict: ``confirmed`` when ``a_control - a_twin > Z * sqrt(se_twin^2 + se_control^2)``
  (the direction every intervention of the table predicts is "lower"), else
  ``refuted``; with fewer than :data:`MIN_ROUNDS` rounds no SE exists and the twin is
  ``refuted`` (too few rounds, said in its ``why``). The label is refuted when every
  twin refutes it.

Random draws are keyed by (seed, stream, iteration, trajectory), so the twins and the
control share the parent's randomness from the checkpoint on: the difference a twin shows
is its intervention's, not another sample's. Writes ``explain.{json,md,html}`` into the
parent's directory; the twins live in ``<parent>.explain/`` beside it.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import RunConfig, config_from_json
from tdlens.regimes import (
    INTERVENTION_KEYS,
    LABELS,
    NOT_AVAILABLE,
    CounterfactualEntry,
    entry,
    intervention_set,
    predictor_name,
)
from tdlens.rundir.files import (
    RunFileError,
    atomic_write_json,
    atomic_write_text,
    read_json,
    timestamped_dir,
)
from tdlens.rundir.read import read_table, table_file
from tdlens.runs.branch import choose_checkpoint, create_branch, is_run_dir
from tdlens.runs.checkpoint import list_checkpoints
from tdlens.runs.runner import RunDirError

Z = 2.0
"""A twin confirms its label when it moves value_gap by more than Z combined SEs."""
SE_ROUNDS = 8
"""At most this many of a twin's last probe rounds go into its final value_gap."""
PHI = 0.9
"""The AR(1) coefficient the SE is inflated for: sqrt((1 + PHI) / (1 - PHI)) = 4.36."""
MIN_ROUNDS = 4
"""Fewest probe rounds a final value_gap with an SE needs."""
DEFAULT_ITERS = 20
"""Iterations each twin runs after the checkpoint (``--iters``)."""
EXPLAIN_FILES = ("explain.json", "explain.md", "explain.html")


class ExplainError(ValueError):
    """Explain cannot run as asked (not a run directory, no checkpoint, bad backend)."""


# ------------------------------------------------------------------ the intervention table
# The regime table (tdlens.regimes.REGIME_TABLE) is the one source of interventions: each
# label's twin is named by its predictor's counterfactual entry and set by
# tdlens.regimes.intervention_set, exactly as the counterfactual probe sets it.


@dataclass(frozen=True)
class Intervention:
    """One intervention of a label: a name, its overrides and the predicted direction of
    the final value_gap (``lower``)."""

    name: str
    overrides: Callable[[RunConfig, Path], dict[str, Any]]
    direction: str = "lower"


def _table_rows(path: Path) -> tuple[dict[str, Any], ...]:
    """The rows of a run's table, plain or compressed (a compacted sweep run's,
    :func:`tdlens.rundir.read.read_table`); () when the run has none."""
    return read_table(path).rows if table_file(path) is not None else ()


def _critical_alpha_w(run_dir: Path) -> float:
    """The newest finite critical_alpha_w of the run's stability probe table."""
    rows = _table_rows(run_dir / "probes" / "stability_probe.csv")
    for row in reversed(rows):
        value = row.get("critical_alpha_w")
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return float(value)
    raise ExplainError(
        f"'{run_dir}': no finite critical_alpha_w in probes/stability_probe.csv; "
        "diverged:step-size needs the stability probe"
    )


def reported_entry(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The run report's ``regime.counterfactuals`` entry called `name` (None without)."""
    try:
        cfs = ((read_json(run_dir / "run_report.json") or {}).get("regime") or {}).get(
            "counterfactuals"
        )
    except (RunFileError, OSError, ValueError, AttributeError):
        return None
    found = CounterfactualEntry(name)([c for c in cfs or [] if isinstance(c, dict)])
    return dict(found) if found else None


def table_overrides(label: str, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The label's intervention as overrides: :func:`tdlens.regimes.intervention_set` on
    the config (the function the counterfactual probe sets its predictions with, so the
    ``set`` dicts are identical), with the newest critical_alpha_w of the stability table
    where the intervention reads the critical step (the twin branches late, and a
    diverging run's policies move its A: regime_divergence's critical alpha_w falls 10x
    between its first and last probe rounds, so the first round's would not cure it)."""
    overrides = entry(label).intervention
    needs_critical = any(o.critical_fraction is not None for o in overrides)
    has_cap = any(o.cap_critical is not None for o in overrides)
    critical = None
    if needs_critical:
        critical = _critical_alpha_w(run_dir)
    elif has_cap:
        try:
            critical = _critical_alpha_w(run_dir)
        except ExplainError:
            critical = None  # no cap known: the plain multiple
    current = {k: getattr(cfg, k) for k in INTERVENTION_KEYS}
    return intervention_set(label, current, critical)


def _intervention(label: str) -> tuple[Intervention, ...]:
    name = predictor_name(label)
    if not entry(label).intervention or name is None:
        return ()
    return (Intervention(name, lambda c, d, lab=label: table_overrides(lab, c, d)),)


INTERVENTIONS: dict[str, tuple[Intervention, ...]] = {
    label: _intervention(label) for label in LABELS if label != NOT_AVAILABLE
}
"""label -> its interventions (tdlens.regimes.REGIME_TABLE); learning has none."""


# ------------------------------------------------------------------ measuring


def probe_every(iters: int) -> int:
    """Probe every this many iterations in a twin: at least :data:`SE_ROUNDS` rounds over
    `iters` (when iters >= SE_ROUNDS)."""
    return max(1, iters // SE_ROUNDS)


@dataclass(frozen=True)
class Final:
    """A run's final ln value_gap ``log_gap`` with its SE ``se`` over ``rounds`` probe
    rounds (module doc); ``log_gap`` is inf for a run that diverged."""

    log_gap: float
    se: float
    rounds: int
    status: str | None

    @property
    def value_gap(self) -> float:
        """``exp(log_gap)``: the final value_gap."""
        return math.exp(self.log_gap) if self.log_gap < 700 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "value_gap": self.value_gap,
            "log_value_gap": self.log_gap,
            "log_value_gap_se": self.se,
            "rounds": self.rounds,
            "status": self.status,
        }


def line_end_se(t: np.ndarray, g: np.ndarray, phi: float = PHI) -> tuple[float, float]:
    """``(a, se(a))`` of the line ``g = a + b (t - t[-1])``, se inflated for AR(1) noise
    with coefficient `phi` (module docstring)."""
    n = t.size
    x = t - t[-1]
    xbar = x.mean()
    s_tt = float(np.sum((x - xbar) ** 2))
    b = float(np.sum((x - xbar) * (g - g.mean())) / s_tt)
    a = float(g.mean() - b * xbar)
    resid = g - (a + b * x)
    s2 = float(np.sum(resid**2)) / (n - 2)
    se = math.sqrt(s2 * (1.0 / n + xbar**2 / s_tt)) * math.sqrt((1 + phi) / (1 - phi))
    return a, se


def final_value_gap(run_dir: Path, start: int, end: int) -> Final:
    """The final value_gap of a twin that ran iterations ``start..end-1`` (module doc)."""
    status = (read_json(run_dir / "status.json") or {}).get("status")
    if status == "diverged":
        return Final(math.inf, 0.0, 0, status)
    rows = _table_rows(run_dir / "probes" / "fixed_point_probe.csv")
    pts = [
        (float(r["iter"]), float(r["value_gap"]))
        for r in rows
        if isinstance(r.get("iter"), float | int)
        and isinstance(r.get("value_gap"), float | int)
        and start <= r["iter"] < end
    ][-SE_ROUNDS:]
    if not pts:
        return Final(math.nan, math.nan, 0, status)
    t, g = (np.array(v) for v in zip(*pts, strict=True))
    if not np.all(np.isfinite(g)):
        return Final(math.inf, 0.0, len(pts), status)
    g = np.log(np.maximum(g, np.finfo(np.float64).tiny))
    if len(pts) < MIN_ROUNDS:
        return Final(float(g[-1]), math.nan, len(pts), status)
    a, se = line_end_se(t, g)
    return Final(a, se, len(pts), status)


def verdict(twin: Final, control: Final, direction: str = "lower") -> tuple[str, str]:
    """``(confirmed|refuted, why)`` of one twin against the control (module docstring)."""
    if direction != "lower":
        raise ValueError(f"direction '{direction}': only 'lower' is predicted")
    if math.isinf(control.log_gap) and math.isfinite(twin.log_gap):
        return "confirmed", "the control diverged, the twin did not"
    if math.isinf(twin.log_gap):
        return "refuted", "the twin diverged"
    if math.isnan(twin.log_gap) or math.isnan(control.log_gap):
        return "refuted", "no value_gap measured (fixed-point probe rounds missing)"
    if math.isnan(twin.se) or math.isnan(control.se):
        return "refuted", f"too few probe rounds for an SE (< {MIN_ROUNDS})"
    diff = control.log_gap - twin.log_gap
    band = Z * math.hypot(twin.se, control.se)
    ratio = f"twin / control = {math.exp(-diff):.4g}" if diff < 700 else "twin << control"
    if diff > band:
        return "confirmed", f"{ratio}: ln lower by {diff:.3g} > {Z:g} combined SEs ({band:.3g})"
    return "refuted", f"{ratio}: ln lower by {diff:.3g}, not beyond {Z:g} combined SEs ({band:.3g})"


# ------------------------------------------------------------------ the command


def run_label(parent: Path) -> str:
    """The parent's regime label: run_report.json's, else computed from its files."""
    report = parent / "run_report.json"
    if report.is_file():
        try:
            label = ((read_json(report) or {}).get("regime") or {}).get("label")
        except (RunFileError, OSError, ValueError, AttributeError):
            label = None
        if isinstance(label, str) and label:
            return label
    from tdlens.catalog.records import load_record

    return load_record(parent).regime


def predicted_for(parent: Path, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The ``predicted`` of the run report's ``regime.counterfactuals`` entry whose ``set``
    equals `overrides` (relative 1e-9 on numbers), else None."""
    path = parent / "run_report.json"
    try:
        entries = ((read_json(path) or {}).get("regime") or {}).get("counterfactuals") or []
    except (RunFileError, OSError, ValueError, AttributeError):
        return None
    for found in entries if isinstance(entries, list) else []:
        given = found.get("set") if isinstance(found, dict) else None
        if isinstance(given, dict) and set(given) == set(overrides):
            if all(_same(given[k], overrides[k]) for k in overrides):
                return found.get("predicted")
    return None


def _prediction(parent: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"predicted": ...}`` for a twin: the report's counterfactual entry with the same
    ``set``; else the entry of the same intervention (by name) with its own set as
    ``predicted_set`` (its critical step was the first probe round's); else null."""
    exact = predicted_for(parent, overrides)
    if exact is not None:
        return {"predicted": exact}
    found = reported_entry(parent, name)
    if found and found.get("predicted"):
        return {"predicted": found["predicted"], "predicted_set": found.get("set")}
    return {"predicted": None}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_backend(backend: str, jobs: int) -> None:
    """ExplainError unless `backend` is a sweep backend and `jobs` >= 1."""
    from tdlens.sweeps.sweep import BACKENDS

    if backend not in BACKENDS:
        raise ExplainError(f"--backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ExplainError(f"--jobs: expected >= 1, got {jobs}")


def explain(
    parent: str | Path,
    iters: int = DEFAULT_ITERS,
    *,
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    label: str | None = None,
    catalog: str | Path | None = None,
    index: bool = True,
    at: int | None = None,
) -> dict[str, Any]:
    """Run the control and the twins of `parent`'s label; write and return explain.json's
    content (module docstring). The twins branch from the newest checkpoint at or before
    iteration `at` (default ``outer_iters - iters``, so the control overlaps the run; the
    oldest kept checkpoint when none is that early, unless `at` is given). `label` tests
    another label's interventions (a rival explanation); twins are indexed in the catalog
    when `index`. Raises ExplainError,
    RunDirError or ConfigError (one line) before any twin is made."""
    from tdlens.sweeps.backends import RunTask, execute_task, run_local

    parent = Path(parent)
    check_backend(backend, jobs)
    if iters < 1:
        raise ExplainError(f"--iters: expected >= 1, got {iters}")
    if not is_run_dir(parent):
        raise ExplainError(f"'{parent}' is not a run directory (no config.json)")
    if not list_checkpoints(parent):
        raise ExplainError(f"'{parent}' has no checkpoint to branch from (checkpoints/ is empty)")
    cfg = config_from_json(parent / "config.json")
    if label is not None and label not in INTERVENTIONS:
        raise ExplainError(f"--label '{label}': choose one of {', '.join(INTERVENTIONS)}")
    the_label = label or run_label(parent)
    chosen = INTERVENTIONS.get(the_label, ())
    sets = {iv.name: iv.overrides(cfg, parent) for iv in chosen}
    if at is not None:
        ckpt = choose_checkpoint(parent, at)
    else:
        try:
            ckpt = choose_checkpoint(parent, max(cfg.outer_iters - iters, 0))
        except RunDirError:
            ckpt = list_checkpoints(parent)[0]  # the oldest kept: twins run past the parent
    common = {
        "probes.enabled": True,
        "probes.fixed_point.enabled": True,
        "probes.every": probe_every(iters),
        "threads": 1,
    }
    root = timestamped_dir(parent.parent, f"{parent.name}.explain")
    dirs: dict[str, Path] = {}
    try:
        for twin, overrides in {"control": {}, **sets}.items():
            dirs[twin] = create_branch(
                parent,
                {**common, **overrides},
                checkpoint=ckpt,
                iters=iters,
                name=f"{cfg.name}.{twin}",
                run_dir=root / f"{parent.name}.{twin}",
            )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # no half set of twins
        raise
    k = int(read_json(dirs["control"] / "branch.json")["iteration"])
    tasks = [
        RunTask(twin, str(d), config_from_json(d / "config.json").to_dict(), resume=True)
        for twin, d in dirs.items()
    ]
    outcomes: dict[str, Any] = {}

    def record(outcome: Any) -> None:
        outcomes[outcome.run_id] = outcome

    if backend == "local":
        run_local(tasks, jobs, record, execute_task)
    else:
        from tdlens.sweeps.ray_backend import run_ray

        run_ray(tasks, jobs, record, execute_task, address=address)
    if index:
        index_twins(catalog, list(dirs.values()))
    control = final_value_gap(dirs["control"], k, k + iters)
    twins = []
    for iv in chosen:
        final = final_value_gap(dirs[iv.name], k, k + iters)
        word, why = verdict(final, control, iv.direction)
        twins.append(
            {
                "name": iv.name,
                "run_dir": str(dirs[iv.name]),
                "set": sets[iv.name],
                "direction": iv.direction,
                **_prediction(parent, iv.name, sets[iv.name]),
                "measured": final.as_dict(),
                "control": control.as_dict(),
                "verdict": word,
                "why": why,
            }
        )
    if not twins:
        label_verdict = "untested"
    elif any(t["verdict"] == "confirmed" for t in twins):
        label_verdict = "confirmed"
    else:
        label_verdict = "refuted"
    result = {
        "parent": str(parent.resolve()),
        "label": the_label,
        "label_given": label is not None,
        "label_verdict": label_verdict,
        "checkpoint": str(ckpt.name),
        "iteration": k,
        "iters": iters,
        "probe_every": probe_every(iters),
        "backend": backend,
        "z": Z,
        "estimator": (
            f"ln value_gap of the twin's last <= {SE_ROUNDS} probe rounds, a least-squares "
            "line evaluated at the last round; the SE of that end point inflated by "
            f"sqrt((1 + phi) / (1 - phi)) for AR(1) noise at phi = {PHI}"
        ),
        "control": {"run_dir": str(dirs["control"]), "measured": control.as_dict()},
        "twins": twins,
    }
    write_explain(parent, result)
    _rewrite_report(parent)
    return result


def _rewrite_report(parent: Path) -> None:
    """Rewrite the parent's run report so it links explain.md (a failure leaves the old
    report: explain's own files are written already)."""
    from tdlens.report import write_report

    try:
        write_report(parent)
    except (RunFileError, OSError, ValueError):
        pass


def index_twins(catalog: str | Path | None, run_dirs: list[Path]) -> str | None:
    """Index the twins in the catalog (``$TDLENS_CATALOG`` or outputs/catalog.sqlite when
    `catalog` is None); returns the error instead of raising (twins are never lost for it)."""
    import sqlite3

    from tdlens.catalog.records import load_record
    from tdlens.catalog.store import CatalogError, catalog_path, index_runs

    try:
        index_runs(catalog_path(catalog), [load_record(d) for d in run_dirs])
    except (OSError, sqlite3.Error, CatalogError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ files


def _num(x: Any) -> str:
    from tdlens.pages.fmt import fmt

    return fmt(x) if isinstance(x, int | float) else "-"


def explain_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per twin: name, set, predicted, measured, control, verdict, why."""
    rows = []
    for t in result["twins"]:
        pred = t.get("predicted") or {}
        predicted = (
            f"{_num(pred.get('value_gap_end'))} [{_num(pred.get('value_gap_end_lo'))}, "
            f"{_num(pred.get('value_gap_end_hi'))}]"
            if pred
            else "-"
        )
        m, c = t["measured"], t["control"]
        rows.append(
            [
                t["name"],
                ", ".join(f"{k}={_num(v)}" for k, v in t["set"].items()),
                predicted,
                _measured(m),
                _measured(c),
                t["verdict"],
                t["why"],
            ]
        )
    return rows


def _measured(m: dict[str, Any]) -> str:
    """``0.2114 (SE of ln 0.0052)``."""
    return f"{_num(m['value_gap'])} (SE of ln {_num(m['log_value_gap_se'])})"


HEADER = ("twin", "set", "predicted value_gap_end", "measured", "control", "verdict", "why")


def summary_line(result: dict[str, Any]) -> str:
    """One line: the label and what its twins said."""
    label, word = result["label"], result["label_verdict"]
    if word == "untested":
        return f"label {label} names no intervention; nothing to test (control only)"
    n = len(result["twins"])
    ok = sum(t["verdict"] == "confirmed" for t in result["twins"])
    return f"label {label} {word}: {ok} of {n} intervention twin(s) confirmed it"


def write_explain(parent: Path, result: dict[str, Any]) -> list[Path]:
    """explain.{json,md,html} in the parent's directory."""
    from tdlens.pages import kit
    from tdlens.report.render_md import md_table

    atomic_write_json(parent / "explain.json", result)
    lines = [
        f"# Explain: {result['label']}",
        "",
        f"**{summary_line(result)}.**",
        "",
        f"Twins branched from `{result['checkpoint']}` (iteration {result['iteration']}) and "
        f"ran {result['iters']} iterations with probe rounds every {result['probe_every']}; "
        f"control: `{result['control']['run_dir']}`. A twin confirms when the control's "
        f"final value_gap exceeds the twin's by more than {result['z']:g} combined SEs. "
        f"Final value_gap: {result['estimator']}.",
        "",
        *md_table(HEADER, explain_rows(result)),
    ]
    atomic_write_text(parent / "explain.md", "\n".join(lines) + "\n")
    body = (
        f"<p><b>{kit.esc(summary_line(result))}</b></p>"
        f"<p class='doc'>{kit.esc(lines[4])}</p>" + kit.table(HEADER, explain_rows(result))
    )
    atomic_write_text(parent / "explain.html", kit.page(f"Explain: {result['label']}", body))
    return [parent / f for f in EXPLAIN_FILES]
