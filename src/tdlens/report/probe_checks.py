"""Health checks over the probe tables (docs/model.md §6, §8), part 2.

Each check reads ``probes/<name>.csv`` (and, for loss_convention, the saved Q_hat
arrays) and reports PASS "not applicable" when its probe did not run.
"""

from __future__ import annotations

import math

import numpy as np

from tdlens.pages.fmt import fmt
from tdlens.report.checks import iters_where
from tdlens.report.series_stats import nan_max, nan_mean
from tdlens.report.theory import floor_plan
from tdlens.report.verdicts import FAIL, PASS, WARN, Check
from tdlens.rundir.read import RunData, Table, array_files, load_array, read_q_kernel_cv
from tdlens.scores import (
    FROZEN_REL_STEP,
    frozen_reasons,
    label_regime,
    regime_family,
    relative_steps,
    series_of,
)

SCALE_RATIO_TOL = 1e-9
"""scale_consistency: |stability_probe_step_scale / train_step_scale - 1| allowed."""
LOSS_CACHE_REL_TOL = 1e-6
"""loss_convention: td_loss_from_Q_cache_rel_diff allowed (same entries: rounding only)."""
LOSS_SUBSAMPLE_Z = 5.0
"""loss_convention: td_loss_from_Q_rel_diff allowed = this many relative standard errors
of the cached-subsample mean of delta^2 (see :func:`subsample_rel_se`)."""
LOSS_CV_FALLBACK = math.sqrt(2.0)
"""Coefficient of variation of a trajectory's mean delta^2 used when no Q_hat is saved:
the Gaussian worst case (all T errors of a trajectory perfectly correlated)."""
"""critic_frozen: WARN when delta_w_norm / w_norm stays below this on every iteration."""


def check_scale_consistency(data: RunData) -> Check:
    """Every stability row: ``|stability_probe_step_scale / train_step_scale - 1| <=
    SCALE_RATIO_TOL``, and ``eta = train_step_scale * B * T`` when eta is recorded."""
    cfg, stab = data.cfg, data.probe("stability_probe")
    if cfg is None:
        return Check("scale_consistency", WARN, "config.json unreadable")
    if not len(stab):
        return Check("scale_consistency", PASS, "not applicable: no stability probe rows")
    if not stab.has("stability_probe_step_scale"):
        return Check("scale_consistency", WARN, "stability_probe_step_scale column missing")
    train = cfg.train_step_scale
    probe = stab.values("stability_probe_step_scale")
    if train == 0:
        ratio = np.where(probe == 0, 1.0, np.inf)  # alpha_w = 0: both scales must be 0
    else:
        ratio = probe / train
    dev = float(np.max(np.abs(ratio - 1.0)))
    observed = {
        "train_step_scale": train,
        "stability_probe_step_scale": stab.last("stability_probe_step_scale"),
        "max_abs_ratio_minus_1": dev,
        "tolerance": SCALE_RATIO_TOL,
    }
    problems = []
    if not dev <= SCALE_RATIO_TOL:
        problems.append(
            f"stability_probe_step_scale / train_step_scale = {ratio[-1]:.10g} "
            f"(max |ratio - 1| = {fmt(dev)} > {fmt(SCALE_RATIO_TOL)})"
        )
    if stab.has("eta") and train > 0:
        eta_ratio = stab.values("eta") / (train * cfg.trajectories * cfg.horizon)
        eta_dev = float(np.max(np.abs(eta_ratio - 1.0)))
        observed["max_abs_eta_ratio_minus_1"] = eta_dev
        if not eta_dev <= SCALE_RATIO_TOL:
            problems.append(f"eta / (train_step_scale B T) deviates from 1 by {fmt(eta_dev)}")
    if problems:
        return Check("scale_consistency", FAIL, "; ".join(problems), observed, problems[0])
    return Check(
        "scale_consistency",
        PASS,
        f"stability_probe_step_scale / train_step_scale = 1 "
        f"within {fmt(dev)} on {len(stab)} probes",
        observed,
    )


