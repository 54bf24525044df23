"""tdlens: a workbench for off-policy TD learning with an unfixed behaviour policy.

The Python API (:mod:`tdlens.api`) is re-exported here: ``tdlens.run``, ``tdlens.open_run``,
``tdlens.open_sweep``, ``tdlens.open_catalog`` and the ``Run`` they return.

Importing tdlens registers the Gymnasium environment ``tdlens/TorusGobletGhost-v0``,
so ``import tdlens; gymnasium.make("tdlens/TorusGobletGhost-v0")`` works.
"""

import importlib
import os
from typing import Any

# OpenBLAS's idle worker threads busy-wait ~2^28 cycles (~0.1 s) after every call before
# they sleep. tdlens alternates BLAS calls with threads of its own (features, the three
# fixed-point solves, the MMD sums), and on a 2-core machine a spinning worker holds the
# core one of those needs: 2^4 cycles cut a seed probe round by ~10% there
# (BENCHMARKS.md). It only takes effect when set before NumPy loads OpenBLAS; a value the
# user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

ENV_ID = "tdlens/TorusGobletGhost-v0"


def _register_env() -> None:
    """Register the env by entry-point string (the env module itself loads on make)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="tdlens.torus.gym_env:TorusGobletGhostEnv",
            max_episode_steps=200,  # gym_env.MAX_EPISODE_STEPS
        )


_register_env()

_API: tuple[str, ...] = ("Run", "load_run_config", "open_catalog", "open_run", "open_sweep", "run")
"""The Python API, re-exported from :mod:`tdlens.api`."""

__all__ = ["ENV_ID", "ConfigError", "RunConfig", "__version__", *_API]


def __getattr__(name: str) -> Any:
    """``tdlens.run`` and the rest of the API (PEP 562), imported on first use.

    tdlens.api stands on every other layer (runs, report, sweeps); importing it lazily keeps
    ``import tdlens`` light and keeps the package root below the layers that import it.
    """
    if name in _API or name in ("ConfigError", "RunConfig"):
        module = importlib.import_module("tdlens.api" if name in _API else "tdlens.config")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tdlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
