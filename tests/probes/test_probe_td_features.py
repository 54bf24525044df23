"""The probe batches' phi and dphi written straight from the feature blocks
(tdlens.probes.td_features, issue 28): bit for bit the training path's phi followed by
``dphi = phi - gamma bar_phi`` (chain_features / td_batch, then td_difference_), for
every bar_phi estimator and block layout, and the trainer's TD errors of the
fixed-point batch bit for bit those of the trainer-featurised batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from probe_testlib import tiny_config

from tdlens.features import NextActions, Workspace, chain_features, make_feature_maps
from tdlens.learner import init_params
from tdlens.probes import fixed_point as fp
from tdlens.probes import td_features as td
from tdlens.probes.common import batch_slices, plan_chains, roll_chains
from tdlens.probes.critic import batch_view, probe_config, trainer_td_errors


def _two_step(maps, o, a, nexts, gamma):
    """The reference: chain_features, then td_difference_ (the pre-issue-28 path)."""
    L = a.shape[0]
    phi, bar = np.empty((L, maps.D), maps.dtype), np.empty((L, maps.D), maps.dtype)
    chain_features(maps, o, a, nexts, phi, bar)
    return phi, fp.td_difference_(phi, bar, gamma)


@pytest.mark.parametrize(
    ("precision", "K", "exact"),
    [
        ("float32", 4, False),  # the seed runs' trainer estimator (5 cosine rows)
        ("float32", 4, True),  # the probes' closed form (2 cosine rows)
        ("float32", 3, False),  # the general draw count
        ("float32", 0, False),  # phi(s', 0)
        ("float64", 2, False),
        ("float64", 2, True),
    ],
)
def test_chain_differences_equal_chain_features_then_td_difference(precision, K, exact):
    """300 steps at D = 1024 cross the 128-row blocks and, with K = 4, the cache-sized
    sub-blocks inside them; every entry (the cosine part and the 4 extra columns) equal."""
    cfg = tiny_config("env.feature_dim=1024", f"precision={precision}")
    maps = make_feature_maps(cfg)
    rng = np.random.default_rng(5)
    L = 300
    o = rng.uniform(-1, 1, (L + 1, 18))
    o[:, 14:18] = rng.integers(0, 2, (L + 1, 4))
    a = rng.normal(0, 0.3, (L, 2))
    if exact:
        nexts = NextActions(mean=rng.normal(0, 0.3, (L, 2)), sigma=0.3)
    else:
        nexts = NextActions(draws=rng.normal(0, 0.3, (L, K, 2)))
    ref_phi, ref_dphi = _two_step(maps, o, a, nexts, 0.97)
    phi, dphi = np.empty_like(ref_phi), np.empty_like(ref_phi)
    td.chain_differences(maps, o, a, nexts, 0.97, phi, dphi, {})
    np.testing.assert_array_equal(phi, ref_phi)
    np.testing.assert_array_equal(dphi, ref_dphi)
    only = np.empty_like(ref_phi)  # phi not kept: the trainer's errors
    td.chain_differences(maps, o, a, nexts, 0.97, None, only, {})
    np.testing.assert_array_equal(only, ref_dphi)


@pytest.fixture(scope="module")
def rolled_round():
    cfg = tiny_config()
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    plan = plan_chains(cfg)
    return cfg, maps, params, plan, roll_chains(cfg, maps, params, plan.specs(), 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("probe_features", [True, False])
def test_difference_batch_equals_td_batch_then_td_difference(rolled_round, threads, probe_features):
    """A round's critic group (two stability batches, 2 x 8 trajectories) as the probes
    see it: phi, dphi, r, rho and rho_raw of RolledChains.difference_batch equal those
    of RolledChains.td_batch followed by td_difference_, with the probes' closed-form
    bar_phi and with the trainer's Monte Carlo one, on 1 and 2 threads."""
    cfg, maps, params, plan, rolled = rolled_round
    cfg = cfg.model_copy(update={"threads": threads})
    maps = make_feature_maps(cfg)
    batch_cfg = probe_config(cfg) if probe_features else cfg
    group = list(plan.stability[1:3])
    ref = rolled.td_batch(batch_cfg, maps, group, params.theta_pi)
    got = rolled.difference_batch(batch_cfg, maps, group, params.theta_pi, Workspace())
    for name in ("phi", "r", "rho", "rho_raw"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(got.dphi, fp.td_difference_(ref.phi, ref.bar_phi, cfg.gamma))
    views = [batch_view(cfg, got, c, s) for c, s in zip(batch_slices(group), group, strict=True)]
    np.testing.assert_array_equal(views[1].dphi_t, got.dphi[8:].reshape(-1, maps.D))


@pytest.mark.parametrize("threads", [1, 3])
def test_trainer_td_errors_equal_those_of_the_trainer_featurised_batch(rolled_round, threads):
    """``r_t - dphi_t . w / sqrt(D)`` with the trainer's Monte Carlo dphi, each column's
    product ``[T, D] @ [D]`` as before: bit for bit, on 1 and 3 threads (8 columns in
    chunks of 3: the last chunk is short)."""
    cfg, maps, params, plan, rolled = rolled_round
    cfg = cfg.model_copy(update={"threads": threads})
    maps = make_feature_maps(cfg)
    spec = plan.fixed
    w = np.random.default_rng(8).standard_normal(maps.D)
    ref = rolled.td_batch(cfg, maps, [spec], params.theta_pi)
    dphi = fp.td_difference_(ref.phi, ref.bar_phi, cfg.gamma)
    w_f = (w / math.sqrt(maps.D)).astype(maps.dtype)
    expected = np.concatenate([ref.r[b] - dphi[b] @ w_f for b in range(spec.columns)])
    got = trainer_td_errors(cfg, maps, rolled, spec, params.theta_pi, w, ref.r.reshape(-1))
    assert spec.columns == 8  # the tiny fixed-point batch: 8 trajectories
    np.testing.assert_array_equal(got, expected)
    # as a round calls it: given the probes' closed-form batch's phi (the same phi), only
    # the next actions' cosines are taken, and the errors are the same bits
    probe = rolled.difference_batch(probe_config(cfg), maps, [spec], params.theta_pi)
    phi_t = probe.phi.reshape(-1, maps.D)
    np.testing.assert_array_equal(phi_t, ref.phi.reshape(-1, maps.D))
    from_phi = trainer_td_errors(
        cfg, maps, rolled, spec, params.theta_pi, w, ref.r.reshape(-1), phi_t=phi_t
    )
    np.testing.assert_array_equal(from_phi, expected)
