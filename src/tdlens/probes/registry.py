"""The probe registry: one declarative spec per probe, from which everything else derives.

A :class:`ProbeSpec` says what a probe is called (its table ``probes/<name>.csv``), which
config section switches and tunes it (``probes.<section>``, also its key in rounds.csv:
``<section>_s``), which random streams it draws from, which chains it needs rolled out,
the function that runs it, which of its columns are copied into learning_curves.csv,
the columns its table must have, which of its series the report plots (and any figures
of its own report section), and its glossary line. The probe manager (what
runs, in which order, on which chains), the runner (learning-curve and rounds.csv
columns), the report (probe sections, summary-column sources, key-series figure) and
the docs test all read this registry, so adding a probe is one module with its ``run``
function plus one :func:`register` call (and its tests and docs/metrics.md section).

Functions may be given as callables or as ``"module:function"`` strings, resolved on
first use, so importing the registry stays cheap (the report reads it without loading
any probe). A ``run`` function receives a :class:`RoundContext` and writes its row into
``ctx.out.rows[name]`` (``iter`` is added by the manager), its arrays into
``ctx.out.arrays`` and, optionally, its own timing breakdown into ``ctx.out.timings``
(otherwise the manager times it under ``section``). Probes that share one ``run``
function (fixed point and stability) are run once per round.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from tdlens import config as config_module
from tdlens import seeding
from tdlens.schema import BATCH_RHO_COLUMNS

Fn = Callable[..., Any] | str


@dataclass
class RoundContext:
    """What a probe's ``run`` sees: the frozen snapshot of iteration ``n`` and the round.

    ``state`` persists across rounds (and checkpoints: numpy arrays or None per key);
    ``rolled`` holds every chain the enabled probes declared (None when none did).
    """

    cfg: Any
    maps: Any
    params: Any
    n: int
    delta: Any
    td_loss: float
    rolled: Any
    state: dict[str, Any]
    workspace: Any
    out: Any


@dataclass(frozen=True)
class ProbeSpec:
    """One probe (module docstring)."""

    name: str
    section: str
    run: Fn
    streams: tuple[str, ...] = ()
    chains: Fn | None = None
    summary: Mapping[str, str] = field(default_factory=dict)
    key_series: tuple[tuple[str, str | None], ...] = ()
    doc: str = ""
    config: type[BaseModel] | Mapping[str, Any] | None = None
    columns: tuple[str, ...] = ()
    figures: Fn | None = None

    def figures_fn(self) -> Callable[[Any], tuple[list[dict], str]] | None:
        """The report figures of its section (``data -> (figures, caption)``), if any."""
        return None if self.figures is None else _resolve(self.figures)

    def run_fn(self) -> Callable[[RoundContext], None]:
        return _resolve(self.run)

    def chain_specs(self, cfg: Any) -> tuple[Any, ...]:
        """The chains this probe needs rolled out for `cfg` (none without ``chains``)."""
        if self.chains is None:
            return ()
        found = _resolve(self.chains)(cfg)
        if found is None:
            return ()
        return tuple(found) if isinstance(found, tuple | list) else (found,)


_REGISTRY: dict[str, ProbeSpec] = {}
_RESOLVED: dict[str, Callable[..., Any]] = {}


def _resolve(fn: Fn) -> Callable[..., Any]:
    if callable(fn):
        return fn
    if fn not in _RESOLVED:
        module, _, name = fn.partition(":")
        _RESOLVED[fn] = getattr(importlib.import_module(module), name)
    return _RESOLVED[fn]


def section_model(spec: ProbeSpec) -> type[BaseModel] | None:
    """The model of the config section `spec` brings: its `config` model, or one built
    from its `config` fields (``name -> (type, default)``, as :func:`pydantic.create_model`
    takes them; frozen, unknown keys refused), so a probe declares its section without
    the registry importing the probe's module. None when it brings none."""
    if spec.config is None or isinstance(spec.config, type):
        return spec.config
    return create_model(
        f"{spec.section}_config",
        __config__=ConfigDict(extra="forbid", frozen=True, validate_default=True),
        **dict(spec.config),
    )


