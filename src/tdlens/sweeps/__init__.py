"""Sweeps over run configs: specs, backends (local pool, Ray), catalog, summaries (docs/model.md
§11).

Modules: :mod:`~tdlens.sweeps.spec` (spec YAML -> plan of resolved runs),
:mod:`~tdlens.sweeps.plan` (sweep directory, plan.json), :mod:`~tdlens.sweeps.backends`
(local process pool and Ray), :mod:`~tdlens.sweeps.sweep` (the driver),
:mod:`~tdlens.catalog.records` / :mod:`~tdlens.scores` (a run directory as a row
with its regime label), :mod:`~tdlens.sweeps.seed_stats` (IQM, stratified bootstrap),
:mod:`~tdlens.sweeps.summary`, :mod:`~tdlens.catalog.store` (SQLite),
:mod:`~tdlens.sweeps.compare` and :mod:`~tdlens.sweeps.commands` (the CLI commands).
"""

from tdlens.sweeps.spec import (
    PlannedRun,
    SweepSpec,
    SweepSpecError,
    load_spec,
    logspace_values,
    make_plan,
    parse_spec,
)

__all__ = [
    "PlannedRun",
    "SweepSpec",
    "SweepSpecError",
    "load_spec",
    "logspace_values",
    "make_plan",
    "parse_spec",
]