def trajectory_cv(Q_hat: np.ndarray) -> float:
    """Coefficient of variation of one trajectory's summed delta^2 under a Gaussian model:
    ``sqrt(2 sum_{t,t'} Q(t,t')^2) / tr Q`` (Isserlis: ``Var sum_t delta_t^2 = 2 ||Q||_F^2``
    for zero-mean Gaussian errors with covariance Q, ``Q_hat [T_c, T_c]``)."""
    Q = np.asarray(Q_hat, dtype=np.float64)
    Q = np.where(np.isfinite(Q), Q, 0.0)
    trace = float(np.trace(Q))
    if not trace > 0:
        return LOSS_CV_FALLBACK
    return float(math.sqrt(2.0 * float(np.sum(Q * Q))) / trace)


def subsample_rel_se(
    cv: float, cache_batch: float, batch: int, cache_t: float, horizon: int
) -> float:
    """Relative standard error of (td_loss_from_Q - td_loss) / td_loss: the cache holds
    ``B_c`` of the ``B`` trajectories, so ``cv * sqrt(1/B_c - 1/B)`` (a subset mean against
    the full mean); ``cv / sqrt(B_c)`` when the cache also cuts the horizon."""
    if not cache_batch >= 1:
        return math.inf
    if cache_t >= horizon:
        return cv * math.sqrt(max(1.0 / cache_batch - 1.0 / batch, 0.0))
    return cv / math.sqrt(cache_batch)


def _loss_tolerances(data: RunData, q: Table) -> np.ndarray:
    """Per-row relative standard error of the subsampled td_loss (module constants)."""
    cfg = data.cfg
    arrays = array_files(data.run_dir, "q_kernel")
    packed = read_q_kernel_cv(data.run_dir)  # a compacted sweep run's older rounds
    B = cfg.trajectories if cfg else math.inf
    T = cfg.horizon if cfg else math.inf
    out = np.empty(len(q))
    for i, (it, b_c, t_c) in enumerate(
        zip(q.iters(), q.values("cache_batch_size"), q.values("cache_horizon"), strict=True)
    ):
        path = arrays.get(int(it)) if math.isfinite(it) else None
        arr = load_array(path, cfg.env.feature_dim if cfg else None) if path is not None else None
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            cv = trajectory_cv(arr)
        else:
            cv = packed.get(int(it), LOSS_CV_FALLBACK) if math.isfinite(it) else LOSS_CV_FALLBACK
        out[i] = subsample_rel_se(cv, b_c, B, t_c, T)
    return out


