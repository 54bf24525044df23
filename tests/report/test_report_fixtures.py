"""Synthetic run directories for the report tests (importable as ``test_report_fixtures``).

:func:`healthy_run` builds, in memory, the files a healthy 20-iteration run writes (the
real column names of tdlens.runs.runner and tdlens.probes), chosen so that every health
check PASSes and no next-step rule fires; each test changes one thing and writes it with
:meth:`SynthRun.write`. Writing goes through tdlens.rundir.files, as the runner does.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers import small_config
from tdlens.config import RunConfig
from tdlens.probes import registry
from tdlens.rundir.files import TableWriter, atomic_write_json
from tdlens.runs.runner import curve_columns

N_ITERS = 20
EVERY = 5
ALPHA_W = 0.08
EIG_MAX_REAL = 2.0
"""Healthy spectrum: fastest_timescale = 1 / (0.08 * 2) = 6.25 iterations < 20."""
SEED_EIG_MAX_REAL = 7.4e-4
"""docs/model.md §6.2's seed spectrum: 1 / (0.08 * 7.4e-4) = 16,900 iterations."""


def rho_summary() -> dict[str, float]:
    return {
        "rho_mean": 1.0,
        "rho2_mean": 1.07,
        "rho_min": 0.05,
        "rho_max": 1.36,
        "rho_p95": 1.33,
        "rho_p99": 1.35,
        "rho_clip": 10.0,
        "rho_clip_active": 1.0,
        "rho_clipped_fraction": 0.0,
    }


@dataclass
class SynthRun:
    """The files of one run, as plain data (tests edit them before writing)."""

    overrides: list[str]
    curves: list[dict[str, Any]]
    probes: dict[str, list[dict[str, float]]]
    status: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def cfg(self) -> RunConfig:
        return base_config(*self.overrides)

    def copy(self) -> SynthRun:
        return copy.deepcopy(self)

    def set_curve(self, column: str, values: Any) -> None:
        """Set a learning-curve column: one value, a list, or a function of the row index."""
        for i, row in enumerate(self.curves):
            row[column] = (
                values(i)
                if callable(values)
                else (values[i] if isinstance(values, list) else values)
            )

    def set_probe(self, probe: str, column: str, values: Any) -> None:
        """Set a probe column: one value, a list, or a function of the probe index."""
        for k, row in enumerate(self.probes[probe]):
            row[column] = (
                values(k)
                if callable(values)
                else (values[k] if isinstance(values, list) else values)
            )

    def write(self, run_dir: Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True)
        atomic_write_json(run_dir / "config.json", self.cfg().to_dict())
        atomic_write_json(run_dir / "status.json", self.status)
        columns = list(self.curves[0]) if self.curves else list(curve_columns())
        writer = TableWriter(run_dir / "learning_curves.csv", columns)
        for row in self.curves:
            writer.append(row)
        probe_dir = run_dir / "probes"
        for name, rows in self.probes.items():
            if rows:
                probe_dir.mkdir(exist_ok=True)
                table = TableWriter(probe_dir / f"{name}.csv", list(rows[0]), jsonl=True)
                for row in rows:
                    table.append(row)
        if self.rounds:
            table = TableWriter(probe_dir / "rounds.csv", list(self.rounds[0]), jsonl=True)
            for row in self.rounds:
                table.append(row)
        for fname, arr in self.arrays.items():
            np.save(probe_dir / fname, arr, allow_pickle=False)
        return run_dir


def base_config(*overrides: str) -> RunConfig:
    return small_config(
        f"outer_iters={N_ITERS}",
        "name=synthetic",
        f"alpha_w={ALPHA_W}",
        f"probes.every={EVERY}",
        *overrides,
    )


def _curve_row(cfg: RunConfig, i: int, td: float) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in curve_columns()}
    row.update(
        iter=float(i),
        td_loss=td,
        critic_teacher_error=0.02 * (1 - i / 40),
        w_norm=2.0 + 0.02 * i,
        tracking_gap=1e-4 * (1 - cfg.beta) ** (2 * (i + 1)),
        mean_rho=1.0 + 0.001 * math.sin(i),
        mean_rho2=1.07 + 0.001 * math.cos(i),
        min_rho=0.05,
        max_rho=1.36,
        p95_rho=1.33,
        p99_rho=1.35,
        p95_rho2=1.77,
        p99_rho2=1.82,
        max_rho2=1.85,
        delta_mean=1e-4,
        delta_std=0.03,
        delta_p95=0.06,
        delta_p99=0.08,
        delta_max=0.1,
        clip_fraction=0.0,
        clip_excess_mean=0.0,
        clip_excess_p95=0.0,
        clip_excess_max=0.0,
        delta_theta_pi_norm=1e-3,
        delta_w_norm=0.02,
        alpha_w_t=cfg.alpha_w,
        alpha_pi_t=cfg.alpha_pi,
        iter_time_s=0.01,
    )
    return row


