"""Inline sweeps: the sweep spec of a YAML file, given on the command line.

``tdlens sweep --base sanity --grid alpha_w=0.08,0.8,8 --grid "beta=linspace(0.01,0.2,5)"
--seeds 3 --set outer_iters=20`` builds the mapping

.. code-block:: yaml

    name: sanity_sweep
    base: sanity
    grid:
      alpha_w: [0.08, 0.8, 8]
      beta: {linspace: [0.01, 0.2, 5]}
    seeds: [0, 1, 2]
    overrides: {outer_iters: 20}

and validates it with :func:`tdlens.sweeps.spec.parse_spec`, exactly as if it had been read
from a file: the same plan, the same run ids, the same errors for bad keys. The sweep
directory keeps it as ``spec.yaml``.

A ``--grid`` value is ``KEY=V1,V2,...`` (each value read as YAML: ``8`` is an integer,
``0.8`` and ``1e-3`` are numbers, ``true`` a boolean), ``KEY=linspace(a,b,n)`` or
``KEY=logspace(a,b,n)`` (geometric spacing between the values a and b, as in a spec).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tdlens.config import ConfigError, _coerce_number, parse_override
from tdlens.sweeps.spec import SweepSpec, SweepSpecError, parse_spec

SWEEP_YAML = "spec.yaml"
"""The file an inline sweep's spec is written to in its sweep directory."""
_FUNCTION = re.compile(r"^(linspace|logspace)\((.*)\)$", re.DOTALL)
GRID_HELP = "KEY=V1,V2,... or KEY=linspace(a,b,n) or KEY=logspace(a,b,n)"


def _scalar(text: str, where: str) -> Any:
    text = text.strip()
    if not text:
        raise SweepSpecError(f"{where}: empty value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SweepSpecError(f"{where}: '{text}' is not a value") from None
    if isinstance(value, dict | list) or value is None:
        raise SweepSpecError(f"{where}: '{text}' is not a single value")
    return _coerce_number(value)


def parse_grid_arg(text: str) -> tuple[str, Any]:
    """``alpha_w=0.08,0.8,8`` -> ``("alpha_w", [0.08, 0.8, 8])``;
    ``beta=linspace(0.01,0.2,5)`` -> ``("beta", {"linspace": [0.01, 0.2, 5]})``."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise SweepSpecError(f"--grid '{text}': expected {GRID_HELP}")
    where = f"--grid {key}"
    match = _FUNCTION.match(raw.replace(" ", ""))
    if match:
        kind, inner = match.groups()
        return key, {kind: [_scalar(part, f"{where}.{kind}") for part in inner.split(",")]}
    return key, [_scalar(part, where) for part in raw.split(",")]


def inline_spec_data(
    base: str,
    grids: Sequence[str],
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    name: str | None = None,
) -> dict[str, Any]:
    """The spec mapping of the command-line options (module docstring); a `base` that is a
    file here is written as its absolute path, so the spec works from the sweep directory."""
    grid: dict[str, Any] = {}
    for text in grids:
        key, values = parse_grid_arg(text)
        if key in grid:
            raise SweepSpecError(f"--grid {key}: given twice; give all its values in one --grid")
        grid[key] = values
    stem = Path(base).name.removesuffix(".yaml").removesuffix(".yml")
    data: dict[str, Any] = {
        "name": name or f"{stem}_sweep",
        "base": str(Path(base).resolve()) if Path(base).is_file() else base,
        "grid": grid,
    }
    if seeds is not None:
        if seeds < 1:
            raise SweepSpecError(f"--seeds: expected a number of seeds >= 1, got {seeds}")
        data["seeds"] = list(range(seeds))
    if overrides:
        sets: dict[str, Any] = {}
        for text in overrides:
            try:
                path, value = parse_override(text)
            except ConfigError as exc:
                raise SweepSpecError(str(exc)) from None
            sets[".".join(path)] = value
        data["overrides"] = sets
    return data


def inline_spec(
    base: str,
    grids: Sequence[str],
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    name: str | None = None,
) -> SweepSpec:
    """The validated SweepSpec of the command-line options (raises SweepSpecError)."""
    return parse_spec(inline_spec_data(base, grids, seeds, overrides, name))


def spec_yaml(spec: SweepSpec) -> str:
    """The spec as the YAML file it would have been (written into the sweep directory)."""
    header = "# The inline sweep's spec: `tdlens sweep spec.yaml` runs the same plan again.\n"
    return header + yaml.safe_dump(spec.raw, sort_keys=False)