def check_loss_convention(data: RunData) -> Check:
    """``td_loss_from_Q_cache_rel_diff < LOSS_CACHE_REL_TOL`` on every row (same entries,
    same convention: rounding only), and ``td_loss_from_Q_rel_diff`` within
    ``LOSS_SUBSAMPLE_Z`` relative standard errors of subsampling per row, and its signed
    mean over rows within ``LOSS_SUBSAMPLE_Z`` standard errors of that mean (a 1/2 factor
    shows as a mean of -0.5)."""
    q = data.probe("q_kernel_probe")
    if not len(q):
        return Check("loss_convention", PASS, "not applicable: no q_kernel probe rows")
    needed = ("td_loss_from_Q_cache_rel_diff", "td_loss_from_Q_rel_diff")
    missing = [c for c in needed if not q.has(c)]
    if missing:
        return Check("loss_convention", WARN, f"missing columns: {', '.join(missing)}")
    cache = q.values("td_loss_from_Q_cache_rel_diff")
    rel = np.abs(q.values("td_loss_from_Q_rel_diff"))
    se = _loss_tolerances(data, q)
    tol = np.maximum(LOSS_SUBSAMPLE_Z * se, LOSS_CACHE_REL_TOL)
    with np.errstate(divide="ignore", invalid="ignore"):
        signed = (q.values("td_loss_from_Q") - q.values("td_loss")) / q.values("td_loss")
    mean_signed = nan_mean(signed)
    se_mean = float(np.sqrt(np.mean(se**2)) / math.sqrt(len(q)))
    observed = {
        "max_cache_rel_diff": nan_max(cache),
        "cache_tol": LOSS_CACHE_REL_TOL,
        "max_rel_diff": nan_max(rel),
        "rel_diff_tol_last": float(tol[-1]),
        "rel_se_last": float(se[-1]),
        "mean_signed_rel_diff": mean_signed,
        "mean_tol": max(LOSS_SUBSAMPLE_Z * se_mean, LOSS_CACHE_REL_TOL),
    }
    problems = []
    if not np.all(cache < LOSS_CACHE_REL_TOL):
        problems.append(
            f"td_loss_from_Q_cache_rel_diff = {fmt(observed['max_cache_rel_diff'])} "
            f">= {fmt(LOSS_CACHE_REL_TOL)}: td_loss and Q_hat use different conventions"
        )
    over = ~(rel <= tol)
    if over.any():
        i = int(np.flatnonzero(over)[0])
        problems.append(
            f"td_loss_from_Q_rel_diff = {fmt(rel[i])} > {fmt(tol[i])} "
            f"({fmt(LOSS_SUBSAMPLE_Z)} subsampling SE) at iter {fmt(q.iters()[i])}"
        )
    if len(q) > 1 and mean_signed is not None and abs(mean_signed) > observed["mean_tol"]:
        problems.append(
            f"mean signed td_loss_from_Q_rel_diff = {fmt(mean_signed)} beyond "
            f"+-{fmt(observed['mean_tol'])}"
        )
    if problems:
        return Check("loss_convention", FAIL, "; ".join(problems), observed, problems[0])
    return Check(
        "loss_convention",
        PASS,
        f"max td_loss_from_Q_cache_rel_diff = "
        f"{fmt(observed['max_cache_rel_diff'])} < {fmt(LOSS_CACHE_REL_TOL)}; max "
        f"td_loss_from_Q_rel_diff = {fmt(observed['max_rel_diff'])} within "
        f"{fmt(LOSS_SUBSAMPLE_Z)} subsampling SE (last tol {fmt(tol[-1])})",
        observed,
    )


def check_fixed_point_converged(data: RunData) -> Check:
    """Every fixed-point solve converged: ``converged == 1`` on every row (the probe sets
    it when the relative residual reached tol, docs/model.md §6.1)."""
    fp = data.probe("fixed_point_probe")
    if not len(fp):
        return Check("fixed_point_converged", PASS, "not applicable: no fixed_point probe rows")
    if not fp.has("converged"):
        return Check("fixed_point_converged", WARN, "converged column missing")
    conv = fp.values("converged")
    bad = conv != 1
    observed = {
        "probes": len(fp),
        "not_converged": int(bad.sum()),
        "max_num_iters": nan_max(fp.values("num_iters")),
        "max_residual": nan_max(fp.values("residual")),
        "tol": fp.last("tol"),
    }
    if bad.any():
        text = (
            f"{int(bad.sum())} of {len(fp)} solves not converged (iter "
            f"{', '.join(iters_where(fp, bad)[:5])}; num_iters up to "
            f"{fmt(observed['max_num_iters'])}, residual up to {fmt(observed['max_residual'])})"
        )
        return Check(
            "fixed_point_converged",
            FAIL,
            text,
            observed,
            f"{int(bad.sum())} of {len(fp)} fixed-point solves not converged",
        )
    return Check(
        "fixed_point_converged",
        PASS,
        f"all {len(fp)} solves converged (max residual "
        f"{fmt(observed['max_residual'])}, max num_iters {fmt(observed['max_num_iters'])})",
        observed,
    )


