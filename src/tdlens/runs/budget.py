"""Memory and disk a run will need, estimated from its config before anything is allocated.

A run whose estimated peak memory exceeds the machine's available memory, or whose outputs
exceed the free disk, is refused (``tdlens run --force`` overrides), naming the keys that
drive the estimate. The model sums the large arrays of each phase (bytes; ``f`` = 4 for
float32 features, 8 for float64; ``D`` = env.feature_dim, ``N`` = env.actor_feature_dim):

- ``base``: the interpreter with NumPy, SciPy, Numba and Matplotlib, ``BASE_BYTES``;
- ``training``: ``B T (2.5 D f + 8 N)`` for the ``B T`` steps of an iteration (phi,
  bar_phi and the actor features);
- ``critic probes``: ``2.5 g T_c D f + 9 * 8 D^2`` for the feature blocks of ``g`` chains
  of length ``T_c`` alive together (``g = min(threads, chains)``) and the float64 ``A``,
  its halves and factorizations;
- ``probe rollouts``: ``1 KiB`` per step of every probe chain.

Disk: the learning curves and log (``CURVE_ROW_BYTES`` per iteration), ``checkpoint_keep``
checkpoints, per probe round the TD-error kernel (``8 max_horizon^2``), the ratio
histogram (``8 rho_audit.batch_size``) and the tables, and the report.

The constants were fitted to the peak resident memory of one-iteration runs of the shipped
configs; ``tests/test_budget.py`` checks the estimate lies within 2x of the measured peak.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tdlens.config import RunConfig

MIB = 1024**2
BASE_BYTES = 240 * MIB
CURVE_ROW_BYTES = 1700
ROUND_TABLE_BYTES = 16 * 1024
REPORT_BYTES = 8 * MIB
"""run_report.md/.json/.html: the page embeds plotly.js (~4.6 MiB) once, plus its figures."""


class ResourceError(ValueError):
    """The run would need more memory or disk than the machine has (message says which)."""


TERM_KEYS: dict[str, tuple[str, ...]] = {
    "base": (),
    "training": ("trajectories", "horizon", "env.feature_dim", "env.actor_feature_dim"),
    "critic probes": (
        "env.feature_dim",
        "probes.fixed_point.batch_size",
        "probes.stability.batch_size",
        "threads",
    ),
    "probe rollouts": (
        "probes.stability.batch_size",
        "probes.stability.k_mc",
        "probes.distribution.num_samples",
        "probes.rho_audit.batch_size",
    ),
}
"""The config keys that drive each memory term."""
DISK_KEYS = ("outer_iters", "probes.every", "probes.q_kernel.max_horizon", "checkpoint_keep")


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory (by term, bytes) and disk (bytes) of a run."""

    memory_terms: dict[str, int]
    disk_bytes: int

    @property
    def peak_bytes(self) -> int:
        return sum(self.memory_terms.values())

    @property
    def memory_keys(self) -> tuple[str, ...]:
        """Keys of the terms that make up at least a quarter of the peak, largest first."""
        big = sorted(
            (t for t, v in self.memory_terms.items() if v >= self.peak_bytes / 4),
            key=lambda t: -self.memory_terms[t],
        )
        return tuple(dict.fromkeys(k for t in big for k in TERM_KEYS[t]))


def _critic_chains(cfg: RunConfig) -> tuple[int, int]:
    """(chains, their longest length) of the fixed-point and stability probes."""
    probes = cfg.probes
    lengths = []
    if probes.fixed_point.enabled:
        lengths.append(probes.fixed_point.batch_size)
    if probes.stability.enabled:
        lengths += [probes.stability.batch_size] * probes.stability.k_mc
    return len(lengths), max(lengths, default=0)


def _probe_rounds(cfg: RunConfig) -> int:
    """An upper bound on the probe rounds of a run (scheduled, plateau and last)."""
    probes = cfg.probes
    if not probes.enabled:
        return 0
    rounds = 1 + (math.ceil(cfg.outer_iters / probes.every) if probes.every else 0)
    if probes.plateau.enabled:
        rounds += cfg.outer_iters // probes.plateau.cooldown
    return min(rounds, cfg.outer_iters)


def estimate(cfg: RunConfig) -> Estimate:
    """The memory and disk model of the module docstring, evaluated for `cfg`."""
    D, N = cfg.env.feature_dim, cfg.env.actor_feature_dim
    f = 4 if cfg.precision == "float32" else 8
    rows = cfg.trajectories * cfg.horizon
    terms = {"base": BASE_BYTES, "training": int(rows * (2.5 * D * f + 8 * N))}
    probes = cfg.probes
    if probes.enabled:
        chains, T_c = _critic_chains(cfg)
        if chains:
            g = min(cfg.threads or os.cpu_count() or 1, chains)
            terms["critic probes"] = int(2.5 * g * T_c * D * f + 9 * 8 * D * D)
        steps = chains * T_c
        if probes.distribution.enabled:
            steps += 3 * probes.distribution.num_samples
        if probes.rho_audit.enabled:
            steps += probes.rho_audit.batch_size
        terms["probe rollouts"] = 1024 * steps
    per_round = ROUND_TABLE_BYTES
    if probes.q_kernel.enabled:
        per_round += 8 * probes.q_kernel.max_horizon**2
    if probes.rho_audit.enabled:
        per_round += 8 * probes.rho_audit.batch_size
    checkpoint = 8 * (2 * D + 4 * N + cfg.outer_iters) + 4096
    disk = (
        cfg.outer_iters * CURVE_ROW_BYTES
        + _probe_rounds(cfg) * per_round
        + cfg.checkpoint_keep * checkpoint
        + REPORT_BYTES
    )
    return Estimate(terms, disk)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def human(n: float) -> str:
    """Bytes as KiB/MiB/GiB/TiB with three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def check_resources(
    cfg: RunConfig,
    run_dir: Path,
    memory: int | None = None,
    disk: int | None = None,
) -> Estimate:
    """Raise :class:`ResourceError` when the estimate exceeds the memory or disk at hand.

    `memory` and `disk` default to what the machine reports now (unknown: not checked).
    """
    est = estimate(cfg)
    memory = available_memory() if memory is None else memory
    disk = free_disk(run_dir) if disk is None else disk
    if memory is not None and est.peak_bytes > memory:
        parts = ", ".join(f"{k} {human(v)}" for k, v in est.memory_terms.items() if v)
        raise ResourceError(
            f"this run needs about {human(est.peak_bytes)} of memory ({parts}) but "
            f"{human(memory)} is available; lower {', '.join(est.memory_keys)}, "
            "or pass --force to try anyway"
        )
    if disk is not None and est.disk_bytes > disk:
        raise ResourceError(
            f"this run writes about {human(est.disk_bytes)} but '{run_dir}' has "
            f"{human(disk)} free; lower {', '.join(DISK_KEYS)}, free some space, "
            "or pass --force to try anyway"
        )
    return est
