"""A run's numba kernels compiled in a child process when the cache is cold.

Numba compiles a kernel (``cache=True``) on its first call when the cache holds no
machine code for it, and the process that compiled keeps LLVM's modules of every kernel
it compiled for its whole life: ~85-105 MiB more resident memory in every later training
iteration and probe round than a process that loaded the same kernels from the cache
(seed run: a peak of 583-592 MiB against 476-486 from a warm cache; BENCHMARKS.md
issue 28 session 11 coldpeak). :func:`load_kernels` therefore first replays one training
iteration and one probe round of the run's own config at tiny sizes (:data:`TINY`: the
same code paths, dtypes and layouts, so the same kernel signatures) with compiling
refused; if a kernel is not in the cache, a child process replays it with compiling
allowed (writing the cache) and exits, and the parent replays it again, now only
loading. With a warm cache only the replay is added (the loads it makes would come in
the first round anyway). Nothing of the replay is kept: no number of the run changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
from numba.core import event

from tdlens.config import ConfigError, RunConfig, apply_overrides, flatten, parse_config
from tdlens.probes.spectrum import DENSE_MAX

TINY = {
    "env.feature_dim": DENSE_MAX + 32,  # above it the spectrum's Arnoldi path (pair_products)
    "env.actor_feature_dim": 32,
    "trajectories": 2,
    "horizon": 20,
    "outer_iters": 1,
    "probes.fixed_point.batch_size": 256,
    "probes.stability.batch_size": 256,
    "probes.distribution.num_samples": 128,
    "probes.rho_audit.batch_size": 128,
}
"""The replay's sizes, each where the run's own is larger: small, and changing no code
path (tested: the replay compiles exactly the kernel signatures of a seed-settings round)."""


CHILD_TIMEOUT_S = 900.0
"""The child's compile takes 25-60 s on 2 busy cores; past this it is killed."""


class _WouldCompile(Exception):
    """A kernel the replay called is not in numba's cache."""


class _RefuseCompile(event.Listener):
    def on_start(self, event: event.Event) -> None:
        raise _WouldCompile(str(event.data["dispatcher"]))

    def on_end(self, event: event.Event) -> None:
        pass


def tiny_config(cfg: RunConfig) -> RunConfig:
    """`cfg` at the sizes of :data:`TINY` where its own are larger (every other setting
    kept)."""
    flat = flatten(cfg.to_dict())
    return parse_config(
        apply_overrides(cfg.to_dict(), [f"{k}={min(v, flat[k])}" for k, v in TINY.items()])
    )


def replay(cfg: RunConfig) -> None:
    """One training iteration and one probe round of `cfg` at tiny sizes (their results
    dropped): every kernel a run of `cfg` calls is compiled or loaded on the way."""
    from tdlens.features import Workspace, make_feature_maps
    from tdlens.learner import init_params, outer_iteration
    from tdlens.probes.manager import ProbeManager

    small = tiny_config(cfg)
    maps = make_feature_maps(small)
    res = outer_iteration(small, maps, init_params(small, maps), 0, Workspace())
    if small.probes.enabled:
        manager = ProbeManager(small, maps)
        # as a later round: the first round's counterfactuals (~0.1 s here) call no kernel
        manager.state["w_sharp_prev"] = np.zeros(small.env.feature_dim)
        # _run: without run()'s mallopt, which would freeze glibc's thresholds at this
        # replay's small sizes for the whole run (+390k page faults, +1 s system time)
        manager._run(0, res.params, res.delta, res.metrics["td_loss"], "last")


def cached(cfg: RunConfig) -> bool:
    """True when every kernel of :func:`replay` came from the cache (False at the first
    one that would have been compiled; nothing is compiled here)."""
    try:
        with event.install_listener("numba:compile", _RefuseCompile()):
            replay(cfg)
    except _WouldCompile:
        return False
    return True


def load_kernels(cfg: RunConfig) -> None:
    """Load the kernels of a run of `cfg` from numba's cache, having them compiled in a
    child process first when the cache lacks any (module docstring). If the child fails
    (a cache directory it cannot write, no process to start, :data:`CHILD_TIMEOUT_S`
    passed), this process compiles them as it would have; a config whose tiny sizes are
    not valid is left to the run (compiled as before)."""
    try:
        tiny_config(cfg)
    except ConfigError:
        return
    if cached(cfg):
        return
    try:
        subprocess.run(
            [sys.executable, "-c", "from tdlens.runs.jitcache import _child; _child()"],
            input=json.dumps(cfg.to_dict()),
            text=True,
            capture_output=True,
            check=False,
            timeout=CHILD_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        pass  # compiled here below, as without the child
    replay(cfg)


def _child() -> None:
    data: Any = json.loads(sys.stdin.read())
    replay(parse_config(data))
