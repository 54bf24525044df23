"""Sweep specs and plans (docs/model.md §11).

A sweep spec is a YAML mapping with exactly these keys::

    name: stepC                     # optional; default: the spec file's stem
    base: plateau                   # a config path relative to the spec file, or a shipped name
    grid:                           # the swept axes, in this order (first = slowest)
      alpha_w: {logspace: [0.02, 0.24, 10]}
      beta: {linspace: [0.005, 0.4, 10]}
      env.p_mix: [0.01, 0.05]       # or an explicit list
    seeds: [0, 1, 2]                # optional: one more axis over the run seed
    overrides: {outer_iters: 200}   # optional dotted keys applied to the base first

Grid values:

- ``{linspace: [a, b, n]}``: ``x_i = a + (b - a) i / (n - 1)``, ``i = 0..n-1`` (NumPy
  ``linspace``; ``n = 1`` gives ``[a]``).
- ``{logspace: [a, b, n]}``: n values *geometrically* spaced between a and b,
  ``x_i = a (b / a)^(i / (n - 1))`` (NumPy ``geomspace``), so ``logspace(0.02, 0.24, 10)``
  runs from 0.02 to 0.24. The bounds are the values themselves, NOT exponents
  (``numpy.logspace`` would mean ``10**a .. 10**b``); both must be > 0.
- a list: the values as written.

A config is resolved as: base YAML, then ``overrides``, then the grid point, then the seed.
The plan (:func:`make_plan`) holds every resolved run; its run id is a readable prefix of
the swept values plus :meth:`RunConfig.config_hash` of the fully resolved config, so runs
from different base configs or overrides never share an id. Every problem is a
:class:`SweepSpecError` naming the key, raised before anything is written.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from tdlens.config import (
    EXECUTION_KEYS,
    ConfigError,
    RunConfig,
    check_name,
    find_config,
    parse_config,
    read_yaml,
)
from tdlens.config import set_dotted as set_config_path

SWEEP_KEYS: tuple[str, ...] = ("name", "base", "grid", "seeds", "overrides")
"""The keys a sweep spec may have."""
SEED_AXIS = "seed"
MAX_RUNS = 100_000
"""A grid larger than this is refused (almost certainly a typo in n)."""
_ABBREV_OVER = 10
"""Key names longer than this are abbreviated to their initials in run ids."""


class SweepSpecError(ConfigError):
    """A bad sweep spec; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Axis:
    """One swept config key (dotted) and its values, in sweep order."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec (see the module docstring)."""

    name: str
    base: Path
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...] | None
    overrides: dict[str, Any]
    raw: dict[str, Any]
    source: Path | None = None

    @property
    def all_axes(self) -> tuple[Axis, ...]:
        """The grid axes plus the seed axis (last) when `seeds` is given."""
        if self.seeds is None:
            return self.axes
        return (*self.axes, Axis(SEED_AXIS, self.seeds))


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its id, swept values and fully resolved config."""

    run_id: str
    index: int
    params: dict[str, Any]
    config: RunConfig

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()


# --------------------------------------------------------------------------- config keys


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the run config (``alpha_w``, ``env.p_mix``, ...)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(config_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        tail = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [tail[c] for c in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tail))]
    return f"; did you mean '{close[0]}'?" if close else ""


def check_config_key(key: str, where: str) -> None:
    """Raise SweepSpecError unless `key` is a dotted leaf key of RunConfig."""
    known = config_keys()
    if key not in known:
        raise SweepSpecError(f"{where}: '{key}' is not a config key{_did_you_mean(key, known)}")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b] = value`` for ``key = 'a.b'``, creating sections as needed (in place)."""
    try:
        set_config_path(data, key.split("."), value)
    except ConfigError as exc:
        raise SweepSpecError(f"'{key}': {str(exc).split(': ', 1)[1]}") from None


# --------------------------------------------------------------------------- grid values


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SweepSpecError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except ValueError:
        raise SweepSpecError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise SweepSpecError(f"{where}: expected a finite number, got {value!r}")
    return out


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepSpecError(f"{where}: the count n must be an integer >= 1, got {value!r}")
    return value


def linspace_values(a: float, b: float, n: int) -> tuple[float, ...]:
    """``x_i = a + (b - a) i / (n - 1)`` for ``i = 0..n-1`` (endpoints exact)."""
    return tuple(float(x) for x in np.linspace(a, b, n))


