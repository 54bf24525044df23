"""`tdlens audit rho RUN_DIR`: re-audit a run's importance ratios at its newest checkpoint.

Loads the run's config and newest checkpoint that verifies (iteration ``n = next_iter - 1``,
the parameters the run's last probe round saw) and compares the empirical ratio moments of
one chain of ``probes.rho_audit.batch_size`` steps under the saved behaviour policy with
their closed forms (docs/model.md §6.5, :mod:`tdlens.probes.rho_audit`). Which chain:

- ``replay`` (the default): the chain the run's own rho audit drew at iteration n
  (:func:`tdlens.probes.common.probe_rng` of stream ``probe_rho_audit``, chain 0): the
  same parameters and the same draws, so the row equals the report's row at n (probes/
  rho_audit.csv) up to float rounding. This is what checks a report.
- ``fresh``: an independent chain (key ``AUDIT_KEY``, beyond any iteration a run can
  have, so it never repeats a round). Its z-scores and the report's are two independent
  draws of (asymptotically) N(0, 1) variables: they differ by sampling noise, their
  difference has standard deviation sqrt(2) ~ 1.4. (Under common random numbers, the
  default, every in-run round reuses the same environment draws, so the report's audits
  are not independent of each other either; a fresh chain is a second opinion.)

The report's row at the audited iteration (or its newest row before it) comes back with
the audit, so the command can show both and say why they differ. Reads the run
directory; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tdlens.config import config_from_json
from tdlens.features import make_feature_maps
from tdlens.learner import collect
from tdlens.probes.common import ChainSpec, audit_chains, roll_chains
from tdlens.probes.rho_audit import audit_td_batch
from tdlens.rundir.files import RunFileError
from tdlens.rundir.read import load_run
from tdlens.runs.checkpoint import newest_valid_checkpoint
from tdlens.seeding import stream

AUDIT_KEY = 10**9
"""Stream key of the fresh post-run audit chain: beyond any iteration a run can have."""
AUDIT_TABLE = "rho_audit"
"""The run's own audit table (probes/rho_audit.csv)."""

Draws = Literal["replay", "fresh"]


@dataclass(frozen=True)
class RhoAuditResult:
    """An audit of a run's ratios and the run's own audit row to compare it with.

    ``n``: the audited (0-based) iteration; ``row``: the rho_audit columns; ``draws``:
    ``replay`` or ``fresh`` (module docstring); ``report_row``: the run's probes/
    rho_audit.csv row at ``report_iter`` (n, or the newest before it), None when the run
    has no audit row up to n.
    """

    n: int
    row: dict[str, float]
    draws: Draws
    report_row: dict[str, float] | None
    report_iter: int | None

    @property
    def same_sample(self) -> bool:
        """True when the audit and the report's row measure the same chain (so must agree)."""
        return self.draws == "replay" and self.report_iter == self.n


def audit_run_rho(run_dir: str | Path, draws: Draws = "replay") -> RhoAuditResult:
    """Audit the ratios at the run's newest checkpoint that verifies (the one a resume
    would use) with the chain `draws` names (module docstring)."""
    run_dir = Path(run_dir)
    cfg = config_from_json(run_dir / "config.json")
    found = newest_valid_checkpoint(run_dir, cfg.config_hash())
    if found.checkpoint is None:
        why = f" ({'; '.join(found.skipped)})" if found.skipped else ""
        raise RunFileError(f"'{run_dir}' has no valid checkpoint to audit{why}")
    ckpt = found.checkpoint
    n = ckpt.next_iter - 1
    maps = make_feature_maps(cfg)
    if draws == "replay":
        spec = audit_chains(cfg) or ChainSpec("probe_rho_audit", 0, cfg.probes.rho_audit.batch_size)
        rolled = roll_chains(cfg, maps, ckpt.params, [spec], n)
        batch = rolled.td_batch(cfg, maps, [spec], ckpt.params.theta_pi, False)
    else:
        rng = stream(cfg.seed, "probe_rho_audit", AUDIT_KEY, 0)
        batch = collect(
            cfg,
            maps,
            ckpt.params.theta_mu,
            ckpt.params.theta_pi,
            [rng],
            cfg.probes.rho_audit.batch_size,
        )
    report_iter, report_row = _report_row(run_dir, n)
    return RhoAuditResult(n, audit_td_batch(batch, cfg), draws, report_row, report_iter)


def _report_row(run_dir: Path, n: int) -> tuple[int | None, dict[str, float] | None]:
    """The run's rho_audit row at iteration n, else its newest row before n."""
    table = load_run(run_dir).probe(AUDIT_TABLE)
    best: tuple[int | None, dict[str, float] | None] = (None, None)
    for row in table.rows:
        it = row.get("iter")
        if isinstance(it, float) and it <= n and (best[0] is None or it >= best[0]):
            best = (int(it), {k: v for k, v in row.items() if isinstance(v, float)})
    return best