def _check_section(spec: ProbeSpec) -> type[BaseModel] | None:
    """A probe's config section must exist and switch it: a built-in section of
    ``ProbesConfig`` (a model with ``enabled``) when the spec brings no `config`, else a
    new section whose model has ``enabled``. Raises ValueError naming the probe; returns
    the model it brings."""
    builtin = config_module.ProbesConfig.model_fields
    taken = spec.section in builtin or spec.section in config_module.EXTRA_PROBE_SECTIONS
    brought = model = section_model(spec)
    if model is None:
        field_ = builtin.get(spec.section)
        model = None if field_ is None else field_.annotation
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            raise ValueError(
                f"probe '{spec.name}': no config section 'probes.{spec.section}'; register "
                "it with config=<a pydantic model with an 'enabled' field>"
            )
    elif taken:
        raise ValueError(f"probe '{spec.name}': config section 'probes.{spec.section}' is taken")
    if "enabled" not in model.model_fields:
        raise ValueError(f"probe '{spec.name}': its config model needs an 'enabled' field")
    return brought


def register(spec: ProbeSpec) -> ProbeSpec:
    """Add `spec` (after the built-in probes, in call order); its streams and, when it
    brings one, its config section become known to the seeding and config modules. Its
    section is checked first (:func:`_check_section`), so a probe without one fails here
    rather than at its first round."""
    if spec.name in _REGISTRY:
        raise ValueError(f"probe '{spec.name}' is already registered")
    clash = [k for s in _REGISTRY.values() for k in s.summary if k in spec.summary]
    if clash:
        raise ValueError(f"probe '{spec.name}': learning-curve columns {clash} already taken")
    model = _check_section(spec)
    for stream in spec.streams:
        seeding.register_stream(stream)
    if model is not None:
        config_module.EXTRA_PROBE_SECTIONS[spec.section] = model
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a probe registered with :func:`register` (tests register toy probes)."""
    spec = _REGISTRY.pop(name)
    if spec.config is not None:
        config_module.EXTRA_PROBE_SECTIONS.pop(spec.section, None)


def specs() -> tuple[ProbeSpec, ...]:
    """Every registered probe, in order (the order of tables, rounds.csv and rounds)."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def spec_of(name: str) -> ProbeSpec:
    """The registered probe called `name` (KeyError when none is)."""
    return _REGISTRY[name]


def sections() -> tuple[str, ...]:
    """Config sections of the registered probes, once each, in registry order."""
    return tuple(dict.fromkeys(s.section for s in _REGISTRY.values()))


def enabled(cfg: Any) -> tuple[ProbeSpec, ...]:
    """The probes a run of `cfg` runs (``probes.enabled`` and their section's ``enabled``)."""
    if not cfg.probes.enabled:
        return ()
    return tuple(s for s in _REGISTRY.values() if cfg.probes.section(s.section).enabled)


def summary_columns() -> tuple[str, ...]:
    """learning_curves.csv columns filled only where a probe ran: ``probe_reason`` and
    every probe's summary columns, in registry order."""
    return ("probe_reason", *(c for s in _REGISTRY.values() for c in s.summary))


def summary_source(column: str) -> tuple[str, str] | None:
    """(probe, its column) a learning-curve summary column is copied from."""
    for spec in _REGISTRY.values():
        if column in spec.summary:
            return spec.name, spec.summary[column]
    return None


def round_columns() -> tuple[str, ...]:
    """probes/rounds.csv: seconds of the shared rollout, of each probe, of the round."""
    return ("iter", "reason", "rollout_s", *(f"{s}_s" for s in sections()), "total_s")


def key_series() -> tuple[tuple[str, str, str | None], ...]:
    """(probe, column, reference column) of the report's key-probe figure."""
    return tuple((s.name, c, r) for s in _REGISTRY.values() for c, r in s.key_series)


# --------------------------------------------------------------------------- built-ins