def logspace_values(a: float, b: float, n: int) -> tuple[float, ...]:
    """n values geometrically spaced from a to b: ``x_i = a (b/a)^(i/(n-1))`` (a, b > 0).

    The bounds are values, not exponents: ``logspace_values(0.02, 0.24, 10)`` starts at 0.02
    and ends at 0.24 (NumPy ``geomspace``, whose endpoints are exact).
    """
    return tuple(float(x) for x in np.geomspace(a, b, n))


def axis_values(key: str, spec: Any) -> tuple[Any, ...]:
    """The values of grid entry `key`: a list, ``{linspace: [a,b,n]}`` or ``{logspace: ...}``."""
    where = f"grid.{key}"
    if isinstance(spec, list):
        if not spec:
            raise SweepSpecError(f"{where}: empty list of values")
        for v in spec:
            if isinstance(v, dict | list):
                raise SweepSpecError(f"{where}: values must be scalars, got {v!r}")
        if len({repr(v) for v in spec}) != len(spec):
            raise SweepSpecError(f"{where}: repeated values in {spec!r}")
        return tuple(spec)
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in ("linspace", "logspace"):
            raise SweepSpecError(
                f"{where}: expected a list, {{linspace: [a, b, n]}} or {{logspace: [a, b, n]}}, "
                f"got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or len(args) != 3:
            raise SweepSpecError(f"{where}.{kind}: expected [a, b, n], got {args!r}")
        a, b = _number(args[0], f"{where}.{kind}[0]"), _number(args[1], f"{where}.{kind}[1]")
        n = _count(args[2], f"{where}.{kind}[2]")
        if kind == "linspace":
            return linspace_values(a, b, n)
        if a <= 0 or b <= 0:
            raise SweepSpecError(
                f"{where}.logspace: bounds must be > 0 (they are values, not exponents), "
                f"got [{args[0]}, {args[1]}]"
            )
        return logspace_values(a, b, n)
    raise SweepSpecError(
        f"{where}: expected a list, {{linspace: [a, b, n]}} or {{logspace: [a, b, n]}}, "
        f"got {spec!r}"
    )


# --------------------------------------------------------------------------- parsing


def resolve_base(base: Any, spec_dir: Path) -> Path:
    """`base` as a file relative to the spec's folder, else as given, else a shipped name."""
    if not isinstance(base, str) or not base.strip():
        raise SweepSpecError(f"base: expected a config path or shipped name, got {base!r}")
    try:
        return find_config(base, (spec_dir,)).resolve()
    except ConfigError as exc:
        raise SweepSpecError(f"base: {exc}") from None


def _parse_overrides(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SweepSpecError(f"overrides: expected a mapping of dotted keys, got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # a nested section: flatten it to dotted keys
            for sub, v in _parse_overrides({f"{key}.{k}": v for k, v in value.items()}).items():
                out[sub] = v
            continue
        check_config_key(str(key), "overrides")
        out[str(key)] = value
    return out


def _parse_seeds(raw: Any) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise SweepSpecError(f"seeds: expected a non-empty list of integers, got {raw!r}")
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SweepSpecError(f"seeds: expected integers >= 0, got {s!r}")
    if len(set(raw)) != len(raw):
        raise SweepSpecError(f"seeds: repeated seeds in {raw!r}")
    return tuple(raw)


def _parse_grid(raw: Any) -> tuple[Axis, ...]:
    if not isinstance(raw, dict) or not raw:
        raise SweepSpecError(
            "grid: empty or missing; give at least one key, e.g. grid: {alpha_w: [0.05, 0.1]}"
        )
    axes = []
    for key, values in raw.items():
        key = str(key)
        check_config_key(key, "grid")
        if key in EXECUTION_KEYS:
            raise SweepSpecError(
                f"grid: '{key}' does not change the numbers (execution key); set it in overrides"
            )
        axes.append(Axis(key, axis_values(key, values)))
    return tuple(axes)


def parse_spec(data: Any, source: Path | None = None) -> SweepSpec:
    """Validate a spec mapping (see the module docstring); `source` locates `base`."""
    where = f"sweep spec '{source}'" if source else "sweep spec"
    if not isinstance(data, dict):
        raise SweepSpecError(f"{where}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in data:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SweepSpecError(
                f"unknown sweep spec key '{key}'{hint} (allowed: {', '.join(SWEEP_KEYS)})"
            )
    if "base" not in data:
        raise SweepSpecError("base: missing; name the base config (a path or e.g. 'plateau')")
    spec_dir = source.parent if source else Path.cwd()
    base = resolve_base(data["base"], spec_dir)
    axes = _parse_grid(data.get("grid"))
    seeds = _parse_seeds(data.get("seeds"))
    overrides = _parse_overrides(data.get("overrides"))
    swept = {a.key for a in axes}
    if seeds is not None and SEED_AXIS in swept:
        raise SweepSpecError("grid.seed: the seed is swept by 'seeds'; give only one of them")
    clash = sorted(swept & set(overrides))
    if clash:
        raise SweepSpecError(f"overrides: '{clash[0]}' is also a grid key; keep one of them")
    name = data.get("name") or (source.stem if source else "sweep")
    try:
        check_name(name)
    except ConfigError as exc:
        raise SweepSpecError(str(exc)) from None
    spec = SweepSpec(name, base, axes, seeds, overrides, copy.deepcopy(data), source)
    total = math.prod(len(a.values) for a in spec.all_axes)
    if total > MAX_RUNS:
        raise SweepSpecError(f"grid: {total} runs is more than the limit of {MAX_RUNS}")
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec YAML (safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"sweep spec '{path}' does not exist")
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise SweepSpecError(str(exc).replace("config file", "sweep spec")) from None
    return parse_spec(data, path.resolve())


# --------------------------------------------------------------------------- plan


def _abbrev(key: str) -> str:
    """``alpha_w`` stays; long names become initials: ``theta_mu_offset_scale`` -> ``tmos``."""
    name = key.rsplit(".", 1)[-1]
    if len(name) <= _ABBREV_OVER:
        return name
    return "".join(part[0] for part in name.split("_") if part)


def _format_value(value: Any) -> str:
    """A swept value as run ids write it: one format whether it came from YAML or
    ``--grid`` (``1000``, ``1000.0`` and ``1e3`` all give ``1000``): a number's shortest
    round-trip repr without a trailing ``.0`` (``0.001``, ``1e-05``, ``0.026437...``)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        text = repr(float(value)) if isinstance(value, float) else str(int(value))
        text = text.removesuffix(".0")
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def run_id(params: dict[str, Any], cfg: RunConfig) -> str:
    """``<key><value>_...-<config_hash>``: swept values (keys sorted, seed last) + hash.

    The prefix is for people; the 12-hex-digit hash of the resolved config is what makes
    the id unique and stable (the same config always gets the same id).
    """
    keys = sorted(params, key=lambda k: (k == SEED_AXIS, k))
    prefix = "_".join(f"{_abbrev(k)}{_format_value(params[k])}" for k in keys)
    return f"{prefix}-{cfg.config_hash()}" if prefix else cfg.config_hash()


def base_data(spec: SweepSpec) -> dict[str, Any]:
    """The base config mapping with the spec's overrides applied (validated)."""
    data = read_yaml(spec.base)
    for key, value in spec.overrides.items():
        set_dotted(data, key, value)
    try:
        parse_config(data)
    except ConfigError as exc:
        raise SweepSpecError(f"base '{spec.base.name}' with overrides: {exc}") from None
    return data


def resolve_run(base: dict[str, Any], params: dict[str, Any], index: int) -> PlannedRun:
    """The run at one grid point: base + swept values, validated, named by its run id."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        point = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise SweepSpecError(f"grid point ({point}): {exc}") from None
    rid = run_id(params, cfg)
    cfg = cfg.model_copy(update={"name": rid})
    return PlannedRun(rid, index, dict(params), cfg)


def make_plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, first axis slowest, seed fastest; ids must be distinct."""
    base = base_data(spec)
    axes = spec.all_axes
    runs = []
    for index, combo in enumerate(itertools.product(*(a.values for a in axes))):
        params = {a.key: v for a, v in zip(axes, combo, strict=True)}
        runs.append(resolve_run(base, params, index))
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        if run.run_id in seen:
            raise SweepSpecError(
                f"grid: points {seen[run.run_id].params} and {run.params} resolve to the same "
                f"run id '{run.run_id}'"
            )
        seen[run.run_id] = run
    return runs
