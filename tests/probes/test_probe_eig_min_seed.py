"""eig_min_real over the whole spectrum at the seed settings (issue 13): D = 2048, where the
probe's spectrum is Krylov, against the dense eigenvalues of the same A (float64 LAPACK)."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from tdlens.config import load_config
from tdlens.features import make_feature_maps
from tdlens.learner import init_params
from tdlens.probes import fixed_point as fp
from tdlens.probes.common import plan_chains, roll_chains
from tdlens.probes.critic import probe_config
from tdlens.probes.manager import ProbeManager


def test_eig_min_real_equals_the_dense_minimum_within_its_noise_at_D2048():
    cfg = load_config(
        "configs/seed_plateau.yaml",
        [
            "probes.stability.k_mc=1",
            "probes.fixed_point.enabled=false",
            "probes.distribution.enabled=false",
            "probes.q_kernel.enabled=false",
            "probes.rho_audit.enabled=false",
        ],
    )
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    row = ProbeManager(cfg, maps).run(0, params, np.zeros(1), 0.0, "every").rows["stability_probe"]
    assert row["spectrum_dense"] == 0.0 and row["eig_min_real_is_bound"] == 1.0
    # the same batch, rebuilt with the probes' bar_phi (probes.bar_phi): its A, and every
    # eigenvalue of it
    spec = plan_chains(cfg).stability[0]
    rolled = roll_chains(cfg, maps, params, [spec], 0)
    batch = rolled.td_batch(probe_config(cfg), maps, [spec], params.theta_pi)
    phi = batch.phi.reshape(-1, maps.D)
    dphi = fp.td_difference_(phi, batch.bar_phi.reshape(-1, maps.D), cfg.gamma)
    A = fp.td_moments(phi, dphi, batch.rho.reshape(-1), batch.r.reshape(-1)).A
    dense_min = float(sla.eigvals(A, check_finite=False).real.min())
    noise = row["spectral_noise"]
    assert abs(row["eig_min_real"] - dense_min) <= noise, (row["eig_min_real"], dense_min, noise)
    assert row["eig_min_real"] <= dense_min <= row["eig_min_real_computed"]
    assert row["eig_min_real_lo"] <= dense_min <= row["eig_min_real_hi"]
