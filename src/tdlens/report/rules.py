"""Next-step rules (docs/model.md §8): each fires on the run's own numbers, names the values that
fired it and proposes a concrete change with numbers. Thresholds are the constants below.

A rule is a pure function ``(RunData, checks) -> NextStep | None``; :func:`next_steps`
runs them in order and, only when none fires, says "no major rule-based issues detected".
A message says what fired, then ``Next: <action>.``: the verdict card's Next quotes that
action (:func:`tdlens.report.card.next_sentence`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tdlens.config import RunConfig
from tdlens.pages.fmt import fmt, fmt_count
from tdlens.regimes import NOT_AVAILABLE, intervention_set, per_label
from tdlens.report.series_stats import ls_slope
from tdlens.report.theory import floor_plan
from tdlens.report.verdicts import FAIL, PASS, WARN, Check, NextStep
from tdlens.rundir.read import RunData
from tdlens.scores import DRIFT_NOISE_FACTOR, label_regime, relative_steps, series_of

RHO2_ESS_LIMIT = 2.0
"""rho_variance: fires when mean_rho2 exceeds this (effective sample size 1/E[rho^2]
below half the batch) or sigma_condition fails."""
EXPLODE_FACTOR = 10.0
"""exploding: last value > this x the mean of the first EXPLODE_HEAD values, and rising."""
EXPLODE_HEAD = 5
FLAT_REL_RANGE = 1e-3
"""metrics_flat: (max - min) / |mean| of w_norm and critic_teacher_error below this..."""
FLAT_MIN_ROWS = 10
"""...over at least this many iterations."""
RELAX_EFOLDS = 3.0
"""critic_frozen: the proposed alpha_w lets the fastest mode relax this many times per run."""
SAFE_FRACTION = 0.5
"""critic_frozen / exploding: propose at most this fraction of the critical alpha_w."""
CRITIC_FROZEN_HINT = 10.0
"""critic_frozen without a stability probe: propose this factor on alpha_w."""
NO_ISSUES = (
    "no major rule-based issues detected; consider longer runs or new probes if results "
    "are inconclusive."
)

Rule = Callable[[RunData, dict[str, Check]], NextStep | None]


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _eta_per_alpha(data: RunData) -> float | None:
    """``eta / alpha_w = s B T`` (1 for step_normalization mean), docs/model.md §6.2."""
    cfg = data.cfg
    if cfg is None:
        return None
    return cfg.step_scale * cfg.trajectories * cfg.horizon


def _critical_alpha(data: RunData) -> float | None:
    """The alpha_w whose eta equals the last stability probe's critical_step (its
    critical_alpha_w column, else ``critical_step / (s B T)``)."""
    stab = data.probe("stability_probe")
    recorded = stab.last("critical_alpha_w")
    if recorded is not None and math.isfinite(recorded):
        return recorded
    crit = stab.last("critical_step")
    per = _eta_per_alpha(data)
    if crit is None or per is None or not math.isfinite(crit) or per <= 0:
        return None
    return crit / per


def rule_run_status(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """An incomplete, diverged or failed run: resume, lower the step, or fix the error."""
    check = checks.get("complete")
    if check is None or check.verdict == PASS:
        return None
    status, reason = data.status.get("status"), data.status.get("reason")
    values = {"status": status, "reason": reason, "next_iter": data.status.get("next_iter")}
    if status == "diverged" and data.cfg is not None:
        crit = _critical_alpha(data)
        bound = f" (critical alpha_w from the last stability probe: {fmt(crit)})" if crit else ""
        msg = (
            f"run diverged ({reason}). Next: lower alpha_w from {fmt(data.cfg.alpha_w)} to "
            f"{fmt(data.cfg.alpha_w / 4)}{bound}, or clip rho and raise beta."
        )
    elif status == "failed" and ("MemoryError" in str(reason) or "allocate" in str(reason)):
        msg = (
            f"run failed ({reason}). Next: make the run smaller (env.feature_dim, trajectories, "
            "horizon or the probes' batch_size) until `tdlens run --dry-run` says it fits "
            "in memory, then run it again."
        )
    elif status == "failed":
        msg = (
            f"run failed ({reason}). Next: fix the exception (traceback under Status), then "
            f"resume with `tdlens run --resume {data.run_dir}`."
        )
    else:
        msg = (
            f"run stopped early ({check.reason or check.detail}). Next: continue it with "
            f"`tdlens run --resume {data.run_dir}`."
        )
    return NextStep("run_status", msg, values)


def rule_convention_scale(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """Loss-convention or step-scale mismatches between the probes and the trainer."""
    bad = [
        checks[n]
        for n in ("scale_consistency", "loss_convention")
        if n in checks and checks[n].verdict == FAIL
    ]
    if not bad:
        return None
    fixes = {
        "scale_consistency": "the stability probe must use eta = alpha_w s B T, the "
        "trainer's step (stability_probe_step_scale = train_step_scale)",
        "loss_convention": "td_loss_from_Q must be mean_t Q_hat(t, t) = mean delta^2 "
        "with no 1/2, like td_loss",
    }
    msg = "; ".join(f"{c.name} FAIL ({c.reason or c.detail}): {fixes[c.name]}" for c in bad)
    return NextStep("convention_scale_mismatch", msg + ".", {c.name: c.observed for c in bad})


def rule_rho_variance(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """Importance-ratio variance too large: infinite (sigma condition) or ESS < 1/2."""
    cfg = data.cfg
    rho2 = _finite(data.curves.values("mean_rho2"))
    peak = float(rho2.max()) if len(rho2) else None
    sigma_fail = (
        checks.get("sigma_condition") is not None and checks["sigma_condition"].verdict == FAIL
    )
    if cfg is None or not (sigma_fail or (peak is not None and peak > RHO2_ESS_LIMIT)):
        return None
    p99 = data.curves.values("p99_rho")
    p99_last = float(_finite(p99)[-1]) if len(_finite(p99)) else None
    values = {
        "max_mean_rho2": peak,
        "p99_rho": p99_last,
        "sigma_mu": cfg.sigma_mu,
        "sigma_pi": cfg.sigma_pi,
        "beta": cfg.beta,
        "rho_clip": cfg.effective_rho_clip,
    }
    actions = []
    if cfg.sigma_pi > cfg.sigma_mu:
        actions.append(
            f"raise sigma_mu from {fmt(cfg.sigma_mu)} to {fmt(cfg.sigma_pi)} "
            "(sigma_mu >= sigma_pi keeps E_mu[rho^2] finite and near 1)"
        )
    if p99_last is not None and (
        cfg.effective_rho_clip is None or cfg.effective_rho_clip > p99_last
    ):
        actions.append(f"clip rho at {fmt(max(p99_last, 1.0))} (its p99)")
    actions.append(
        f"raise beta from {fmt(cfg.beta)} to {fmt(min(1.0, max(2 * cfg.beta, 0.1)))} "
        "so mu's mean tracks pi's closer (beta does not change sigma_mu)"
    )
    causes = []
    if sigma_fail:
        causes.append("sigma_pi^2 >= 2 sigma_mu^2: E_mu[rho^2] is infinite")
    if peak is not None and peak > RHO2_ESS_LIMIT:
        causes.append(
            f"max mean_rho2 = {fmt(peak)} > {fmt(RHO2_ESS_LIMIT)} (effective sample "
            f"size below {fmt(100 / peak)}% of the batch)"
        )
    cause = "; ".join(causes)
    return NextStep(
        "rho_variance", f"rho variance too large ({cause}). Next: {'; or '.join(actions)}.", values
    )


def rule_exploding(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """td_loss or w_norm exploding: last > EXPLODE_FACTOR x mean of the first
    EXPLODE_HEAD values and the last-k slope is positive."""
    fired = {}
    for col in ("td_loss", "w_norm"):
        it, x = data.curves.iters(), data.curves.values(col)
        ok = np.isfinite(x)
        x, it = x[ok], it[ok]
        if len(x) <= EXPLODE_HEAD:
            continue
        head = float(np.mean(x[:EXPLODE_HEAD]))
        tail_x, tail_t = x[-EXPLODE_HEAD:], it[-EXPLODE_HEAD:]
        slope = ls_slope(tail_t, tail_x) or 0.0
        if x[-1] > EXPLODE_FACTOR * head and slope > 0:
            fired[col] = {"last": float(x[-1]), "mean_first_5": head, "slope_last_k": slope}
    if not fired:
        return None
    what = "; ".join(
        f"{c} last {fmt(v['last'])} > {fmt(EXPLODE_FACTOR)} x first-5 mean "
        f"{fmt(v['mean_first_5'])}, slope {fmt(v['slope_last_k'])}"
        for c, v in fired.items()
    )
    action = ""
    if _off_policy(data):
        action = (
            ": lowering alpha_w only slows it down (an eigenvalue of A is below zero beyond "
            "the noise). Next: remove the negative eigenvalue (see growing_mode)"
        )
    elif data.cfg is not None:
        crit = _critical_alpha(data)
        target = data.cfg.alpha_w / EXPLODE_FACTOR
        if crit is not None:
            target = min(target, SAFE_FRACTION * crit)
        action = f". Next: lower alpha_w from {fmt(data.cfg.alpha_w)} to {fmt(target)}"
        if crit is not None:
            action += f" (critical alpha_w from critical_step: {fmt(crit)})"
    return NextStep("exploding", f"exploding ({what}){action}.", fired)


def _off_policy(data: RunData) -> bool:
    """The run's regime is ``diverged:off-policy`` (:func:`tdlens.scores.label_regime`)."""
    return label_regime(series_of(data)).label == "diverged:off-policy"


