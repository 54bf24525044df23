"""Health checks over the run's own tables (docs/model.md §8), part 1: the learning curves.

Every check is a small pure function ``RunData -> Check`` that observes behaviour in the
files (never only the config) and reports the values that decided it. Thresholds are the
named constants below; docs/metrics.md lists them with their reasoning. Probe-based
checks live in :mod:`tdlens.report.probe_checks`, the sanity-run checks in
:mod:`tdlens.report.sanity_checks`.
"""

from __future__ import annotations

import math

import numpy as np

from tdlens.pages.fmt import fmt
from tdlens.probes import registry
from tdlens.report.verdicts import FAIL, PASS, WARN, Check
from tdlens.rundir.read import RunData, Table

RHO2_SANE_MAX = 100.0
"""rho_sane: largest acceptable mean_rho2 of an iteration (docs/model.md §8 default)."""
MAX_LISTED = 8
"""How many offending cells a check lists by name."""


ALLOWED_NAN: dict[str, tuple[str, float]] = {
    "fixed_point_drift": ("fixed_point_drift_defined", 0.0),
    "w_sharp_drift": ("w_sharp_drift_defined", 0.0),
    "rho_clip": ("rho_clip_active", 0.0),
    "rho2_mean_se": ("rho_z_reliable", 0.0),
    "rho2_mean_z": ("rho_z_reliable", 0.0),
    "max_abs_z": ("rho_z_reliable", 0.0),
}
"""A NaN in column k is expected when column ALLOWED_NAN[k][0] equals [1] in that row:
no previous fixed point yet, no clip configured, E_mu[rho^2] infinite (rho audit)."""
NAN_WITHOUT_CLIP: frozenset[str] = frozenset(
    {
        "clipped_mean_emp",
        "clipped_mean_theory",
        "clip_bias_emp",
        "clip_bias_theory",
        "clipped_mean_se",
    }
)
"""rho_audit columns that are NaN when the run has no rho clip."""


def core_columns(curves: Table) -> list[str]:
    """The learner's columns of learning_curves.csv: all but the probe summary ones."""
    cut = curves.columns.index("probe_reason") if "probe_reason" in curves.columns else None
    head = curves.columns if cut is None else curves.columns[:cut]
    return [c for c in head if c not in registry.summary_columns()]


def iters_where(table: Table, bad: np.ndarray) -> list[str]:
    """The formatted ``iter`` values of the rows where ``bad`` is True."""
    return [fmt(it) for it in table.iters()[bad]]


def _listed(items: list[str]) -> str:
    extra = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + extra


def check_no_nan_inf(data: RunData) -> Check:
    """Every cell of every core (learner) column is a finite number."""
    cols = core_columns(data.curves)
    bad: list[str] = []
    iters = data.curves.iters()
    for col in cols:
        values = data.curves.values(col)
        for i in np.flatnonzero(~np.isfinite(values)):
            bad.append(f"{col}@{fmt(iters[i])}")
    observed = {"rows": len(data.curves), "core_columns": len(cols), "non_finite": len(bad)}
    if bad:
        observed["where"] = bad[:MAX_LISTED]
        return Check(
            "no_nan_inf",
            FAIL,
            f"{len(bad)} non-finite core values: {_listed(bad)}",
            observed,
            f"{len(bad)} non-finite core values",
        )
    return Check(
        "no_nan_inf",
        PASS,
        f"0 non-finite values in {len(cols)} core columns x {len(data.curves)} rows",
        observed,
    )


def _allowed_nan(row: dict, column: str, data: RunData) -> bool:
    """Is an empty/NaN cell of ``column`` in ``row`` one of the documented blanks?"""
    guard = ALLOWED_NAN.get(column)
    if guard is not None and row.get(guard[0]) == guard[1]:
        return True
    cfg = data.cfg
    if cfg is None:
        return False
    if column in NAN_WITHOUT_CLIP:
        return cfg.effective_rho_clip is None
    if column == "condition_est":
        return cfg.probes.fixed_point.solver == "iterate"
    return column == "mmd_pvalue" and cfg.probes.distribution.permutations == 0


def _summary_expected(data: RunData, column: str, it: float) -> bool:
    """Is a learning-curve summary value expected at iteration ``it``? Yes when the source
    probe's table has a row there, or has no table although the config enables it."""
    source = registry.summary_source(column)
    if source is None:
        return True
    probe = source[0]
    table = data.probes.get(probe)
    if table is not None:
        return bool(np.any(table.iters() == it))
    cfg = data.cfg
    if cfg is None:
        return False
    return any(spec.name == probe for spec in registry.enabled(cfg))