register(
    ProbeSpec(
        name="fixed_point_probe",
        section="fixed_point",
        run="tdlens.probes.critic:run_round",
        streams=("probe_fixed_point",),
        chains="tdlens.probes.common:fixed_point_chains",
        summary={
            "fixed_point_gap": "w_gap",
            "fixed_point_value_gap": "value_gap",
            "fixed_point_drift": "w_sharp_drift",
            "fixed_point_drift_defined": "w_sharp_drift_defined",
        },
        key_series=(("value_gap", None), ("w_sharp_drift", "noise_floor")),
        columns=(
            *BATCH_RHO_COLUMNS,
            "iter",
            "batch_size",
            "converged",
            "lam",
            "modes_below_lam",
            "noise_floor",
            "num_iters",
            "residual",
            "ridge",
            "tol",
            "value_gap",
            "w_gap",
            "w_sharp_drift",
            "w_sharp_drift_defined",
        ),
        doc="the TD fixed point w# = A^-1 b of the probe batch and the critic's distance to it",
    )
)
register(
    ProbeSpec(
        name="stability_probe",
        section="stability",
        run="tdlens.probes.critic:run_round",
        streams=("probe_stability",),
        chains="tdlens.probes.common:stability_chains",
        summary={"stability_proxy": "stability_proxy"},
        key_series=(("eig_max_real", None), ("eig_min_real", "spectral_noise")),
        columns=(
            *BATCH_RHO_COLUMNS,
            "iter",
            "batch_size",
            "critical_step",
            "eig_max_abs",
            "eig_max_real",
            "eig_min_real",
            "fastest_timescale",
            "growth_timescale",
            "power_iters",
            "slowest_timescale",
            "spectral_noise",
            "stability_probe_step_scale",
            "stability_proxy",
            "stability_proxy_mean",
            "stability_proxy_std",
        ),
        doc="the spectrum of A, the critical step and the timescales of the expected update",
    )
)
register(
    ProbeSpec(
        name="distribution_probe",
        section="distribution",
        run="tdlens.probes.distribution:run_round",
        streams=("probe_distribution",),
        chains="tdlens.probes.common:distribution_chains",
        summary={
            "dist_mmd2": "mmd2",
            "dist_mean_l2": "mean_l2",
            "dist_action_kl": "dist_action_kl",
            "dist_action_tv": "dist_action_tv",
        },
        key_series=(("mmd2", None), ("dist_action_kl", None)),
        columns=(
            *BATCH_RHO_COLUMNS,
            "iter",
            "action_samples",
            "dist_action_kl",
            "dist_action_tv",
            "mean_l2",
            "mmd2",
            "mmd2_unbiased",
            "mmd_pvalue",
            "mmd_sigma",
            "num_samples",
        ),
        doc="how far the state-action distribution of mu is from pi's (MMD, KL, TV)",
    )
)
register(
    ProbeSpec(
        name="q_kernel_probe",
        section="q_kernel",
        run="tdlens.probes.q_kernel:run_round",
        summary={
            "td_loss_from_Q": "td_loss_from_Q",
            "td_loss_from_Q_abs_diff": "td_loss_from_Q_abs_diff",
            "td_loss_from_Q_rel_diff": "td_loss_from_Q_rel_diff",
        },
        key_series=(("td_loss_from_Q_rel_diff", None),),
        figures="tdlens.pages.plots:plot_q_kernel",
        columns=(
            "iter",
            "cache_batch_size",
            "cache_horizon",
            "cache_valid_t",
            "td_loss",
            "td_loss_cache",
            "td_loss_from_Q",
            "td_loss_from_Q_abs_diff",
            "td_loss_from_Q_cache_rel_diff",
            "td_loss_from_Q_rel_diff",
        ),
        doc="the TD-error kernel Q_hat of the iteration's own trajectories",
    )
)
register(
    ProbeSpec(
        name="rho_audit",
        section="rho_audit",
        run="tdlens.probes.rho_audit:run_round",
        streams=("probe_rho_audit",),
        chains="tdlens.probes.common:audit_chains",
        key_series=(("rho2_mean_emp", "rho2_mean_theory"),),
        columns=(
            "iter",
            "passed",
            "rho_mean_emp",
            "rho_mean_theory",
            "rho_mean_z",
            "rho2_mean_emp",
            "rho2_mean_theory",
            "rho2_mean_z",
        ),
        doc="importance ratios of a fresh batch against their closed-form moments",
    )
)