def _truncation_binds(cfg: RunConfig) -> bool:
    """``sigma_pi^2 > 2 sigma_mu^2 / gamma`` with rho clipped: the truncated ratio weights
    actions by ``min(pi, c mu)``, narrower than the pi that bar_phi bootstraps on, and the
    ``||a||^2`` feature's diagonal of A is negative (docs/triad.md)."""
    return (
        cfg.effective_rho_clip is not None
        and cfg.gamma > 0
        and (cfg.sigma_pi**2 > 2.0 * cfg.sigma_mu**2 / cfg.gamma)
    )


def rule_growing_mode(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """A growing mode of the expected TD dynamics: eig_min_real < -spectral_noise and
    growth_timescale shorter than the run."""
    stab, cfg = data.probe("stability_probe"), data.cfg
    eig_min, noise = stab.last("eig_min_real"), stab.last("spectral_noise") or 0.0
    growth = stab.last("growth_timescale")
    run_iters = cfg.outer_iters if cfg else len(data.curves)
    if eig_min is None or growth is None or not (eig_min < -noise and growth < run_iters):
        return None
    values = {
        "eig_min_real": eig_min,
        "spectral_noise": noise,
        "growth_timescale": growth,
        "run_iters": run_iters,
    }
    actions = "lower gamma, raise beta, raise p_mix, clip rho"
    if cfg is not None and _truncation_binds(cfg):
        actions = (
            f"narrow sigma_pi from {fmt(cfg.sigma_pi)} to {fmt(cfg.sigma_mu)} or widen "
            f"sigma_mu from {fmt(cfg.sigma_mu)} to {fmt(cfg.sigma_pi)}, or lift the "
            "truncation (rho_clip = 0, finite variance only while sigma_pi^2 < 2 sigma_mu^2): "
            f"rho truncated at {fmt(cfg.effective_rho_clip)} weights actions by "
            f"min(pi, {fmt(cfg.effective_rho_clip)} mu) while bar_phi bootstraps on pi, and "
            f"sigma_pi^2 = {fmt(cfg.sigma_pi**2)} > 2 sigma_mu^2 / gamma = "
            f"{fmt(2 * cfg.sigma_mu**2 / cfg.gamma)} (the deadly triad, docs/triad.md)"
        )
    elif cfg is not None:
        clip = cfg.effective_rho_clip
        actions = (
            f"lower gamma from {fmt(cfg.gamma)} to {fmt(max(0.0, 1 - 2 * (1 - cfg.gamma)))}, "
            f"raise beta from {fmt(cfg.beta)} to {fmt(min(1.0, max(2 * cfg.beta, 0.1)))}, "
            f"raise p_mix from {fmt(cfg.env.p_mix)} to "
            f"{fmt(min(1.0, max(2 * cfg.env.p_mix, 0.05)))}, "
            + (
                "clip rho at 10 (now unclipped)"
                if clip is None
                else f"clip rho tighter than {fmt(clip)}"
            )
        )
    return NextStep(
        "growing_mode",
        f"growing mode: eig_min_real = {fmt(eig_min)} < "
        f"-spectral_noise = {fmt(-noise)}, growth_timescale = {fmt(growth)} iterations "
        f"< run length {run_iters}; lowering alpha_w only slows the growth. Next: {actions}.",
        values,
    )


def rule_critic_frozen(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """The critic does not move: give fastest_timescale = 1/(eta max Re eig A) and the
    alpha_w that would relax the fastest mode RELAX_EFOLDS times within the run, bounded
    by the critical step (largest stable eta) of the last stability probe."""
    check = checks.get("critic_frozen")
    if check is None or check.verdict != WARN:
        return None
    rel = relative_steps(series_of(data))
    stab, cfg = data.probe("stability_probe"), data.cfg
    fastest, eig_max = stab.last("fastest_timescale"), stab.last("eig_max_real")
    run_iters = cfg.outer_iters if cfg else len(data.curves)
    values = {
        "max_rel_step": float(rel.max()),
        "median_rel_step": float(np.median(rel)),
        "fastest_timescale": fastest,
        "eig_max_real": eig_max,
        "critical_step": stab.last("critical_step"),
        "run_iters": run_iters,
    }
    head = (
        f"critic frozen: median delta_w_norm / w_norm = {fmt(float(np.median(rel)))} per iteration"
    )
    if cfg is None or fastest is None or not math.isfinite(fastest) or fastest <= 0:
        factor = CRITIC_FROZEN_HINT
        alpha = fmt(cfg.alpha_w * factor) if cfg else "a larger alpha_w"
        return NextStep(
            "critic_frozen",
            f"{head}; no usable fastest_timescale (enable "
            f"probes.stability): try alpha_w = {alpha} (x{fmt(factor)}) and check "
            "the stability probe's critical_step.",
            values,
        )
    rate = 1.0 / fastest
    eta = rate / eig_max if eig_max else math.nan
    needed = cfg.alpha_w * fastest * RELAX_EFOLDS / run_iters
    crit = _critical_alpha(data)
    values.update({"eta_x_eig_max_real": rate, "alpha_w_needed": needed, "alpha_w_critical": crit})
    msg = (
        f"{head}; eta x max Re eig(A) = {fmt(eta)} x {fmt(eig_max)} = {fmt(rate)} per "
        f"iteration: the fastest critic mode needs fastest_timescale ~{fmt_count(fastest)} "
        f"iterations (run: {run_iters}). alpha_w = {fmt(needed)} (now {fmt(cfg.alpha_w)}) "
        f"would relax it {fmt(RELAX_EFOLDS)} times within the run"
    )
    values.update(
        alpha_w_next=needed if crit is None else min(needed, cfg.alpha_w * CRITIC_FROZEN_HINT),
        outer_iters_at_alpha_w=RELAX_EFOLDS * fastest,
    )
    if crit is not None and needed > SAFE_FRACTION * crit:
        safe = SAFE_FRACTION * crit
        slow = fastest * cfg.alpha_w / safe
        values.update(alpha_w_next=safe, outer_iters_at_alpha_w_next=RELAX_EFOLDS * slow)
        msg += (
            f", but alpha_w up to {fmt(crit)} keeps it stable (critical_step = "
            f"{fmt(stab.last('critical_step'))}): use alpha_w = {fmt(safe)} (half the "
            f"critical step; fastest mode ~{fmt_count(slow)} iterations) and outer_iters >= "
            f"{fmt_count(RELAX_EFOLDS * slow)}"
        )
    elif crit is not None:
        msg += (
            f"; alpha_w up to {fmt(crit)} keeps it stable (critical_step). The critical step "
            "bounds the expected update only: its sampling noise grows with alpha_w, so raise "
            f"it stepwise (alpha_w = {fmt(min(needed, cfg.alpha_w * CRITIC_FROZEN_HINT))} next)"
        )
    plan = floor_plan(data)
    if plan is not None:
        values.update(
            {
                "effective_timescale": plan.effective_timescale,
                "iters_to_floor": plan.iters_to_floor,
                "alpha_w_to_floor": plan.alpha_w_to_floor,
            }
        )
        msg += (
            f". Over all modes (the initial error projected on each): effective_timescale "
            f"~{fmt_count(plan.effective_timescale)} iterations, value_gap reaches "
            f"probe_floor {fmt(plan.target)} (the lowest a probe can measure, "
            f"hypot(value_gap_floor, value_noise_floor / 2)) in "
            f"~{fmt_count(plan.iters_to_floor)} more "
            f"iterations; alpha_w = {fmt(plan.alpha_w_to_floor)} would reach it within the "
            f"run (critical alpha_w {fmt(plan.critical_alpha_w)}, 95% interval "
            f"{fmt(plan.critical_alpha_w_lo)}-{fmt(plan.critical_alpha_w_hi)})"
        )
    return NextStep("critic_frozen", msg + ".", values)


def rule_metrics_flat(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """w_norm and critic_teacher_error move less than FLAT_REL_RANGE over the run."""
    if len(data.curves) < FLAT_MIN_ROWS:
        return None
    spans = {}
    for col in ("w_norm", "critic_teacher_error"):
        x = _finite(data.curves.values(col))
        if len(x) < FLAT_MIN_ROWS or x.mean() == 0:
            return None
        spans[col] = float((x.max() - x.min()) / abs(x.mean()))
    if not all(s < FLAT_REL_RANGE for s in spans.values()):
        return None
    n = len(data.curves)
    what = ", ".join(f"{c} relative range {fmt(s)}" for c, s in spans.items())
    return NextStep(
        "metrics_flat",
        f"metrics flat over {n} iterations ({what} < "
        f"{fmt(FLAT_REL_RANGE)}): the critic's outputs did not change. Next: lengthen the "
        f"run beyond fastest_timescale or raise alpha_w (see critic frozen).",
        spans,
    )


def rule_fixed_point_drift(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """The fixed point moves faster than the critic: at the last probe with a defined
    drift, w_sharp_drift per iteration exceeds the mean delta_w_norm since the previous
    probe, and the drift exceeds its own noise: DRIFT_NOISE_FACTOR x w_sharp_drift_noise
    (the two half batches' moves, docs/model.md §6.1), or the half-batch noise_floor in a
    run without that column (as :func:`tdlens.scores.drift_over_noise` reads it)."""
    fp = data.probe("fixed_point_probe")
    if len(fp) < 2 or not all(fp.has(c) for c in ("w_sharp_drift", "noise_floor")):
        return None
    it, drift = fp.iters(), fp.values("w_sharp_drift")
    defined = fp.values("w_sharp_drift_defined") if fp.has("w_sharp_drift_defined") else None
    idx = [i for i in range(1, len(fp)) if defined is None or defined[i] == 1]
    if not idx:
        return None
    i = idx[-1]
    gap = it[i] - it[i - 1]
    noise = fp.values("noise_floor")[i]
    own = fp.values("w_sharp_drift_noise")[i] if fp.has("w_sharp_drift_noise") else math.nan
    threshold = DRIFT_NOISE_FACTOR * own if own > 0 else noise
    curve_it = data.curves.iters()
    window = (curve_it > it[i - 1]) & (curve_it <= it[i])
    dw = _finite(data.curves.values("delta_w_norm")[window])
    if gap <= 0 or not len(dw) or not (drift[i] > threshold):
        return None
    drift_rate, critic_rate = drift[i] / gap, float(dw.mean())
    if not drift_rate > critic_rate:
        return None
    values = {
        "w_sharp_drift": float(drift[i]),
        "iterations": float(gap),
        "noise_floor": float(noise),
        "w_sharp_drift_noise": float(own),
        "drift_per_iter": float(drift_rate),
        "delta_w_norm_mean": critic_rate,
    }
    noise_text = f"w_sharp_drift_noise {fmt(own)}" if own > 0 else f"noise_floor {fmt(noise)}"
    action = "slow the target policy"
    if data.cfg is not None:
        ratio = critic_rate / drift_rate
        if data.cfg.alpha_pi > 0:
            action = (
                f"lower alpha_pi from {fmt(data.cfg.alpha_pi)} to "
                f"{fmt(data.cfg.alpha_pi * ratio / 2)} so the fixed point moves at most half "
                "as fast as the critic, or raise alpha_w (bounded by critical_step)"
            )
        else:
            action = (
                f"lower beta from {fmt(data.cfg.beta)} to {fmt(data.cfg.beta * ratio / 2)}, "
                "or raise alpha_w (bounded by critical_step)"
            )
    return NextStep(
        "fixed_point_drift",
        f"fixed point drifting faster than the critic tracks it: "
        f"w_sharp_drift = {fmt(drift[i])} over {fmt(gap)} iterations "
        f"({fmt(drift_rate)} per iteration, {noise_text}) vs the critic's "
        f"delta_w_norm {fmt(critic_rate)} per iteration. Next: {action}.",
        values,
    )


def _advice_slow_modes(data: RunData, ev: dict[str, float], cfg: RunConfig) -> str:
    """slow-modes: a run of RELAX_EFOLDS x tau_obs iterations or a larger alpha_w (at most
    SAFE_FRACTION of the critical one)."""
    tau = ev["tau_obs"]
    crit = _critical_alpha(data)
    if math.isfinite(tau):
        runs = fmt_count(RELAX_EFOLDS * tau)
        action = f"run outer_iters >= {runs} ({fmt(RELAX_EFOLDS)} x tau_obs)"
        alpha = cfg.alpha_w * tau * RELAX_EFOLDS / cfg.outer_iters
    else:
        action = "run longer only after raising alpha_w (the gap no longer falls)"
        alpha = cfg.alpha_w * CRITIC_FROZEN_HINT
    if crit is not None:
        alpha = min(alpha, SAFE_FRACTION * crit)
    action += f", or raise alpha_w from {fmt(cfg.alpha_w)} to {fmt(alpha)}"
    if crit is not None:
        action += f" (half the critical alpha_w {fmt(crit)} at most)"
    return action


def _advice_moving_target(data: RunData, ev: dict[str, float], cfg: RunConfig) -> str:
    """moving-target: alpha_pi / (2 x drift ratio), or a larger alpha_w."""
    ratio = ev["drift_ratio"]
    return (
        f"slow the target: alpha_pi from {fmt(cfg.alpha_pi)} to "
        f"{fmt(cfg.alpha_pi / (2 * ratio))} (drift ratio {fmt(ratio)} -> 0.5), or raise "
        "alpha_w (bounded by critical_step)"
    )


def _advice_noise_floor(data: RunData, ev: dict[str, float], cfg: RunConfig) -> str:
    """noise-floor: a quarter of alpha_w (the stationary RMS of the critic's noise scales
    like sqrt(eta)) or more trajectories per iteration."""
    return (
        f"lower alpha_w from {fmt(cfg.alpha_w)} to {fmt(cfg.alpha_w / 4)} (the critic's "
        "stationary noise RMS scales like sqrt(eta): half the floor) or use more "
        f"trajectories per iteration (now {cfg.trajectories})"
    )


def _advice_no_mechanism(data: RunData, ev: dict[str, float], cfg: RunConfig) -> str:
    """plateau without a mechanism: with counterfactuals (``gain_slow_modes`` in the
    evidence), no intervention is predicted to help beyond its band, so the advice is the
    report's predicted setting (verdict.advice); without, the label's intervention from
    the regime table."""
    if "gain_slow_modes" in ev:
        return (
            "no mechanism's intervention is predicted to lower the final value_gap beyond "
            "its band; see verdict.advice for the setting with the lowest predicted final "
            "value_gap, or test a mechanism with tdlens explain RUN --label LABEL"
        )
    changes = intervention_set("plateau", {"alpha_w": cfg.alpha_w}, _critical_alpha(data))
    told = ", ".join(f"{k} = {fmt(v)}" for k, v in changes.items())
    return f"no mechanism named (no value_gap series): try {told} with probes.fixed_point on"


AdviceBuilder = Callable[[RunData, dict[str, float], RunConfig], str]
"""The change a label asks for, as the action text of rule_plateau_mechanism, from the
run, its ``regime.evidence`` and its config."""


@dataclass(frozen=True)
class AdviceElsewhere:
    """The label's advice comes from another rule (named), or none is needed."""

    rule: str


ADVICE: dict[str, AdviceBuilder | AdviceElsewhere] = per_label(
    {
        "diverged": AdviceElsewhere("run_status, exploding, growing_mode"),
        "diverged:off-policy": AdviceElsewhere("growing_mode, exploding"),
        "diverged:step-size": AdviceElsewhere("run_status, exploding"),
        "frozen": AdviceElsewhere("critic_frozen"),
        "learning": AdviceElsewhere("none: keep going"),
        "plateau:noise-floor": _advice_noise_floor,
        "plateau:moving-target": _advice_moving_target,
        "plateau:slow-modes": _advice_slow_modes,
        "plateau": _advice_no_mechanism,
        NOT_AVAILABLE: AdviceElsewhere("none: too short to judge"),
    },
    "tdlens.report.rules.ADVICE",
)
"""The advice builder of every regime label (tdlens.regimes.REGIME_TABLE; import fails
when a label has none)."""


def rule_plateau_mechanism(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """A plateau named by its mechanism (:func:`tdlens.scores.label_regime`), with its
    evidence and the change that mechanism asks for (its :data:`ADVICE` builder)."""
    regime = label_regime(series_of(data))
    advice = ADVICE[regime.label]
    if isinstance(advice, AdviceElsewhere) or not regime.evidence:
        return None
    ev, cfg = regime.evidence, data.cfg
    head = f"{regime.label}: {regime.reason}"
    if cfg is None:
        return NextStep("plateau_mechanism", head + ".", ev)
    return NextStep("plateau_mechanism", f"{head}. Next: {advice(data, ev, cfg)}.", ev)


def rule_other_checks(data: RunData, checks: dict[str, Check]) -> NextStep | None:
    """Any other FAIL or WARN check, so that a failing run never reads "no issues"."""
    covered = {
        "complete",
        "scale_consistency",
        "loss_convention",
        "critic_frozen",
        "sigma_condition",
    }
    bad = [c for c in checks.values() if c.verdict != PASS and c.name not in covered]
    if not bad:
        return None
    hints = {
        "fixed_point_converged": "use probes.fixed_point.solver=direct or raise max_iters",
        "rho_audit": "rho disagrees with its closed form: compute it on the sampled "
        "(pre-clip) actions and check sigma_mu/sigma_pi",
        "no_nan_inf": "lower alpha_w or clip rho",
        "probe_missing_values": "a probe wrote NaN where it ran: see the probe's table",
    }
    msg = "; ".join(
        f"{c.name} {c.verdict} ({c.reason or c.detail})"
        + (f": {hints[c.name]}" if c.name in hints and c.verdict == FAIL else "")
        for c in bad
    )
    fixes = [hints[c.name] for c in bad if c.name in hints and c.verdict == FAIL]
    action = fixes[0] if fixes else f"look at {bad[0].name} under Health checks"
    return NextStep("health_checks", f"{msg}. Next: {action}.", {c.name: c.verdict for c in bad})


RULES: tuple[Rule, ...] = (
    rule_run_status,
    rule_convention_scale,
    rule_rho_variance,
    rule_exploding,
    rule_growing_mode,
    rule_critic_frozen,
    rule_metrics_flat,
    rule_fixed_point_drift,
    rule_plateau_mechanism,
    rule_other_checks,
)


def next_steps(data: RunData, checks: list[Check]) -> list[NextStep]:
    """Every rule that fires, in :data:`RULES` order; the "no issues" line when none does."""
    by_name = {c.name: c for c in checks}
    fired = [step for rule in RULES if (step := rule(data, by_name)) is not None]
    return fired or [NextStep("none", NO_ISSUES)]
