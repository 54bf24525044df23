"""Small configurations and snapshots shared by the probe tests (tests/probes)."""

from __future__ import annotations

import numpy as np

from tdlens.config import RunConfig, load_config
from tdlens.features import FeatureMaps, make_feature_maps
from tdlens.learner import IterationResult, init_params, outer_iteration

TINY = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=4",
    "horizon=32",
    "outer_iters=6",
    "probes.fixed_point.batch_size=256",
    "probes.stability.batch_size=256",
    "probes.stability.k_mc=3",
    "probes.stability.power_iters=10",
    "probes.distribution.num_samples=256",
    "probes.distribution.permutations=50",
    "probes.q_kernel.cache_batch_size=2",
    "probes.q_kernel.max_horizon=20",
    "probes.rho_audit.batch_size=512",
    "threads=2",
]


def tiny_config(*overrides: str) -> RunConfig:
    """A run small enough for unit tests (D=64, N=16, 4 x 32 steps, 256-step probes)."""
    return load_config(None, [*TINY, *overrides])


def snapshot(cfg: RunConfig) -> tuple[FeatureMaps, IterationResult]:
    """Feature maps and the result of iteration 0 from the initial parameters."""
    maps = make_feature_maps(cfg)
    return maps, outer_iteration(cfg, maps, init_params(cfg, maps), 0)


def assert_same_rows_and_arrays(one, two) -> None:
    """Two probe rounds' rows equal and every array (an .npz's named arrays each) equal
    bit for bit."""
    assert one.rows == two.rows
    assert one.arrays.keys() == two.arrays.keys()
    for key, array in one.arrays.items():
        parts = array if isinstance(array, dict) else {"": array}  # an .npz: named arrays
        ref = two.arrays[key] if isinstance(array, dict) else {"": two.arrays[key]}
        assert parts.keys() == ref.keys()
        for name in parts:
            np.testing.assert_array_equal(parts[name], ref[name], err_msg=f"{key} {name}")
