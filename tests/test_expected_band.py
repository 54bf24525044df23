"""Issue 13, on small configs of our own (D = 64, seconds each): over a whole run the
measured value_gap lies inside the band the first fixed-point probe predicts at >= 90% of
the probes, and the decay rate fitted to the measurement is within 25% of the predicted
one. A learning variant (alpha_w ~ 1/3 of the critical step) and a plateau variant
(alpha_w ~ 1/25 of it); the shipped regime_learning is checked in test_regime_configs."""

from __future__ import annotations

import pytest

from tdlens.config import load_config
from tdlens.report.theory import expected_dynamics
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner

SMALL = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=8",
    "horizon=50",
    "outer_iters=40",
    "gamma=0.9",
    "sigma_mu=0.3",
    "sigma_pi=0.25",
    "w_init_scale=2.0",
    "theta_mu_offset_scale=0.1",
    "alpha_pi=0.05",
    "beta=0.2",
    "threads=1",
    "probes.every=4",
    "probes.plateau.enabled=false",
    "probes.fixed_point.batch_size=1600",
    "probes.stability.batch_size=1600",
    "probes.stability.k_mc=1",
    "probes.distribution.enabled=false",
    "probes.q_kernel.enabled=false",
    "probes.rho_audit.enabled=false",
]


@pytest.mark.parametrize("alpha_w", [250.0, 30.0], ids=["learning", "plateau"])
def test_measured_value_gap_inside_the_predicted_band(tmp_path, alpha_w):
    cfg = load_config(None, [*SMALL, f"alpha_w={alpha_w}"])
    Runner(cfg, tmp_path / "run", handle_signals=False).run()
    dyn = expected_dynamics(load_run(tmp_path / "run"))
    assert dyn.probe_iters.size == 10
    assert dyn.inside_fraction >= 0.9, (dyn.inside, dyn.ratio_first)
    assert abs(dyn.fitted_rate / dyn.predicted_rate - 1.0) <= 0.25, (
        dyn.fitted_rate,
        dyn.predicted_rate,
    )
