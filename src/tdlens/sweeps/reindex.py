"""`tdlens runs reindex`: rebuild the catalog from the run and sweep directories on
disk.

A sweep directory is read through its plan (:mod:`tdlens.sweeps.plan`), which is
why this sits in the sweeps layer, above :mod:`tdlens.catalog.store` that it
writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from tdlens.catalog.store import connect, index_runs, index_sweep


def _walk(root: Path, skipped: list[str]) -> Iterator[tuple[str, Path]]:
    """("sweep", dir) for every sweep directory and ("run", dir) for every run outside one;
    symbolic links are not followed, and each one met is added to `skipped`."""
    from tdlens.sweeps.plan import is_sweep_dir

    if is_sweep_dir(root):
        yield "sweep", root
        return
    if (root / "config.json").is_file():
        yield "run", root
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.is_symlink():
            skipped.append(f"'{child}' is a symbolic link (not followed; index its target)")
            continue
        yield from _walk(child, skipped)


def reindex(path: str | Path, roots: list[Path]) -> tuple[int, int, list[str]]:
    """Rebuild the catalog at `path` from the run and sweep directories under `roots`.

    The new catalog is built beside the old one and renamed over it, so a crash leaves the
    old file; rows of directories that no longer exist are gone. A sweep whose plan.json
    cannot be read and a symbolic link are skipped, never followed nor fatal. Returns
    (runs, sweeps, what was skipped and why).
    """
    from tdlens.catalog.records import load_record
    from tdlens.rundir.files import RunFileError, read_json
    from tdlens.sweeps.plan import SWEEP_FILE, read_plan, run_dir

    path = Path(path)
    tmp = path.with_name(f".{path.name}.reindex")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    n_runs = n_sweeps = 0
    skipped: list[str] = []
    for root in roots:
        for kind, folder in _walk(Path(root), skipped):
            if kind == "run":
                index_runs(tmp, [load_record(folder)])
                n_runs += 1
                continue
            try:
                plan = read_plan(folder)
            except RunFileError as exc:
                skipped.append(f"{exc}; its sweep is not indexed")
                continue
            records = []
            for entry in plan["runs"]:
                rd = run_dir(folder, entry["run_id"])
                if rd.is_symlink():
                    skipped.append(f"'{rd}' is a symbolic link (not followed; index its target)")
                    continue
                records.append(load_record(rd, entry.get("overrides")))
            index_runs(tmp, records, plan.get("name"), folder)
            progress = folder / SWEEP_FILE
            state = read_json(progress) if progress.is_file() else {}
            index_sweep(
                tmp,
                folder,
                name=plan.get("name"),
                created_at=plan.get("created_at"),
                n_runs=len(plan["runs"]),
                axes=plan.get("axes"),
                spec=plan.get("spec"),
                **{k: state.get(k) for k in ("backend", "jobs", "finished_at", "counts")},
            )
            n_runs += len(records)
            n_sweeps += 1
    conn = connect(tmp)  # an empty catalog when nothing was found
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file
    finally:
        conn.close()
    for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        side.unlink(missing_ok=True)
    os.replace(tmp, path)
    return n_runs, n_sweeps, skipped
