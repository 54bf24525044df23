"""Shared pieces of the probes (docs/model.md §6): streams, batched probe rollouts, rho summary.

A probe batch is drawn under the frozen mu in one of two ways (docs/model.md §6, ``sampling``):
``trainer`` (the default of the fixed-point and stability probes) draws it as the trainer
does, ``m = max(2, batch_size // horizon)`` trajectories of ``horizon`` steps from reset,
so its A, b and critical step are those of the update the trainer applies;
``stationary`` is ONE continuing chain of ``batch_size`` steps. A :class:`ChainSpec` with
``trajectories = m >= 1`` is such a group of m trajectories (m columns of the rollout),
``trajectories = 0`` a continuing chain. Shapes below are ``[T, B, ...]`` for paths
(time-major, as in :mod:`tdlens.rollout`) and ``[B, T, ...]`` for TD batches.

Streams. Chain ``c`` of probe stream ``name`` draws from ``stream(seed, name, key0, c)``
(trajectory ``j`` of a trainer-style batch ``c`` from ``stream(seed, name, key0, c, j)``)
with ``key0 = 0`` under common random numbers (the default: a probe's draws depend on the
run seed, the probe and the chain only) and ``key0 = n + 1`` without (fresh draws at
every iteration ``n``). Auxiliary draws of a probe (power-iteration and ARPACK start
vectors, Monte Carlo actions, MMD subsamples and permutations, the spectral bootstrap)
use chain indices from ``AUX_CHAIN`` upwards, so they never collide with a chain's
environment noise.

Rollouts. The rollout is sequential in t and costs about the same for 1 or 13 chains, so
the chains a probe round needs are rolled out in one :func:`tdlens.rollout.roll_out` call
per distinct length T, with per-chain policies (the trainer-style trajectories of
``horizon`` steps are never padded to the long chains; a chain's path depends only on
its own noise). The rollout records the means of mu and pi at every state
instead of keeping the actor features (what the probes use of psi: 4 numbers per state
instead of N). Features are built later per chain group with
:meth:`RolledChains.td_batch`, so memory stays bounded. A round draws no next-action
normals for the chains whose bar_phi nobody forms from Monte Carlo draws
(:func:`without_next_draws`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tdlens.config import FixedPointConfig, RunConfig, StabilityConfig
from tdlens.features import FeatureMaps, Workspace
from tdlens.learner import Params
from tdlens.probes.td_features import DifferenceBatch, difference_batch
from tdlens.rollout import (
    SPLIT_COLUMNS,
    ChainNoise,
    Paths,
    TDBatch,
    concat_paths,
    draw_noise,
    roll_out,
    td_batch,
)
from tdlens.schema import BATCH_RHO_COLUMNS
from tdlens.seeding import stream
from tdlens.threads import parallel_map

AUX_CHAIN = 1_000_000
"""First chain index used for a probe's auxiliary (non-environment) draws."""

RHO_COLUMNS = (*BATCH_RHO_COLUMNS, "rho_clipped_fraction")


def stream_key(cfg: RunConfig, n: int) -> int:
    """``key0`` of iteration `n`: 0 with common random numbers, else ``n + 1``."""
    return 0 if cfg.probes.common_random_numbers else n + 1


def probe_rng(cfg: RunConfig, name: str, n: int, chain: int) -> np.random.Generator:
    """Generator of chain `chain` of probe stream `name` at iteration `n`."""
    return stream(cfg.seed, name, stream_key(cfg, n), chain)


def aux_rng(cfg: RunConfig, name: str, n: int, purpose: int) -> np.random.Generator:
    """Generator for auxiliary draw `purpose` (0, 1, ...) of probe stream `name`."""
    return probe_rng(cfg, name, n, AUX_CHAIN + purpose)