def check_rho_audit(data: RunData) -> Check:
    """The rho audit's own verdict (``passed``) on every row (docs/model.md §6.5), the verdict
    ``tdlens audit rho`` prints for the same row: a z-score whose variance is infinite
    (``reliable == 0``) is left out of that verdict by the audit itself, so it is noted,
    not a WARN."""
    audit = data.probe("rho_audit")
    if not len(audit):
        return Check("rho_audit", PASS, "not applicable: no rho_audit rows")
    if not audit.has("passed"):
        return Check("rho_audit", WARN, "passed column missing")
    passed = audit.values("passed")
    observed = {
        name: audit.last(name)
        for name in (
            "rho_mean_emp",
            "rho_mean_theory",
            "rho_mean_z",
            "rho2_mean_emp",
            "rho2_mean_theory",
            "rho2_mean_z",
            "clipped_mean_z",
            "max_abs_z",
            "z_threshold",
            "reliable",
        )
    }
    observed["failed_rows"] = int(np.sum(passed != 1))
    values = (
        f"rho2_mean {fmt(observed['rho2_mean_emp'])} vs theory "
        f"{fmt(observed['rho2_mean_theory'])}, max |z| = {fmt(observed['max_abs_z'])} vs "
        f"{fmt(observed['z_threshold'])}"
    )
    if np.any(passed != 1):
        bad = iters_where(audit, passed != 1)
        return Check(
            "rho_audit",
            FAIL,
            f"audit failed at iter {', '.join(bad[:5])} ({values})",
            observed,
            f"rho audit failed at {len(bad)} of {len(audit)} probes",
        )
    left_out = (
        "; the rho^2 z-score is left out (infinite variance of rho^2: sigma_pi^2 >= 4/3 sigma_mu^2)"
        if observed["reliable"] == 0
        else ""
    )
    return Check(
        "rho_audit", PASS, f"passed on all {len(audit)} probes ({values}{left_out})", observed
    )


def check_critic_frozen(data: RunData) -> Check:
    """WARN when the critic does not move on the run's timescale (docs/model.md §8, §11), by the one
    definition the sweep's regime label uses (:func:`tdlens.scores.frozen_reasons`): the
    median of ``delta_w_norm / w_norm`` below ``FROZEN_REL_STEP``, or the last stability
    probe's fastest_timescale (iterations for the fastest mode of ``w += eta (b - A w)``
    to relax by 1/e) beyond the run."""
    series = series_of(data)
    rel = relative_steps(series)
    if not len(rel):
        return Check("critic_frozen", PASS, "not applicable: no delta_w_norm / w_norm rows")
    fastest = data.probe("stability_probe").last("fastest_timescale")
    observed = {
        "max_rel_step": float(rel.max()),
        "median_rel_step": float(np.median(rel)),
        "threshold": FROZEN_REL_STEP,
        "fastest_timescale": fastest,
        "run_iters": series.outer_iters,
    }
    plan = floor_plan(data)
    over_all = ""
    if plan is not None:
        observed["effective_timescale"] = plan.effective_timescale
        observed["iters_to_floor"] = plan.iters_to_floor
        observed["alpha_w_to_floor"] = plan.alpha_w_to_floor
        over_all = (
            f"; all modes: effective_timescale {fmt(plan.effective_timescale)}, value_gap "
            f"reaches probe_floor in ~{fmt(plan.iters_to_floor)} more iterations"
        )
    reasons = frozen_reasons(series)
    if reasons:
        text = "; ".join(reasons)
        return Check("critic_frozen", WARN, "critic frozen: " + text + over_all, observed, text)
    extra = (
        f", fastest_timescale {fmt(fastest)} <= {series.outer_iters}" if fastest is not None else ""
    ) + over_all
    return Check(
        "critic_frozen",
        PASS,
        f"critic moves: median delta_w_norm / w_norm = "
        f"{fmt(float(np.median(rel)))} >= {fmt(FROZEN_REL_STEP)}{extra}",
        observed,
    )


