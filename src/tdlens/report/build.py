"""Assemble the report data from a run directory (docs/model.md §8): :func:`build_report`.

The :class:`Report` holds everything the three renderers show, computed once from the
files by pure functions (stats, checks, rules); rendering never recomputes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdlens import config as config_module
from tdlens.probes import registry
from tdlens.report import advice as ra
from tdlens.report.card import Verdict, steps_line, verdict_of
from tdlens.report.health import HEALTH_CHECKS
from tdlens.report.probe_checks import SCALE_RATIO_TOL
from tdlens.report.rules import next_steps
from tdlens.report.series_stats import Stats, summarize
from tdlens.report.theory import theory_overlay
from tdlens.report.verdicts import FAIL, PASS, Check, NextStep, overall_status
from tdlens.rundir.read import RunData, Table, array_files, load_array, load_run
from tdlens.scores import Regime, label_regime, series_of

CORE_METRICS: tuple[str, ...] = (
    "td_loss",
    "w_norm",
    "mean_rho2",
    "tracking_gap",
    "critic_teacher_error",
)
"""Rows of the Core Metrics table, in the seed's order."""
SAMPLE_COLUMNS: tuple[str, ...] = (
    "iter",
    "td_loss",
    "critic_teacher_error",
    "tracking_gap",
    "mean_rho2",
    "w_norm",
    "fixed_point_gap",
    "stability_proxy",
    "dist_mmd2",
)
"""Columns of the Samples (Head) / (Tail) tables, in the seed's order."""
SAMPLE_ROWS = 8
PAGE_SECTIONS: tuple[str, ...] = (
    "verdict",
    "run_info",
    "health",
    "scale",
    "core",
    "probes",
    "samples_head",
    "samples_tail",
    "next_steps",
    "dynamics",
    "rho_audit",
    "theory",
    "timings",
    "status",
    "files",
)
"""The sections of run_report.md and run_report.html, in page order (each renderer maps
every name to its section and fails at import when one is missing)."""
KEY_HPARAMS: tuple[str, ...] = (
    "outer_iters",
    "horizon",
    "gamma",
    "alpha_w",
    "alpha_pi",
    "beta",
    "sigma_mu",
    "sigma_pi",
    "p_mix",
    "trajectories",
    "feature_dim",
    "actor_feature_dim",
    "theta_mu_offset_scale",
    "rho_clip",
    "step_normalization",
    "bar_phi",
)
"""key_hparams: the seed's nine keys first, then ours."""
EXTRA_SETTINGS: tuple[str, ...] = (
    "rho_clip",
    "rho_clip_active",
    "stability_probe_step_scale",
    "trainer_terms",
    "cache_horizon",
    "cache_valid_t",
)
"""Probe columns that echo run settings besides the probes' own config keys."""


def setting_names() -> frozenset[str]:
    """Column names that are settings: every field of a probe's config section (batch_size,
    permutations, ridge, tol, k_mc, ...) and EXTRA_SETTINGS. Such a column, when it is
    constant over the run, goes to the Settings table instead of the metric tables."""
    models = [
        f.annotation
        for name, f in config_module.ProbesConfig.model_fields.items()
        if name != "enabled"
    ]
    models += list(config_module.EXTRA_PROBE_SECTIONS.values())
    keys = {k for m in models if hasattr(m, "model_fields") for k in m.model_fields}
    return frozenset((keys - {"enabled"}) | set(EXTRA_SETTINGS))


STATUS_KEYS = (
    "status",
    "reason",
    "next_iter",
    "outer_iters",
    "exit_code",
    "started_at",
    "resumed_at",
    "updated_at",
    "host",
    "pid",
    "config_hash",
    "report_error",
)


@dataclass(frozen=True)
class ProbeSection:
    """One probe's table: stats per numeric column (None = expected but missing)."""

    name: str
    rows: int
    stats: dict[str, Stats | None]
    text_columns: dict[str, str | None] = field(default_factory=dict)
    note: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    iters: tuple[int, int] | None = None


@dataclass(frozen=True)
class Report:
    """Everything in run_report.md/.json/.html (see the renderers)."""

    run_info: dict[str, Any]
    regime: Regime
    health_status: str
    health_reasons: list[str]
    checks: list[Check]
    scale: dict[str, Any]
    core: dict[str, Stats]
    probes: list[ProbeSection]
    samples_head: list[list[Any]]
    samples_tail: list[list[Any]]
    next_steps: list[NextStep]
    status: dict[str, Any]
    dynamics: dict[str, Any]
    timings: dict[str, dict[str, float]]
    theory: dict[str, Any]
    problems: list[str]
    verdict: Verdict
    data: RunData = field(repr=False, compare=False)
    counterfactuals: list[dict[str, Any]] = field(default_factory=list)
    advice: list[dict[str, Any]] = field(default_factory=list)

    @property
    def settings(self) -> list[tuple[str, str, Any]]:
        """``(probe, column, value)`` of every probe's constant settings."""
        return [(p.name, k, v) for p in self.probes for k, v in p.settings.items()]

    @property
    def health_line(self) -> str:
        """``FAIL (reason; reason)`` or ``PASS``."""
        reasons = "; ".join(self.health_reasons)
        return f"{self.health_status} ({reasons})" if reasons else self.health_status