def _missing_in_curves(data: RunData) -> tuple[list[str], int, int]:
    """Unexpected empty summary cells in probed rows, allowed ones, and probed rows."""
    curves = data.curves
    summary = [c for c in curves.columns if registry.summary_source(c) is not None]
    if curves.has("probe_reason"):
        probed = [r is not None and r != "" for r in curves.texts("probe_reason")]
    else:
        probed = [any(isinstance(row.get(c), float) for c in summary) for row in curves.rows]
    bad, allowed = [], 0
    for row, ran in zip(curves.rows, probed, strict=True):
        if not ran:
            continue
        it = row.get("iter")
        for col in summary:
            cell = row.get(col)
            if isinstance(cell, float) and not math.isnan(cell):
                continue
            if isinstance(cell, str):
                bad.append(f"learning_curves.{col}@{fmt(it)} (text {cell[:20]!r})")
            elif _allowed_nan(row, col, data) or not _summary_expected(data, col, it):
                allowed += 1
            else:
                bad.append(f"learning_curves.{col}@{fmt(it)}")
    return bad, allowed, sum(probed)


def check_probe_missing_values(data: RunData) -> Check:
    """No NaN or empty cell where a probe ran, except the documented ones
    (:data:`ALLOWED_NAN`): rows without a probe round are never missing values. Probe
    tables are all numbers: a text cell (``garbage``) is a missing value, never allowed."""
    bad, allowed, rounds = _missing_in_curves(data)
    probe_rows = 0
    for name, table in data.probes.items():
        probe_rows += len(table)
        for row in table.rows:
            for col in table.columns:
                cell = row.get(col)
                if isinstance(cell, str):
                    bad.append(f"{name}.{col}@{fmt(row.get('iter'))} (text {cell[:20]!r})")
                elif cell is None or (isinstance(cell, float) and math.isnan(cell)):
                    if _allowed_nan(row, col, data):
                        allowed += 1
                    else:
                        bad.append(f"{name}.{col}@{fmt(row.get('iter'))}")
    observed = {
        "probed_rows": rounds,
        "probe_table_rows": probe_rows,
        "unexpected_missing": len(bad),
        "allowed_missing": allowed,
    }
    if bad:
        observed["where"] = bad[:MAX_LISTED]
        return Check(
            "probe_missing_values",
            FAIL,
            f"{len(bad)} missing values where a probe ran: {_listed(bad)}",
            observed,
            f"{len(bad)} missing probe values ({_listed(bad[:2])})",
        )
    return Check(
        "probe_missing_values",
        PASS,
        f"0 unexpected missing values in {rounds} probed rows and {probe_rows} probe "
        f"table rows ({allowed} expected blanks, e.g. drift at the first probe)",
        observed,
    )


def check_monotone_time(data: RunData) -> Check:
    """``iter`` is strictly increasing in learning_curves.csv and in every probe table."""
    problems: list[str] = []
    tables = {"learning_curves": data.curves, **data.probes}
    for name, table in tables.items():
        if not table.has("iter"):
            if len(table):
                problems.append(f"{name}: no iter column")
            continue
        it = table.values("iter")
        steps = np.diff(it)
        for i in np.flatnonzero(~(steps > 0)):
            problems.append(f"{name}: iter {fmt(it[i])} -> {fmt(it[i + 1])}")
    it = data.curves.iters()
    observed = {
        "rows": len(it),
        "first_iter": float(it[0]) if len(it) else None,
        "last_iter": float(it[-1]) if len(it) else None,
        "gaps": int(np.sum(np.diff(it) != 1)) if len(it) > 1 else 0,
        "violations": len(problems),
    }
    if problems:
        observed["where"] = problems[:MAX_LISTED]
        return Check(
            "monotone_time",
            FAIL,
            f"iter not strictly increasing: {_listed(problems)}",
            observed,
            f"iter not strictly increasing ({problems[0]})",
        )
    span = f" ({fmt(it[0])}..{fmt(it[-1])})" if len(it) else ""
    return Check(
        "monotone_time",
        PASS,
        f"iter strictly increasing over {len(it)} rows{span} and {len(data.probes)} probe tables",
        observed,
    )


