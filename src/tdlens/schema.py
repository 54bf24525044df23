"""Column names shared by the layers that write and read a run directory (SPEC 5, 6).

Constants only, importable from every layer (probes, runs, report, sweeps) without
pulling in any of them.
"""

from __future__ import annotations

PROBE_SUMMARY_COLUMNS: tuple[str, ...] = (
    "probe_reason",
    "fixed_point_gap",
    "fixed_point_value_gap",
    "fixed_point_drift",
    "fixed_point_drift_defined",
    "stability_proxy",
    "dist_mmd2",
    "dist_mean_l2",
    "dist_action_kl",
    "dist_action_tv",
    "td_loss_from_Q",
    "td_loss_from_Q_abs_diff",
    "td_loss_from_Q_rel_diff",
)
"""learning_curves.csv columns filled only where a probe ran, empty elsewhere (SPEC 5)."""


SPEC_RHO_COLUMNS: tuple[str, ...] = (
    "rho_mean",
    "rho2_mean",
    "rho_min",
    "rho_max",
    "rho_p95",
    "rho_p99",
    "rho_clip",
    "rho_clip_active",
)
"""The rho summary every batch probe writes (SPEC 6)."""