def _probe_rows(cfg: RunConfig, i: int, k: int, td: float) -> dict[str, dict[str, float]]:
    """One probe round at iteration i (the k-th round)."""
    it = {"iter": float(i)}
    eta = cfg.train_step_scale * cfg.trajectories * cfg.horizon
    fixed = {
        **it,
        "w_gap": 0.5 * math.exp(-i / 10),
        "value_gap": 0.1 * math.exp(-i / 10),
        "w_sharp_drift": 0.0 if k == 0 else 0.001,
        "w_sharp_drift_defined": float(k > 0),
        "noise_floor": 0.01,
        "w_norm": 2.0 + 0.02 * i,
        "w_sharp_norm": 2.1,
        "lam": 2e-3,
        "ridge": 1e-3,
        "modes_below_lam": 3.0,
        "modes_below_lam_exact": 1.0,
        "converged": 1.0,
        "num_iters": 1.0,
        "residual": 1e-13,
        "condition_est": 1e4,
        "batch_size": 256.0,
        "tol": 1e-8,
        "eig_max_abs": EIG_MAX_REAL,
        **rho_summary(),
    }
    stability = {
        **it,
        "stability_proxy": 0.9,
        "stability_proxy_mean": 0.9,
        "stability_proxy_std": 1e-3,
        "eta": eta,
        "stability_probe_step_scale": cfg.alpha_w * cfg.step_scale,
        "trainer_terms": float(cfg.trajectories * cfg.horizon),
        "batch_size": 256.0,
        "k_mc": 2.0,
        "power_iters": 10.0,
        "eig_min_real": 1e-3,
        "eig_max_real": EIG_MAX_REAL,
        "eig_max_abs": EIG_MAX_REAL,
        "critical_step": 1.0,
        "fastest_timescale": 1 / (eta * EIG_MAX_REAL),
        "slowest_timescale": 1 / (eta * 0.02),
        "growth_timescale": math.inf,
        "spectral_noise": 0.01,
        "modes_above_noise": 40.0,
        "spectrum_dense": 1.0,
        "spectrum_count": 64.0,
        "spectrum_complete_above_noise": 1.0,
        "critical_alpha_w": 1.0 / (eta / cfg.alpha_w),
        **rho_summary(),
    }
    distribution = {
        **it,
        "mmd2": 0.005,
        "mmd2_unbiased": 0.004,
        "mmd_sigma": 2.3,
        "mmd_pvalue": 0.2,
        "mmd_perm_points": 128.0,
        "permutations": 20.0,
        "mean_l2": 0.2,
        "dist_action_kl": 0.043,
        "dist_action_tv": 0.113,
        "dist_action_tv_se": 0.003,
        "num_samples": 64.0,
        "action_samples": 8.0,
        **rho_summary(),
    }
    from_q = td * 1.02
    q_kernel = {
        **it,
        "td_loss": td,
        "td_loss_from_Q": from_q,
        "td_loss_from_Q_abs_diff": abs(from_q - td),
        "td_loss_from_Q_rel_diff": abs(from_q - td) / td,
        "td_loss_cache": from_q,
        "td_loss_from_Q_cache_rel_diff": 1e-16,
        "cache_batch_size": 2.0,
        "cache_horizon": float(cfg.horizon),
        "cache_valid_t": float(cfg.horizon),
    }
    audit = {
        **it,
        "n": 256.0,
        "rho_mean_emp": 1.001,
        "rho_mean_theory": 1.0,
        "rho_mean_se": 0.01,
        "rho_mean_z": 0.1,
        "rho2_mean_emp": 1.07,
        "rho2_mean_theory": 1.0757,
        "rho2_mean_se": 0.02,
        "rho2_mean_z": -0.29,
        "rho_max_emp": 1.36,
        "rho_sup_theory": 1.3611,
        "rho_z_reliable": 1.0,
        "rho2_z_reliable": 1.0,
        "clipped_mean_emp": 1.001,
        "clipped_mean_theory": 1.0,
        "clip_bias_emp": 0.001,
        "clip_bias_theory": 0.0,
        "clipped_mean_se": 0.01,
        "clipped_mean_z": 0.1,
        "max_abs_z": 0.29,
        "z_threshold": 5.0,
        "sup_ok": 1.0,
        "reliable": 1.0,
        "passed": 1.0,
        **rho_summary(),
    }
    rows = {
        "fixed_point_probe": fixed,
        "stability_probe": stability,
        "distribution_probe": distribution,
        "q_kernel_probe": q_kernel,
        "rho_audit": audit,
    }
    for spec in registry.specs():  # a probe registered later: a flat row of its columns
        if spec.name not in rows:
            cols = dict.fromkeys((*spec.columns, *spec.summary.values()), 1.0)
            rows[spec.name] = {**cols, **it}
    return rows


