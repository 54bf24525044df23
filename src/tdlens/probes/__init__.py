"""Diagnostic probes over a frozen snapshot of the learner (SPEC 6); pure computation, no I/O.

One module per probe (fixed_point, stability with spectrum, distribution, q_kernel,
rho_audit), shared pieces in common, the schedule, and the manager the trainer drives.
"""

from tdlens.probes.manager import PROBE_NAMES, ProbeManager, ProbeRound
from tdlens.probes.schedule import ProbeSchedule

__all__ = ["PROBE_NAMES", "ProbeManager", "ProbeRound", "ProbeSchedule"]
