"""Sweep specs and plans: grid values, seeds, overrides, run ids, errors (docs/model.md §11,
§15)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from tdlens.config import shipped_configs
from tdlens.sweeps.plan import plan_dict, runs_from_plan
from tdlens.sweeps.spec import (
    SweepSpecError,
    base_data,
    linspace_values,
    load_spec,
    logspace_values,
    make_plan,
    parse_spec,
)

SHIPPED = shipped_configs() / "sweeps"
TINY = {"outer_iters": 2, "env.feature_dim": 16, "env.actor_feature_dim": 4}


def _write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _spec(**extra) -> dict:
    return {"base": "sanity", "grid": {"alpha_w": [0.1, 0.2]}, "overrides": TINY, **extra}


def test_logspace_is_geometric_between_the_values_not_exponents():
    values = logspace_values(0.02, 0.24, 10)
    assert values[0] == 0.02 and values[-1] == 0.24
    ratios = np.array(values[1:]) / np.array(values[:-1])
    # constant ratio (0.24 / 0.02)^(1/9) = 12^(1/9), by hand
    np.testing.assert_allclose(ratios, 12 ** (1 / 9), rtol=1e-12)
    assert logspace_values(1.0, 100.0, 3) == pytest.approx((1.0, 10.0, 100.0), rel=1e-12)


def test_linspace_values_and_single_point():
    assert linspace_values(0.005, 0.4, 10)[1] == pytest.approx(0.005 + 0.395 / 9, rel=1e-12)
    assert linspace_values(0.0, 0.5, 3) == (0.0, 0.25, 0.5)
    assert linspace_values(0.3, 0.7, 1) == (0.3,)


def test_stepC_spec_is_the_seed_grid():
    spec = load_spec(SHIPPED / "stepC.yaml")
    axes = {a.key: a.values for a in spec.all_axes}
    assert list(axes) == ["alpha_w", "beta", "theta_mu_offset_scale"]
    assert axes["alpha_w"] == logspace_values(0.02, 0.24, 10)
    assert axes["beta"] == linspace_values(0.005, 0.4, 10)
    assert axes["theta_mu_offset_scale"] == linspace_values(0.0, 0.5, 10)
    assert spec.base.name == "plateau.yaml" and spec.seeds is None
    assert math.prod(len(v) for v in axes.values()) == 1000


def test_stepC_plan_has_1000_distinct_ids_over_the_plateau_config():
    runs = make_plan(load_spec(SHIPPED / "stepC.yaml"))
    assert len(runs) == 1000 and len({r.run_id for r in runs}) == 1000
    first = runs[0]
    assert first.params == {"alpha_w": 0.02, "beta": 0.005, "theta_mu_offset_scale": 0.0}
    assert first.config.outer_iters == 200 and first.config.probes.every == 10
    assert first.run_id.startswith("alpha_w0.02_beta0.005_tmos0-")


def test_seeds_overrides_and_resolution_order(tmp_path):
    spec = load_spec(_write(tmp_path, _spec(seeds=[3, 4], name="s")))
    runs = make_plan(spec)
    assert [(r.params["alpha_w"], r.params["seed"]) for r in runs] == [
        (0.1, 3),
        (0.1, 4),
        (0.2, 3),
        (0.2, 4),
    ]
    cfg = runs[3].config
    assert (cfg.seed, cfg.alpha_w, cfg.outer_iters, cfg.env.feature_dim) == (4, 0.2, 2, 16)
    assert cfg.name == runs[3].run_id and runs[3].run_id.endswith(cfg.config_hash())
    assert "_seed4-" in runs[3].run_id
    # nested overrides are flattened to dotted keys
    nested = load_spec(_write(tmp_path, _spec(overrides={"env": {"feature_dim": 16}}), "n.yaml"))
    assert nested.overrides == {"env.feature_dim": 16}


def test_run_ids_stable_and_distinct_across_base_configs(tmp_path):
    a = [r.run_id for r in make_plan(load_spec(_write(tmp_path, _spec(), "a.yaml")))]
    again = [r.run_id for r in make_plan(load_spec(_write(tmp_path, _spec(), "a2.yaml")))]
    other = _spec(base="plateau")
    b = [r.run_id for r in make_plan(load_spec(_write(tmp_path, other, "b.yaml")))]
    assert a == again
    assert not set(a) & set(b)
    assert [x.split("-")[0] for x in a] == [x.split("-")[0] for x in b]  # same readable prefix
    # the id does not depend on the order of grid keys, nor on the process
    code = (
        "from tdlens.sweeps.spec import load_spec, make_plan;"
        f"print([r.run_id for r in make_plan(load_spec({str(tmp_path / 'a.yaml')!r}))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(a)


def test_plan_round_trips_through_plan_json(tmp_path):
    spec = load_spec(_write(tmp_path, _spec(seeds=[0, 1])))
    runs = make_plan(spec)
    plan = plan_dict(spec, runs, base_data(spec))
    again = runs_from_plan(plan)
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    assert [e["config_hash"] for e in plan["runs"]] == [r.config_hash for r in runs]


def test_init_streams_do_not_depend_on_swept_values():
    from tdlens.config import load_config
    from tdlens.features import make_feature_maps
    from tdlens.learner import init_params

    small = ["env.feature_dim=16", "env.actor_feature_dim=4", "theta_mu_offset_scale={}"]
    w = []
    for offset in (0.0, 0.5):
        cfg = load_config(None, [*small[:2], small[2].format(offset)])
        w.append(init_params(cfg, make_feature_maps(cfg)).w)
    np.testing.assert_array_equal(w[0], w[1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"base": "sanity", "gird": {"alpha_w": [1]}}, "unknown sweep spec key 'gird'.*'grid'"),
        ({"base": "sanity", "grid": {}}, "grid: empty"),
        ({"base": "sanity"}, "grid: empty or missing"),
        ({"base": "sanity", "grid": {"alpha_w": []}}, "grid.alpha_w: empty list"),
        (
            {"base": "sanity", "grid": {"alpha_w": {"logspace": [0, 0.24, 10]}}},
            "grid.alpha_w.logspace: bounds must be > 0",
        ),
        (
            {"base": "sanity", "grid": {"alpha_w": {"logspace": [0.1, 0.2, 0]}}},
            r"logspace\[2\]: the count n",
        ),
        (
            {"base": "sanity", "grid": {"alpha_w": {"geomspace": [0.1, 0.2, 3]}}},
            "grid.alpha_w: expected a list",
        ),
        ({"base": "sanity", "grid": {"alpha": [0.1]}}, "'alpha' is not a config key.*'alpha_w'"),
        ({"base": "sanity", "grid": {"env.p_mx": [0.1]}}, "'env.p_mx'.*'env.p_mix'"),
        ({"base": "sanity", "grid": {"env": [0.1]}}, "'env' is not a config key"),
        ({"base": "sanity", "grid": {"threads": [1, 2]}}, "execution key"),
        ({"base": "sanity", "grid": {"beta": [0.1, 2.0]}}, r"grid point \(beta=2.0\): beta"),
        ({"base": "nope", "grid": {"beta": [0.1]}}, "base: config 'nope' does not exist"),
        (
            {"base": "sanity", "grid": {"beta": [0.1]}, "overrides": {"bta": 1}},
            "overrides: 'bta'.*'beta'",
        ),
        (
            {"base": "sanity", "grid": {"beta": [0.1]}, "overrides": {"beta": 0.2}},
            "'beta' is also a grid key",
        ),
        ({"base": "sanity", "grid": {"beta": [0.1]}, "seeds": [1, 1]}, "seeds: repeated"),
        ({"base": "sanity", "grid": {"beta": [0.1]}, "seeds": [-1]}, "seeds: expected integers"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, spec, message):
    with pytest.raises(SweepSpecError, match=message):
        make_plan(parse_spec(spec, tmp_path / "spec.yaml"))


def _app() -> typer.Typer:
    from tdlens.cli import app

    return app


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path):
    spec = _write(tmp_path, {"base": "sanity", "grid": {"alpah_w": [0.1]}})
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(), ["sweep", str(spec), "--output-dir", str(out), "--catalog", str(tmp_path / "c.db")]
    )
    assert res.exit_code == 2
    assert "alpah_w" in res.output and "alpha_w" in res.output
    assert not out.exists() and not (tmp_path / "c.db").exists()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        [
            "sweep",
            str(SHIPPED / "demo.yaml"),
            "--dry-run",
            "--output-dir",
            str(out),
            "--catalog",
            str(tmp_path / "c.db"),
        ],
    )
    assert res.exit_code == 0, res.output
    ids = [r.run_id for r in make_plan(load_spec(SHIPPED / "demo.yaml"))]
    assert len(ids) == 4 and all(i in res.output for i in ids)
    assert not out.exists() and not (tmp_path / "c.db").exists()


def test_cli_rejects_bad_backend_and_jobs(tmp_path):
    base = ["sweep", str(SHIPPED / "demo.yaml"), "--output-dir", str(tmp_path / "o")]
    assert CliRunner().invoke(_app(), [*base, "--backend", "slurm"]).exit_code == 2
    assert CliRunner().invoke(_app(), [*base, "--jobs", "0"]).exit_code == 2
    assert CliRunner().invoke(_app(), [*base, "--metric", "nope"]).exit_code == 2
    assert not (tmp_path / "o").exists()


def test_progress_text_gives_elapsed_and_eta():
    from tdlens.sweeps.commands import progress_text

    # 10 of 1000 runs in 5 min: the other 990 at 30 s each
    assert progress_text(300.0, 10, 1000) == "elapsed 5m00s, ETA 8h15m"
    assert progress_text(42.4, 1, 2) == "elapsed 42s, ETA 42s"
    assert progress_text(3725.0, 4, 4) == "elapsed 1h02m"


def test_run_ids_write_numbers_one_way_from_yaml_and_grid(tmp_path):
    """One format for ids (issue 24): the shortest round-trip repr, no trailing .0, so
    YAML's 1000.0 and 1e-3 and --grid's 1000 and 0.001 name the same config the same."""
    from tdlens.sweeps.inline import inline_spec

    spec = _spec(grid={"alpha_w": [1000.0, 1e-3, 0.30000000000000004]})
    from_yaml = [r.run_id for r in make_plan(load_spec(_write(tmp_path, spec)))]
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    grid = "alpha_w=1000,0.001,0.30000000000000004"
    from_grid = [r.run_id for r in make_plan(inline_spec("sanity", [grid], overrides=overrides))]
    assert from_yaml == from_grid
    assert [i.split("-")[0] for i in from_yaml] == [
        "alpha_w1000",
        "alpha_w0.001",
        "alpha_w0.30000000000000004",  # round-trips: 0.3 would be another config
    ]