def rho_summary(rho_t: np.ndarray, rho_raw_t: np.ndarray, rho_clip: float | None) -> dict:
    """The docs/model.md §6 rho columns of a probe batch, over all of its steps.

    ``rho_t`` is the ratio the update uses (clipped), ``rho_raw_t`` the unclipped one, both
    of any shape. rho_clip is NaN when no clip is configured; rho_clip_active is 1 when a
    clip is configured (as the seed reports it); rho_clipped_fraction is the fraction of
    steps whose raw ratio exceeds the clip.
    """
    rho = np.asarray(rho_t, dtype=np.float64).reshape(-1)
    raw = np.asarray(rho_raw_t, dtype=np.float64).reshape(-1)
    p95, p99 = np.percentile(rho, [95.0, 99.0])
    active = rho_clip is not None
    return {
        "rho_mean": float(rho.mean()),
        "rho2_mean": float(np.mean(rho**2)),
        "rho_min": float(rho.min()),
        "rho_max": float(rho.max()),
        "rho_p95": float(p95),
        "rho_p99": float(p99),
        "rho_clip": float(rho_clip) if active else float("nan"),
        "rho_clip_active": float(active),
        "rho_clipped_fraction": float(np.mean(raw > rho_clip)) if active else 0.0,
    }


@dataclass(frozen=True)
class ChainSpec:
    """One probe batch: stream name, chain index, length T and the policy it follows;
    ``trajectories = 0``: one continuing chain of T steps, ``m >= 1``: m trajectories of T
    steps from reset (trainer-style sampling, m rollout columns)."""

    stream: str
    chain: int
    T: int
    policy: Literal["mu", "pi"] = "mu"
    trajectories: int = 0

    @property
    def columns(self) -> int:
        """Rollout columns of the batch: ``max(1, trajectories)``."""
        return max(1, self.trajectories)

    @property
    def samples(self) -> int:
        """Steps in the batch: ``columns T``."""
        return self.columns * self.T

    def rngs(self, cfg: RunConfig, n: int) -> list[np.random.Generator]:
        """One generator per column: the chain's, or trajectory j's ``(..., chain, j)``."""
        if self.trajectories == 0:
            return [probe_rng(cfg, self.stream, n, self.chain)]
        key0 = stream_key(cfg, n)
        return [stream(cfg.seed, self.stream, key0, self.chain, j) for j in range(self.columns)]


@dataclass(frozen=True)
class RolledGroup:
    """Paths and noise of the probe chains of one length T, rolled out together."""

    specs: tuple[ChainSpec, ...]
    paths: Paths  # [T(+1), columns, ...]
    noise: ChainNoise
    sigma_mu: np.ndarray  # [columns] behaviour sigma per column

    def index(self, spec: ChainSpec) -> int:
        """First rollout column of `spec` in this group."""
        i = self.specs.index(spec)
        return sum(s.columns for s in self.specs[:i])


@dataclass(frozen=True)
class RolledChains:
    """Every probe chain of a round, rolled out in one call per chain length (so the
    trainer-style trajectories of ``horizon`` steps are not padded to the long chains)."""

    groups: tuple[RolledGroup, ...]

    @property
    def specs(self) -> tuple[ChainSpec, ...]:
        return tuple(s for g in self.groups for s in g.specs)

    def group(self, spec: ChainSpec) -> RolledGroup:
        return next(g for g in self.groups if spec in g.specs)

    def index(self, spec: ChainSpec) -> int:
        """First rollout column of `spec` within its group."""
        return self.group(spec).index(spec)

    def columns(self, spec: ChainSpec) -> slice:
        """Rollout columns of `spec` within its group."""
        i = self.index(spec)
        return slice(i, i + spec.columns)

    def chain_paths(self, spec: ChainSpec) -> Paths:
        """Paths of one batch truncated to its length, ``[T(+1), columns, ...]``."""
        return truncate_paths(self.group(spec).paths.take(self.columns(spec)), spec.T)

    def td_batch(
        self,
        cfg: RunConfig,
        maps: FeatureMaps,
        specs: Sequence[ChainSpec],
        theta_pi: np.ndarray,
        with_features: bool = True,
        workspace: Workspace | None = None,
    ) -> TDBatch:
        """TD batch ``[sum of columns, T, ...]`` of batches that share one length T, their
        columns in the order of `specs` (see :func:`batch_slices`)."""
        group, chains, T = self._shared_length(specs)
        paths = truncate_paths(group.paths.take(chains), T)
        noise = truncate_noise(group.noise.take(chains), T)
        return td_batch(
            cfg, maps, paths, noise, theta_pi, group.sigma_mu[chains], with_features, workspace
        )

    def difference_batch(
        self,
        cfg: RunConfig,
        maps: FeatureMaps,
        specs: Sequence[ChainSpec],
        theta_pi: np.ndarray,
        workspace: Workspace | None = None,
        rewards: bool = True,
    ) -> DifferenceBatch:
        """What the critic probes read of batches that share one length T (``phi, dphi``,
        r and the ratios, :func:`tdlens.probes.td_features.difference_batch`), columns as
        in :meth:`td_batch`: its phi, r (NaN unless `rewards`) and ratios, and ``dphi =
        phi - gamma bar_phi``."""
        group, chains, T = self._shared_length(specs)
        paths = truncate_paths(group.paths.take(chains), T)
        noise = truncate_noise(group.noise.take(chains), T)
        return difference_batch(
            cfg, maps, paths, noise, theta_pi, group.sigma_mu[chains], workspace, rewards
        )

    def _shared_length(
        self, specs: Sequence[ChainSpec]
    ) -> tuple[RolledGroup, slice | list[int], int]:
        """The group of `specs`, their rollout columns in order (a slice when contiguous)
        and their common length T."""
        lengths = {s.T for s in specs}
        if len(lengths) != 1:
            raise ValueError(f"chains of one TD batch must share T, got {sorted(lengths)}")
        group = self.group(specs[0])
        idx = [i for s in specs for i in range(group.index(s), group.index(s) + s.columns)]
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        return group, slice(idx[0], idx[0] + len(idx)) if contiguous else idx, lengths.pop()


