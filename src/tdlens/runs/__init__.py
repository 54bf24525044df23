"""The run directory: atomic files, tables, checkpoints, lock, signals, resume (docs/model.md §7,
§15)."""