def healthy_run(*overrides: str, arrays: bool = False) -> SynthRun:
    """A complete, healthy, learning run: every check PASSes, no rule fires."""
    cfg = base_config(*overrides)
    n = cfg.outer_iters
    rng = np.random.default_rng(0)
    curves, rounds = [], []
    probes: dict[str, list[dict[str, float]]] = {}
    run = SynthRun(list(overrides), curves, probes, {}, {}, rounds)
    for i in range(n):
        td = 1e-3 * (1 + 0.5 * math.exp(-i / 5)) * (1 + 0.05 * rng.standard_normal())
        row = _curve_row(cfg, i, td)
        reason = "last" if i == n - 1 else ("every" if (i + 1) % EVERY == 0 else None)
        if reason:
            k = len(rounds)
            prows = _probe_rows(cfg, i, k, td)
            for name, prow in prows.items():
                probes.setdefault(name, []).append(prow)
            row["probe_reason"] = reason
            row.update(
                {c: prows[s.name][src] for s in registry.specs() for c, src in s.summary.items()}
            )
            rounds.append(
                {
                    "iter": float(i),
                    "reason": reason,
                    "fixed_point_s": 0.01,
                    "stability_s": 0.02,
                    "total_s": 0.05,
                }
            )
            if arrays:
                T = cfg.horizon
                Q = 1e-3 * np.eye(T) + 1e-4 * np.exp(-np.abs(np.subtract.outer(range(T), range(T))))
                run.arrays[f"q_kernel_{i:04d}.npy"] = Q
                run.arrays[f"q_kernel_lag_{i:04d}.npy"] = np.array(
                    [np.mean(np.diagonal(Q, offset=t)) for t in range(T)]
                )
                run.arrays[f"rho_hist_{i:04d}.npy"] = rng.lognormal(0.0, 0.2, 256)
                run.arrays[f"stability_eigs_{i:04d}.npy"] = rng.uniform(
                    0, 2, 16
                ) + 0.1j * rng.standard_normal(16)
        curves.append(row)
    run.status.update(
        status="complete",
        reason=None,
        next_iter=n,
        outer_iters=n,
        started_at="2026-01-01T00:00:00+00:00",
        resumed_at=None,
        pid=1,
        host="test",
        config_hash=cfg.config_hash(),
        updated_at="2026-01-01T00:01:00+00:00",
        exit_code=0,
    )
    return run


def frozen_run(*overrides: str) -> SynthRun:
    """The seed's situation: w_norm constant, delta_w_norm / w_norm ~ 1e-7, and the
    fastest mode needs ~16,900 iterations (eta = 0.08, max Re eig(A) = 7.4e-4)."""
    run = healthy_run(*overrides)
    run.set_curve("w_norm", 4.582)
    run.set_curve("delta_w_norm", 4.582e-7)
    run.set_curve("critic_teacher_error", 0.01394)
    eta = ALPHA_W
    run.set_probe("stability_probe", "eig_max_real", SEED_EIG_MAX_REAL)
    run.set_probe("stability_probe", "fastest_timescale", 1 / (eta * SEED_EIG_MAX_REAL))
    run.set_probe("stability_probe", "critical_step", 1.2)
    run.set_probe("stability_probe", "critical_alpha_w", 1.2)
    return run


def test_healthy_run_writes_a_readable_run_directory(tmp_path):
    from tdlens.rundir.files import read_csv_rows

    d = healthy_run(arrays=True).write(tmp_path / "run")
    rows = read_csv_rows(d / "learning_curves.csv")
    assert len(rows) == N_ITERS and list(rows[0]) == list(curve_columns())
    assert [r["probe_reason"] for r in rows].count("every") == N_ITERS // EVERY - 1
    assert rows[0]["fixed_point_gap"] is None
    assert len(read_csv_rows(d / "probes" / "fixed_point_probe.csv")) == N_ITERS // EVERY
