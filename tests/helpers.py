"""Small configs shared by the tests (importable as `helpers`: pytest's pythonpath)."""

from __future__ import annotations

from tdlens.config import RunConfig, load_config

SMALL = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=4",
    "horizon=30",
    "outer_iters=5",
    "threads=1",
]


def small_config(*overrides: str) -> RunConfig:
    """A tiny but complete run config (D=64, N=16, B=4, T=30) plus overrides."""
    return load_config(None, [*SMALL, *overrides])