def check_step_stable(data: RunData) -> Check:
    """FAIL when the expected critic update ``w += eta (b - A w)`` is unstable at the run's
    own step (docs/model.md §6.2): ``eta > critical_step`` (a mode with Re l > 0 has
    ``|1 - eta l| > 1``: it oscillates with growing amplitude), or a growing mode
    (``eig_min_real`` below minus the spectral noise) whose growth_timescale is shorter
    than the run, or the run's regime is ``diverged:*`` (its error grows:
    :func:`tdlens.scores.label_regime`, with or without stability rows). Uses every
    stability row; otherwise PASS "not applicable" without them."""
    regime = label_regime(series_of(data))
    diverged = regime_family(regime.label) == "diverged"
    stab = data.probe("stability_probe")
    if not len(stab) or not stab.has("critical_step") or not stab.has("eta"):
        if diverged:
            why = f"the run is {regime.label}: {regime.reason}"
            return Check("step_stable", FAIL, why + " (no stability probe rows)", {}, why)
        return Check("step_stable", PASS, "not applicable: no stability probe rows")
    run_iters = data.cfg.outer_iters if data.cfg else len(data.curves)
    eta, critical = stab.values("eta"), stab.values("critical_step")
    growth = stab.values("growth_timescale") if stab.has("growth_timescale") else None
    over = np.isfinite(critical) & (eta > critical)
    observed = {
        "eta": float(eta[-1]),
        "critical_step": float(critical[-1]),
        "rows_over_critical": int(over.sum()),
        "growth_timescale": float(growth[-1]) if growth is not None else None,
        "run_iters": run_iters,
    }
    problems = []
    if over.any():
        problems.append(
            f"eta = {fmt(float(eta[over][-1]))} > critical_step at "
            f"{critical_by_probe(stab, over)}: the fastest critic modes grow by "
            "|1 - eta l| > 1 per iteration"
        )
    if growth is not None:
        fast = np.isfinite(growth) & (growth < run_iters)
        if fast.any():
            problems.append(
                f"growing mode beyond spectral noise with growth_timescale = "
                f"{fmt(float(growth[fast][-1]))} < run length {run_iters}"
            )
    if diverged:
        problems.append(f"the run is {regime.label}: {regime.reason}")
    if problems:
        return Check("step_stable", FAIL, "; ".join(problems), observed, problems[0])
    low = int(np.nanargmin(np.where(np.isfinite(critical), critical, np.inf)))
    lowest = np.zeros(len(stab), dtype=bool)
    lowest[low] = True
    return Check(
        "step_stable",
        PASS,
        f"eta = {fmt(float(eta[-1]))} <= critical_step on all {len(stab)} probes (lowest "
        f"{critical_by_probe(stab, lowest)}), no mode grows within the run",
        observed,
    )


def critical_by_probe(stab: Table, rows: np.ndarray, limit: int = 5) -> str:
    """``iter n: critical_step (95% interval lo-hi)`` for the first `limit` selected probe
    rows, each with its own iteration (never one probe's number paired with another's)."""
    iters = stab.iters()[rows]
    crit = stab.values("critical_step")[rows]
    has_ci = stab.has("critical_step_lo") and stab.has("critical_step_hi")
    lo = stab.values("critical_step_lo")[rows] if has_ci else None
    hi = stab.values("critical_step_hi")[rows] if has_ci else None
    parts = []
    for i in range(min(limit, len(iters))):
        ci = f" ({fmt(float(lo[i]))}-{fmt(float(hi[i]))})" if has_ci else ""
        parts.append(f"iter {fmt(float(iters[i]))}: {fmt(float(crit[i]))}{ci}")
    more = f" and {len(iters) - limit} more probes" if len(iters) > limit else ""
    return "; ".join(parts) + more
