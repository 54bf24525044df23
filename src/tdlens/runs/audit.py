"""`tdlens audit rho RUN_DIR`: re-audit a run's importance ratios at its last checkpoint.

Loads the run's config and latest checkpoint, rolls out one fresh chain of
``probes.rho_audit.batch_size`` steps under the saved behaviour policy (from the
rho-audit stream, keyed past every in-run round so it never repeats one), and compares
the empirical ratio moments with their closed forms (SPEC 6.5,
:mod:`tdlens.probes.rho_audit`). Reads the run directory; writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from tdlens.config import config_from_json
from tdlens.features import make_feature_maps
from tdlens.learner import collect
from tdlens.probes.rho_audit import audit_td_batch
from tdlens.rundir.files import RunFileError
from tdlens.runs.checkpoint import newest_valid_checkpoint
from tdlens.seeding import stream

AUDIT_KEY = 10**9
"""Stream key of the post-run audit chain: beyond any iteration a run can have."""


def audit_run_rho(run_dir: str | Path) -> tuple[int, dict[str, float]]:
    """``(iteration audited, audit row)`` for the run's newest checkpoint that verifies
    (the one a resume would use)."""
    run_dir = Path(run_dir)
    cfg = config_from_json(run_dir / "config.json")
    found = newest_valid_checkpoint(run_dir, cfg.config_hash())
    if found.checkpoint is None:
        why = f" ({'; '.join(found.skipped)})" if found.skipped else ""
        raise RunFileError(f"'{run_dir}' has no valid checkpoint to audit{why}")
    ckpt = found.checkpoint
    maps = make_feature_maps(cfg)
    rng = stream(cfg.seed, "probe_rho_audit", AUDIT_KEY, 0)
    batch = collect(
        cfg,
        maps,
        ckpt.params.theta_mu,
        ckpt.params.theta_pi,
        [rng],
        cfg.probes.rho_audit.batch_size,
    )
    return ckpt.next_iter - 1, audit_td_batch(batch, cfg)
