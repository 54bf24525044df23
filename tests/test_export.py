"""TensorBoard and MLflow export: every value reads back with each tool's own reader."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util
from typer.testing import CliRunner

import tdlens
from tdlens.cli import app
from tdlens.config import config_from_json
from tdlens.export import ARTIFACTS, scalar_series
from tdlens.export.tensorboard_export import image_tag, report_images
from tdlens.rundir.read import gz_twin, read_table_text

cli = CliRunner()
TINY = {
    "outer_iters": 4,
    "env.feature_dim": 64,
    "env.actor_feature_dim": 16,
    "trajectories": 4,
    "horizon": 30,
    "probes.every": 2,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tdlens.Run:
    d = tmp_path_factory.mktemp("export") / "run"
    return tdlens.run("sanity", TINY, run_dir=d, progress=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_sweep")
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    args = ["sweep", "--base", "sanity", "--grid", "alpha_w=0.1,1.0", *sets, "--name", "ex"]
    res = cli.invoke(app, [*args, "--jobs", "2", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    (sweep_dir,) = out.iterdir()
    return sweep_dir


def _expected_frames(run: tdlens.Run) -> dict[str, list[float]]:
    """The numeric columns of the run's tables read with pandas, independently of export."""
    expected = {}
    for table, frame in {"curves": run.curves, **run.probes}.items():
        for column in frame.select_dtypes("number").columns:
            values = frame[column].dropna()
            if column != "iter" and len(values):
                expected[f"{table}/{column}"] = values.tolist()
    return expected


def _accumulator(logdir) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def test_tensorboard_event_files_round_trip_every_value(run, tmp_path):
    out = tmp_path / "tb"
    for _ in range(2):  # the second export replaces the first
        res = cli.invoke(app, ["export", "tensorboard", str(run.path), "--out", str(out)])
        assert res.exit_code == 0, res.output
    logdir = out / run.path.name
    assert len(list(logdir.iterdir())) == 1  # one event file, not two
    acc = _accumulator(logdir)
    series = scalar_series(run.data)
    expected = _expected_frames(run)
    assert set(series) == set(expected) and len(series) > 100
    assert "stability_probe/growth_timescale" in series  # inf values included
    for tag, points in series.items():
        events = acc.Tensors(tag)
        assert [e.step for e in events] == [step for step, _ in points], tag
        read = [tensor_util.make_ndarray(e.tensor_proto).item() for e in events]
        assert read == [value for _, value in points], tag  # float64: exact
        assert read == expected[tag], tag
    assert acc.Tensors("curves/td_loss")[-1].step == 3
    report = tensor_util.make_ndarray(acc.Tensors("report")[0].tensor_proto).item()
    assert report.decode() == (run.path / "run_report.md").read_text()
    text = tensor_util.make_ndarray(acc.Tensors("tags")[0].tensor_proto).item().decode()
    assert f"health: {run.verdict['health']}" in text and f"regime: {run.verdict['regime']}" in text
    # classic scalars too (EventAccumulator.Scalars), float32 as TensorBoard stores them
    assert set(acc.Tags()["scalars"]) == set(series)
    for tag, points in series.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(step, float(np.float32(value))) for step, value in points]
        assert np.array_equal(np.array(got), np.array(want), equal_nan=True), tag
    pngs = report_images(run.path)
    image_tags = acc.Tags()["images"]
    assert len(pngs) == len(image_tags) >= 4
    # tags are the metric's name, never the data-dependent title, so runs line up
    assert "plots/w_norm" in image_tags and "plots/td_loss" in image_tags
    assert "plots/Q_hat_t_t" in image_tags and "plots/spectrum_of_A" in image_tags
    assert not [t for t in image_tags if re.search(r"changed|beyond_noise|iteration|/\d", t)]
    for title, png in pngs:
        assert acc.Images(image_tag(title))[0].encoded_image_string == png


def test_image_tags_drop_what_depends_on_the_data():
    assert image_tag("w_norm: changed 0.0035% of its level") == "plots/w_norm"
    assert image_tag("mean_rho2: no change beyond noise") == "plots/mean_rho2"
    assert image_tag("Q_hat(t, t') at iteration 79") == image_tag("Q_hat(t, t') at iteration 3")
    assert image_tag("value_gap: measured vs predicted: changed 1% of its level") == (
        "plots/value_gap_measured_vs_predicted"
    )


