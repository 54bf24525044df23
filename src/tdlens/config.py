"""Typed, frozen run configuration (SPEC sections 4, 6, 13 and 15).

One :class:`RunConfig` describes a run completely; it is loaded from YAML (always with
``yaml.safe_load``), patched with dotted ``--set key=value`` overrides, validated, and
saved resolved as ``config.json`` in the run directory. Every validation error is turned
into one :class:`ConfigError` whose message names the offending key (with a
did-you-mean suggestion for unknown keys) and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is allowed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EnvConfig(_Frozen):
    """Torus Goblet & Ghost and feature-map parameters (SPEC sections 1 and 2)."""

    torus_size: float = Field(1.0, gt=0, description="side L of the torus")
    dt: float = Field(0.05, gt=0, description="time step")
    v_max: float = Field(0.4, gt=0, description="action clip / squash bound")
    v_ghost: float = Field(0.3, ge=0, description="ghost speed")
    sigma_env: float = Field(0.01, ge=0, description="adventurer position noise std")
    sigma_ghost: float = Field(0.01, ge=0, description="ghost position noise std")
    eps_catch: float = Field(0.05, ge=0, description="catch radius")
    eps_pick: float = Field(0.04, ge=0, description="goblet pick radius")
    num_goblets: int = Field(3, ge=1, description="K goblets")
    p_mix: float = Field(0.05, ge=0, le=1, description="restart probability per step")
    p_type_positive: float = Field(0.5, ge=0, le=1, description="P(goblet type = +1)")
    type_resample_p: float = Field(0.5, ge=0, le=1, description="P(type redrawn on pick)")
    clip_action: bool = Field(False, description="clip actions to [-v_max, v_max] per axis")
    feature_dim: int = Field(128, ge=5, description="critic feature dimension D")
    actor_feature_dim: int = Field(32, ge=1, description="actor feature dimension N")
    c_psi: float = Field(1.0, gt=0, description="norm bound of the actor features")
    feature_sigma: float = Field(1.0, gt=0, description="std of the critic frequencies W_phi")
    lambda_action_penalty: float = Field(0.1, ge=0, description="teacher weight on ||a||^2")
    teacher_base_scale: float = Field(0.05, ge=0, description="std of the random teacher part")


class PlateauConfig(_Frozen):
    """TD-loss plateau trigger (SPEC 6): slope within `tol` standard errors of zero."""

    enabled: bool = True
    window: int = Field(10, ge=3)
    tol: float = Field(1.0, ge=0)
    cooldown: int = Field(10, ge=1)
    min_iter: int = Field(10, ge=0)


class FixedPointConfig(_Frozen):
    """TD fixed point probe (SPEC 6.1)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2)
    sampling: Literal["trainer", "stationary"] = Field(
        "trainer",
        description="trainer: batch_size // horizon trajectories of horizon steps from reset "
        "(at least 2), as the trainer samples; stationary: one continuing chain",
    )
    solver: Literal["direct", "iterate"] = "direct"
    ridge: float = Field(1e-3, ge=0)
    max_iters: int = Field(2000, ge=1)
    tol: float = Field(1e-8, gt=0)
    """The solver's stopping tolerance, used as given (the table's ``tol`` column): direct,
    the relative residual ``||M w# - rhs|| / ||rhs||`` at which iterative refinement stops
    (also for the two half-batch solves of the noise floor); iterate, the relative step
    ``||step|| / ||w||``."""


