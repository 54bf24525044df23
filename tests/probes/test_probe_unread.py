"""A probe round forms nothing no probe reads (issue 28, session 11), and its numbers
stay the same bits.

- Next-action normals: a chain's ``z_next`` are the last draws of its stream
  (tdlens.rollout.draw_noise), so leaving them out changes none of its other noise and
  none of its path. A round leaves them out for the chains of
  ``tdlens.probes.common.without_next_draws``.
- Rewards of the matrix-free stability batches (only an explicit batch's b reads r).

A round's rows and arrays must equal those of a round that forms them all (the
reference, run in the same test), under each bar_phi setting that decides who reads the
draws.
"""

from __future__ import annotations

import numpy as np
import pytest
from probe_testlib import assert_same_rows_and_arrays, snapshot, tiny_config

from tdlens.features import Workspace
from tdlens.probes import common as common_module
from tdlens.probes import manager as manager_module
from tdlens.probes.common import plan_chains, roll_chains, without_next_draws
from tdlens.probes.critic import probe_config
from tdlens.probes.manager import ProbeManager

NOISE_FIELDS = ("reset", "z_act", "z_env", "u_env")
PATH_FIELDS = ("o", "m_mu", "u", "a", "a_unclipped", "m_eval")


def test_which_chains_draw_no_next_actions():
    """Closed-form probes under a Monte Carlo trainer (the seed settings): only the
    fixed-point batch (the trainer's TD errors) draws them; the trainer's bar_phi in the
    probes: every critic batch; an exact trainer: none."""
    cfg = tiny_config()
    plan = plan_chains(cfg)
    assert cfg.bar_phi == "mc" and cfg.probe_bar_phi == "exact" and plan.shared
    assert without_next_draws(cfg) == set(plan.specs()) - {plan.fixed}
    cfg = tiny_config("probes.bar_phi=same_as_training")
    plan = plan_chains(cfg)
    assert without_next_draws(cfg) == {*plan.distribution, plan.audit}
    cfg = tiny_config("bar_phi=exact")
    assert without_next_draws(cfg) == set(plan_chains(cfg).specs())


@pytest.mark.parametrize("threads", [1, 2])
def test_undrawn_chains_keep_their_other_noise_and_paths(threads):
    """Every group's other noise and paths equal those of the roll-out that draws all
    (80 columns split in parts on 2 threads); z_next equals it where drawn and is NaN
    where not; featurising an undrawn chain with Monte Carlo draws is refused."""
    cfg = tiny_config("probes.stability.k_mc=8", f"threads={threads}")
    maps, result = snapshot(cfg)
    specs, undrawn = plan_chains(cfg).specs(), without_next_draws(cfg)
    full = roll_chains(cfg, maps, result.params, specs, 4)
    lean = roll_chains(cfg, maps, result.params, specs, 4, undrawn=undrawn)
    for g_full, g_lean in zip(full.groups, lean.groups, strict=True):
        for name in NOISE_FIELDS:
            np.testing.assert_array_equal(getattr(g_lean.noise, name), getattr(g_full.noise, name))
        for name in PATH_FIELDS:
            np.testing.assert_array_equal(getattr(g_lean.paths, name), getattr(g_full.paths, name))
        drawn = np.array([s not in undrawn for s in g_lean.specs for _ in range(s.columns)])
        np.testing.assert_array_equal(g_lean.noise.z_next[:, drawn], g_full.noise.z_next[:, drawn])
        assert np.isnan(g_lean.noise.z_next[:, ~drawn]).all()
        assert not np.isnan(g_full.noise.z_next).any()
    spec = plan_chains(cfg).stability[1]
    with pytest.raises(ValueError, match="not drawn"):
        lean.td_batch(cfg, maps, [spec], result.params.theta_pi)
    closed = lean.td_batch(probe_config(cfg), maps, [spec], result.params.theta_pi)
    np.testing.assert_array_equal(
        closed.bar_phi,
        full.td_batch(probe_config(cfg), maps, [spec], result.params.theta_pi).bar_phi,
    )


@pytest.mark.parametrize(
    "overrides",
    [(), ("probes.bar_phi=same_as_training",), ("bar_phi=exact",)],
    ids=["closed_form_probes", "trainer_bar_phi_probes", "exact_trainer"],
)
def test_a_round_without_the_unread_draws_equals_one_with_them(monkeypatch, overrides):
    """Rows and arrays of a round (every probe) equal, bit for bit, those of a round whose
    roll-out draws every chain's next actions and whose batches all form their rewards:
    nothing read what was left out."""
    cfg = tiny_config(*overrides)
    maps, result = snapshot(cfg)

    def run() -> object:
        manager = ProbeManager(cfg, maps)
        return manager.run(0, result.params, result.delta, result.metrics["td_loss"], "every")

    lean = run()
    monkeypatch.setattr(manager_module, "without_next_draws", lambda cfg: set())
    formed = common_module.difference_batch

    def with_rewards(*args):
        return formed(*args[:7], rewards=True)

    monkeypatch.setattr(common_module, "difference_batch", with_rewards)
    full = run()
    assert_same_rows_and_arrays(lean, full)


def test_a_batch_without_rewards_is_the_same_batch_but_r():
    """difference_batch(rewards=False): phi, dphi and the ratios are those of the batch
    with rewards, bit for bit; r is NaN."""
    cfg = tiny_config()
    maps, result = snapshot(cfg)
    plan = plan_chains(cfg)
    group = list(plan.stability[1:3])
    rolled = roll_chains(cfg, maps, result.params, plan.specs(), 2)
    batch_cfg, theta_pi = probe_config(cfg), result.params.theta_pi
    full = rolled.difference_batch(batch_cfg, maps, group, theta_pi, Workspace())
    lean = rolled.difference_batch(batch_cfg, maps, group, theta_pi, Workspace(), rewards=False)
    for name in ("phi", "dphi", "rho", "rho_raw"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
    assert np.isnan(lean.r).all() and np.isfinite(full.r).all()
