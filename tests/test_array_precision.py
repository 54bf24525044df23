"""Older rounds' raw-rho samples are kept at lower precision (issue 24): the report reads
only the newest; float16 when every value round-trips within 1e-3, else float32."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import small_config
from tdlens.report import write_report
from tdlens.runs.runner import Runner
from tdlens.runs.writer import HALF_RTOL, lower_precision


def test_lower_precision_picks_float16_only_where_values_survive():
    rng = np.random.default_rng(0)
    rho = np.exp(rng.normal(0.0, 0.5, 4096))  # ratios around 1
    half = lower_precision(rho)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float64), rho, rtol=HALF_RTOL)
    assert half.nbytes * 4 == rho.nbytes
    for bad in (1e5, 1e-9):  # past float16's range, or below its normal numbers
        out = lower_precision(np.append(rho, bad))
        assert out.dtype == np.float32 and out[-1] == pytest.approx(bad, rel=1e-7)
    huge = np.array([1.0, 1e300])  # past float32 too: kept as it is
    assert lower_precision(huge).dtype == np.float64
    special = lower_precision(np.array([1.0, np.nan, np.inf, 0.0]))
    assert special.dtype == np.float16 and np.isnan(special[1]) and np.isinf(special[2])
    assert lower_precision(np.arange(3)).dtype == np.arange(3).dtype


def test_only_the_newest_rho_sample_stays_float64(tmp_path):
    run = tmp_path / "run"
    cfg = small_config("outer_iters=6", "probes.every=2", "probes.plateau.enabled=false")
    Runner(cfg, run, handle_signals=False, write_report=write_report).run()
    saved = {p.name: np.load(p) for p in sorted((run / "probes").glob("rho_hist_*.npy"))}
    assert list(saved) == ["rho_hist_0001.npy", "rho_hist_0003.npy", "rho_hist_0005.npy"]
    assert [a.dtype for a in saved.values()] == [np.float16, np.float16, np.float64]
    assert all(np.all(np.isfinite(a)) and np.all(a > 0) for a in saved.values())
