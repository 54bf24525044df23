"""IQM and the stratified bootstrap against hand calculations (docs/model.md §11)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import trim_mean

from tdlens.sweeps.seed_stats import (
    aggregate,
    bootstrap_ci,
    iqm,
    iqm_weights,
    mean_stat,
    stratified_resamples,
)


def test_iqm_hand_calculations():
    # n = 4: the middle two values, (2 + 3) / 2
    assert iqm(np.array([4.0, 1.0, 3.0, 2.0])) == pytest.approx(2.5, abs=1e-15)
    # n = 3: masses 1/12, 1/3, 1/12 of [1/4, 3/4] -> (1/12 + 2/3 + 10/12) * 2 = 19/6
    assert iqm(np.array([1.0, 2.0, 10.0])) == pytest.approx(19 / 6, abs=1e-14)
    # n = 1 and n = 2: the value, the mean
    assert iqm(np.array([7.0])) == 7.0
    assert iqm(np.array([1.0, 3.0])) == pytest.approx(2.0)
    # an outlier outside the middle half does not move it: IQM(1..7, 1000) = mean(3..6)
    assert iqm(np.array([1, 2, 3, 4, 5, 6, 7, 1000.0])) == pytest.approx(4.5)


def test_iqm_weights_sum_to_one_and_match_trim_mean_for_n_divisible_by_4():
    for n in range(1, 30):
        assert iqm_weights(n).sum() == pytest.approx(1.0, abs=1e-14)
    x = np.random.default_rng(0).normal(size=(5, 12))
    np.testing.assert_allclose(iqm(x, axis=1), trim_mean(x, 0.25, axis=1), rtol=1e-13)


def test_stratified_resamples_keep_stratum_sizes():
    rng = np.random.default_rng(1)
    res = stratified_resamples([np.zeros(3), np.full(1, 10.0)], 500, rng)
    assert res.shape == (500, 4)
    # every resample holds exactly three draws from stratum 0 and one from stratum 1
    np.testing.assert_array_equal(np.sort(res, axis=1)[:, :3], 0.0)
    np.testing.assert_array_equal(res[:, 3], 10.0)


def test_stratified_interval_is_degenerate_when_strata_are_constant():
    # mean of (0, 0, 0, 10) in every stratified resample = 2.5; unstratified it would vary
    lo, hi = bootstrap_ci([np.zeros(3), np.array([10.0])], mean_stat, np.random.default_rng(2))
    assert lo == hi == pytest.approx(2.5)


def test_bootstrap_of_two_values_spans_them():
    # resampling (a, b): the mean is a w.p. 1/4, (a+b)/2 w.p. 1/2, b w.p. 1/4, so the
    # 2.5% and 97.5% percentiles are a and b (by hand)
    lo, hi = bootstrap_ci([np.array([1.0, 3.0])], mean_stat, np.random.default_rng(3), reps=4000)
    assert (lo, hi) == (1.0, 3.0)


def test_bootstrap_is_seeded_and_covers_the_iqm():
    x = np.random.default_rng(4).normal(size=20)
    a = bootstrap_ci([x], rng=np.random.default_rng(5))
    b = bootstrap_ci([x], rng=np.random.default_rng(5))
    assert a == b
    assert a[0] < iqm(x) < a[1]


def test_aggregate_ignores_non_finite_values():
    agg = aggregate([1.0, 2.0, np.nan, 3.0, np.inf], np.random.default_rng(6))
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(2.0)
    assert agg["iqm"] == pytest.approx(iqm(np.array([1.0, 2.0, 3.0])))
    empty = aggregate([np.nan], np.random.default_rng(6))
    assert empty["n"] == 0 and np.isnan(empty["iqm"]) and np.isnan(empty["ci_low"])
