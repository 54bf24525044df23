"""``tdlens explain RUN_DIR``: a regime label tested by real intervention twins
(docs/model.md §16).

A label is a claim about what would change the run. Explain branches the run
(:mod:`tdlens.runs.branch`) from one checkpoint into an unchanged *control* and one
*twin* per intervention of the label (:data:`INTERVENTIONS`, from the regime table
:data:`tdlens.regimes.REGIME_TABLE`, named as the counterfactual probe names them), runs
them all for the same ``iters`` iterations with probe rounds every ``probe_every(iters)``
iterations on a sweep backend (local process pool or Ray, :mod:`tdlens.sweeps.backends`),
and compares each twin's final value_gap with the control's.

Where the twins branch (:func:`branch_point`): a ``diverged*`` label claims "this change
would have prevented the divergence", and late in a diverged run the critic has already
blown up (a twin from there tests whether the change brings it back), so for the
diverged family the twins branch from the start (iteration 0: the initial state, no
checkpoint needed) and run the parent's whole length ``outer_iters``; every other label
branches late, from the newest checkpoint at or before ``outer_iters - iters``
(:data:`DEFAULT_ITERS`), so the control overlaps the run. ``at`` and ``iters`` override
either default. An intervention that reads the critical step takes the smallest finite
critical_alpha_w of the parent's stability rounds at or after the branch point (the
newest when none is that late): the twin runs through those rounds' systems, and a
diverging run's policies move its A (regime_divergence's critical alpha_w falls 10x
between its first and last rounds).

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
- the ``diverged:off-policy`` twin (sigma_mu widened to sigma_pi) is read by the sign the
  regime table predicts for it (:func:`sign_verdict`), not by its value_gap: the change
  moves A itself, and the on-policy A's critical step can lie below the run's step (the
  twin then diverges by step size, which says nothing of the off-policy mechanism).
  ``confirmed`` when the twin's latest stability round has eig_min_real's 95% interval
  above zero (``eig_min_real_lo > 0``) while the control's lies below it
  (``eig_min_real_hi < 0``) or the control diverged without such a round; the twins and
  the control of that label run the stability probe. The value_gap comparison is kept in
  the twin's ``value_gap_verdict``.

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
from tdlens.runs.branch import INITIAL, choose_checkpoint, create_branch, is_run_dir
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
"""Iterations each twin runs after a late checkpoint (``--iters``; module docstring)."""
EARLY_FAMILIES = frozenset({"diverged"})
"""Label families whose twins branch from the start and run the parent's whole length."""
SIGN_LABELS = frozenset({"diverged:off-policy"})
"""Labels whose twin is read by the sign of eig_min_real (:func:`sign_verdict`)."""
EXPLAIN_FILES = ("explain.json", "explain.md", "explain.html")


class ExplainError(ValueError):
    """Explain cannot run as asked (not a run directory, no checkpoint, bad backend)."""


# ------------------------------------------------------------------ the intervention table
# The regime table (tdlens.regimes.REGIME_TABLE) is the one source of interventions: each
# label's twin is named by its predictor's counterfactual entry and set by
# tdlens.regimes.intervention_set, exactly as the counterfactual probe sets it.


@dataclass(frozen=True)
class Intervention:
    """One intervention of a label: a name, its overrides ``(config, run_dir, k) ->
    {key: value}`` (k the branch point) and the predicted direction: ``lower`` (the
    final value_gap falls) or ``eig_min_real_positive`` (:func:`sign_verdict`)."""

    name: str
    overrides: Callable[..., dict[str, Any]]
    direction: str = "lower"


def _table_rows(path: Path) -> tuple[dict[str, Any], ...]:
    """The rows of a run's table, plain or compressed (a compacted sweep run's,
    :func:`tdlens.rundir.read.read_table`); () when the run has none."""
    return read_table(path).rows if table_file(path) is not None else ()


def _critical_alpha_w(run_dir: Path, k: int | None = None) -> float:
    """The critical_alpha_w of the run's stability probe table an intervention reads: the
    smallest finite one of the rounds at iterations >= k, the newest when none is that
    late (or `k` is None; module docstring)."""
    rows = _table_rows(run_dir / "probes" / "stability_probe.csv")
    found = [
        (float(row["iter"]) if isinstance(row.get("iter"), int | float) else -1.0, float(v))
        for row in rows
        if isinstance(v := row.get("critical_alpha_w"), int | float) and math.isfinite(v) and v > 0
    ]
    late = [v for it, v in found if k is not None and it >= k]
    if late:
        return min(late)
    if found:
        return found[-1][1]
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


