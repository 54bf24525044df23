"""The run report's health checks, each declared once (docs/metrics.md, "Health checks").

A :class:`HealthCheck` names its check (the ``check`` cell of its glossary row and the
name of the :class:`~tdlens.report.verdicts.Check` it returns), its function and the
named constants its row quotes (``NAME = value``). The report runs them in registration
order; their count, the glossary test and the report's pages all read
:data:`HEALTH_CHECKS`, so a new check is its function, one entry here, its tests and its
glossary row (tests/test_glossary.py fails when the row or the entry is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tdlens.report import checks as general
from tdlens.report import probe_checks as probe
from tdlens.report import sanity_checks as sanity
from tdlens.report.verdicts import Check
from tdlens.rundir.read import RunData


@dataclass(frozen=True)
class HealthCheck:
    """One health check: `name` (its glossary row and its Check's name), `run` and the
    constants ``(NAME, value)`` its glossary row quotes as ``NAME = value``."""

    name: str
    run: Callable[[RunData], Check]
    constants: tuple[tuple[str, float], ...] = ()


HEALTH_CHECKS: tuple[HealthCheck, ...] = (
    HealthCheck("no_nan_inf", general.check_no_nan_inf),
    HealthCheck("probe_missing_values", general.check_probe_missing_values),
    HealthCheck("monotone_time", general.check_monotone_time),
    HealthCheck("rho_sane", general.check_rho_sane, (("RHO2_SANE_MAX", general.RHO2_SANE_MAX),)),
    HealthCheck("sigma_condition", general.check_sigma_condition),
    HealthCheck(
        "on_policy_expected",
        sanity.check_on_policy_expected,
        (("ON_POLICY_TOL", sanity.ON_POLICY_TOL),),
    ),
    HealthCheck("no_bootstrap_expected", sanity.check_no_bootstrap_expected),
    HealthCheck(
        "fixed_pi_expected",
        sanity.check_fixed_pi_expected,
        (
            ("FIXED_PI_DECAY_RTOL", sanity.FIXED_PI_DECAY_RTOL),
            ("FIXED_PI_GAP_FLOOR", sanity.FIXED_PI_GAP_FLOOR),
        ),
    ),
    HealthCheck("complete", general.check_complete),
    HealthCheck(
        "scale_consistency",
        probe.check_scale_consistency,
        (("SCALE_RATIO_TOL", probe.SCALE_RATIO_TOL),),
    ),
    HealthCheck(
        "loss_convention",
        probe.check_loss_convention,
        (
            ("LOSS_CACHE_REL_TOL", probe.LOSS_CACHE_REL_TOL),
            ("LOSS_SUBSAMPLE_Z", probe.LOSS_SUBSAMPLE_Z),
            ("LOSS_CV_FALLBACK", probe.LOSS_CV_FALLBACK),
        ),
    ),
    HealthCheck("fixed_point_converged", probe.check_fixed_point_converged),
    HealthCheck("rho_audit", probe.check_rho_audit),
    HealthCheck(
        "critic_frozen", probe.check_critic_frozen, (("FROZEN_REL_STEP", probe.FROZEN_REL_STEP),)
    ),
    HealthCheck("step_stable", probe.check_step_stable),
)
"""Every health check in report order (docs/metrics.md's list, then step_stable)."""
if len({c.name for c in HEALTH_CHECKS}) != len(HEALTH_CHECKS):
    raise ImportError("two health checks share a name")
