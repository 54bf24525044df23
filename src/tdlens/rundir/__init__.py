"""The run directory as files: atomic writes, tables, the lock and the observed status.

The lowest layer that knows about run directories (docs/model.md §7, §15): it imports nothing of
tdlens but the config, so the runner that writes a run directory and the report, sweeps
and catalog that read it all stand on it without depending on each other.
"""
