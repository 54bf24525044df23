"""Checkpoints: everything needed to continue a run bit-identically (docs/model.md §7).

A checkpoint taken after iteration n holds theta_mu, theta_pi, w, ``next_iter = n + 1``,
the td_loss history (the plateau trigger's input), the probe manager's state and the
config hash. Random streams need no stored state: every draw is keyed by
(seed, stream, iteration, chain), see tdlens.seeding. Files are ``.npz`` written
atomically and loaded with ``allow_pickle=False``.

Each file carries ``checksum``, the SHA-256 of every other array (name, dtype, shape and
bytes, in name order); a checkpoint is read back and verified right after it is written,
and only the newest ``checkpoint_keep`` are kept. :func:`newest_valid_checkpoint` skips
corrupt ones (flipped bytes, a torn file) and says why, so a resume falls back to the
newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.learner import Params
from tdlens.rundir.files import RunFileError, atomic_write_bytes, check_array_file

_NAME = re.compile(r"^ckpt_(\d{6})\.npz$")
_PROBE_PREFIX = "probe__"
_PROBE_SCALARS = "probe_scalars_json"
_CHECKSUM = "checksum"
_CONFIG = "config_json"


@dataclass(frozen=True)
class Checkpoint:
    """The saved state of a run after iteration ``next_iter - 1``."""

    params: Params
    next_iter: int
    td_loss_history: np.ndarray
    probe_state: dict[str, Any]
    config_hash: str
    config: dict[str, Any] | None = None
    """The run's config (``RunConfig.to_dict()``), so a resume against a changed
    config.json can name the keys that differ; None in checkpoints written before it."""


def checkpoint_path(run_dir: Path, next_iter: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_{next_iter:06d}.npz"


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``checkpoints/ckpt_<next_iter>.npz`` atomically and return its path."""
    arrays: dict[str, np.ndarray] = {
        "theta_mu": ckpt.params.theta_mu,
        "theta_pi": ckpt.params.theta_pi,
        "w": ckpt.params.w,
        "next_iter": np.array(ckpt.next_iter),
        "td_loss_history": np.asarray(ckpt.td_loss_history, dtype=np.float64),
        "config_hash": np.array(ckpt.config_hash),
    }
    if ckpt.config is not None:
        arrays[_CONFIG] = np.array(json.dumps(ckpt.config, sort_keys=True))
    scalars = {}
    for key, value in ckpt.probe_state.items():
        if isinstance(value, np.ndarray):
            arrays[_PROBE_PREFIX + key] = value
        else:
            scalars[key] = value
    arrays[_PROBE_SCALARS] = np.array(json.dumps(scalars))
    arrays[_CHECKSUM] = np.array(_checksum(arrays))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = checkpoint_path(run_dir, ckpt.next_iter)
    atomic_write_bytes(path, buf.getvalue())
    load_checkpoint(path)  # verify what reached the disk
    return path


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over name, dtype, shape and bytes of every array but the checksum."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == _CHECKSUM:
            continue
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (by next_iter)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the largest next_iter, or None when there is none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; return the deleted paths."""
    old = list_checkpoints(run_dir)[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old


@dataclass(frozen=True)
class Found:
    """The newest checkpoint that verifies, why each newer one was skipped, and every
    checkpoint that verifies but belongs to another config (newest first)."""

    checkpoint: Checkpoint | None
    path: Path | None
    skipped: tuple[str, ...]
    foreign: tuple[tuple[Path, Checkpoint], ...] = ()


def newest_valid_checkpoint(run_dir: Path, config_hash: str) -> Found:
    """Load the newest checkpoint that verifies and belongs to `config_hash`.

    Corrupt or foreign checkpoints are skipped with the reason (``skipped``), newest first;
    ``checkpoint`` is None when no checkpoint verifies (or there is none).
    """
    skipped: list[str] = []
    foreign: list[tuple[Path, Checkpoint]] = []
    found: tuple[Checkpoint | None, Path | None] = (None, None)
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
        except RunFileError as exc:
            if found[0] is None:
                skipped.append(str(exc))
            continue
        if ckpt.config_hash != config_hash:
            foreign.append((path, ckpt))
            if found[0] is None:
                skipped.append(f"checkpoint '{path}' belongs to another config")
            continue
        if found[0] is None:
            found = (ckpt, path)
    return Found(found[0], found[1], tuple(skipped), tuple(foreign))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and validate a checkpoint; any problem is a RunFileError naming the file."""
    check_array_file(path)  # by its headers, before anything is decompressed
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RunFileError(f"checkpoint '{path}' is corrupt or unreadable ({exc})") from None
    required = ("theta_mu", "theta_pi", "w", "next_iter", "td_loss_history", "config_hash")
    missing = [k for k in (*required, _PROBE_SCALARS) if k not in arrays]
    if missing:
        raise RunFileError(f"checkpoint '{path}' lacks {', '.join(missing)}")
    if _CHECKSUM in arrays and str(arrays[_CHECKSUM]) != _checksum(arrays):
        raise RunFileError(f"checkpoint '{path}' fails its checksum (corrupt)")
    try:
        scalars = json.loads(str(arrays[_PROBE_SCALARS]))
    except json.JSONDecodeError as exc:
        raise RunFileError(f"checkpoint '{path}': probe state is corrupt ({exc})") from None
    probe_state: dict[str, Any] = dict(scalars)
    for key, value in arrays.items():
        if key.startswith(_PROBE_PREFIX):
            probe_state[key[len(_PROBE_PREFIX) :]] = value
    try:
        config = json.loads(str(arrays[_CONFIG])) if _CONFIG in arrays else None
    except json.JSONDecodeError as exc:
        raise RunFileError(f"checkpoint '{path}': its config is corrupt ({exc})") from None
    return Checkpoint(
        params=Params(arrays["theta_mu"], arrays["theta_pi"], arrays["w"]),
        next_iter=int(arrays["next_iter"]),
        td_loss_history=arrays["td_loss_history"],
        probe_state=probe_state,
        config_hash=str(arrays["config_hash"]),
        config=config,
    )
