"""The run directory: atomic files, tables, checkpoints, lock, signals, resume (SPEC 7, 15)."""
