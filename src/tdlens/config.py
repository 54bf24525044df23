"""Typed, frozen run configuration (docs/model.md §4, §6, §13 and §15).

One :class:`RunConfig` describes a run completely; it is loaded from YAML (a SafeLoader
bounded in size, aliases and depth: :func:`safe_load_bounded`), patched with dotted
``--set key=value`` overrides, validated (every numeric key within its range, listed in
docs/model.md §13; nan nowhere), and saved resolved as ``config.json`` in the run
directory. One encoder (:func:`encode_config`, inf as ``"inf"``) serves config.json, the
config hash and run ids; keys added later leave old hashes unchanged (:data:`ADDED_LATER`).
Every validation error is turned into one :class:`ConfigError` whose message names the
offending key (with a did-you-mean suggestion for unknown keys) and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is allowed."""


SCALE_MAX = 1e6
"""Upper bound of every length, noise, scale and tolerance key: far beyond any meaningful
setting, low enough that squares and products of keys stay finite in float64 (``sigma_mu
= 1e308`` overflowed ``sigma_mu**2``)."""
STEP_MAX = 1e12
"""Upper bound of ``alpha_w`` and ``alpha_pi``: the shipped sweeps reach 1e4 (the atlas's
divergent corner) and 1e12 diverges within 4 iterations even at D = 64; far above it
(1e308, inf) the first update is float overflow, not a regime."""
COUNT_MAX = 2**31 - 1
"""Upper bound of every count (iterations, sizes, samples): a NumPy int32 index."""
DIM_MAX = 10**12
"""Upper bound of the feature dimensions: the memory budget (tdlens.runs.budget), not the
range, refuses a D the machine cannot hold, and with --force a D far past any address
space must fail as out of memory with a status (docs/faults.md)."""
SEED_MAX = 2**63 - 1
"""Upper bound of the seed (a non-negative int64)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


def _no_nan(value: float | None) -> float | None:
    """Refuse nan for the keys that accept inf (nan is no limit and no number)."""
    if value is not None and math.isnan(value):
        raise ValueError("nan is not allowed; inf means 'no limit'")
    return value


UnboundedFloat = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_no_nan)]
"""A float that may be ``inf`` (written ``inf`` in YAML and config.json), never nan."""


class EnvConfig(_Frozen):
    """Torus Goblet & Ghost and feature-map parameters (docs/model.md §1 and §2)."""

    torus_size: float = Field(1.0, gt=0, le=SCALE_MAX, description="side L of the torus")
    dt: float = Field(0.05, gt=0, le=1, description="time step")
    v_max: float = Field(0.4, gt=0, le=SCALE_MAX, description="action clip / squash bound")
    v_ghost: float = Field(0.3, ge=0, le=SCALE_MAX, description="ghost speed")
    sigma_env: float = Field(0.01, ge=0, le=SCALE_MAX, description="adventurer position noise std")
    sigma_ghost: float = Field(0.01, ge=0, le=SCALE_MAX, description="ghost position noise std")
    eps_catch: float = Field(0.05, ge=0, le=SCALE_MAX, description="catch radius")
    eps_pick: float = Field(0.04, ge=0, le=SCALE_MAX, description="goblet pick radius")
    num_goblets: int = Field(3, ge=1, le=COUNT_MAX, description="K goblets")
    p_mix: float = Field(0.05, ge=0, le=1, description="restart probability per step")
    p_type_positive: float = Field(0.5, ge=0, le=1, description="P(goblet type = +1)")
    type_resample_p: float = Field(0.5, ge=0, le=1, description="P(type redrawn on pick)")
    clip_action: bool = Field(False, description="clip actions to [-v_max, v_max] per axis")
    feature_dim: int = Field(128, ge=5, le=DIM_MAX, description="critic feature dimension D")
    actor_feature_dim: int = Field(32, ge=1, le=DIM_MAX, description="actor feature dimension N")
    c_psi: float = Field(1.0, gt=0, le=SCALE_MAX, description="norm bound of the actor features")
    feature_sigma: float = Field(
        1.0, gt=0, le=SCALE_MAX, description="std of the critic frequencies W_phi"
    )
    lambda_action_penalty: float = Field(
        0.1, ge=0, le=SCALE_MAX, description="teacher weight on ||a||^2"
    )
    teacher_base_scale: float = Field(
        0.05, ge=0, le=SCALE_MAX, description="std of the random teacher part"
    )


class PlateauConfig(_Frozen):
    """TD-loss plateau trigger (docs/model.md §6): slope within `tol` standard errors of zero."""

    enabled: bool = True
    window: int = Field(10, ge=3, le=COUNT_MAX)
    tol: float = Field(1.0, ge=0, le=SCALE_MAX)
    cooldown: int = Field(10, ge=1, le=COUNT_MAX)
    min_iter: int = Field(10, ge=0, le=COUNT_MAX)


Sampling = Annotated[
    Literal["trainer", "stationary"],
    Field(
        description="trainer: batch_size // horizon trajectories of horizon steps from reset "
        "(at least 2), as the trainer samples; stationary: one continuing chain"
    ),
]
"""How a critic probe samples its batch (``probes.fixed_point/stability.sampling``)."""


class FixedPointConfig(_Frozen):
    """TD fixed point probe (docs/model.md §6.1)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2, le=COUNT_MAX)
    sampling: Sampling = "trainer"
    solver: Literal["direct", "iterate"] = "direct"
    ridge: float = Field(1e-3, ge=0, le=SCALE_MAX)
    max_iters: int = Field(2000, ge=1, le=COUNT_MAX)
    tol: float = Field(1e-8, gt=0, le=1)
    """The solver's stopping tolerance, used as given (the table's ``tol`` column): direct,
    the relative residual ``||M w# - rhs|| / ||rhs||`` at which iterative refinement stops
    (also for the two half-batch solves of the noise floor); iterate, the relative step
    ``||step|| / ||w||``."""


