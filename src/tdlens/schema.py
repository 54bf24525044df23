"""Column names shared by the layers that write and read a run directory (docs/model.md §5, §6).

Constants only, importable from every layer (probes, runs, report, sweeps) without
pulling in any of them. The probes' own columns are declared in their registry
(:mod:`tdlens.probes.registry`).
"""

from __future__ import annotations

BATCH_RHO_COLUMNS: tuple[str, ...] = (
    "rho_mean",
    "rho2_mean",
    "rho_min",
    "rho_max",
    "rho_p95",
    "rho_p99",
    "rho_clip",
    "rho_clip_active",
)
"""The rho summary every batch probe writes (docs/model.md §6)."""