def _emptied(src, dest):
    """A copy of run `src` that failed before its first row: nothing to export."""
    shutil.copytree(src, dest)
    curves = dest / "learning_curves.csv"  # a sweep run's: learning_curves.csv.gz
    header = read_table_text(curves).splitlines()[0]
    gz_twin(curves).unlink(missing_ok=True)
    curves.write_text(header + "\n")
    shutil.rmtree(dest / "probes")
    status = json.loads((dest / "status.json").read_text())
    status.update(status="failed", reason="MemoryError: Unable to allocate 156. GiB")
    (dest / "status.json").write_text(json.dumps(status))
    return dest


def test_exporting_a_run_with_nothing_exits_1_and_says_so(run, tmp_path):
    failed = _emptied(run.path, tmp_path / "failed")
    out = tmp_path / "tb"
    res = cli.invoke(app, ["export", "tensorboard", str(failed), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "failed: dropped, nothing to export" in res.output and "Unable to allocate" in res.output
    assert "nothing exported" in res.output
    assert not out.exists()  # no empty event file


def test_a_sweep_export_names_the_runs_it_dropped(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    first, second = sorted((copy / "runs").iterdir())
    shutil.rmtree(first)
    _emptied(second, tmp_path / "x")
    shutil.rmtree(second)
    shutil.copytree(tmp_path / "x", second)
    res = cli.invoke(app, ["export", "tensorboard", str(copy), "--out", str(tmp_path / "tb")])
    assert res.exit_code == 1, res.output  # nothing left to export
    assert f"{first.name}: dropped, never started" in res.output
    assert f"{second.name}: dropped, nothing to export" in res.output
    shutil.rmtree(second)
    shutil.copytree(sweep / "runs" / second.name, second)
    res = cli.invoke(app, ["export", "tensorboard", str(copy), "--out", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.output
    assert f"exported 1 run(s), dropped 1: {first.name};" in res.output


def _mlflow_value(value: float) -> float:
    """MLflow's SQL store keeps +-inf as +-max double."""
    return float(np.clip(value, -sys.float_info.max, sys.float_info.max))


def test_mlflow_round_trips_params_metrics_tags_and_artifacts(run, tmp_path):
    run = tdlens.open_run(shutil.copytree(run.path, tmp_path / "run"))  # changed below
    uri = f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    args = ["export", "mlflow", str(run.path), "--tracking-uri", uri, "--experiment", "t"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0 and "logged as MLflow run" in res.output, res.output
    res = cli.invoke(app, args)
    assert res.exit_code == 0 and "up to date" in res.output, res.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("t")
    (logged,) = client.search_runs([exp.experiment_id])
    rid = logged.info.run_id
    config = json.loads((run.path / "config.json").read_text())
    assert logged.data.params["alpha_w"] == str(config["alpha_w"])
    assert logged.data.params["env.feature_dim"] == "64"
    assert logged.data.params["probes.every"] == "2"
    assert len(logged.data.params) > 50
    for key, want in (
        ("status", run.status),
        ("health", run.verdict["health"]),
        ("regime", run.verdict["regime"]),
        ("tdlens_run_id", run.path.name),
    ):
        assert logged.data.tags[key] == want, key
    assert logged.info.status == "FINISHED"
    series = scalar_series(run.data)
    assert set(logged.data.metrics) == set(series)
    for key, points in series.items():
        history = sorted(client.get_metric_history(rid, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [
            (step, _mlflow_value(value)) for step, value in points
        ], key
    names = sorted(a.path for a in client.list_artifacts(rid))
    assert names == sorted(n for n in ARTIFACTS if (run.path / n).is_file())
    local = client.download_artifacts(rid, "run_report.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read()) == run.report
    # a changed run replaces its MLflow run: still one active run, with the new report
    with open(run.path / "run_report.md", "a") as fh:
        fh.write("\nedited\n")
    res = cli.invoke(app, args)
    assert res.exit_code == 0 and "logged as MLflow run" in res.output
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id != rid and again.data.tags["tdlens_run_id"] == run.path.name


def test_a_sweep_exports_each_of_its_runs(sweep, tmp_path):
    frame = tdlens.open_sweep(sweep)
    res = cli.invoke(app, ["export", "tensorboard", str(sweep), "--out", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.output
    # sweep runs write no HTML page: their plots are drawn from the report in memory
    assert "no plots" not in res.output
    assert sorted(p.name for p in (tmp_path / "tb" / "ex").iterdir()) == sorted(frame["run_id"])
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    res = cli.invoke(app, ["export", "mlflow", str(sweep), "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=uri)
    logged = client.search_runs([client.get_experiment_by_name("tdlens").experiment_id])
    by_id = {r.data.tags["tdlens_run_id"]: r for r in logged}
    assert sorted(by_id) == sorted(frame["run_id"])
    for row in frame.itertuples():
        tags = by_id[row.run_id].data.tags
        assert (tags["tdlens_sweep"], tags["regime"], tags["status"]) == (
            "ex",
            row.regime,
            row.status,
        )
        cfg = config_from_json(tdlens.open_run(row.path).path / "config.json")
        assert by_id[row.run_id].data.params["alpha_w"] == str(cfg.alpha_w) == str(row.alpha_w)


def test_bad_export_input_exits_2_and_writes_nothing(tmp_path, run):
    res = cli.invoke(app, ["export", "tensorboard", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "neither a run directory" in res.output
    for uri in ("http://localhost:5000", "sqlite:///"):
        res = cli.invoke(app, ["export", "mlflow", str(run.path), "--tracking-uri", uri])
        assert res.exit_code == 2 and "expected sqlite:///PATH" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_id_with_both_quotes_is_still_found_again(run, tmp_path):
    odd = shutil.copytree(run.path, tmp_path / 'it\'s "odd"')
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    for expected in ("logged", "up to date"):
        res = cli.invoke(app, ["export", "mlflow", str(odd), "--tracking-uri", uri])
        assert res.exit_code == 0 and expected in res.output, res.output
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("tdlens").experiment_id])
    assert logged.data.tags["tdlens_run_id"] == odd.name


def test_an_annealed_runs_step_sizes_export_as_scalars_and_read_back(tmp_path):
    """Issue 27's done-when: the per-iteration steps alpha_w_t and alpha_pi_t of a run under
    schedules are columns of ``open_run(...).curves`` (the schedule's values by hand) and
    export as TensorBoard scalars and MLflow metrics that read back exactly."""
    sets = {
        **TINY,
        "schedules.alpha_w.kind": "exponential",
        "schedules.alpha_w.decay": 0.5,
        "schedules.alpha_pi.kind": "step",
        "schedules.alpha_pi.milestones": [2],
    }
    run = tdlens.run("sanity", sets, run_dir=tmp_path / "run", progress=False)
    opened = tdlens.open_run(run.path)
    cfg = opened.data.cfg
    n = np.arange(4)
    want_w = (cfg.alpha_w * 0.5**n).tolist()
    want_pi = [cfg.alpha_pi, cfg.alpha_pi, 0.1 * cfg.alpha_pi, 0.1 * cfg.alpha_pi]
    np.testing.assert_allclose(opened.curves["alpha_w_t"], want_w, rtol=1e-15)
    np.testing.assert_allclose(opened.curves["alpha_pi_t"], want_pi, rtol=1e-15)
    series = scalar_series(opened.data)
    for key, want in (("curves/alpha_w_t", want_w), ("curves/alpha_pi_t", want_pi)):
        assert [s for s, _ in series[key]] == n.tolist()
        np.testing.assert_allclose([v for _, v in series[key]], want, rtol=1e-15)
    res = cli.invoke(app, ["export", "tensorboard", str(run.path), "--out", str(tmp_path / "tb")])
    assert res.exit_code == 0, res.output
    acc = _accumulator(tmp_path / "tb" / run.path.name)
    for key in ("curves/alpha_w_t", "curves/alpha_pi_t"):
        read = [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors(key)]
        assert read == [v for _, v in series[key]], key
        assert [e.step for e in acc.Scalars(key)] == n.tolist(), key
    uri = f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    args = ["export", "mlflow", str(run.path), "--tracking-uri", uri, "--experiment", "s"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    for key in ("curves/alpha_w_t", "curves/alpha_pi_t"):
        history = sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == series[key], key
