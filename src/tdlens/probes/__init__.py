"""Diagnostic probes over a frozen snapshot of the learner (docs/model.md §6); pure
computation, no I/O.

One module per probe (fixed_point, stability with spectrum, distribution, q_kernel,
rho_audit), shared pieces in common, the schedule, the registry that declares every probe
(:mod:`tdlens.probes.registry`) and the manager the trainer drives.
"""
