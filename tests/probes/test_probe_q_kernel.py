"""TD-error kernel probe (docs/model.md §6.4): loss convention and brute-force twins."""

from __future__ import annotations

import numpy as np
import pytest
from probe_testlib import snapshot, tiny_config

from tdlens.probes import q_kernel as qk


def test_q_hat_and_lag_match_brute_force():
    delta = np.random.default_rng(0).normal(size=(5, 7))
    kernel = qk.q_kernel(qk.td_cache(delta, 3, 6))
    Delta = delta[:3, :6]
    for t in range(6):
        for s in range(6):
            ref = sum(Delta[b, t] * Delta[b, s] for b in range(3)) / 3
            assert kernel.Q_hat[t, s] == pytest.approx(ref, rel=1e-14)
    for tau in range(6):
        ref = np.mean([kernel.Q_hat[t, t + tau] for t in range(6 - tau)])
        assert kernel.lag[tau] == pytest.approx(ref, rel=1e-14)


def test_td_loss_from_Q_equals_td_loss_when_cache_holds_everything():
    """With the cache holding all B trajectories and all T steps, mean_t Q_hat(t, t) is the
    iteration's td_loss = mean delta^2 (no 1/2), up to float rounding."""
    cfg = tiny_config("probes.q_kernel.cache_batch_size=8", "probes.q_kernel.max_horizon=64")
    _, result = snapshot(cfg)
    conf = cfg.probes.q_kernel
    kernel = qk.q_kernel(qk.td_cache(result.delta, conf.cache_batch_size, conf.max_horizon))
    row = qk.q_kernel_row(kernel, result.metrics["td_loss"])
    assert row["cache_batch_size"] == cfg.trajectories and row["cache_horizon"] == cfg.horizon
    assert row["td_loss_from_Q_rel_diff"] < 1e-12
    assert row["td_loss_from_Q_cache_rel_diff"] < 1e-12
    assert row["td_loss_from_Q"] == pytest.approx(result.metrics["td_loss"], rel=1e-12)


def test_subsampled_cache_convention_check():
    cfg = tiny_config()
    _, result = snapshot(cfg)
    kernel = qk.q_kernel(qk.td_cache(result.delta, 2, 20))
    row = qk.q_kernel_row(kernel, result.metrics["td_loss"])
    assert row["td_loss_cache"] == pytest.approx(np.mean(result.delta[:2, :20] ** 2), rel=1e-14)
    assert row["td_loss_from_Q_cache_rel_diff"] < 1e-12
    assert row["td_loss_from_Q_abs_diff"] == pytest.approx(
        abs(row["td_loss_from_Q"] - result.metrics["td_loss"])
    )
    assert row["cache_valid_t"] == 20


def test_non_finite_diagonal_entries_are_excluded():
    delta = np.ones((2, 4))
    delta[0, 2] = np.nan
    row = qk.q_kernel_row(qk.q_kernel(qk.td_cache(delta, 2, 4)), 1.0)
    assert row["cache_valid_t"] == 3
    assert row["td_loss_from_Q"] == 1.0
