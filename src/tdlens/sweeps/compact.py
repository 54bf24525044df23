"""What a finished sweep run keeps (issue 24's footprint): the files every reader reads in
full, and of the per-round probe arrays only what a reader reads.

:func:`compact_run` runs once a sweep run is final (complete or diverged), next to
:func:`tdlens.runs.checkpoint.prune_checkpoints`; a single run (``tdlens run``) keeps
everything. It changes no number any reader computes (the report, ``tdlens report RUN``,
the sweep summary, the catalog, :func:`tdlens.open_run`'s tables and newest arrays):

- ``probes/<name>.jsonl``, the JSONL twin of each probe table ``probes/<name>.csv``: the
  CSV holds the same cells (shortest round-trip floats); ``rounds.jsonl`` is kept (its
  timing breakdowns are in no CSV);
- ``rho_hist``, ``q_kernel_lag`` and ``stability_eigs``: the newest readable round only
  (the report plots the newest);
- ``q_kernel_<iter>.npz`` (the TD-error kernel ``Q_hat = Delta^T Delta / B_c`` by its
  factor ``Delta``): the newest in full; of each older round the one number the report
  reads from it, the trajectory CV ``sqrt(2 ||Q_hat||_F^2) / tr Q_hat`` of the
  loss-convention check (:func:`tdlens.report.probe_checks.trajectory_cv`), in
  ``probes/q_kernel_cv.json`` (``{"<iter>": cv}``, the float64 exactly);
- ``expected_dynamics_<iter>.npz``: the first readable round (the theory overlay's band)
  in full; of each later round the rows the overlay reads (``ratio_prev``: its mean path
  ``value_gap_pred`` at the fixed-point probe iterations), with the band keys only;
- ``run_report.json`` rewritten without indentation (the same JSON value);
- the tables ``learning_curves.csv``, ``probes/<name>.csv`` and ``probes/rounds.jsonl``
  gzip-compressed to ``<table>.gz`` (:func:`gzip_table`: the same bytes once
  decompressed, a fixed header so the file is deterministic), which every reader opens
  through :func:`tdlens.rundir.read.read_table_text` (``X``, else ``X.gz``); text tables
  compress ~2.5x (learning_curves.csv at the Step-C settings: 108.6 KB to 47.2 KB);
- the checkpoint kept (:func:`tdlens.runs.checkpoint.prune_checkpoints` left the final
  one) without the probe state only a next round reads (:data:`DROPPED_STATE`), then
  re-saved zlib-compressed: the same arrays, so the same checksum; it is loaded and
  verified before the old file is gone.

The config, status, log, ``run_report.md`` (the sweep summary links it) and
``counterfactuals_<iter>.npz`` stay as written.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from tdlens.rundir.files import (
    RunFileError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from tdlens.rundir.read import (
    CURVES_FILE,
    Q_KERNEL_CV_FILE,
    array_files,
    gz_twin,
    load_array,
    load_run,
    read_q_kernel_cv,
    table_file,
    table_files,
)

NEWEST_ONLY = ("rho_hist", "q_kernel_lag", "stability_eigs")
"""Probe arrays the report reads at the newest round only."""
Q_KERNEL = "q_kernel"
EXPECTED = "expected_dynamics"
BAND_KEYS = ("iters", "value_gap_pred", "value_gap_lo", "value_gap_hi")
"""The keys of ``expected_dynamics_<iter>.npz`` the theory overlay requires of a round
(:data:`tdlens.report.theory.BAND_KEYS`)."""
KEPT_JSONL = ("rounds",)
GZIP_LEVEL = 9
"""zlib level of a compressed table (the smallest file; a table is written once)."""


def compact_run(run_dir: Path) -> list[str]:
    """Reduce the finished sweep run `run_dir` to what its readers read (module
    docstring); return the files removed or rewritten, relative to `run_dir`."""
    run_dir = Path(run_dir)
    probes = run_dir / "probes"
    changed: list[str] = []
    data = load_run(run_dir)
    dim = data.cfg.env.feature_dim if data.cfg is not None else None
    if probes.is_dir():
        for jsonl in sorted(probes.glob("*.jsonl")):
            if jsonl.stem not in KEPT_JSONL and table_file(jsonl.with_suffix(".csv")):
                jsonl.unlink()
                changed.append(f"probes/{jsonl.name}")
        for prefix in NEWEST_ONLY:
            changed += _keep_newest(run_dir, prefix, dim)
        changed += _pack_q_kernel(run_dir, dim)
        changed += _trim_expected(run_dir, dim, data.probe("fixed_point_probe").iters())
    changed += _drop_probe_state(run_dir)
    changed += _compress_checkpoints(run_dir)
    report = run_dir / "run_report.json"
    if report.is_file():
        try:
            data = read_json(report)
        except RunFileError:
            data = None  # left as it is: the report's reader names it
        if data is not None:
            atomic_write_text(report, json.dumps(data, separators=(",", ":"), allow_nan=False))
            changed.append("run_report.json")
    tables = [run_dir / CURVES_FILE]
    tables += [probes / f"{name}.csv" for name in table_files(probes)]
    tables += [probes / f"{name}.jsonl" for name in KEPT_JSONL]
    for path in tables:
        if gzip_table(path):
            changed.append(path.relative_to(run_dir).as_posix())
    return changed


def gzip_table(path: Path) -> bool:
    """Replace the table `path` (``X``) by ``X.gz``: ``gzip.compress`` of its exact bytes
    with ``mtime=0`` (no name in the header), so the same table always gives the same file.
    The compressed file is written atomically and decompressed back before ``X`` is
    removed; False (nothing changed) when `path` is not a plain file."""
    if not path.is_file():
        return False
    raw = path.read_bytes()
    packed = gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)
    twin = gz_twin(path)
    atomic_write_bytes(twin, packed)
    if gzip.decompress(twin.read_bytes()) != raw:
        twin.unlink()
        raise RunFileError(f"'{twin}' does not decompress to '{path}'; kept the table")
    path.unlink()
    return True


def _newest_readable(run_dir: Path, prefix: str, dim: int | None) -> int | None:
    """The iteration of the newest readable ``<prefix>_<iter>`` array (the one
    :func:`tdlens.rundir.read.latest_array` returns), None when there is none."""
    for it, path in reversed(list(array_files(run_dir, prefix).items())):
        if load_array(path, dim) is not None:
            return it
    return None


def _keep_newest(run_dir: Path, prefix: str, dim: int | None) -> list[str]:
    """Delete the ``<prefix>_<iter>`` arrays older than the newest readable one."""
    newest = _newest_readable(run_dir, prefix, dim)
    if newest is None:
        return []
    old = [p for it, p in array_files(run_dir, prefix).items() if it < newest]
    for path in old:
        path.unlink()
    return [f"probes/{p.name}" for p in old]


def _pack_q_kernel(run_dir: Path, dim: int | None) -> list[str]:
    """Replace each q_kernel factor older than the newest readable one by its trajectory
    CV in ``probes/q_kernel_cv.json`` (an unreadable or non-finite one stays)."""
    from tdlens.report.probe_checks import trajectory_cv

    newest = _newest_readable(run_dir, Q_KERNEL, dim)
    if newest is None:
        return []
    path_cv = run_dir / "probes" / Q_KERNEL_CV_FILE
    packed = read_q_kernel_cv(run_dir)
    drop = []
    for it, path in array_files(run_dir, Q_KERNEL).items():
        if it >= newest:
            continue
        Q = load_array(path, dim)
        if not (isinstance(Q, np.ndarray) and Q.ndim == 2):
            continue
        cv = trajectory_cv(Q)
        if math.isfinite(cv):
            packed[it] = cv
            drop.append(path)
    if not drop:
        return []
    atomic_write_json(path_cv, {str(k): v for k, v in sorted(packed.items())})
    for path in drop:
        path.unlink()
    return [f"probes/{p.name}" for p in drop]


def _trim_expected(run_dir: Path, dim: int | None, probe_iters: np.ndarray) -> list[str]:
    """Keep the first readable ``expected_dynamics_<iter>.npz`` whole; cut every later one
    to the band keys at the fixed-point probe iterations `probe_iters`."""
    from tdlens.runs.writer import _save_array

    changed: list[str] = []
    anchor_seen = False
    for _it, path in array_files(run_dir, EXPECTED).items():
        arrays = load_array(path, dim)
        if not (isinstance(arrays, dict) and set(BAND_KEYS) <= set(arrays)):
            continue  # the overlay skips it as well
        if not anchor_seen:
            anchor_seen = True
            continue
        iters = np.asarray(arrays["iters"])
        if iters.ndim != 1 or any(np.shape(arrays[k]) != iters.shape for k in BAND_KEYS):
            continue
        rows = np.isin(iters, probe_iters)
        trimmed = {k: np.asarray(arrays[k])[rows] for k in BAND_KEYS}
        if set(arrays) == set(BAND_KEYS) and bool(rows.all()):
            continue
        _save_array(path, trimmed)
        changed.append(f"probes/{path.name}")
    return changed


DROPPED_STATE = ("w_sharp_split_prev",)
"""Probe state the final checkpoint of a finished sweep run leaves out: the last round's
``w#_1 - w#_2`` (``[D]``, 16 KB at D = 2048) serves only the next round's
w_sharp_drift_noise. A finished run has no next round; a branch from it (explain's
twins) reports that column as 0 for its first round, as one from a checkpoint written
before the column existed (the label rule then reads noise_floor for that round)."""


def _drop_probe_state(run_dir: Path) -> list[str]:
    """Re-save each checkpoint without the :data:`DROPPED_STATE` entries (and their
    ``_defined`` flags), with its checksum recomputed; the rest of the state unchanged."""
    from dataclasses import replace

    from tdlens.runs.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    changed = []
    for path in list_checkpoints(run_dir):
        try:
            ckpt = load_checkpoint(path)
        except RunFileError:
            continue  # left for newest_valid_checkpoint to name
        drop = {k for key in DROPPED_STATE for k in (key, f"{key}_defined")}
        if not drop & ckpt.probe_state.keys():
            continue
        state = {k: v for k, v in ckpt.probe_state.items() if k not in drop}
        save_checkpoint(run_dir, replace(ckpt, probe_state=state))
        changed.append(path.relative_to(run_dir).as_posix())
    return changed


def _compress_checkpoints(run_dir: Path) -> list[str]:
    """Re-save each checkpoint with ``np.savez_compressed`` (same arrays); one that does
    not load and verify afterwards is put back as it was."""
    import io

    from tdlens.runs.checkpoint import list_checkpoints, load_checkpoint

    changed = []
    for path in list_checkpoints(run_dir):
        original = path.read_bytes()
        try:
            with np.load(io.BytesIO(original), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            continue  # left for newest_valid_checkpoint to name
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        if len(buf.getvalue()) >= len(original):
            continue
        atomic_write_bytes(path, buf.getvalue())
        try:
            load_checkpoint(path)
        except RunFileError:
            atomic_write_bytes(path, original)
            continue
        changed.append(path.relative_to(run_dir).as_posix())
    return changed