def run_info(data: RunData) -> dict[str, Any]:
    """run_dir, timestamp (the run's start, from status.json), seed, key_hparams, name."""
    cfg = data.cfg
    hparams: dict[str, Any] = {}
    if cfg is not None:
        flat = {**cfg.to_dict(), **cfg.env.model_dump(mode="json")}
        flat["rho_clip"] = cfg.effective_rho_clip
        hparams = {k: flat[k] for k in KEY_HPARAMS if k in flat}
    return {
        "run_dir": str(data.run_dir),
        "timestamp": data.status.get("started_at"),
        "seed": cfg.seed if cfg else None,
        "key_hparams": hparams,
        "name": cfg.name if cfg else None,
        "config_hash": data.status.get("config_hash") or (cfg.config_hash() if cfg else None),
        "schedules": steps_line(cfg),
    }


def scale_checks(data: RunData) -> dict[str, Any]:
    """train_step_scale (config), stability_probe_step_scale (last stability row), ratio."""
    train = data.cfg.train_step_scale if data.cfg else None
    probe = data.probe("stability_probe").last("stability_probe_step_scale")
    ratio = probe / train if probe is not None and train else None
    verdict = None
    if ratio is not None:
        verdict = PASS if abs(ratio - 1.0) <= SCALE_RATIO_TOL else FAIL
    return {
        "train_step_scale": train,
        "stability_probe_step_scale": probe,
        "stability_probe_step_scale_ratio": ratio,
        "verdict": verdict,
    }


def probe_section(name: str, table: Table | None) -> ProbeSection:
    """Stats of every numeric column (sorted by name, as the seed), expected columns that
    are absent as None; text columns by their last value. Settings (:func:`setting_names`,
    constant over the run) go to ``settings``; ``iter`` is the rounds' span, not a metric."""
    if table is None or not len(table):
        why = "no rows" if table is not None else f"probes/{name}.csv not found"
        return ProbeSection(name, 0, {}, note=f"{why}: the probe did not run")
    numeric = table.numeric_columns()
    t = table.iters()
    names = setting_names()
    settings: dict[str, Any] = {}
    stats: dict[str, Stats | None] = {}
    for c in numeric:
        x = table.values(c)
        if c == "iter":
            continue
        if c in names and len(set(x[~np.isnan(x)].tolist())) <= 1:
            settings[c] = float(x[~np.isnan(x)][0]) if np.any(~np.isnan(x)) else None
            continue
        stats[c] = summarize(x, t)
    for col in registry.spec_of(name).columns if name in registry.names() else ():
        if col not in table.columns and col != "iter":
            stats[col] = None
    texts = {}
    for c in table.columns:
        if c in numeric:
            continue
        values = table.texts(c)
        if c in names and len(set(values)) <= 1:
            settings[c] = values[-1]
        else:
            texts[c] = values[-1]
    span = (int(t.min()), int(t.max())) if len(t) else None
    return ProbeSection(
        name,
        len(table),
        dict(sorted(stats.items())),
        texts,
        None,
        dict(sorted(settings.items())),
        span,
    )


def samples(curves: Table, head: bool) -> list[list[Any]]:
    """The first or last SAMPLE_ROWS rows of SAMPLE_COLUMNS (None where empty)."""
    rows = curves.rows[:SAMPLE_ROWS] if head else curves.rows[-SAMPLE_ROWS:]
    out = []
    for row in rows:
        cells = [row.get(c) for c in SAMPLE_COLUMNS]
        out.append([c if isinstance(c, float) else None for c in cells])
    return out