def table_overrides(
    label: str, cfg: RunConfig, run_dir: Path, k: int | None = None
) -> dict[str, Any]:
    """The label's intervention as overrides: :func:`tdlens.regimes.intervention_set` on
    the config (the function the counterfactual probe sets its predictions with, so the
    ``set`` dicts are identical), with the stability table's critical_alpha_w where the
    intervention reads the critical step: the smallest of the rounds at or after the
    branch point `k`, else the newest (:func:`_critical_alpha_w`; a diverging run's
    policies move its A: regime_divergence's critical alpha_w falls 10x between its first
    and last probe rounds, so the first round's would not cure it)."""
    overrides = entry(label).intervention
    needs_critical = any(o.critical_fraction is not None for o in overrides)
    has_cap = any(o.cap_critical is not None for o in overrides)
    critical = None
    if needs_critical:
        critical = _critical_alpha_w(run_dir, k)
    elif has_cap:
        try:
            critical = _critical_alpha_w(run_dir, k)
        except ExplainError:
            critical = None  # no cap known: the plain multiple
    current = {k: getattr(cfg, k) for k in INTERVENTION_KEYS}
    return intervention_set(label, current, critical)


def _intervention(label: str) -> tuple[Intervention, ...]:
    name = predictor_name(label)
    if not entry(label).intervention or name is None:
        return ()
    direction = "eig_min_real_positive" if label in SIGN_LABELS else "lower"
    return (
        Intervention(
            name, lambda c, d, k=None, lab=label: table_overrides(lab, c, d, k), direction
        ),
    )


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
    """``(confirmed|refuted, why)`` of one twin's final value_gap against the control's
    (module docstring)."""
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


def eig_min_interval(run_dir: Path, start: int = 0) -> tuple[float, float, int | None]:
    """``(eig_min_real_lo, eig_min_real_hi, iter)`` of the run's latest stability round
    at ``iter >= start`` with a finite interval; ``(nan, nan, None)`` without one."""
    rows = _table_rows(run_dir / "probes" / "stability_probe.csv")
    for row in reversed(rows):
        lo, hi, it = row.get("eig_min_real_lo"), row.get("eig_min_real_hi"), row.get("iter")
        if not all(isinstance(x, int | float) for x in (lo, hi, it)) or it < start:
            continue
        if math.isfinite(lo) and math.isfinite(hi):
            return float(lo), float(hi), int(it)
    return math.nan, math.nan, None


def sign_verdict(
    twin: tuple[float, float, int | None],
    control: tuple[float, float, int | None],
    control_diverged: bool,
) -> tuple[str, str]:
    """``(confirmed|refuted, why)`` of a twin predicted to turn A's smallest eigenvalue
    positive (module docstring): ``confirmed`` when the twin's latest 95% interval
    ``[lo, hi]`` of eig_min_real lies above 0 and the control's below 0 (or the control
    diverged without an interval)."""

    def say(name: str, x: tuple[float, float, int | None]) -> str:
        if x[2] is None:
            return f"{name}: no stability round"
        return f"{name} eig_min_real 95% interval [{x[0]:.3g}, {x[1]:.3g}] at iteration {x[2]}"

    text = f"{say('twin', twin)}; {say('control', control)}"
    if twin[2] is None:
        return "refuted", f"{text} (the twin's sign is not measured)"
    if not twin[0] > 0:
        return "refuted", f"{text}: the twin's interval is not above 0"
    if control[2] is not None and control[1] < 0:
        return "confirmed", f"{text}: above 0 in the twin, below 0 in the control"
    if control[2] is None and control_diverged:
        return "confirmed", f"{text}: above 0 in the twin; the control diverged"
    return "refuted", f"{text}: the control's interval is not below 0"


