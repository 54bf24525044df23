"""tdlens: a workbench for off-policy TD learning with an unfixed behaviour policy.

The Python API (:mod:`tdlens.api`) is re-exported here: ``tdlens.run``, ``tdlens.open_run``,
``tdlens.open_sweep``, ``tdlens.open_catalog`` and the ``Run`` they return.

Importing tdlens registers the Gymnasium environment ``tdlens/TorusGobletGhost-v0``,
so ``import tdlens; gymnasium.make("tdlens/TorusGobletGhost-v0")`` works.
"""

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

from tdlens.api import Run, load_run_config, open_catalog, open_run, open_sweep, run  # noqa: E402
from tdlens.config import ConfigError, RunConfig  # noqa: E402

__all__ = [
    "ENV_ID",
    "ConfigError",
    "Run",
    "RunConfig",
    "__version__",
    "load_run_config",
    "open_catalog",
    "open_run",
    "open_sweep",
    "run",
]
