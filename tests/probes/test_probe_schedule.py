"""Probe schedule (docs/model.md §6): every / plateau / last, cooldown, min_iter, state round
trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from probe_testlib import tiny_config

from tdlens.probes.schedule import ProbeSchedule, is_plateau, plateau_statistic


def noisy_flat(n: int, seed: int, scale: float = 2e-5) -> list[float]:
    return list(scale * (1 + 0.05 * np.random.default_rng(seed).normal(size=n)))


def test_slope_and_standard_error_match_numpy_polyfit():
    y = np.random.default_rng(0).normal(size=12) + 0.3 * np.arange(12)
    slope, se = plateau_statistic(y)
    coef, cov = np.polyfit(np.arange(12), y, 1, cov="unscaled")
    resid = y - np.polyval(coef, np.arange(12))
    assert slope == pytest.approx(coef[0], rel=1e-12)
    assert se == pytest.approx(np.sqrt(cov[0, 0] * np.sum(resid**2) / 10), rel=1e-12)


def test_plateau_is_scale_free_flat_fires_falling_does_not():
    """A flat series of td_loss ~ 2e-5 with noise: fires for most seeds (|t| <= 1 has
    probability ~0.68 per window); a steep fall never; rescaling changes nothing."""
    fired = [is_plateau(noisy_flat(10, s), 1.0) for s in range(40)]
    assert 0.4 < np.mean(fired) < 0.95
    for s in range(10):
        noise = 1e-8 * np.random.default_rng(s).normal(size=10)
        assert not is_plateau(list(2e-5 * (1 - 0.05 * np.arange(10)) + noise), 1.0)
    for s in range(10):
        y = noisy_flat(10, s)
        assert is_plateau(y, 1.0) == is_plateau([1e6 * v for v in y], 1.0)
    assert is_plateau([3.0] * 10, 1.0)
    assert not is_plateau([1.0, 2.0, float("nan")] + [1.0] * 7, 1.0)


def test_every_last_and_disabled():
    sched = ProbeSchedule(
        tiny_config("outer_iters=12", "probes.every=5", "probes.plateau.enabled=false")
    )
    due = {n: sched.due(n, noisy_flat(n + 1, 0)) for n in range(12)}
    assert due == {n: ("every" if n in (4, 9) else "last" if n == 11 else None) for n in range(12)}
    only_last = ProbeSchedule(
        tiny_config("outer_iters=7", "probes.every=0", "probes.plateau.enabled=false")
    )
    assert [only_last.due(n, []) for n in range(7)] == [None] * 6 + ["last"]
    off = ProbeSchedule(tiny_config("probes.enabled=false"))
    assert all(off.due(n, noisy_flat(20, 1)) is None for n in range(20))


def simulate(cfg, series):
    sched, reasons = ProbeSchedule(cfg), {}
    for n in range(cfg.outer_iters):
        reason = sched.due(n, series[: n + 1])
        if reason:
            sched.record(n, reason)
            reasons[n] = reason
    return reasons


def test_plateau_min_iter_and_cooldown():
    cfg = tiny_config(
        "outer_iters=60",
        "probes.every=0",
        "probes.plateau.window=10",
        "probes.plateau.tol=1e6",
        "probes.plateau.cooldown=10",
        "probes.plateau.min_iter=15",
    )
    reasons = simulate(cfg, noisy_flat(60, 0))
    assert reasons == {
        15: "plateau",
        25: "plateau",
        35: "plateau",
        45: "plateau",
        55: "plateau",
        59: "last",
    }


def test_seed_settings_give_sixteen_rounds_not_thirty_one():
    """every 5 + plateau (cooldown 10) over 80 flat iterations: the scheduled rounds block
    every plateau trigger, so 16 rounds (the seed ran 31)."""
    cfg = tiny_config(
        "outer_iters=80",
        "probes.every=5",
        "probes.plateau.window=10",
        "probes.plateau.tol=1.0",
        "probes.plateau.cooldown=10",
        "probes.plateau.min_iter=10",
    )
    reasons = simulate(cfg, noisy_flat(80, 3))
    assert len(reasons) == 16
    assert set(reasons.values()) == {"every", "last"}


def test_plateau_fires_between_sparse_scheduled_rounds():
    cfg = tiny_config(
        "outer_iters=100",
        "probes.every=40",
        "probes.plateau.tol=1e6",
        "probes.plateau.cooldown=10",
        "probes.plateau.min_iter=10",
    )
    reasons = simulate(cfg, noisy_flat(100, 4))
    assert reasons[39] == "every" and 40 not in reasons and 49 in reasons
    rounds = sorted(reasons)
    assert all(b - a >= 10 for a, b in itertools.pairwise(rounds) if reasons[b] == "plateau")


def test_state_dict_round_trip():
    cfg = tiny_config("outer_iters=60", "probes.every=0", "probes.plateau.tol=1e6")
    series = noisy_flat(60, 5)
    whole = simulate(cfg, series)
    first, resumed = ProbeSchedule(cfg), ProbeSchedule(cfg)
    reasons = {}
    for n in range(30):
        if reason := first.due(n, series[: n + 1]):
            first.record(n, reason)
            reasons[n] = reason
    state = {k: np.asarray(v) for k, v in first.state_dict().items()}  # as read from npz
    resumed.load_state_dict(state)
    for n in range(30, 60):
        if reason := resumed.due(n, series[: n + 1]):
            resumed.record(n, reason)
            reasons[n] = reason
    assert reasons == whole
    assert resumed.state_dict()["rounds"] == len(whole)