class StabilityConfig(_Frozen):
    """Spectral stability probe (docs/model.md §6.2)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2, le=COUNT_MAX)
    sampling: Sampling = "trainer"
    k_mc: int = Field(8, ge=1, le=COUNT_MAX)
    power_iters: int = Field(20, ge=1, le=COUNT_MAX)


class DistributionConfig(_Frozen):
    """Distribution-shift probe (docs/model.md §6.3)."""

    enabled: bool = True
    num_samples: int = Field(4096, ge=4, le=COUNT_MAX)
    chains: int = Field(
        8,
        ge=2,
        le=COUNT_MAX,
        description="independent chains per policy (>= 2), ceil(num_samples / chains) steps "
        "each; the MMD p-value permutes whole chains (exact under mu == pi)",
    )
    action_samples: int = Field(64, ge=1, le=COUNT_MAX)
    mmd_bandwidth_samples: int = Field(300, ge=4, le=COUNT_MAX)
    permutations: int = Field(200, ge=0, le=COUNT_MAX)

    @field_validator("chains", mode="before")
    @classmethod
    def _two_chains(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 2:
            raise ValueError(
                f"probes.distribution.chains: must be >= 2, got {value}; one chain's "
                "block-permutation p-value is only approximate (36% false positives at "
                "p < 0.05 under mu == pi), whole-chain permutation needs two or more"
            )
        return value


class QKernelConfig(_Frozen):
    """TD-error kernel probe (docs/model.md §6.4)."""

    enabled: bool = True
    cache_batch_size: int = Field(8, ge=1, le=COUNT_MAX)
    max_horizon: int = Field(200, ge=1, le=COUNT_MAX)


class RhoAuditConfig(_Frozen):
    """Importance-ratio audit (docs/model.md §6.5)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2, le=COUNT_MAX)
    z_threshold: float = Field(5.0, gt=0, le=SCALE_MAX)


EXTRA_PROBE_SECTIONS: dict[str, type[BaseModel]] = {}
"""Config sections of probes registered outside this module (``probes.<section>``), filled
by :func:`tdlens.probes.registry.register`; each model needs an ``enabled`` field."""


