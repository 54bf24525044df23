"""status.json as observed: a run marked ``running`` whose process is gone is ``crashed``.

The run writes ``running`` while it works and its final status on every exit path it can
see (docs/model.md §15); only a process killed outright (kill -9, OOM killer, power loss) leaves
``running`` behind. Its lock then is free (the kernel drops a dead holder's flock), which
is how :func:`observed_status` tells it from a live run. A run last seen on another host
cannot be checked from here and stays ``running``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tdlens.rundir.lock import lock_is_held


def observed_status(run_dir: str | Path, status: dict[str, Any]) -> dict[str, Any]:
    """`status` (status.json's content) with a dead ``running`` run shown as ``crashed``."""
    if status.get("status") != "running":
        return status
    host = status.get("host")
    if host not in (None, socket.gethostname()) or lock_is_held(Path(run_dir)):
        return status
    pid = status.get("pid", "?")
    return {
        **status,
        "status": "crashed",
        "reason": (
            f"the process (pid {pid}) stopped without a final status after "
            f"{status.get('next_iter', '?')} iterations; resume it with "
            f"`tdlens run {run_dir} --resume`"
        ),
    }