def branch_point(
    label: str, cfg: RunConfig, at: int | None, iters: int | None
) -> tuple[int | None, int | None]:
    """``(at, iters)`` explain uses (module docstring): for a label of
    :data:`EARLY_FAMILIES` ``at`` defaults to 0 and ``iters`` (None here) to the run's
    length after the branch point; otherwise ``at`` None (late: ``outer_iters - iters``)
    and ``iters`` defaults to :data:`DEFAULT_ITERS`."""
    early = label != NOT_AVAILABLE and label in LABELS and entry(label).family in EARLY_FAMILIES
    if early:
        return (0 if at is None else at), iters
    return at, (DEFAULT_ITERS if iters is None else iters)


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
    iters: int | None = None,
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
    iteration `at` (0: the initial state) and run `iters` iterations. Defaults
    (:func:`branch_point`): a ``diverged*`` label branches from the start (at = 0) and runs
    the parent's whole length (iters = outer_iters - at); any other label runs iters =
    DEFAULT_ITERS from the newest checkpoint at or before ``outer_iters - iters`` (so the
    control overlaps the run; the oldest kept checkpoint when none is that early).
    `label` tests another label's interventions (a rival explanation); twins are indexed
    in the catalog when `index`. Raises ExplainError, RunDirError or ConfigError (one
    line) before any twin is made."""
    from tdlens.sweeps.backends import RunTask, execute_task, run_local

    parent = Path(parent)
    check_backend(backend, jobs)
    if iters is not None and iters < 1:
        raise ExplainError(f"--iters: expected >= 1, got {iters}")
    if at is not None and at < 0:
        raise ExplainError(f"--at: expected >= 0, got {at}")
    if not is_run_dir(parent):
        raise ExplainError(f"'{parent}' is not a run directory (no config.json)")
    if label is not None and label not in INTERVENTIONS:
        raise ExplainError(f"--label '{label}': choose one of {', '.join(INTERVENTIONS)}")
    cfg = config_from_json(parent / "config.json")
    the_label = label or run_label(parent)
    at, iters = branch_point(the_label, cfg, at, iters)
    if at != 0 and not list_checkpoints(parent):
        raise ExplainError(
            f"'{parent}' has no checkpoint to branch from (checkpoints/ is empty; --at 0 "
            "branches from the initial state)"
        )
    if at is not None:
        ckpt = choose_checkpoint(parent, at)
    else:
        assert iters is not None
        try:
            ckpt = choose_checkpoint(parent, max(cfg.outer_iters - iters, 0))
        except RunDirError:
            ckpt = list_checkpoints(parent)[0]  # the oldest kept: twins run past the parent
    k = 0 if ckpt == INITIAL else int(Path(ckpt).stem.split("_")[1])
    if iters is None:  # an early label: the parent's length after the branch point
        iters = cfg.outer_iters - k if cfg.outer_iters > k else DEFAULT_ITERS
    chosen = INTERVENTIONS.get(the_label, ())
    sets = {iv.name: iv.overrides(cfg, parent, k) for iv in chosen}
    common = {
        "probes.enabled": True,
        "probes.fixed_point.enabled": True,
        "probes.every": probe_every(iters),
        "threads": 1,
    }
    if any(iv.direction == "eig_min_real_positive" for iv in chosen):
        common["probes.stability.enabled"] = True  # sign_verdict reads its rounds
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
    assert k == int(read_json(dirs["control"] / "branch.json")["iteration"])
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
        extra: dict[str, Any] = {}
        if iv.direction == "eig_min_real_positive":
            gap_word, gap_why = verdict(final, control)
            twin_sign = eig_min_interval(dirs[iv.name], k)
            control_sign = eig_min_interval(dirs["control"], k)
            word, why = sign_verdict(twin_sign, control_sign, control.status == "diverged")
            why += f"; value_gap: {gap_word} ({gap_why})"
            extra = {
                "eig_min_real": _interval(twin_sign),
                "control_eig_min_real": _interval(control_sign),
                "value_gap_verdict": gap_word,
            }
        else:
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
                **extra,
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
        "checkpoint": None if ckpt == INITIAL else Path(ckpt).name,
        "start": INITIAL if ckpt == INITIAL else "checkpoint",
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


def _interval(x: tuple[float, float, int | None]) -> dict[str, Any]:
    """``{"lo", "hi", "iter"}`` of :func:`eig_min_interval`."""
    return {"lo": x[0], "hi": x[1], "iter": x[2]}


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


def _start(result: dict[str, Any]) -> str:
    """Where the twins branched, in words."""
    if result.get("start") == INITIAL:
        return (
            "the start (iteration 0, the initial state: a diverged label claims its "
            "intervention would have prevented the divergence)"
        )
    return f"`{result['checkpoint']}` (iteration {result['iteration']})"


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
        f"Twins branched from {_start(result)} and "
        f"ran {result['iters']} iterations with probe rounds every {result['probe_every']}; "
        f"control: `{result['control']['run_dir']}`. A twin confirms when the control's "
        f"final value_gap exceeds the twin's by more than {result['z']:g} combined SEs"
        + (
            " (the off-policy twin: when its latest eig_min_real 95% interval lies above 0 "
            "and the control's below 0, or the control diverged)"
            if any(t.get("direction") == "eig_min_real_positive" for t in result["twins"])
            else ""
        )
        + f". Final value_gap: {result['estimator']}.",
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