def check_rho_sane(data: RunData) -> Check:
    """``max_n mean_rho2 <= RHO2_SANE_MAX``."""
    if not data.curves.has("mean_rho2"):
        return Check(
            "rho_sane",
            WARN if len(data.curves) else PASS,
            "mean_rho2 column missing" if len(data.curves) else "not applicable: no rows",
        )
    values = data.curves.values("mean_rho2")
    finite = values[np.isfinite(values)]
    if not len(finite):
        return Check("rho_sane", PASS, "not applicable: no finite mean_rho2", {"rows": 0})
    peak = float(finite.max())
    observed = {"max_mean_rho2": peak, "threshold": RHO2_SANE_MAX}
    verdict = PASS if peak <= RHO2_SANE_MAX else FAIL
    op = "<=" if verdict == PASS else ">"
    return Check(
        "rho_sane", verdict, f"max mean_rho2 = {fmt(peak)} {op} {fmt(RHO2_SANE_MAX)}", observed
    )


def expected_rho2_equal_means(sigma_mu: float, sigma_pi: float, dims: int = 2) -> float:
    """``E_mu[rho^2] = prod_dims sigma_mu^2 / (sigma_pi sqrt(2 sigma_mu^2 - sigma_pi^2))``
    for equal means (docs/model.md §6.3); inf when ``sigma_pi^2 >= 2 sigma_mu^2``."""
    disc = 2.0 * sigma_mu**2 - sigma_pi**2
    if disc <= 0:
        return math.inf
    return float((sigma_mu**2 / (sigma_pi * math.sqrt(disc))) ** dims)


def check_sigma_condition(data: RunData) -> Check:
    """E_mu[rho^2] of the ratio the critic uses is finite: ``sigma_pi^2 < 2 sigma_mu^2``
    (else the unclipped E_mu[rho^2] is infinite, docs/model.md §6.3, §15), or rho is clipped at c
    (``E_mu[min(rho, c)^2] <= c^2``)."""
    cfg = data.cfg
    if cfg is None:
        return Check("sigma_condition", WARN, "config.json unreadable")
    lhs, rhs = cfg.sigma_pi**2, 2.0 * cfg.sigma_mu**2
    e_rho2 = expected_rho2_equal_means(cfg.sigma_mu, cfg.sigma_pi)
    clip = cfg.effective_rho_clip
    observed = {
        "sigma_pi2": lhs,
        "two_sigma_mu2": rhs,
        "E_rho2_equal_means": e_rho2,
        "rho_clip": clip,
    }
    if lhs >= rhs and clip is not None:
        return Check(
            "sigma_condition",
            PASS,
            f"rho clipped at {fmt(clip)}: E_mu[min(rho, c)^2] <= {fmt(clip**2)} is finite "
            f"(unclipped it would be infinite: sigma_pi^2 = {fmt(lhs)} >= 2 sigma_mu^2 = "
            f"{fmt(rhs)})",
            observed,
        )
    if lhs < rhs:
        return Check(
            "sigma_condition",
            PASS,
            f"sigma_pi^2 = {fmt(lhs)} < 2 sigma_mu^2 = "
            f"{fmt(rhs)} (E_mu[rho^2] at equal means = {fmt(e_rho2)})",
            observed,
        )
    return Check(
        "sigma_condition",
        FAIL,
        f"sigma_pi^2 = {fmt(lhs)} >= 2 sigma_mu^2 = {fmt(rhs)}: E_mu[rho^2] is infinite",
        observed,
    )


def check_complete(data: RunData) -> Check:
    """status.json says ``complete`` and learning_curves.csv has outer_iters rows; an
    incomplete, diverged, failed or still-running run FAILs with its recorded reason."""
    status = data.status.get("status")
    reason = data.status.get("reason")
    outer = data.status.get("outer_iters") or (data.cfg.outer_iters if data.cfg else None)
    rows = len(data.curves)
    observed = {
        "status": status,
        "reason": reason,
        "rows": rows,
        "outer_iters": outer,
        "next_iter": data.status.get("next_iter"),
    }
    if status == "complete" and (outer is None or rows == outer):
        return Check("complete", PASS, f"complete: {rows} of {fmt(outer)} iterations", observed)
    if status == "complete":
        text = f"incomplete run: status complete but {rows} of {fmt(outer)} rows"
    elif status in ("incomplete", "diverged", "failed"):
        label = "incomplete run" if status == "incomplete" else f"{status} run"
        text = f"{label}: {reason}" if reason else f"{label} ({rows} of {fmt(outer)} iterations)"
    elif status == "running":
        text = (
            f"incomplete run: status 'running' (in progress, or killed without a final "
            f"status; {rows} of {fmt(outer)} iterations)"
        )
    else:
        text = f"incomplete run: no readable status.json ({rows} of {fmt(outer)} iterations)"
    return Check("complete", FAIL, text, observed)
