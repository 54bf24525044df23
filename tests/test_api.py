"""The Python API (tdlens.run, open_run, open_catalog): a notebook's view of a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tdlens
from helpers import TINY_SEED
from tdlens.cli import app
from tdlens.config import ConfigError
from tdlens.rundir.files import RunFileError

DETERMINISTIC = ["td_loss", "critic_teacher_error", "w_norm", "mean_rho2", "delta_w_norm"]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> tdlens.Run:
    """The seed config, tiny, run once through the Python API."""
    d = tmp_path_factory.mktemp("api") / "seed"
    catalog = d.parent / "catalog.sqlite"
    run = tdlens.run("seed_plateau", TINY_SEED, run_dir=d, progress=False, catalog=catalog)
    assert run.result is not None and run.result.exit_code == 0
    return run


def _last(series: pd.Series) -> float:
    return float(series.dropna().iloc[-1])


def test_open_run_finds_the_numbers_of_run_report_json(seed_run):
    run = tdlens.open_run(seed_run.path)
    report = json.loads((run.path / "run_report.json").read_text())
    assert run.report == report
    assert run.status == report["status"]["status"] == "complete"
    assert run.config.name == "seed_plateau" and run.config.outer_iters == 6
    assert run.config.config_hash() == report["run_info"]["config_hash"]
    curves = run.curves
    assert len(curves) == 6 and list(curves["iter"]) == list(range(6))
    for name, stats in report["core_metrics"]["metrics"].items():
        column = curves[name].dropna()
        assert len(column) == stats["count"], name
        assert _last(column) == stats["last"], name
        assert column.min() == stats["min"] and column.max() == stats["max"], name
    assert set(run.probes) >= {"fixed_point_probe", "stability_probe", "rho_audit"}
    checked = 0
    for probe, section in report["probe_metrics"].items():
        table = run.probes[probe]
        assert len(table) == section["rows"], probe
        for name, stats in section["metrics"].items():
            if stats["count"]:
                last = _last(table[name])  # JSON writes inf as null
                assert last == stats["last"] or (stats["last"] is None and math.isinf(last))
                checked += 1
    assert checked > 20
    assert run.verdict["health"] == report["health"]["status"]
    assert run.verdict["reasons"] == report["health"]["reasons"]
    assert run.verdict["regime"] == run.record.regime != "n/a"


def test_arrays_are_the_saved_probe_files(seed_run):
    run = tdlens.open_run(seed_run.path)
    names = run.array_names()
    assert names["q_kernel"] == [1, 3, 5]
    latest = run.array("q_kernel")
    for it, Q in ((5, latest), (1, run.array("q_kernel", 1))):
        # saved by its factor, the [B_c, T_c] cache Delta; read back as Q_hat = Delta^T Delta / B_c
        with np.load(run.path / "probes" / f"q_kernel_{it:04d}.npz") as stored:
            Delta = stored["gram_factor"]
        B_c = min(run.config.probes.q_kernel.cache_batch_size, run.config.trajectories)
        assert Delta.shape == (B_c, Q.shape[0])
        assert np.array_equal(Q, Delta.T @ Delta / Delta.shape[0])
        assert np.all(np.diagonal(Q) >= 0) and np.allclose(Q, Q.T)
    with pytest.raises(KeyError, match=r"no readable array 'q_kernal'.*q_kernel"):
        run.array("q_kernal")
    with pytest.raises(KeyError, match="at iteration 2"):
        run.array("q_kernel", 2)


def test_open_catalog_lists_the_run_with_its_final_metrics(seed_run):
    frame = tdlens.open_catalog(seed_run.path.parent / "catalog.sqlite")
    row = frame[frame["path"] == str(seed_run.path.resolve())].iloc[0]
    assert row["status"] == "complete" and row["health"] == seed_run.verdict["health"]
    assert row["regime"] == seed_run.verdict["regime"]
    assert row["td_loss"] == seed_run.curves["td_loss"].iloc[-1]
    assert math.isclose(row["w_norm"], seed_run.final["w_norm"])


def test_cli_run_and_python_run_make_the_same_run(seed_run, tmp_path):
    """`tdlens run` goes through the API: same config, same learning curves bit for bit."""
    sets = [arg for k, v in TINY_SEED.items() for arg in ("--set", f"{k}={v}")]
    d = tmp_path / "cli"
    res = CliRunner().invoke(app, ["run", "seed_plateau", *sets, "--run-dir", str(d)])
    assert res.exit_code == 0, res.output
    cli_run = tdlens.open_run(d)
    assert cli_run.config == seed_run.config
    pd.testing.assert_frame_equal(cli_run.curves[DETERMINISTIC], seed_run.curves[DETERMINISTIC])


def test_bad_input_names_the_key_or_the_file(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'gamma'"):
        tdlens.run("sanity", {"gama": 0.5}, run_dir=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="no_such_config"):
        tdlens.load_run_config("no_such_config")
    with pytest.raises(ConfigError, match="sigma_mu"):
        tdlens.load_run_config("sanity", ["sigma_mu=-1"])
    assert not (tmp_path / "x").exists()
    with pytest.raises(RunFileError, match="not a run directory"):
        tdlens.open_run(tmp_path)
    with pytest.raises(RunFileError, match="not a sweep directory"):
        tdlens.open_sweep(tmp_path)


def test_overrides_as_mapping_or_strings_give_the_same_config():
    as_map = tdlens.load_run_config("sanity", {"env.p_mix": 0.01, "alpha_w": 0.5}, name="x")
    as_set = tdlens.load_run_config("sanity", ["env.p_mix=0.01", "alpha_w=0.5"], name="x")
    assert as_map == as_set and as_map.env.p_mix == 0.01 and as_map.name == "x"
    assert tdlens.load_run_config(as_map, {"alpha_w": 1.0}).alpha_w == 1.0


def test_the_api_is_reexported_from_tdlens_and_imported_on_first_use():
    import subprocess
    import sys

    code = (
        "import sys, tdlens\n"
        "assert 'tdlens.api' not in sys.modules and 'pandas' not in sys.modules\n"
        "import tdlens.api\n"
        "assert tdlens.run is tdlens.api.run and tdlens.Run is tdlens.api.Run\n"
        "assert {'run', 'open_run', 'open_sweep', 'open_catalog'} <= set(dir(tdlens))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tdlens.nope
