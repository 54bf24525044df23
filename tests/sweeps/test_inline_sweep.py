"""Inline sweeps (`tdlens sweep --base --grid --seeds`): the same sweep as its YAML twin."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import tdlens
from helpers import TINY_SWEEP
from tdlens.cli import app
from tdlens.sweeps.inline import inline_spec, parse_grid_arg
from tdlens.sweeps.spec import SweepSpecError, load_spec, make_plan

cli = CliRunner()
TINY = TINY_SWEEP
INLINE = [
    "--base",
    "sanity",
    "--grid",
    "alpha_w=1.0,1000.0",
    "--grid",
    "beta=linspace(0.1, 0.5, 2)",
    "--seeds",
    "2",
    *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")],
]
TWIN = {
    "name": "twin",
    "base": "sanity",
    "grid": {"alpha_w": [1.0, 1000.0], "beta": {"linspace": [0.1, 0.5, 2]}},
    "seeds": [0, 1],
    "overrides": TINY,
}
DETERMINISTIC = ["iter", "td_loss", "critic_teacher_error", "w_norm", "mean_rho2"]


def test_grid_arguments_read_like_yaml_values():
    assert parse_grid_arg("alpha_w=0.08,0.8,8") == ("alpha_w", [0.08, 0.8, 8])
    assert parse_grid_arg("beta=linspace(0.01,0.2,5)") == ("beta", {"linspace": [0.01, 0.2, 5]})
    assert parse_grid_arg("env.p_mix=logspace(1e-3, 0.1, 3)") == (
        "env.p_mix",
        {"logspace": [0.001, 0.1, 3]},
    )
    assert parse_grid_arg("squash_action=true,false") == ("squash_action", [True, False])


@pytest.mark.parametrize(
    ("grids", "message"),
    [
        (["alpa_w=1,2"], "grid: 'alpa_w' is not a config key; did you mean 'alpha_w'?"),
        (["alpha_w"], "--grid 'alpha_w': expected KEY=V1,V2"),
        (["alpha_w=1,,2"], "--grid alpha_w: empty value"),
        (["beta=linspace(0.1,0.5)"], "grid.beta.linspace: expected [a, b, n]"),
        (["beta=logspace(0,1,3)"], "bounds must be > 0"),
        (["alpha_w=1,1"], "grid.alpha_w: repeated values"),
        (["threads=1,2"], "execution key"),
        (["alpha_w=1", "alpha_w=2"], "given twice"),
    ],
)
def test_bad_grids_fail_like_a_bad_spec_file(grids, message):
    with pytest.raises(SweepSpecError) as info:
        inline_spec("sanity", grids)
    assert message in str(info.value)


def test_cli_bad_inline_sweep_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "sweeps"
    for args, message in (
        (["--base", "sanity", "--grid", "alpa_w=1,2"], "did you mean 'alpha_w'"),
        (["--base", "sanity", "--grid", "alpha_w=1,2", "--set", "gama=1"], "gama"),
        (["--base", "nope", "--grid", "alpha_w=1,2"], "base: config 'nope' does not exist"),
        (["--grid", "alpha_w=1,2"], "--grid is for an inline sweep: add --base CONFIG"),
        (["--base", "sanity"], "--grid: give at least one axis"),
        (["spec.yaml", "--base", "sanity"], "not both (--base)"),
        ([], "give a sweep spec YAML, or --base CONFIG"),
    ):
        res = cli.invoke(app, ["sweep", *args, "--output-dir", str(out)])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
    assert not out.exists()


def test_inline_sweep_equals_its_yaml_twin_run_for_run(tmp_path):
    spec_file = tmp_path / "twin.yaml"
    spec_file.write_text(yaml.safe_dump(TWIN))
    dirs = {}
    for label, args in (("yaml", [str(spec_file)]), ("inline", [*INLINE, "--name", "twin"])):
        out = tmp_path / label
        res = cli.invoke(app, ["sweep", *args, "--jobs", "2", "--output-dir", str(out)])
        assert res.exit_code == 0, res.output
        (dirs[label],) = out.iterdir()
    plans = {k: json.loads((d / "plan.json").read_text()) for k, d in dirs.items()}
    assert len(plans["yaml"]["runs"]) == 8
    assert plans["inline"]["runs"] == plans["yaml"]["runs"]  # ids, overrides, config hashes
    assert plans["inline"]["axes"] == plans["yaml"]["axes"]
    assert plans["inline"]["base_config"] == plans["yaml"]["base_config"]
    # the spec is kept in the sweep directory and plans the same runs again
    kept = dirs["inline"] / "spec.yaml"
    assert plans["inline"]["spec_file"] == str(kept)
    assert [r.run_id for r in make_plan(load_spec(kept))] == [
        r["run_id"] for r in plans["yaml"]["runs"]
    ]
    for entry in plans["yaml"]["runs"]:
        runs = [tdlens.open_run(d / "runs" / entry["run_id"]) for d in dirs.values()]
        assert runs[0].config == runs[1].config
        assert len(runs[0].curves) == 3
        pd.testing.assert_frame_equal(runs[0].curves[DETERMINISTIC], runs[1].curves[DETERMINISTIC])
    # open_sweep: one row per run with its swept values, status, regime and final metrics
    frame = tdlens.open_sweep(dirs["inline"])
    assert list(frame["run_id"]) == [r["run_id"] for r in plans["yaml"]["runs"]]
    assert list(frame["alpha_w"]) == [1.0] * 4 + [1000.0] * 4
    assert list(frame["seed"]) == [0, 1] * 4
    assert set(frame["status"]) <= {"complete", "diverged"}
    assert frame["regime"].notna().all() and frame["td_loss"].notna().all()
    first = tdlens.open_run(frame["path"][0])
    assert frame["td_loss"][0] == first.final["td_loss"]