def critic_dynamics(data: RunData) -> dict[str, Any]:
    """The last stability and fixed-point probes' view of the critic (docs/model.md §6.1, §6.2)."""
    stab, fp = data.probe("stability_probe"), data.probe("fixed_point_probe")
    out: dict[str, Any] = {}
    if len(stab):
        out["probe_iter"] = stab.last("iter")
        for key in (
            "eta",
            "eig_max_real",
            "eig_min_real",
            "eig_max_abs",
            "spectral_noise",
            "critical_step",
            "critical_alpha_w",
            "fastest_timescale",
            "slowest_timescale",
            "growth_timescale",
            "modes_above_noise",
            "eig_min_real_is_bound",
            "sampling_trainer",
        ):
            out[key] = stab.last(key)
            for end in ("lo", "hi"):
                if stab.has(f"{key}_{end}"):
                    out[f"{key}_{end}"] = stab.last(f"{key}_{end}")
    if len(fp):
        for key in (
            "w_gap",
            "value_gap",
            "noise_floor",
            "w_sharp_drift",
            "lam",
            "modes_below_lam",
            "condition_est",
            "residual",
            "value_gap_floor",
            "effective_timescale",
        ):
            out[f"fixed_point_{key}" if not key.startswith("w_") else key] = fp.last(key)
    rel = data.curves.values("delta_w_norm") / data.curves.values("w_norm")
    rel = rel[np.isfinite(rel)]
    if len(rel):
        out["median_rel_step"] = float(np.median(rel))
    if data.cfg is not None:
        out["run_iters"] = data.cfg.outer_iters
    return out


def timings(data: RunData) -> dict[str, dict[str, float]]:
    """Seconds per probe (probes/rounds.csv ``*_s``) and per training iteration."""
    out: dict[str, dict[str, float]] = {}
    series = {c[:-2]: data.rounds.values(c) for c in data.rounds.columns if c.endswith("_s")}
    series["training_iteration"] = data.curves.values("iter_time_s")
    for name, x in series.items():
        x = x[np.isfinite(x)]
        if len(x):
            out[name] = {
                "count": float(len(x)),
                "mean": float(x.mean()),
                "max": float(x.max()),
                "total": float(x.sum()),
            }
    return out


def status_block(data: RunData) -> dict[str, Any]:
    """status.json's fields in a fixed order, traceback last."""
    out = {k: data.status.get(k) for k in STATUS_KEYS if k in data.status}
    if data.status.get("traceback"):
        out["traceback"] = data.status["traceback"]
    return out


def counterfactual_section(
    data: RunData, label: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """``(regime.counterfactuals, verdict.advice, problems)`` from the FIRST readable
    ``probes/counterfactuals_<iter>.npz`` (:mod:`tdlens.report.advice`; the probe writes
    one, at the run's first fixed-point round): advice is a setting for a new run,
    and the first probe's prediction spans the most of the run under it (a later round
    predicts only the iterations left from its snapshot, none at the last). Each
    counterfactual ``{"name", "set", "predicted", "note"}``, ``predicted`` null when not
    predictable (the note says why). `label` is the run's regime label (advice proposes
    annealing under ``plateau:noise-floor``). An unreadable file is skipped and named in
    problems; ``([], [], problems)`` without a readable one or a config."""
    problems: list[str] = []
    if data.cfg is None:
        return [], [], problems
    for path in array_files(data.run_dir, ra.PREFIX).values():
        arrays = load_array(path)
        try:
            rows = ra.entries(arrays) if isinstance(arrays, dict) else None
        except (KeyError, IndexError, ValueError):
            rows = None
        if rows is None:
            problems.append(f"'{path}' is unreadable: skipped (no counterfactuals from it)")
            continue
        keep = ("name", "set", "predicted", "note")
        interventions = [{k: r[k] for k in keep} for r in rows if r["kind"] == "intervention"]
        critical = float(arrays["critical_step"][0])
        return interventions, ra.advice(rows, data.cfg, critical, label), problems
    return [], [], problems


def probe_names(data: RunData) -> list[str]:
    """Every registered probe plus any other table found in probes/, sorted by name (the
    seed report's order)."""
    return sorted(set(registry.names()) | set(data.probes))


def build_report(run_dir: str | Path) -> Report:
    """Read ``run_dir`` and compute every section of the run report."""
    data = load_run(run_dir)
    checks = [check.run(data) for check in HEALTH_CHECKS]
    status, reasons = overall_status(checks)
    t = data.curves.iters()
    regime = label_regime(series_of(data))
    steps = next_steps(data, checks)
    dynamics = critic_dynamics(data)
    counterfactuals, advice, cf_problems = counterfactual_section(data, regime.label)
    return Report(
        run_info=run_info(data),
        regime=regime,
        health_status=status,
        health_reasons=reasons,
        checks=checks,
        scale=scale_checks(data),
        core={m: summarize(data.curves.values(m), t) for m in CORE_METRICS},
        probes=[probe_section(n, data.probes.get(n)) for n in probe_names(data)],
        samples_head=samples(data.curves, head=True),
        samples_tail=samples(data.curves, head=False),
        next_steps=steps,
        status=status_block(data),
        dynamics=dynamics,
        timings=timings(data),
        theory=theory_overlay(data),
        problems=[*data.problems, *cf_problems],
        verdict=verdict_of(regime, status, reasons, steps, dynamics, data, advice, counterfactuals),
        data=data,
        counterfactuals=counterfactuals,
        advice=advice,
    )
