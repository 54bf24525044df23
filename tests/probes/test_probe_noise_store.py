"""The probe rollout (issue 28): the chains' Generators kept between rounds
(tdlens.probes.common.NoiseStore; under common random numbers a round rewinds the
previous round's Generators, which draws what new ones would, bit for bit; without them
every round creates its own), and the groups' roll-outs side by side on threads."""

from __future__ import annotations

import numpy as np
import pytest
from probe_testlib import assert_same_rows_and_arrays, snapshot, tiny_config

from tdlens.features import make_feature_maps
from tdlens.probes.common import NoiseStore, draw_group_noise, plan_chains, roll_chains
from tdlens.probes.manager import ProbeManager
from tdlens.rollout import roll_out

NOISE_FIELDS = ("reset", "z_act", "z_env", "u_env", "z_next")


def _assert_same_noise(a, b):
    for name in NOISE_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("crn", [True, False])
def test_store_hands_back_the_noise_a_fresh_draw_gives(crn):
    cfg = tiny_config(f"probes.common_random_numbers={str(crn).lower()}")
    specs = tuple(plan_chains(cfg).stability)
    store = NoiseStore(cfg)
    first = store.noise(specs, 0)
    rngs = store.rngs(specs[0], 0)
    later = store.noise(specs, 5)
    again = store.noise(specs, 5)  # the kept Generators rewound once more
    _assert_same_noise(first, draw_group_noise(cfg, specs, 0))
    _assert_same_noise(later, draw_group_noise(cfg, specs, 5))
    _assert_same_noise(again, later)
    assert (store.rngs(specs[0], 5)[0] is rngs[0]) == crn  # kept under CRN, new without
    if not crn:
        assert not np.array_equal(later.z_act, first.z_act)


def test_rolled_chains_from_the_store_equal_those_drawn_afresh():
    cfg = tiny_config()
    maps, result = snapshot(cfg)
    specs = plan_chains(cfg).specs()
    store = NoiseStore(cfg)
    roll_chains(cfg, maps, result.params, specs, 0, store)
    kept = roll_chains(cfg, maps, result.params, specs, 3, store)
    fresh = roll_chains(cfg, maps, result.params, specs, 3)
    for g_kept, g_fresh in zip(kept.groups, fresh.groups, strict=True):
        _assert_same_noise(g_kept.noise, g_fresh.noise)
        np.testing.assert_array_equal(g_kept.paths.o, g_fresh.paths.o)
        np.testing.assert_array_equal(g_kept.paths.m_eval, g_fresh.paths.m_eval)
    with pytest.raises(ValueError, match="another run config"):
        roll_chains(tiny_config(), maps, result.params, specs, 3, store)


def test_a_managers_second_round_equals_a_fresh_managers():
    """The store is a cache: the second round of a manager (noise kept) writes what a new
    manager's first round at that iteration (noise drawn) writes, rows and arrays."""
    cfg = tiny_config("probes.fixed_point.enabled=false")  # its state differs by design
    maps, result = snapshot(cfg)

    def run(manager, n):
        return manager.run(n, result.params, result.delta, result.metrics["td_loss"], "every")

    manager = ProbeManager(cfg, maps)
    run(manager, 0)
    second, fresh = run(manager, 5), run(ProbeManager(cfg, maps), 5)
    assert_same_rows_and_arrays(second, fresh)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_each_part_draws_its_own_columns_noise(threads):
    """Each roll-out part draws the noise of its own columns (one Generator per column),
    beside the other parts: every group's noise is draw_group_noise's bit for bit, the
    80-column group split in parts or not, from the store or drawn afresh."""
    cfg = tiny_config("probes.stability.k_mc=8", f"threads={threads}")
    maps, result = snapshot(cfg)
    specs = plan_chains(cfg).specs()
    store = NoiseStore(cfg)
    for rolled in (
        roll_chains(cfg, maps, result.params, specs, 4),
        roll_chains(cfg, maps, result.params, specs, 4, store),
        roll_chains(cfg, maps, result.params, specs, 4, store),
    ):
        assert sum(s.columns for s in rolled.groups[0].specs) >= 64  # split on 2 threads
        for g in rolled.groups:
            _assert_same_noise(g.noise, draw_group_noise(cfg, g.specs, 4))


def test_groups_rolled_side_by_side_equal_one_roll_out_per_group():
    """80 columns of 32 steps (split in two parts on 2 and 3 threads), the distribution's
    chains and the long rho chains (512 steps): every group's paths equal one roll_out
    call over the group recording both policies' means, on 1, 2 and 3 threads; a group
    with no chain under pi records pi's means alone, its mu means being its m_mu."""
    base = tiny_config("probes.stability.k_mc=8")
    maps, result = snapshot(base)
    params = result.params
    specs = plan_chains(base).specs()
    evals = np.stack([params.theta_mu, params.theta_pi])
    reference = None
    for threads in (1, 2, 3):
        cfg = base.model_copy(update={"threads": threads})
        maps = make_feature_maps(cfg)
        rolled = roll_chains(cfg, maps, params, specs, 2)
        if reference is None:
            assert sum(s.columns for s in rolled.groups[0].specs) >= 64  # split in two
            reference = []
            for g in rolled.groups:
                on_pi = np.array([s.policy == "pi" for s in g.specs for _ in range(s.columns)])
                theta = np.stack([params.theta_pi if p else params.theta_mu for p in on_pi])
                reference.append(
                    roll_out(cfg, maps, theta, g.sigma_mu, g.noise, evals, keep_psi=False)
                )
        mixed = [any(s.policy == "pi" for s in g.specs) for g in rolled.groups]
        assert mixed.count(True) == 1  # the distribution's chains
        for g, ref, both in zip(rolled.groups, reference, mixed, strict=True):
            for name in ("o", "m_mu", "u", "a", "a_unclipped"):
                got, want = getattr(g.paths, name), getattr(ref, name)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} threads={threads}")
            np.testing.assert_array_equal(g.paths.mean_under(params.theta_pi), ref.m_eval[:, :, 1])
            if both:
                np.testing.assert_array_equal(g.paths.m_eval, ref.m_eval)
            else:
                assert g.paths.theta_eval.shape[0] == 1
                np.testing.assert_array_equal(g.paths.m_mu, ref.m_eval[:-1, :, 0])