class ProbesConfig(_Frozen):
    """Probe schedule and per-probe settings (docs/model.md §6).

    The section of a probe registered elsewhere (:data:`EXTRA_PROBE_SECTIONS`) is accepted
    and validated by its own model; any other unknown key is an error.
    """

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    enabled: bool = True
    every: int = Field(
        5, ge=0, le=COUNT_MAX, description="probe every n iterations; 0 = only plateau/last"
    )
    common_random_numbers: bool = True
    bar_phi: Literal["exact", "same_as_training"] = Field(
        "exact",
        description=(
            "next-action features of the fixed-point and stability batches: exact = the "
            "closed-form expectation (the same A, b as the trainer's Monte Carlo estimate, "
            "less noise) where the policy is an unclipped, unsquashed Gaussian and K_mc > 0, "
            "else the trainer's estimator; same_as_training = always the trainer's"
        ),
    )
    plateau: PlateauConfig = PlateauConfig()
    fixed_point: FixedPointConfig = FixedPointConfig()
    stability: StabilityConfig = StabilityConfig()
    distribution: DistributionConfig = DistributionConfig()
    q_kernel: QKernelConfig = QKernelConfig()
    rho_audit: RhoAuditConfig = RhoAuditConfig()

    @model_validator(mode="before")
    @classmethod
    def _registered_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in [k for k in data if k not in cls.model_fields]:
            if key not in EXTRA_PROBE_SECTIONS:
                known = sorted([*cls.model_fields, *EXTRA_PROBE_SECTIONS])
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean 'probes.{close[0]}'?" if close else ""
                raise ValueError(f"unknown key 'probes.{key}'{hint} (allowed: {', '.join(known)})")
        for key, model in EXTRA_PROBE_SECTIONS.items():
            value = data.get(key, {})
            data[key] = value if isinstance(value, model) else model.model_validate(value)
        return data

    def section(self, name: str) -> Any:
        """The settings of probe section `name` (built in or registered)."""
        return getattr(self, name)


ScheduleKind = Literal["constant", "inverse_time", "exponential", "step", "cosine"]

SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "inverse_time": ("t0",),
    "exponential": ("decay",),
    "step": ("factor", "milestones"),
    "cosine": ("final_fraction", "period"),
}
"""The parameters each schedule kind reads (docs/model.md §4); any other set is an error."""

SCHEDULE_FINAL_FRACTION = 0.01
"""Default end point of the exponential, step and cosine schedules: 1% of the base step."""