def batch_slices(specs: Sequence[ChainSpec]) -> list[slice]:
    """Columns of each spec in :meth:`RolledChains.td_batch` of `specs`."""
    out, start = [], 0
    for spec in specs:
        out.append(slice(start, start + spec.columns))
        start += spec.columns
    return out


def truncate_paths(paths: Paths, T: int) -> Paths:
    """The first T steps (T + 1 states) of time-major paths."""
    return Paths(
        o=paths.o[: T + 1],
        psi=None if paths.psi is None else paths.psi[: T + 1],
        m_mu=paths.m_mu[:T],
        u=paths.u[:T],
        a=paths.a[:T],
        a_unclipped=paths.a_unclipped[:T],
        theta_eval=paths.theta_eval,
        m_eval=None if paths.m_eval is None else paths.m_eval[: T + 1],
    )


def truncate_noise(noise: ChainNoise, T: int) -> ChainNoise:
    """The first T steps of time-major chain noise."""
    return ChainNoise(
        reset=noise.reset,
        z_act=noise.z_act[:T],
        z_env=noise.z_env[:T],
        u_env=noise.u_env[:T],
        z_next=noise.z_next[:T],
    )


def _concat_noise(parts: Sequence[ChainNoise]) -> ChainNoise:
    return ChainNoise(
        reset=np.concatenate([p.reset for p in parts], axis=0),
        z_act=np.concatenate([p.z_act for p in parts], axis=1),
        z_env=np.concatenate([p.z_env for p in parts], axis=1),
        u_env=np.concatenate([p.u_env for p in parts], axis=1),
        z_next=np.concatenate([p.z_next for p in parts], axis=1),
    )


