"""Probe batches sampled as the trainer samples (issue 13): with sampling: trainer the
fixed-point and stability batches are m = batch_size // horizon trajectories of horizon
steps from reset, drawn exactly as the trainer's own collect() draws B trajectories."""

from __future__ import annotations

import numpy as np
from probe_testlib import tiny_config

from tdlens.features import make_feature_maps
from tdlens.learner import collect, init_params
from tdlens.probes.common import plan_chains, roll_chains
from tdlens.probes.critic import probe_config


def test_trainer_style_batch_is_the_trainers_collect_on_the_probe_streams():
    cfg = tiny_config()
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    plan = plan_chains(cfg)
    spec = plan.stability[1]
    assert (spec.T, spec.trajectories) == (cfg.horizon, cfg.probes.stability.batch_size // 32)
    assert plan.shared and plan.fixed.trajectories == spec.trajectories
    rolled = roll_chains(cfg, maps, params, [*plan.specs()], 3)
    probe = rolled.td_batch(cfg, maps, [spec], params.theta_pi)
    trainer = collect(cfg, maps, params.theta_mu, params.theta_pi, spec.rngs(cfg, 3), cfg.horizon)
    for name in ("phi", "bar_phi", "r", "rho", "rho_raw", "u", "m_pi"):
        np.testing.assert_array_equal(getattr(probe, name), getattr(trainer, name), name)
    # the batch the probes featurise (probes.bar_phi: exact) differs only in bar_phi
    closed = rolled.td_batch(probe_config(cfg), maps, [spec], params.theta_pi)
    for name in ("phi", "r", "rho", "rho_raw", "u", "m_pi"):
        np.testing.assert_array_equal(getattr(closed, name), getattr(trainer, name), name)
    assert not np.array_equal(closed.bar_phi, trainer.bar_phi)


def test_stationary_sampling_keeps_one_continuing_chain():
    cfg = tiny_config(
        "probes.stability.sampling=stationary", "probes.fixed_point.sampling=stationary"
    )
    plan = plan_chains(cfg)
    assert plan.fixed.trajectories == 0 and plan.fixed.T == cfg.probes.fixed_point.batch_size
    assert all(s.columns == 1 for s in plan.stability)


def test_trainer_and_stationary_batches_are_not_shared():
    cfg = tiny_config("probes.stability.sampling=stationary")
    plan = plan_chains(cfg)
    assert not plan.shared and plan.fixed.trajectories > 0 and plan.stability[0].trajectories == 0
