"""Memory and disk a run will need, estimated from its config before anything is allocated.

A run whose estimated peak memory exceeds the machine's available memory, or whose outputs
exceed the free disk, is refused (``tdlens run --force`` overrides), naming the keys that
drive the estimate. The model sums the large arrays of each phase (bytes; ``f`` = 4 for
float32 features, 8 for float64; ``D`` = env.feature_dim, ``N`` = env.actor_feature_dim);
the peak is ``base`` plus the larger of the training iteration and a probe round, which
releases the iteration's features first (:meth:`tdlens.runs.runner.Runner._maybe_probe`)
and keeps nothing from one round to the next:

- ``base``: the interpreter with NumPy, SciPy and Numba, ``BASE_BYTES``;
- ``training``: ``B T (D f + 8 N) + t T D f`` for the ``B T`` steps of an iteration
  (phi and the actor features) and the ``[T, D]`` bar_phi of the chain each of the ``t``
  threads is on (the runner's iteration keeps no ``[B, T, D]`` bar_phi:
  :func:`tdlens.learner.outer_iteration`, ``keep_bar_phi``);
- ``critic probes``: the larger of their two stages (:mod:`tdlens.probes.critic`), with
  ``n`` the samples of a batch (``m horizon`` for ``m`` trainer-style trajectories):

  - the chain whose A is formed, its features alone: ``2 n D f`` (phi, dphi) and
    ``24 D^2`` (float64 A and its halves), plus the larger of the float32 copy of A
    (``4 D^2``) and, for the fixed-point batch, its float32 LU factors, at most three
    alive (``12 D^2``);
  - the matrix-free stability chains, ``g = min(threads, k_mc - 1)`` at a time:
    ``2 g n D f``;
- ``probe rollouts``: ``ROLLOUT_STEP_BYTES`` per step of every probe chain.

Disk: the learning curves and log (``CURVE_ROW_BYTES`` per iteration), ``checkpoint_keep``
checkpoints (a finished sweep run keeps its final one), per probe round the TD-error
kernel's factor (``8 B_c T_c``, ``B_c = min(cache_batch_size, trajectories)``, ``T_c =
min(max_horizon, horizon)``) and lag profile (``8 T_c``), the raw-rho sample
(``4 rho_audit.batch_size``: float16 or float32 once a newer round is saved, plus 4 more
for the newest, float64), the expected dynamics (at most ``EXPECTED_ROW_BYTES`` per
iteration left) and the tables, and the report: ``run_report.md/.json``
(``REPORT_TEXT_BYTES`` plus ``REPORT_ROUND_BYTES`` a round) and, for a run that writes its
HTML page (not a sweep run), ``REPORT_HTML_BYTES``.

A finished sweep run is compacted (:mod:`tdlens.sweeps.compact`; ``compact=True``): its
learning curves gzip-compressed, with the log, ``COMPACT_CURVE_ROW_BYTES`` per iteration;
per round only the probe tables' CSVs and ``rounds.csv/.jsonl``, gzip-compressed
(``COMPACT_TABLE_BYTES``),
the q_kernel CV of an older round and a later round's expected-dynamics rows
(``COMPACT_EXPECTED_BYTES``); once, the newest TD-error kernel factor and lag profile, the
newest raw-rho sample (float64, ``8 rho_audit.batch_size``), the first round's expected
dynamics (``EXPECTED_ROW_BYTES`` per iteration) and the compressed final checkpoint.

Time (:func:`expected_seconds`, for ``tdlens sweep --dry-run``): ``STARTUP_S`` once per
worker (imports and Numba's compile), ``TRAIN_S * B T (D + N)`` per iteration and per probe
round ``FIXED_POINT_S * D^3`` (the dense solves) plus ``CHAIN_S * D`` per probe chain step,
fitted to a Step-C run (plateau, D = 2048: 0.054 s an iteration, 2.1 s a round, 57 s in
all) on the 2-core AMD EPYC machine of BENCHMARKS.md; a guide within about 2x.

The constants were fitted to the peak resident memory of one-iteration runs of the shipped
configs (BENCHMARKS.md, "Memory and disk estimate against measured peaks", refitted in
"Issue 28, session 9");
``tests/test_budget.py`` checks the estimate against the measured peak of each within
``RATIO_BAND``.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tdlens.config import RunConfig
from tdlens.probes.common import plan_chains

MIB = 1024**2
BASE_BYTES = 220 * MIB
ROLLOUT_STEP_BYTES = 640
"""A probe chain's rollout, per step (paths, noise, the policies' means)."""
RATIO_BAND = (0.85, 1.15)
"""Estimate / measured peak of the shipped configs' one-iteration runs that
tests/test_budget.py accepts, give or take FILE_PAGES_SLACK (measured 0.88-1.14 on the
2-core AMD EPYC of BENCHMARKS.md, "Issue 28, session 9", with BASE_BYTES = 220 MiB: the
base holds LLVM's ~50 MiB of code pages, which Numba maps while it loads the kernels)."""
FILE_PAGES_SLACK = 64 * MIB
"""How far the libraries' file-backed resident pages (part of any measured peak RSS) vary
between installs of the same code: a new virtual environment's process held 173 MiB of
them against 118 MiB for an older one's, same code and config (sanity: peak 291 against
235 MiB; most likely the page cache's larger folios for freshly written files)."""
CURVE_ROW_BYTES = 1000
ROUND_TABLE_BYTES = 10 * 1024
REPORT_HTML_BYTES = 8 * MIB
"""run_report.html: the page embeds plotly.js (~4.6 MiB) once, plus its figures."""
REPORT_TEXT_BYTES = 96 * 1024
"""run_report.md and .json without rounds (measured 69 KB on a 2-round demo run)."""
REPORT_ROUND_BYTES = 2 * 1024
"""What each probe round adds to run_report.md/.json (measured ~1.3 KB)."""
EXPECTED_ROW_BYTES = 48
"""expected_dynamics_<iter>.npz: six float64 series over the iterations left, compressed
(counted over all iterations: an upper bound)."""
COMPACT_CURVE_ROW_BYTES = 400
"""A compacted run's learning-curve row (gzip-compressed) and its stdout.log line (measured
~236 + ~88 B at the Step-C settings)."""
COMPACT_TABLE_BYTES = 1536
"""A compacted round's probe table CSV rows and rounds.csv/.jsonl, gzip-compressed
(measured ~0.93 KB at the Step-C settings; 2.9 KB uncompressed)."""
COMPACT_EXPECTED_BYTES = 2 * 1024
"""A later round's trimmed expected_dynamics_<iter>.npz plus its q_kernel CV (measured
~1.1 KB)."""
STARTUP_S = 5.0
TRAIN_S = 7e-9
FIXED_POINT_S = 1.5e-10
CHAIN_S = 1e-8


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
        """``base`` plus the larger of ``training`` and a probe round's terms."""
        terms = self.memory_terms
        probes = sum(v for t, v in terms.items() if t not in ("base", "training"))
        return terms.get("base", 0) + max(terms.get("training", 0), probes)

    @property
    def memory_keys(self) -> tuple[str, ...]:
        """Keys of the terms that make up at least a quarter of the peak, largest first."""
        big = sorted(
            (t for t, v in self.memory_terms.items() if v >= self.peak_bytes / 4),
            key=lambda t: -self.memory_terms[t],
        )
        return tuple(dict.fromkeys(k for t in big for k in TERM_KEYS[t]))


def critic_bytes(cfg: RunConfig, f: int) -> int:
    """The ``critic probes`` term of the module docstring (0 when neither probe runs)."""
    plan = plan_chains(cfg)
    D = cfg.env.feature_dim
    stages = []
    explicit = [c for c in (plan.fixed, *plan.stability[:1]) if c is not None]
    for spec in dict.fromkeys(explicit):
        extra = 12 * D * D if spec == plan.fixed else 4 * D * D
        stages.append(2 * spec.samples * D * f + 24 * D * D + extra)
    free = plan.stability[1:]
    if free:
        g = min(cfg.threads or os.cpu_count() or 1, len(free))
        stages.append(2 * g * free[0].samples * D * f)
    return max(stages, default=0)


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
        # a plateau round needs `cooldown` iterations since any round: between two
        # scheduled rounds `every` apart, at most (every - 1) // cooldown of them
        cooldown = probes.plateau.cooldown
        if probes.every:
            gaps = math.ceil(cfg.outer_iters / probes.every)
            rounds += gaps * ((probes.every - 1) // cooldown)
        else:
            rounds += cfg.outer_iters // cooldown
    return min(rounds, cfg.outer_iters)


def estimate(
    cfg: RunConfig, html: bool = True, checkpoints: int | None = None, compact: bool = False
) -> Estimate:
    """The memory and disk model of the module docstring, evaluated for `cfg`: a run that
    writes its HTML report when `html` (a sweep run does not), keeping `checkpoints`
    checkpoints (default ``checkpoint_keep``; a finished sweep run keeps 1), compacted
    when `compact` (a finished sweep run: :mod:`tdlens.sweeps.compact`)."""
    D, N = cfg.env.feature_dim, cfg.env.actor_feature_dim
    f = 4 if cfg.precision == "float32" else 8
    rows = cfg.trajectories * cfg.horizon
    chains_alive = min(cfg.trajectories, max(1, cfg.threads or os.cpu_count() or 1))
    training = rows * (D * f + 8 * N) + chains_alive * cfg.horizon * D * f
    terms = {"base": BASE_BYTES, "training": training}
    probes = cfg.probes
    if probes.enabled:
        chains, T_c = _critic_chains(cfg)
        if chains:
            terms["critic probes"] = critic_bytes(cfg, f)
        steps = chains * T_c
        if probes.distribution.enabled:
            steps += 3 * probes.distribution.num_samples
        if probes.rho_audit.enabled:
            steps += probes.rho_audit.batch_size
        terms["probe rollouts"] = ROLLOUT_STEP_BYTES * steps
    if compact:
        return Estimate(terms, _compact_disk(cfg, html))
    per_round = ROUND_TABLE_BYTES + REPORT_ROUND_BYTES
    if probes.q_kernel.enabled:
        T_c = min(probes.q_kernel.max_horizon, cfg.horizon)
        B_c = min(probes.q_kernel.cache_batch_size, cfg.trajectories)
        per_round += 8 * B_c * T_c + 8 * T_c
    newest = 0
    if probes.rho_audit.enabled:
        per_round += 4 * probes.rho_audit.batch_size
        newest += 4 * probes.rho_audit.batch_size
    if probes.fixed_point.enabled:
        per_round += EXPECTED_ROW_BYTES * cfg.outer_iters
    checkpoint = 8 * (2 * D + 4 * N + cfg.outer_iters) + 4096
    kept = cfg.checkpoint_keep if checkpoints is None else checkpoints
    disk = (
        cfg.outer_iters * CURVE_ROW_BYTES
        + _probe_rounds(cfg) * per_round
        + (newest if _probe_rounds(cfg) else 0)
        + min(kept, cfg.checkpoint_keep) * checkpoint
        + REPORT_TEXT_BYTES
        + (REPORT_HTML_BYTES if html else 0)
    )
    return Estimate(terms, disk)


def _compact_disk(cfg: RunConfig, html: bool) -> int:
    """Disk of a finished, compacted sweep run (module docstring): its final checkpoint
    (counted uncompressed, an upper bound) and per round the compacted remains."""
    probes = cfg.probes
    rounds = _probe_rounds(cfg)
    per_round = COMPACT_TABLE_BYTES + REPORT_ROUND_BYTES
    once = 0
    if rounds and probes.q_kernel.enabled:
        T_c = min(probes.q_kernel.max_horizon, cfg.horizon)
        B_c = min(probes.q_kernel.cache_batch_size, cfg.trajectories)
        once += 8 * B_c * T_c + 8 * T_c
    if rounds and probes.rho_audit.enabled:
        once += 8 * probes.rho_audit.batch_size
    if probes.fixed_point.enabled or probes.q_kernel.enabled:
        per_round += COMPACT_EXPECTED_BYTES
    if rounds and probes.fixed_point.enabled:
        once += EXPECTED_ROW_BYTES * cfg.outer_iters
    D, N = cfg.env.feature_dim, cfg.env.actor_feature_dim
    checkpoint = 8 * (2 * D + 4 * N + cfg.outer_iters) + 4096
    return (
        cfg.outer_iters * COMPACT_CURVE_ROW_BYTES
        + rounds * per_round
        + once
        + min(1, cfg.checkpoint_keep) * checkpoint
        + REPORT_TEXT_BYTES
        + (REPORT_HTML_BYTES if html else 0)
    )


def expected_seconds(cfg: RunConfig) -> float:
    """Compute seconds of one run (without ``STARTUP_S``): the time model of the module
    docstring, ``outer_iters TRAIN_S B T (D + N) + rounds (FIXED_POINT_S D^3 + CHAIN_S
    steps D)`` over the scheduled rounds (the last and every ``probes.every``-th; plateau
    rounds are extra, the disk model counts them as an upper bound)."""
    D, N = cfg.env.feature_dim, cfg.env.actor_feature_dim
    train = cfg.outer_iters * TRAIN_S * cfg.trajectories * cfg.horizon * (D + N)
    probes = cfg.probes
    if not probes.enabled:
        return train
    chains, T_c = _critic_chains(cfg)
    steps = chains * T_c
    if probes.distribution.enabled:
        steps += 3 * probes.distribution.num_samples
    if probes.rho_audit.enabled:
        steps += probes.rho_audit.batch_size
    per_round = CHAIN_S * steps * D + (FIXED_POINT_S * D**3 if probes.fixed_point.enabled else 0)
    scheduled = 1 + (math.ceil(cfg.outer_iters / probes.every) if probes.every else 0)
    return train + min(scheduled, cfg.outer_iters) * per_round


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


SUMMARY_BYTES = 6 * MIB
"""A sweep's summary.{csv,json,md,html} (the page embeds plotly.js once), plan and state."""


@dataclass(frozen=True)
class SweepEstimate:
    """Disk, memory and time of the runs a sweep will execute on `workers` workers."""

    runs: int
    workers: int
    disk_bytes: int
    """Every finished run (compacted: md/json report, its final checkpoint) plus the
    summary, plus the uncompacted extra (older checkpoints and arrays) of the runs in
    flight."""
    peak_bytes: int
    """The largest run's peak memory times the workers that run at once."""
    compute_seconds: float
    """Sum of :func:`expected_seconds` over the runs."""

    @property
    def wall_seconds(self) -> float:
        """``STARTUP_S`` plus the compute spread evenly over the workers."""
        return STARTUP_S + self.compute_seconds / max(self.workers, 1) if self.runs else 0.0


def estimate_sweep(cfgs: list[RunConfig], jobs: int) -> SweepEstimate:
    """The sweep-run model: a sweep run writes no HTML and, once final, keeps one
    checkpoint and is compacted (:func:`tdlens.sweeps.backends.execute_task`)."""
    workers = min(jobs, len(cfgs))
    final = [estimate(c, html=False, checkpoints=1, compact=True) for c in cfgs]
    pairs = zip(cfgs, final, strict=True)
    extra = [estimate(c, html=False).disk_bytes - f.disk_bytes for c, f in pairs]
    in_flight = max(extra, default=0)
    return SweepEstimate(
        runs=len(cfgs),
        workers=workers,
        disk_bytes=sum(f.disk_bytes for f in final) + workers * in_flight + SUMMARY_BYTES,
        peak_bytes=workers * max((f.peak_bytes for f in final), default=0),
        compute_seconds=sum(expected_seconds(c) for c in cfgs),
    )


def duration(seconds: float) -> str:
    """Seconds as ``42 s``, ``7.5 min``, ``3.2 h`` or ``1.4 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def check_sweep_resources(
    cfgs: list[RunConfig],
    jobs: int,
    sweep_dir: Path,
    memory: int | None = None,
    disk: int | None = None,
) -> SweepEstimate:
    """Raise :class:`ResourceError` when the sweep's runs (`jobs` at once) would need more
    memory, or write more, than the machine has; `memory` and `disk` default to what the
    machine reports now (unknown: not checked)."""
    est = estimate_sweep(cfgs, jobs)
    memory = available_memory() if memory is None else memory
    disk = free_disk(sweep_dir) if disk is None else disk
    if memory is not None and est.peak_bytes > memory:
        raise ResourceError(
            f"this sweep needs about {human(est.peak_bytes)} of memory ({est.workers} runs "
            f"at once) but {human(memory)} is available; lower --jobs or env.feature_dim, "
            "or pass --force to try anyway"
        )
    if disk is not None and est.disk_bytes > disk:
        raise ResourceError(
            f"this sweep writes about {human(est.disk_bytes)} ({est.runs} runs) but "
            f"'{sweep_dir}' has {human(disk)} free; lower {', '.join(DISK_KEYS)} or the "
            "grid, free some space, or pass --force to try anyway"
        )
    return est