class NoiseStore:
    """The Generators of a run's probe chains, kept from one round to the next and rewound
    to their start before each use: under common random numbers (``key0 = 0`` at every
    iteration, the default) a round draws the previous round's noise again, and creating
    its Generators (one SeedSequence and PCG64 per trajectory, 160 at the seed settings)
    cost ~10 ms of serial CPU a round; without them (``key0 = n + 1``) a chain's
    Generators are created afresh and replace the kept ones. Holds the Generators and
    their start states (a few hundred bytes each), not the noise: the noise kept between
    rounds (12.6 MiB at the seed settings) raised the seed run's peak RSS by ~8 MiB. One
    store serves one run config."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self._kept: dict[ChainSpec, tuple[int, list[np.random.Generator], list[dict]]] = {}

    def rngs(self, spec: ChainSpec, n: int) -> list[np.random.Generator]:
        """:meth:`ChainSpec.rngs` of `spec` at iteration `n`, each at its start state."""
        key0 = stream_key(self.cfg, n)
        kept = self._kept.get(spec)
        if kept is None or kept[0] != key0:
            rngs = spec.rngs(self.cfg, n)
            kept = self._kept[spec] = (key0, rngs, [r.bit_generator.state for r in rngs])
        for rng, state in zip(kept[1], kept[2], strict=True):
            rng.bit_generator.state = state
        return kept[1]

    def noise(self, specs: tuple[ChainSpec, ...], n: int) -> ChainNoise:
        """The noise of the chains `specs` (one length T) at iteration `n`: that of
        :func:`draw_group_noise`, bit for bit."""
        return _concat_noise([draw_noise(self.rngs(s, n), s.T, self.cfg) for s in specs])


def column_rngs(
    cfg: RunConfig, specs: Sequence[ChainSpec], n: int, store: NoiseStore | None = None
) -> list[np.random.Generator]:
    """One generator per rollout column of `specs` (in order, each at its start state):
    :meth:`ChainSpec.rngs`, or `store`'s. ``draw_noise`` of any run of them is those
    columns of :func:`draw_group_noise`, bit for bit (each column draws from its own)."""
    return [rng for s in specs for rng in (s.rngs(cfg, n) if store is None else store.rngs(s, n))]


def draw_group_noise(cfg: RunConfig, specs: Sequence[ChainSpec], n: int) -> ChainNoise:
    """Noise of chains of one length T, side by side in the order of `specs`, each drawn
    from :meth:`ChainSpec.rngs` for its own length (so it does not depend on which other
    chains share the group)."""
    return _concat_noise([draw_noise(s.rngs(cfg, n), s.T, cfg) for s in specs])


STEP_COST_COLUMNS = 6
"""A rollout step's fixed cost (the per-step NumPy and kernel calls, ~7 us at the seed
settings) in units of one column's (~1.3 us): how :func:`roll_chains` weighs a long
chain of few columns against a short batch of many."""


def roll_chains(
    cfg: RunConfig,
    maps: FeatureMaps,
    params: Params,
    specs: Sequence[ChainSpec],
    n: int,
    store: NoiseStore | None = None,
    undrawn: Collection[ChainSpec] = (),
) -> RolledChains:
    """Roll out every chain of `specs`, one :func:`tdlens.rollout.roll_out` per distinct
    length T (or per part of one, below), each chain under its own policy.

    Chain noise comes from :meth:`ChainSpec.rngs` (one generator per column), drawn for
    its own length T (so it does not depend on which other chains share the call), or
    from `store` (the same numbers, its Generators kept from an earlier round,
    :class:`NoiseStore`); each part of the roll-outs below draws its own columns' noise
    (:func:`column_rngs`), beside the other parts instead of before all of them.
    Each group records the means of pi at every state, and of mu where a chain acts
    under pi (:func:`_recorded_means`). The roll-outs run on ``maps.threads`` threads
    side by side, longest first (about ``T (STEP_COST_COLUMNS + columns)``): a group of
    many columns split into contiguous parts of at least ``SPLIT_COLUMNS`` (as
    :func:`tdlens.rollout.roll_out_threads`), the long chains of few columns (the
    distribution's rho chain, the rho audit, 4096 steps each at the seed settings)
    beside it instead of after it. A chain's path depends only
    on its own noise and policy, so the paths are those of one call per group, bit for
    bit, whatever the threads. The chains in `undrawn` (a round's: :func:`without_next_draws`)
    draw no next-action normals: their ``z_next`` is NaN, the rest of their noise the
    same numbers (:func:`tdlens.rollout.draw_noise`).
    """
    specs = tuple(specs)
    if len(set(specs)) != len(specs):
        raise ValueError("duplicate chain specs")
    if store is not None and store.cfg is not cfg:
        raise ValueError("the noise store belongs to another run config")
    by_length: dict[int, list[ChainSpec]] = {}
    for spec in specs:
        by_length.setdefault(spec.T, []).append(spec)
    groups = [tuple(g) for g in by_length.values()]
    rngs = [column_rngs(cfg, g, n, store) for g in groups]
    undrawn = set(undrawn)
    next_draws = [[s not in undrawn for s in g for _ in range(s.columns)] for g in groups]
    policies = [_group_policies(cfg, params, g) for g in groups]
    evals = [_recorded_means(params, g) for g in groups]
    tasks = [
        (i, cols.start, cols.stop)
        for i, g in enumerate(groups)
        for cols in _column_parts(sum(s.columns for s in g), maps.threads)
    ]
    tasks.sort(key=lambda t: -groups[t[0]][0].T * (STEP_COST_COLUMNS + t[2] - t[1]))

    def roll(task: tuple[int, int, int]) -> tuple[Paths, ChainNoise]:
        i, cols = task[0], slice(task[1], task[2])
        theta_mu, sigma_mu = policies[i]
        theta = theta_mu[cols] if theta_mu.ndim == 3 else theta_mu
        noise = draw_noise(rngs[i][cols], groups[i][0].T, cfg, next_draws[i][cols])
        return roll_out(cfg, maps, theta, sigma_mu[cols], noise, evals[i], keep_psi=False), noise

    done = dict(zip(tasks, parallel_map(roll, tasks, maps.threads), strict=True))
    rolled = []
    for i, g in enumerate(groups):
        paths, noises = zip(*(done[t] for t in sorted(t for t in done if t[0] == i)), strict=True)
        group_paths = paths[0] if len(paths) == 1 else concat_paths(list(paths))
        noise = noises[0] if len(noises) == 1 else _concat_noise(noises)
        rolled.append(RolledGroup(g, group_paths, noise, policies[i][1]))
    return RolledChains(tuple(rolled))


def without_next_draws(cfg: RunConfig) -> set[ChainSpec]:
    """The chains of the round plan (:func:`plan_chains`) whose next-action normals
    ``z_next`` no probe reads, so a round's :func:`roll_chains` does not draw them: all of them
    when the trainer's bar_phi is exact (so is the probes'); else the distribution's
    and the rho audit's chains (never featurised) and, when the probes take bar_phi in
    closed form (``cfg.probe_bar_phi``), the stability batches but the fixed-point one
    (whose draws give the trainer's TD errors, :func:`tdlens.probes.critic.
    trainer_td_errors`). Any other chain draws them."""
    plan = plan_chains(cfg)
    if cfg.bar_phi != "mc":
        return set(plan.specs())
    undrawn = {*plan.distribution, *([plan.audit] if plan.audit is not None else [])}
    if cfg.probe_bar_phi != "mc":
        undrawn |= set(plan.stability) - {plan.fixed}
    return undrawn


def _column_parts(columns: int, threads: int) -> list[slice]:
    """Contiguous parts of a group's columns: up to `threads`, each of at least
    ``SPLIT_COLUMNS`` (:func:`tdlens.rollout.roll_out_threads`' rule)."""
    parts = max(1, min(threads, columns // SPLIT_COLUMNS))
    bounds = np.linspace(0, columns, parts + 1).astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]


def _recorded_means(params: Params, specs: tuple[ChainSpec, ...]) -> np.ndarray:
    """The policies whose means a group's roll-out records at every state (``theta_eval
    [E, N, 2]``, :meth:`tdlens.rollout.Paths.mean_under`): pi's, and mu's when a chain
    of the group acts under pi. A chain acting under mu has mu's means already (its
    ``m_mu``, the same bits), so a group of such chains records pi's alone (a third of a
    step's policy dot products fewer); its ``mean_under(theta_mu)`` then raises."""
    if any(s.policy == "pi" for s in specs):
        return np.stack([params.theta_mu, params.theta_pi])
    return params.theta_pi[None]


def _group_policies(
    cfg: RunConfig, params: Params, specs: tuple[ChainSpec, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour of a group's columns: ``theta [N, 2]`` shared (all under mu) or ``[B, N,
    2]``, and ``sigma [B]``."""
    on_pi = np.array([s.policy == "pi" for s in specs for _ in range(s.columns)])
    sigma_mu = np.where(on_pi, cfg.sigma_pi, cfg.sigma_mu).astype(np.float64)
    if on_pi.any():
        theta_mu = np.stack([params.theta_pi if p else params.theta_mu for p in on_pi])
    else:
        theta_mu = params.theta_mu
    return theta_mu, sigma_mu


@dataclass(frozen=True)
class RoundPlan:
    """The chains of one probe round (None / empty for disabled probes).

    When fixed point and stability are both enabled with equal batch sizes, stability
    batch 0 IS the fixed-point chain (``shared``); otherwise it is probe_stability chain 0.
    """

    fixed: ChainSpec | None
    stability: tuple[ChainSpec, ...]
    distribution: tuple[ChainSpec, ...]
    audit: ChainSpec | None

    @property
    def shared(self) -> bool:
        return self.fixed is not None and bool(self.stability) and self.stability[0] == self.fixed

    def specs(self) -> list[ChainSpec]:
        """Every distinct chain of the round, in roll-out order."""
        chains = [self.fixed, *self.stability, *self.distribution, self.audit]
        return list(dict.fromkeys(c for c in chains if c is not None))


def plan_chains(cfg: RunConfig) -> RoundPlan:
    """Which chains a round needs: fixed point (1), stability (k_mc), distribution
    (``chains`` under mu, ``chains`` under pi, one under mu for rho), rho audit (1)."""
    probes = cfg.probes
    fixed = None
    if probes.fixed_point.enabled:
        fixed = critic_batch(cfg, "probe_fixed_point", 0, probes.fixed_point)
    stability: list[ChainSpec] = []
    if probes.stability.enabled:
        first = critic_batch(cfg, "probe_stability", 0, probes.stability)
        shared = fixed is not None and (fixed.T, fixed.trajectories) == (
            first.T,
            first.trajectories,
        )
        stability = [fixed if shared else first]
        stability += [
            critic_batch(cfg, "probe_stability", k, probes.stability)
            for k in range(1, probes.stability.k_mc)
        ]
    distribution: tuple[ChainSpec, ...] = ()
    if probes.distribution.enabled:
        T, C = probes.distribution.num_samples, probes.distribution.chains
        T_c = -(-T // C)
        policies = ("mu",) * C + ("pi",) * C
        distribution = (
            *(ChainSpec("probe_distribution", c, T_c, p) for c, p in enumerate(policies)),
            ChainSpec("probe_distribution", 2 * C, T, "mu"),
        )
    audit = None
    if probes.rho_audit.enabled:
        audit = ChainSpec("probe_rho_audit", 0, probes.rho_audit.batch_size)
    return RoundPlan(fixed, tuple(stability), distribution, audit)


def trainer_trajectories(cfg: RunConfig, batch_size: int) -> int:
    """m = ``max(2, batch_size // horizon)`` trajectories of a trainer-style probe batch."""
    return max(2, batch_size // cfg.horizon)


def critic_batch(
    cfg: RunConfig, name: str, chain: int, conf: FixedPointConfig | StabilityConfig
) -> ChainSpec:
    """The fixed-point or stability batch `chain` under ``conf.sampling`` (module docstring)."""
    if conf.sampling == "trainer":
        m = trainer_trajectories(cfg, conf.batch_size)
        return ChainSpec(name, chain, cfg.horizon, trajectories=m)
    return ChainSpec(name, chain, conf.batch_size)


def fixed_point_chains(cfg: RunConfig) -> ChainSpec | None:
    """The fixed-point probe's chain (registry ``chains``)."""
    return plan_chains(cfg).fixed


def stability_chains(cfg: RunConfig) -> tuple[ChainSpec, ...]:
    """The stability probe's k_mc chains (the first may be the fixed-point chain)."""
    return plan_chains(cfg).stability


def distribution_chains(cfg: RunConfig) -> tuple[ChainSpec, ...]:
    """The distribution probe's chains: ``chains`` under mu, ``chains`` under pi (each
    ``ceil(num_samples / chains)`` steps), then one of num_samples steps under mu (for its
    rho summary)."""
    return plan_chains(cfg).distribution


def audit_chains(cfg: RunConfig) -> ChainSpec | None:
    """The rho audit's chain."""
    return plan_chains(cfg).audit
