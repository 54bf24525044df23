"""Branches: a new run that continues a parent run from one of its checkpoints (or from
its start) with a changed config (docs/model.md §16).

A branch is its own operation, never ``--resume`` (which refuses any config that does
not match its checkpoints). :func:`create_branch` reads the parent (config.json, one
checkpoint, the tables) and writes a NEW run directory:

- ``config.json``: the parent's config with the overrides applied (its own config hash);
- ``checkpoints/ckpt_<k>.npz``: the parent checkpoint's state (theta_mu, theta_pi, w,
  the td_loss history, the probe state) re-saved under the branch's config and hash;
- the parent's ``learning_curves.csv`` and ``probes/`` cut to iterations ``< k``, so the
  branch's tables read as one run from iteration 0 (a compacted sweep run's
  ``X.gz`` tables stored plain, :meth:`tdlens.runs.writer.RunFiles.expand_tables`);
- ``status.json`` ``incomplete`` at ``next_iter = k`` and ``branch.json``: the parent
  (resolved path, name, config hash), the checkpoint (path relative to the parent, the
  SHA-256 of its bytes), the iteration ``k`` the branch starts at and the changed keys
  (``{"key": {"parent": old, "branch": new}}``).

A branch at iteration 0 needs no checkpoint (``at=0``, or ``checkpoint=INITIAL``): the
initial state is a pure function of the config and seed (:func:`tdlens.learner.init_params`
on :func:`tdlens.features.make_feature_maps` of the parent's config, an empty td_loss
history, no probe state: the branch's probes start fresh, as a run's do at iteration 0),
so the branch writes that state as its ``ckpt_000000.npz``, copies none of the parent's
tables (there are no rows before 0), and ``branch.json`` records ``checkpoint: null``,
``checkpoint_sha256: null`` and ``start: "initial"`` (``"checkpoint"`` otherwise).

The branch then runs as any resumed run (``tdlens run BRANCH --resume``, or
:func:`run_branch`, or a sweep backend's worker), from iteration k. The parent is only
read, never written. Random draws are keyed by (seed, stream, iteration, trajectory)
(:mod:`tdlens.seeding`), so a branch shares its parent's randomness by design: a branch
with no change reproduces the parent's learner rows after k bit for bit (probe columns
only where both ran a probe round at the same iteration with the same probe settings).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import (
    ConfigError,
    RunConfig,
    check_name,
    config_differences,
    config_from_json,
    flatten,
    parse_config,
    set_dotted,
)
from tdlens.rundir.files import (
    RunFileError,
    atomic_write_json,
    find_symlinks,
    read_json,
)
from tdlens.rundir.read import CURVES_FILE, table_file
from tdlens.runs.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from tdlens.runs.runner import RunDirError, check_creatable, default_run_dir
from tdlens.runs.writer import RunFiles, now

INITIAL = "initial"
"""``checkpoint=INITIAL``: branch from the initial state (iteration 0, module docstring)."""
BRANCH_FILE = "branch.json"
"""A branch's record of where it came from (module docstring)."""


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory (a folder with a config.json)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_branch(run_dir: str | Path) -> dict[str, Any] | None:
    """The branch.json of `run_dir`, or None when it is not a branch (or unreadable)."""
    path = Path(run_dir) / BRANCH_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = read_json(path)
    except (RunFileError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def choose_checkpoint(parent: Path, at: int | None = None) -> Path | str:
    """The parent's checkpoint to branch from: the newest with ``next_iter <= at`` (the
    newest of all when `at` is None); :data:`INITIAL` (the initial state, no file) when
    `at` is 0. Raises RunDirError when there is none."""
    if at == 0:
        return INITIAL
    found = list_checkpoints(parent)
    if not found:
        raise RunDirError(f"'{parent}' has no checkpoint to branch from (checkpoints/ is empty)")
    if at is None:
        return found[-1]
    before = [p for p in found if int(p.stem.split("_")[1]) <= at]
    if not before:
        first = int(found[0].stem.split("_")[1])
        raise RunDirError(
            f"'{parent}' has no checkpoint at or before iteration {at} (the oldest kept is "
            f"at {first}; checkpoint_keep keeps only the newest)"
        )
    return before[-1]


def changed_keys(parent: RunConfig, child: RunConfig) -> dict[str, dict[str, Any]]:
    """``{"dotted.key": {"parent": old, "branch": new}}`` for every key that changes the
    numbers (execution keys such as name are left out)."""
    fa, fb = flatten(parent.to_dict()), flatten(child.to_dict())
    return {
        k: {"parent": fa.get(k), "branch": fb.get(k)}
        for k in config_differences(parent.to_dict(), child.to_dict())
    }


def branch_config(parent: RunConfig, overrides: Mapping[str, Any], name: str) -> RunConfig:
    """The parent's config with dotted-key `overrides` and `name` applied; ConfigError
    naming the key on a bad value (as ``--set`` does)."""
    data = json.loads(json.dumps(parent.to_dict()))
    for key, value in overrides.items():
        path = str(key).split(".")
        if not str(key) or any(not p for p in path):
            raise ConfigError(f"overrides: '{key}' is not a dotted config key")
        set_dotted(data, path, value, what="overrides: ")
    data["name"] = check_name(name)
    return parse_config(data)


def create_branch(
    parent: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    checkpoint: str | Path | None = None,
    at: int | None = None,
    iters: int | None = None,
    name: str | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Write a new run directory branched from `parent` (module docstring); returns it.

    `checkpoint` (a path, or :data:`INITIAL` for the initial state) or `at` (see
    :func:`choose_checkpoint`; 0 is the initial state) picks the state; `iters`
    sets the branch's ``outer_iters = k + iters`` (else it keeps the parent's);
    `overrides` are dotted config keys (``{"alpha_w": 0.4}``); `name` defaults to
    ``<parent name>.branch``; `run_dir` to ``<parent's folder>/<time>_<name>``. Raises
    RunDirError or ConfigError with one line before anything is written; if a write
    fails half-way the new directory is removed (the parent is never written).
    """
    parent = Path(parent)
    if not is_run_dir(parent):
        raise RunDirError(f"'{parent}' is not a run directory (no config.json)")
    links = find_symlinks(parent)
    if links:
        raise RunDirError(
            f"run directory '{parent}' holds symbolic link(s) ('{links[0].name}'); "
            "tdlens does not branch through links"
        )
    parent_cfg = config_from_json(parent / "config.json")
    chosen = checkpoint if checkpoint is not None else choose_checkpoint(parent, at)
    ckpt_path: Path | None = None
    if chosen == INITIAL:
        ckpt = initial_checkpoint(parent_cfg)
    else:
        ckpt_path = Path(chosen)
        try:
            ckpt = load_checkpoint(ckpt_path)
        except RunFileError as exc:
            raise RunDirError(str(exc)) from None
    if ckpt.config_hash != parent_cfg.config_hash():
        raise RunDirError(
            f"checkpoint '{ckpt_path}' belongs to config {ckpt.config_hash}, not to "
            f"'{parent}/config.json' ({parent_cfg.config_hash()})"
        )
    k = ckpt.next_iter
    data = dict(overrides or {})
    if iters is not None:
        if iters < 1:
            raise ConfigError(f"iters: expected >= 1, got {iters}")
        data["outer_iters"] = k + iters
    child = branch_config(parent_cfg, data, name or f"{parent_cfg.name}.branch")
    if child.outer_iters <= k:
        raise ConfigError(
            f"outer_iters: {child.outer_iters} leaves nothing to run after the checkpoint at "
            f"iteration {k}"
        )
    target = Path(run_dir) if run_dir is not None else default_run_dir(parent.parent, child.name)
    check_creatable(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RunDirError(f"run directory '{target}' already exists; choose another")
    created = not target.exists()
    try:
        _write_branch(parent, parent_cfg, ckpt_path, ckpt, child, target)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def initial_checkpoint(cfg: RunConfig) -> Checkpoint:
    """The state of a run of `cfg` before iteration 0 (module docstring): ``theta_mu,
    theta_pi, w = init_params(cfg, make_feature_maps(cfg))`` (the runner's own start), an
    empty td_loss history and no probe state."""
    from tdlens.features import make_feature_maps
    from tdlens.learner import init_params

    return Checkpoint(
        params=init_params(cfg, make_feature_maps(cfg)),
        next_iter=0,
        td_loss_history=np.zeros(0, dtype=np.float64),
        probe_state={},
        config_hash=cfg.config_hash(),
        config=cfg.to_dict(),
    )


def _write_branch(
    parent: Path,
    parent_cfg: RunConfig,
    ckpt_path: Path | None,
    ckpt: Checkpoint,
    child: RunConfig,
    target: Path,
) -> None:
    """The files of a new branch (create_branch's docstring); reads `parent` only."""
    k = ckpt.next_iter
    target.mkdir(parents=True, exist_ok=True)
    files = RunFiles(target)
    curves = table_file(parent / CURVES_FILE)  # or a compacted sweep run's .csv.gz
    if curves is not None and k > 0:
        shutil.copyfile(curves, target / curves.name)
    if (parent / "probes").is_dir() and k > 0:
        (target / "probes").mkdir()
        for entry in sorted((parent / "probes").iterdir()):
            if entry.is_file():
                shutil.copyfile(entry, target / "probes" / entry.name)
    if k > 0:
        files.cut_tables(k)
    files.write_config(child)
    save_checkpoint(
        target,
        Checkpoint(
            params=ckpt.params,
            next_iter=k,
            td_loss_history=ckpt.td_loss_history,
            probe_state=ckpt.probe_state,
            config_hash=child.config_hash(),
            config=child.to_dict(),
        ),
    )
    record = {
        "parent": str(parent.resolve()),
        "parent_name": parent_cfg.name,
        "parent_config_hash": parent_cfg.config_hash(),
        "checkpoint": _relative(ckpt_path, parent) if ckpt_path is not None else None,
        "checkpoint_sha256": file_sha256(ckpt_path) if ckpt_path is not None else None,
        "start": "checkpoint" if ckpt_path is not None else INITIAL,
        "iteration": k,
        "changed": changed_keys(parent_cfg, child),
        "config_hash": child.config_hash(),
        "created_at": now(),
    }
    atomic_write_json(target / BRANCH_FILE, record)
    reason = f"branched from '{parent.name}' at iteration {k}; not run yet"
    files.write_status(
        status="incomplete",
        reason=reason,
        next_iter=k,
        outer_iters=child.outer_iters,
        started_at=now(),
        config_hash=child.config_hash(),
    )
    source = f"checkpoint '{record['checkpoint']}'" if ckpt_path else "the initial state"
    files.log(f"{reason} ({source}, changed: {', '.join(record['changed']) or 'nothing'})")


def _relative(path: Path, parent: Path) -> str:
    """`path` relative to `parent` when inside it, else resolved."""
    path, parent = path.resolve(), parent.resolve()
    return str(path.relative_to(parent)) if path.is_relative_to(parent) else str(path)


def run_branch(run_dir: str | Path, write_report: bool = True) -> Any:
    """Run a branch to its end in this process (a resume of its checkpoint); returns the
    :class:`tdlens.runs.runner.RunResult`."""
    from tdlens.runs.runner import Runner

    report = None
    if write_report:
        from tdlens.report import write_report as report
    return Runner(None, Path(run_dir), resume=True, write_report=report).run()