class StabilityConfig(_Frozen):
    """Spectral stability probe (SPEC 6.2)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2)
    sampling: Literal["trainer", "stationary"] = Field(
        "trainer",
        description="trainer: batch_size // horizon trajectories of horizon steps from reset "
        "(at least 2), as the trainer samples; stationary: one continuing chain",
    )
    k_mc: int = Field(8, ge=1)
    power_iters: int = Field(20, ge=1)


class DistributionConfig(_Frozen):
    """Distribution-shift probe (SPEC 6.3)."""

    enabled: bool = True
    num_samples: int = Field(4096, ge=4)
    chains: int = Field(
        8,
        ge=1,
        description="independent chains per policy, ceil(num_samples / chains) steps each; "
        "the MMD p-value permutes whole chains (exact under mu == pi); 1 = one chain, "
        "blocks of 2 tau_int (approximate)",
    )
    action_samples: int = Field(64, ge=1)
    mmd_bandwidth_samples: int = Field(300, ge=4)
    permutations: int = Field(200, ge=0)


class QKernelConfig(_Frozen):
    """TD-error kernel probe (SPEC 6.4)."""

    enabled: bool = True
    cache_batch_size: int = Field(8, ge=1)
    max_horizon: int = Field(200, ge=1)


class RhoAuditConfig(_Frozen):
    """Importance-ratio audit (SPEC 6.5)."""

    enabled: bool = True
    batch_size: int = Field(4096, ge=2)
    z_threshold: float = Field(5.0, gt=0)


EXTRA_PROBE_SECTIONS: dict[str, type[BaseModel]] = {}
"""Config sections of probes registered outside this module (``probes.<section>``), filled
by :func:`tdlens.probes.registry.register`; each model needs an ``enabled`` field."""


class ProbesConfig(_Frozen):
    """Probe schedule and per-probe settings (SPEC 6).

    The section of a probe registered elsewhere (:data:`EXTRA_PROBE_SECTIONS`) is accepted
    and validated by its own model; any other unknown key is an error.
    """

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    enabled: bool = True
    every: int = Field(5, ge=0, description="probe every n iterations; 0 = only plateau/last")
    common_random_numbers: bool = True
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


class RunConfig(_Frozen):
    """Everything that defines a run (SPEC 4), with the seed system's key names."""

    name: str = Field("run", min_length=1, description="readable run name")
    seed: int = Field(0, ge=0, description="the one seed every random stream derives from")
    outer_iters: int = Field(80, ge=1)
    trajectories: int = Field(16, ge=1, description="B trajectories per iteration")
    horizon: int = Field(200, ge=1, description="T steps per trajectory")
    gamma: float = Field(0.99, ge=0, le=1)
    alpha_w: float = Field(0.08, ge=0)
    alpha_pi: float = Field(0.06, ge=0)
    beta: float = Field(0.05, ge=0, le=1)
    sigma_mu: float = Field(0.35, gt=0)
    sigma_pi: float = Field(0.30, gt=0)
    K_mc: int = Field(4, ge=0, description="Monte Carlo draws for bar_phi (0: phi(s', 0))")
    theta_radius: float = Field(6.0, description="L2 ball radius for theta (<= 0: none)")
    theta_init_scale: float = Field(0.1, ge=0)
    w_init_scale: float = Field(0.1, ge=0)
    theta_mu_offset_scale: float = Field(0.0, ge=0)
    squash_action: bool = False
    rho_clip: float | None = Field(10.0, description="rho clip (null or <= 0: none)")
    disable_rho_clip: bool = False
    step_normalization: Literal["mean", "sqrt_batch"] = "mean"
    bar_phi: Literal["mc", "exact"] = "mc"
    precision: Literal["float32", "float64"] = Field(
        "float32", description="dtype of the critic features (float32 validated to 1e-4)"
    )
    threads: int = Field(0, ge=0, description="feature threads (0: all cores)")
    checkpoint_every: int = Field(10, ge=1)
    checkpoint_keep: int = Field(3, ge=1, description="checkpoints kept (the newest)")
    report_every: int = Field(0, ge=0, description="rewrite the report every n iters (0: end)")
    env: EnvConfig = EnvConfig()
    probes: ProbesConfig = ProbesConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        if self.rho_clip is not None and self.rho_clip < 0:
            raise ValueError("rho_clip: must be >= 0 or null (0 or null disables clipping)")
        if self.bar_phi == "exact" and (self.env.clip_action or self.squash_action):
            raise ValueError(
                "bar_phi: 'exact' needs an unclipped, unsquashed Gaussian policy; "
                "set env.clip_action=false and squash_action=false, or use bar_phi=mc"
            )
        return self

    @property
    def effective_rho_clip(self) -> float | None:
        """The clip actually applied: None when disabled, null or <= 0 (SPEC 3)."""
        if self.disable_rho_clip or self.rho_clip is None or self.rho_clip <= 0:
            return None
        return float(self.rho_clip)

    @property
    def step_scale(self) -> float:
        """s = 1/(B T) (`mean`) or 1/(sqrt(B) T) (`sqrt_batch`), SPEC 4 step 4."""
        if self.step_normalization == "mean":
            return 1.0 / (self.trajectories * self.horizon)
        return 1.0 / (math.sqrt(self.trajectories) * self.horizon)

    @property
    def train_step_scale(self) -> float:
        """train_step_scale = alpha_w * s (SPEC 4)."""
        return self.alpha_w * self.step_scale

    @property
    def sigma_condition_ok(self) -> bool:
        """E_mu[rho^2] of the ratio the critic uses is finite: always with a rho clip c
        (``min(rho, c)^2 <= c^2``), else only when sigma_pi^2 < 2 sigma_mu^2 (docs/model.md
        §3)."""
        return self.effective_rho_clip is not None or self.sigma_pi**2 < 2.0 * self.sigma_mu**2

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """Short hash of everything that changes the numbers (not name, threads, cadences)."""
        data = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


EXECUTION_KEYS = frozenset(
    {"name", "threads", "checkpoint_every", "checkpoint_keep", "report_every"}
)
"""Keys that change how a run executes but never its numbers."""


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
            lines.append(str(item["ctx"]["error"]) if "ctx" in item else item["msg"])
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
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
        value = yaml.safe_load(raw) if raw.strip() else ""
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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with safe_load; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file '{path}': cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
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
