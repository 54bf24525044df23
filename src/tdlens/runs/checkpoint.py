"""Checkpoints: everything needed to continue a run bit-identically (SPEC section 7).

A checkpoint taken after iteration n holds theta_mu, theta_pi, w, ``next_iter = n + 1``,
the td_loss history (the plateau trigger's input), the probe manager's state and the
config hash. Random streams need no stored state: every draw is keyed by
(seed, stream, iteration, chain), see tdlens.seeding. Files are ``.npz`` written
atomically and loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.learner import Params
from tdlens.runs.files import RunFileError, atomic_write_bytes

_NAME = re.compile(r"^ckpt_(\d{6})\.npz$")
_PROBE_PREFIX = "probe__"
_PROBE_SCALARS = "probe_scalars_json"


@dataclass(frozen=True)
class Checkpoint:
    """The saved state of a run after iteration ``next_iter - 1``."""

    params: Params
    next_iter: int
    td_loss_history: np.ndarray
    probe_state: dict[str, Any]
    config_hash: str


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
    scalars = {}
    for key, value in ckpt.probe_state.items():
        if isinstance(value, np.ndarray):
            arrays[_PROBE_PREFIX + key] = value
        else:
            scalars[key] = value
    arrays[_PROBE_SCALARS] = np.array(json.dumps(scalars))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = checkpoint_path(run_dir, ckpt.next_iter)
    atomic_write_bytes(path, buf.getvalue())
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the largest next_iter, or None when there is none."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and validate a checkpoint; any problem is a RunFileError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RunFileError(f"checkpoint '{path}' is corrupt or unreadable ({exc})") from None
    required = ("theta_mu", "theta_pi", "w", "next_iter", "td_loss_history", "config_hash")
    missing = [k for k in (*required, _PROBE_SCALARS) if k not in arrays]
    if missing:
        raise RunFileError(f"checkpoint '{path}' lacks {', '.join(missing)}")
    try:
        scalars = json.loads(str(arrays[_PROBE_SCALARS]))
    except json.JSONDecodeError as exc:
        raise RunFileError(f"checkpoint '{path}': probe state is corrupt ({exc})") from None
    probe_state: dict[str, Any] = dict(scalars)
    for key, value in arrays.items():
        if key.startswith(_PROBE_PREFIX):
            probe_state[key[len(_PROBE_PREFIX) :]] = value
    return Checkpoint(
        params=Params(arrays["theta_mu"], arrays["theta_pi"], arrays["w"]),
        next_iter=int(arrays["next_iter"]),
        td_loss_history=arrays["td_loss_history"],
        probe_state=probe_state,
        config_hash=str(arrays["config_hash"]),
    )
