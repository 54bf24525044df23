"""One probe round over a frozen snapshot, and the state that carries across rounds (SPEC 6).

The trainer calls ``due(n, td_loss_history)`` after its update of iteration n and, when a
reason comes back, ``run(n, params, delta, td_loss, reason)`` with the parameters frozen
at the end of the iteration. Probes draw only from their own streams
(:mod:`tdlens.probes.common`) and never write to ``params`` or ``delta``, so the learning
curves are bit-identical with probes on or off.

A round rolls out every chain it needs in one call (:func:`tdlens.probes.common.plan_chains`:
the fixed-point batch, k_mc stability batches, the distribution probe's chains under mu,
pi and mu (rho), the rho-audit chain), then runs fixed point and stability together
(:mod:`tdlens.probes.critic`), distribution, q_kernel and rho audit. Disabled probes are
skipped and their summary columns are absent. Timings are seconds per probe (dotted keys
break a probe down; "rollout" is the shared rollout; "total" the whole round).

State across rounds: the previous w# (for w_sharp_drift) and the schedule's counters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tdlens.config import RunConfig
from tdlens.features import FeatureMaps, Workspace
from tdlens.learner import Params
from tdlens.probes import distribution as dist
from tdlens.probes import q_kernel as qk
from tdlens.probes import rho_audit as ra
from tdlens.probes.common import (
    RolledChains,
    RoundPlan,
    aux_rng,
    plan_chains,
    rho_summary,
    roll_chains,
)
from tdlens.probes.critic import critic_probes
from tdlens.probes.schedule import ProbeSchedule

PROBE_NAMES = (
    "fixed_point_probe",
    "stability_probe",
    "distribution_probe",
    "q_kernel_probe",
    "rho_audit",
)


@dataclass
class ProbeRound:
    """Everything one round produced; the run layer writes it (probes/ relative names)."""

    n: int
    reason: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class ProbeManager:
    """Schedules and runs probe rounds; its state_dict makes a resumed run identical."""

    def __init__(self, cfg: RunConfig, maps: FeatureMaps) -> None:
        self.cfg = cfg
        self.maps = maps
        self.schedule = ProbeSchedule(cfg)
        self.w_sharp_prev: np.ndarray | None = None
        self._workspace = Workspace()

    def due(self, n: int, td_loss_history: Sequence[float]) -> str | None:
        """Reason a round is due after iteration n ("last", "every", "plateau") or None."""
        return self.schedule.due(n, td_loss_history)

    def run(
        self, n: int, params: Params, delta: np.ndarray, td_loss: float, reason: str
    ) -> ProbeRound:
        """Run every enabled probe on the frozen snapshot of iteration n."""
        start = time.perf_counter()
        out = ProbeRound(n=n, reason=reason)
        plan = plan_chains(self.cfg)
        specs = plan.specs()
        rolled = None
        if specs:
            rolled = roll_chains(self.cfg, self.maps, params, specs, n)
            out.timings["rollout"] = time.perf_counter() - start
        if plan.fixed is not None or plan.stability:
            critic = critic_probes(
                self.cfg, self.maps, rolled, plan, params, n, self.w_sharp_prev, self._workspace
            )
            out.rows.update(critic.rows)
            out.arrays.update(critic.arrays)
            out.timings.update(critic.timings)
            if critic.w_sharp is not None:
                self.w_sharp_prev = critic.w_sharp.copy()
        if plan.distribution:
            self._timed(out, "distribution", self._distribution, rolled, plan, params, n)
        if self.cfg.probes.q_kernel.enabled:
            self._timed(out, "q_kernel", self._q_kernel, delta, td_loss, n)
        if plan.audit is not None:
            self._timed(out, "rho_audit", self._rho_audit, rolled, plan, params, n)
        for name, row in out.rows.items():
            out.rows[name] = {"iter": float(n), **row}
        out.summary = summary_columns(out.rows)
        out.timings["total"] = time.perf_counter() - start
        self.schedule.record(n, reason)
        return out

    def state_dict(self) -> dict[str, float | int | str | np.ndarray | None]:
        """npz-safe state: schedule counters (-1 = none) and the previous w# (may be empty)."""
        prev = self.w_sharp_prev
        return {
            **{f"schedule_{k}": v for k, v in self.schedule.state_dict().items()},
            "w_sharp_prev": np.zeros(0) if prev is None else prev.copy(),
            "w_sharp_prev_defined": int(prev is not None),
        }

    def load_state_dict(self, d: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict` (values may be 0-d arrays, as read from npz)."""
        prefix = "schedule_"
        self.schedule.load_state_dict(
            {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}
        )
        defined = bool(int(np.asarray(d["w_sharp_prev_defined"])))
        self.w_sharp_prev = np.array(d["w_sharp_prev"], dtype=np.float64) if defined else None

    # ------------------------------------------------------------------ probe bodies

    @staticmethod
    def _timed(out: ProbeRound, name: str, fn, *args) -> None:
        start = time.perf_counter()
        fn(out, *args)
        out.timings[name] = out.timings.get(name, 0.0) + time.perf_counter() - start

    def _distribution(
        self, out: ProbeRound, rolled: RolledChains, plan: RoundPlan, params: Params, n: int
    ) -> None:
        cfg, conf = self.cfg, self.cfg.probes.distribution
        mu_spec, pi_spec, rho_spec = plan.distribution
        T = conf.num_samples
        paths = [rolled.chain_paths(spec) for spec in (mu_spec, pi_spec)]
        X, Y = (p.o[:T, 0] for p in paths)
        m_pi, m_mu = (
            np.concatenate([p.mean_under(theta)[:T, 0] for p in paths])
            for theta in (params.theta_pi, params.theta_mu)
        )
        sigma = dist.median_bandwidth(
            np.concatenate([X, Y]),
            aux_rng(cfg, "probe_distribution", n, 0),
            conf.mmd_bandwidth_samples,
        )
        mmd2, mmd2_u = dist.mmd2(X, Y, sigma)
        pvalue, points = dist.mmd_permutation_pvalue(
            X, Y, sigma, conf.permutations, aux_rng(cfg, "probe_distribution", n, 1)
        )
        tv, tv_se = dist.action_tv(
            m_pi,
            cfg.sigma_pi,
            m_mu,
            cfg.sigma_mu,
            conf.action_samples,
            aux_rng(cfg, "probe_distribution", n, 2),
        )
        rho_batch = rolled.td_batch(cfg, self.maps, [rho_spec], params.theta_pi, False)
        out.rows["distribution_probe"] = {
            "mmd2": mmd2,
            "mmd2_unbiased": mmd2_u,
            "mmd_sigma": sigma,
            "mmd_pvalue": pvalue,
            "mmd_perm_points": float(points),
            "permutations": float(conf.permutations),
            "mean_l2": dist.mean_l2(X, Y),
            "dist_action_kl": dist.action_kl(m_pi, cfg.sigma_pi, m_mu, cfg.sigma_mu),
            "dist_action_tv": tv,
            "dist_action_tv_se": tv_se,
            "num_samples": float(T),
            "action_samples": float(conf.action_samples),
            **rho_summary(rho_batch.rho, rho_batch.rho_raw, cfg.effective_rho_clip),
        }

    def _q_kernel(self, out: ProbeRound, delta: np.ndarray, td_loss: float, n: int) -> None:
        conf = self.cfg.probes.q_kernel
        kernel = qk.q_kernel(qk.td_cache(delta, conf.cache_batch_size, conf.max_horizon))
        out.rows["q_kernel_probe"] = qk.q_kernel_row(kernel, td_loss)
        out.arrays[f"q_kernel_{n:04d}.npy"] = kernel.Q_hat
        out.arrays[f"q_kernel_lag_{n:04d}.npy"] = kernel.lag

    def _rho_audit(
        self, out: ProbeRound, rolled: RolledChains, plan: RoundPlan, params: Params, n: int
    ) -> None:
        cfg = self.cfg
        batch = rolled.td_batch(cfg, self.maps, [plan.audit], params.theta_pi, False)
        row = ra.audit_td_batch(batch, cfg)
        row.update(rho_summary(batch.rho, batch.rho_raw, cfg.effective_rho_clip))
        out.rows["rho_audit"] = row
        out.arrays[f"rho_hist_{n:04d}.npy"] = batch.rho_raw[0].copy()


SUMMARY_COLUMNS = {
    "fixed_point_gap": ("fixed_point_probe", "w_gap"),
    "fixed_point_value_gap": ("fixed_point_probe", "value_gap"),
    "fixed_point_drift": ("fixed_point_probe", "w_sharp_drift"),
    "fixed_point_drift_defined": ("fixed_point_probe", "w_sharp_drift_defined"),
    "stability_proxy": ("stability_probe", "stability_proxy"),
    "dist_mmd2": ("distribution_probe", "mmd2"),
    "dist_mean_l2": ("distribution_probe", "mean_l2"),
    "dist_action_kl": ("distribution_probe", "dist_action_kl"),
    "dist_action_tv": ("distribution_probe", "dist_action_tv"),
    "td_loss_from_Q": ("q_kernel_probe", "td_loss_from_Q"),
    "td_loss_from_Q_abs_diff": ("q_kernel_probe", "td_loss_from_Q_abs_diff"),
    "td_loss_from_Q_rel_diff": ("q_kernel_probe", "td_loss_from_Q_rel_diff"),
}
"""Learning-curve column -> (probe, column) (SPEC 5); absent when the probe is disabled."""


def summary_columns(rows: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The SPEC 5 learning-curve probe columns of one round."""
    return {
        name: float(rows[probe][column])
        for name, (probe, column) in SUMMARY_COLUMNS.items()
        if probe in rows
    }
