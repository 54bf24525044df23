"""The catalog of runs, single runs and sweep members alike.

:mod:`~tdlens.catalog.records` (a run directory as one row, with its regime label)
and :mod:`~tdlens.catalog.store` (the SQLite database of runs and sweeps, and its
read-only queries). Rebuilding it from the directories on disk reads sweep plans,
so it lives above, in :mod:`tdlens.sweeps.reindex`.
"""