class StepSchedule(_Frozen):
    """A step-size schedule ``eta_t = base f(t)``, t the 0-based outer iteration
    (docs/model.md §4, :func:`eta_t`). Unset parameters of the chosen kind are filled in
    from ``outer_iters`` by :class:`RunConfig` (so ``kind`` alone is a complete schedule);
    parameters of another kind are an error."""

    kind: ScheduleKind = Field("constant", description="the schedule's shape")
    t0: float | None = Field(
        None, gt=0, description="inverse_time: base / (1 + t / t0); default outer_iters / 10"
    )
    decay: float | None = Field(
        None, gt=0, le=1, description="exponential: base decay^t; default 0.01^(1/outer_iters)"
    )
    factor: float | None = Field(
        None, gt=0, description="step: base times factor at each milestone; default 0.1"
    )
    milestones: tuple[int, ...] | None = Field(
        None, description="step: iterations (>= 1, increasing); default outer_iters x (1/2, 3/4)"
    )
    final_fraction: float | None = Field(
        None, ge=0, le=1, description="cosine: base fraction reached at t = period; default 0.01"
    )
    period: int | None = Field(
        None, ge=1, description="cosine: iterations of the half cosine; default outer_iters"
    )

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def resolved(self, key: str, outer_iters: int) -> StepSchedule:
        """This schedule with its kind's unset parameters defaulted from `outer_iters`;
        ValueError naming ``<key>.<param>`` for a parameter its kind does not read or a
        bad milestone list."""
        used = SCHEDULE_PARAMS[self.kind]
        for name in SCHEDULE_PARAMS:
            for param in SCHEDULE_PARAMS[name]:
                if param not in used and getattr(self, param) is not None:
                    raise ValueError(
                        f"{key}.{param}: applies to kind '{name}', not '{self.kind}' "
                        f"(kind '{self.kind}' reads: {', '.join(used) or 'no parameters'})"
                    )
        defaults: dict[str, Any] = {
            "t0": outer_iters / 10.0,
            "decay": SCHEDULE_FINAL_FRACTION ** (1.0 / outer_iters),
            "factor": 0.1,
            "milestones": tuple(sorted({max(1, outer_iters // 2), max(1, 3 * outer_iters // 4)})),
            "final_fraction": SCHEDULE_FINAL_FRACTION,
            "period": outer_iters,
        }
        update = {p: defaults[p] for p in used if getattr(self, p) is None}
        milestones = update.get("milestones", self.milestones)
        if milestones is not None and (
            any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones))
        ):
            raise ValueError(
                f"{key}.milestones: must be strictly increasing iterations >= 1 "
                f"(got {list(milestones)})"
            )
        return self.model_copy(update=update) if update else self

    def describe(self) -> str:
        """One line: ``constant`` or e.g. ``inverse_time (t0=8)`` (Run Info, the card)."""
        if self.is_constant:
            return "constant"
        params = ", ".join(
            f"{p}={list(v) if isinstance(v, tuple) else f'{v:.6g}'}"
            for p in SCHEDULE_PARAMS[self.kind]
            if (v := getattr(self, p)) is not None
        )
        return f"{self.kind} ({params})"


class SchedulesConfig(_Frozen):
    """Step-size schedules of the critic and actor steps (docs/model.md §4)."""

    alpha_w: StepSchedule = StepSchedule()
    alpha_pi: StepSchedule = StepSchedule()


def eta_t(schedule: StepSchedule, base: float, t: Any) -> Any:
    """The step at 0-based outer iteration(s) `t` (an int or an array; vectorised):

    - constant: ``base``
    - inverse_time: ``base / (1 + t / t0)``
    - exponential: ``base decay^t``
    - step: ``base factor^k``, k the number of milestones ``<= t``
    - cosine: ``base (ff + (1 - ff) (1 + cos(pi min(t, period) / period)) / 2)``, ff =
      final_fraction

    The schedule's parameters must be set (a schedule from a validated :class:`RunConfig`
    is). Returns a float for a scalar t, else a float64 array of t's shape.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    kind = schedule.kind
    if kind == "constant":
        out = np.full_like(t_arr, base)
    elif kind == "inverse_time":
        out = base / (1.0 + t_arr / float(schedule.t0))  # type: ignore[arg-type]
    elif kind == "exponential":
        out = base * float(schedule.decay) ** t_arr  # type: ignore[arg-type]
    elif kind == "step":
        k = np.searchsorted(np.asarray(schedule.milestones, dtype=np.float64), t_arr, "right")
        out = base * float(schedule.factor) ** k  # type: ignore[arg-type]
    else:
        ff, period = float(schedule.final_fraction), float(schedule.period)  # type: ignore[arg-type]
        phase = np.minimum(t_arr, period) / period
        out = base * (ff + (1.0 - ff) * 0.5 * (1.0 + np.cos(np.pi * phase)))
    return float(out) if out.ndim == 0 else out


class RunConfig(_Frozen):
    """Everything that defines a run (docs/model.md §4), with the seed system's key names."""

    name: str = Field("run", min_length=1, description="readable run name")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="the one seed every random stream derives from"
    )
    outer_iters: int = Field(80, ge=1, le=COUNT_MAX)
    trajectories: int = Field(16, ge=1, le=COUNT_MAX, description="B trajectories per iteration")
    horizon: int = Field(200, ge=1, le=COUNT_MAX, description="T steps per trajectory")
    gamma: float = Field(0.99, ge=0, le=1)
    alpha_w: float = Field(0.08, ge=0, le=STEP_MAX)
    alpha_pi: float = Field(0.06, ge=0, le=STEP_MAX)
    beta: float = Field(0.05, ge=0, le=1)
    sigma_mu: float = Field(0.35, gt=0, le=SCALE_MAX)
    sigma_pi: float = Field(0.30, gt=0, le=SCALE_MAX)
    K_mc: int = Field(
        4, ge=0, le=COUNT_MAX, description="Monte Carlo draws for bar_phi (0: phi(s', 0))"
    )
    theta_radius: UnboundedFloat = Field(
        6.0, description="L2 ball radius for theta (<= 0 or inf: none)"
    )
    theta_init_scale: float = Field(0.1, ge=0, le=SCALE_MAX)
    w_init_scale: float = Field(0.1, ge=0, le=SCALE_MAX)
    theta_mu_offset_scale: float = Field(0.0, ge=0, le=SCALE_MAX)
    squash_action: bool = False
    rho_clip: UnboundedFloat | None = Field(10.0, description="rho clip (null, 0 or inf: none)")
    disable_rho_clip: bool = False
    step_normalization: Literal["mean", "sqrt_batch"] = "mean"
    bar_phi: Literal["mc", "exact"] = "mc"
    precision: Literal["float32", "float64"] = Field(
        "float32", description="dtype of the critic features (float32 validated to 1e-4)"
    )
    threads: int = Field(0, ge=0, le=4096, description="feature threads (0: all cores)")
    checkpoint_every: int = Field(10, ge=1, le=COUNT_MAX)
    checkpoint_keep: int = Field(3, ge=1, le=COUNT_MAX, description="checkpoints kept (the newest)")
    report_every: int = Field(
        0, ge=0, le=COUNT_MAX, description="rewrite the report every n iters (0: end)"
    )
    env: EnvConfig = EnvConfig()
    probes: ProbesConfig = ProbesConfig()
    schedules: SchedulesConfig = SchedulesConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        if self.rho_clip is not None and self.rho_clip < 0:
            raise ValueError("rho_clip: must be >= 0 or null (0 or null disables clipping)")
        if self.bar_phi == "exact" and (self.env.clip_action or self.squash_action):
            raise ValueError(
                "bar_phi: 'exact' needs an unclipped, unsquashed Gaussian policy; "
                "set env.clip_action=false and squash_action=false, or use bar_phi=mc"
            )
        resolved = SchedulesConfig(
            alpha_w=self.schedules.alpha_w.resolved("schedules.alpha_w", self.outer_iters),
            alpha_pi=self.schedules.alpha_pi.resolved("schedules.alpha_pi", self.outer_iters),
        )
        if resolved != self.schedules:
            return self.model_copy(update={"schedules": resolved})
        return self

    def step_sizes(self, n: int) -> tuple[float, float]:
        """``(alpha_w_t, alpha_pi_t)`` at outer iteration n (:func:`eta_t`); exactly
        ``(alpha_w, alpha_pi)`` under the constant schedules."""
        sched = self.schedules
        return (
            self.alpha_w if sched.alpha_w.is_constant else eta_t(sched.alpha_w, self.alpha_w, n),
            self.alpha_pi
            if sched.alpha_pi.is_constant
            else eta_t(sched.alpha_pi, self.alpha_pi, n),
        )

    @property
    def effective_rho_clip(self) -> float | None:
        """The clip actually applied: None when disabled, null, <= 0 or inf (docs/model.md §3)."""
        if self.disable_rho_clip or self.rho_clip is None or not 0 < self.rho_clip < math.inf:
            return None
        return float(self.rho_clip)

    @property
    def probe_bar_phi(self) -> Literal["mc", "exact"]:
        """The bar_phi estimator of the fixed-point and stability batches (docs/model.md §6):
        ``exact`` when ``probes.bar_phi`` is exact and the closed form is the expectation
        the trainer's Monte Carlo estimates (an unclipped, unsquashed Gaussian pi and
        ``K_mc > 0``; ``K_mc = 0`` is ``phi(s', 0)``, not an expectation), else the
        trainer's own ``bar_phi``."""
        valid = not (self.env.clip_action or self.squash_action) and self.K_mc > 0
        if self.probes.bar_phi == "exact" and valid:
            return "exact"
        return self.bar_phi

    @property
    def step_scale(self) -> float:
        """s = 1/(B T) (`mean`) or 1/(sqrt(B) T) (`sqrt_batch`), docs/model.md §4 step 4."""
        if self.step_normalization == "mean":
            return 1.0 / (self.trajectories * self.horizon)
        return 1.0 / (math.sqrt(self.trajectories) * self.horizon)

    @property
    def train_step_scale(self) -> float:
        """train_step_scale = alpha_w * s (docs/model.md §4)."""
        return self.alpha_w * self.step_scale

    @property
    def sigma_condition_ok(self) -> bool:
        """E_mu[rho^2] of the ratio the critic uses is finite: always with a rho clip c
        (``min(rho, c)^2 <= c^2``), else only when sigma_pi^2 < 2 sigma_mu^2 (docs/model.md
        §3)."""
        return self.effective_rho_clip is not None or self.sigma_pi**2 < 2.0 * self.sigma_mu**2

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (:func:`encode_config`: inf as ``"inf"``); what
        config.json holds and what the hash and run ids are computed from."""
        return encode_config(self.model_dump(mode="json"))

    def config_hash(self) -> str:
        """Short hash of everything that changes the numbers (:func:`hash_config_data`)."""
        return hash_config_data(self.to_dict())


EXECUTION_KEYS = frozenset(
    {"name", "threads", "checkpoint_every", "checkpoint_keep", "report_every"}
)
"""Keys that change how a run executes but never its numbers."""

INF_TOKEN = "inf"
"""How an infinite config value is written in config.json (and hashed): ``"inf"`` /
``"-inf"``; pydantic reads the token back as the float. JSON has no infinity, and ``null``
already means "no clip" for ``rho_clip``."""

ADDED_LATER: dict[str, Any] = {
    "schedules": SchedulesConfig().model_dump(mode="json"),  # step-size schedules
    "probes.bar_phi": "exact",  # the probes' next-action features (issue 28)
}
"""Config keys added after runs existed, dotted, with the default (as :meth:`RunConfig.
to_dict` writes it) at which :func:`hash_config_data` leaves them out: a run made before
the key existed keeps its hash, run id and checkpoints. Register a new key (or a whole new
section) here when you add it, with its default as to_dict writes it;
only a non-default value then changes the hash. Never remove an entry."""


def encode_config(value: Any) -> Any:
    """The one encoder of config values: floats ``inf`` / ``-inf`` become the token
    ``"inf"`` / ``"-inf"``; nan is refused (a validated config never holds it)."""
    if isinstance(value, dict):
        return {str(k): encode_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_config(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ConfigError("config: nan cannot be encoded (no key accepts nan)")
        return INF_TOKEN if value > 0 else f"-{INF_TOKEN}"
    return value


def hash_config_data(data: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over the compact sorted JSON of `data` (to_dict's form)
    without :data:`EXECUTION_KEYS` and without :data:`ADDED_LATER` keys at their default."""
    kept = {k: v for k, v in data.items() if k not in EXECUTION_KEYS}
    kept = json.loads(json.dumps(kept))
    for dotted, default in ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node: Any = kept
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _with_added_later(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (to_dict's form) with every absent :data:`ADDED_LATER` key at its default:
    a config written before the key existed meant that default."""
    out = json.loads(json.dumps(data))
    for dotted, default in ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = json.loads(json.dumps(default))
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (to_dict's form), sorted; keys
    of :data:`EXECUTION_KEYS` and :data:`ADDED_LATER` keys at their default are ignored."""
    fa, fb = flatten(_with_added_later(a)), flatten(_with_added_later(b))
    out = []
    for key in sorted(set(fa) | set(fb)):
        if key in EXECUTION_KEYS:
            continue
        va = fa.get(key, ADDED_LATER.get(key))
        vb = fb.get(key, ADDED_LATER.get(key))
        if va != vb:
            out.append(key)
    return out


# --------------------------------------------------------------------------- names

NAME_MAX_LEN = 200
"""Longest run or sweep name (a directory name gets a 16-character time prefix)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: Any, key: str = "name") -> str:
    """The one rule for run and sweep names, which become directory names: letters,
    digits, '.', '_', '+', '-', starting with a letter or digit, no '..', at most
    :data:`NAME_MAX_LEN` characters. Raises ConfigError naming `key`."""
    if (
        not isinstance(name, str)
        or len(name) > NAME_MAX_LEN
        or ".." in name
        or not _NAME.fullmatch(name)
    ):
        shown = ascii(name) if isinstance(name, str) else repr(name)
        raise ConfigError(
            f"{key}: use letters, digits, '.', '_', '+' or '-' (starting with a letter or "
            f"digit, no '..', at most {NAME_MAX_LEN} characters); got {shown[:80]}"
        )
    return name


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (ANSI escapes included) shown as
    ``\\x1b``-style escapes, everything else as is."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


# --------------------------------------------------------------------------- ranges


def field_range(info: FieldInfo) -> str | None:
    """The allowed range of a numeric field as text (``0 <= x <= 1e+06``), None if none."""
    lo = hi = None
    lo_op = hi_op = "<="
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_op = m.gt, "<"
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_op = m.lt, "<"
    if lo is None and hi is None:
        return None
    left = f"{_num(lo)} {lo_op} " if lo is not None else ""
    right = f" {hi_op} {_num(hi)}" if hi is not None else ""
    return f"{left}x{right}"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


UNBOUNDED_KEYS = ("rho_clip", "theta_radius")
"""The float keys that accept ``inf`` ("no limit"; nan is refused everywhere)."""


def numeric_ranges(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, str]:
    """Every numeric config key (dotted) with its allowed range (docs/model.md §13 lists
    them; a test checks the two agree). Keys that accept inf say so."""
    model = model or RunConfig
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(numeric_ranges(ann, f"{prefix}{name}."))
            continue
        if f"{prefix}{name}" in UNBOUNDED_KEYS:
            out[f"{prefix}{name}"] = "any number, or inf; <= 0 (or null for rho_clip): none"
        elif ann in (int, float):
            out[f"{prefix}{name}"] = field_range(info) or "any finite number"
    return out


# --------------------------------------------------------------------------- loading


def _known_keys(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Field names of the (nested) model reached by `path`."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the dotted key and what is allowed."""
    lines = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join(loc) if loc else "config"
        if item["type"] == "extra_forbidden":
            known = _known_keys(RunConfig, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"; did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else ""
            lines.append(f"unknown key '{key}'{hint} (allowed: {', '.join(sorted(known))})")
        elif item["type"] == "value_error":
            msg = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
            lines.append(msg if not loc or msg.startswith(key) else f"{key}: {msg}")
        else:
            allowed = numeric_ranges().get(key)
            got = item.get("input")
            shown = ascii(got) if isinstance(got, str) else repr(got)
            lines.append(
                f"{key}: {item['msg']} (got {shown[:80]})"
                + (f"; allowed: {allowed}" if allowed else "")
            )
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, raising ConfigError on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value``; the value is parsed as YAML (so 1e-7, true, null work)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set '{text}': expected key=value with a dotted key")
    try:
        value = safe_load_bounded(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc})") from None
    return key.split("."), _coerce_number(value)


_EXP_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce_number(value: Any) -> Any:
    """PyYAML reads '1e-7' (no dot) as a string; accept it as the number it means."""
    if isinstance(value, str) and _EXP_NUMBER.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _coerce_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_number(v) for v in value]
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted ``key=value`` overrides applied."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(out, path, value, what="--set ")
    return out


def set_dotted(data: dict[str, Any], path: list[str], value: Any, what: str = "") -> None:
    """``data[a][b] = value`` for ``path = [a, b]``, creating sections (in place)."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what}{'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def shipped_configs() -> Path:
    """The folder of configs shipped with the package (also ./configs in the repo)."""
    return Path(str(resources.files("tdlens") / "configs"))


def find_config(name: str, search: tuple[Path, ...] = ()) -> Path:
    """A config file by path or by shipped name.

    `name` as a file (relative to each folder of `search` first, then as given), else the
    shipped config of that stem when `name` is a bare name or ``configs/<name>``
    (``sanity``, ``sanity.yaml``, ``configs/sanity.yaml``). A ConfigError lists the
    shipped names.
    """
    path = Path(name)
    for candidate in (*(folder / name for folder in search), path):
        if candidate.is_file():
            return candidate
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = shipped_configs() / f"{stem}.yaml"
    if shipped.is_file() and (len(path.parts) == 1 or path.parts[-2] == "configs"):
        return shipped
    for candidate in (*(folder / name for folder in search), path):
        kind = file_kind(candidate)
        if kind is not None:
            raise ConfigError(f"config '{candidate}' is {kind}, not a YAML file")
    names = ", ".join(sorted(p.stem for p in shipped_configs().glob("*.yaml")))
    raise ConfigError(f"config '{name}' does not exist (shipped configs: {names})")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"env": {"p_mix": 0.1}} -> {"env.p_mix": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


YAML_MAX_BYTES = 1_000_000
"""Largest config or sweep spec read (1 MB; the shipped ones are under 3 kB)."""
YAML_MAX_ALIASES = 1000
"""Most alias uses (``*name``) in one YAML document: aliases of aliases expand
exponentially ("billion laughs"); the count is taken while composing, before expansion."""
YAML_MAX_DEPTH = 50
"""Deepest nesting of mappings and lists in one YAML document (checked while composing)."""
YAML_MAX_NODES = 100_000
"""Most nodes of one YAML document once its aliases are expanded, counted on the composed
node graph (shared nodes counted once per use) before any Python object is built: a few
hundred bytes of nested aliases can stand for 10**9 nodes while using far fewer than
:data:`YAML_MAX_ALIASES` aliases."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias uses and nesting depth while composing the node tree
    and stops at :data:`YAML_MAX_ALIASES` / :data:`YAML_MAX_DEPTH`, before any expansion
    or recursion can take the machine."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > YAML_MAX_ALIASES:
                raise _YamlBound(f"more than {YAML_MAX_ALIASES} alias uses (*name)")
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise _YamlBound(f"nested deeper than {YAML_MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _YamlBound(Exception):
    """A YAML document over one of the bounds of :class:`_BoundedLoader`."""


def safe_load_bounded(text: str, where: str) -> Any:
    """``yaml.safe_load`` within :data:`YAML_MAX_ALIASES` and :data:`YAML_MAX_DEPTH`;
    a document over a bound is a ConfigError naming `where`."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > YAML_MAX_NODES:
            raise _YamlBound(f"its aliases expand to more than {YAML_MAX_NODES} nodes")
        return loader.construct_document(node)
    except _YamlBound as exc:
        raise ConfigError(f"{where}: refused, {exc}") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of `root` with every alias expanded (capped just above YAML_MAX_NODES),
    by an iterative post-order walk that sizes each shared node once; a recursive alias
    (a node inside itself) is refused."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            sizes[key] = min(total, YAML_MAX_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _YamlBound("a recursive alias (a node inside itself)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def file_kind(path: Path) -> str | None:
    """What `path` is when it is not a regular file (a directory, a FIFO, a device...);
    None for a regular file or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping (:func:`safe_load_bounded`); errors name the file.

    Only a regular file of at most :data:`YAML_MAX_BYTES` is read (a directory, FIFO or
    device is named as such, never opened).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:
        raise ConfigError(f"config file '{path}' is {kind}, not a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(YAML_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file '{path}': cannot be read ({exc.strerror})") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ConfigError(f"config file '{path}': refused, larger than {YAML_MAX_BYTES} bytes")
    try:
        data = safe_load_bounded(raw.decode("utf-8"), f"config file '{path}'")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}': not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}': not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    return _coerce_number(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML (or the defaults when `path` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    return parse_config(apply_overrides(data, overrides or []))


def config_from_json(path: str | Path) -> RunConfig:
    """Read a run directory's resolved config.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"'{path}': not a readable config.json ({exc})") from None
    return parse_config(data)
