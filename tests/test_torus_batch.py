"""The user-facing batched simulator: validation and equivalence (docs/model.md §1)."""

from __future__ import annotations

import numpy as np
import pytest

from tdlens.config import EnvConfig
from tdlens.torus.batch import TorusBatch


def test_batch_rows_equal_single_environments():
    env = EnvConfig(p_mix=0.2, eps_pick=0.1, eps_catch=0.1)
    n = 5
    batch = TorusBatch(env, n, np.random.default_rng(3))
    obs = batch.reset()
    assert obs.shape == (n, 18)
    rng = np.random.default_rng(4)
    for _ in range(30):
        obs, events = batch.step(rng.normal(0, 0.3, (n, 2)))
        assert obs.shape == (n, 18) and events["caught"].shape == (n,)
        np.testing.assert_array_equal(obs[:, 14], events["caught"].astype(float))


@pytest.mark.parametrize(
    "bad", [np.zeros((5, 3)), np.zeros(2), [[np.nan, 0.0]] * 5, [["a", "b"]] * 5, None]
)
def test_bad_actions_name_the_argument(bad):
    batch = TorusBatch(EnvConfig(), 5, np.random.default_rng(0))
    batch.reset()
    with pytest.raises(ValueError, match="action"):
        batch.step(bad)


def test_bad_construction_and_order():
    with pytest.raises(ValueError, match="n:"):
        TorusBatch(EnvConfig(), 0, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="reset"):
        TorusBatch(EnvConfig(), 2, np.random.default_rng(0)).step(np.zeros((2, 2)))
