"""Sweeps end to end: local pool and Ray, resume, faults, summaries, catalog, compare.

The demo sweep (configs/sweeps/demo.yaml, 4 tiny runs) runs three times: local with 1 and
2 workers and Ray with 2; every run's learning curves and probe tables must be identical
(bit for bit, as text; only wall times differ). Ray is a dev dependency: it is tested,
never skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import unquote

import pytest
import typer
import yaml
from typer.testing import CliRunner

from page_checks import assert_offline
from tdlens.catalog import store as cat
from tdlens.config import parse_config, shipped_configs
from tdlens.pages.kit import plotly_js
from tdlens.report import write_report
from tdlens.rundir.read import read_table_text, table_file, table_files
from tdlens.runs.runner import Runner
from tdlens.sweeps.backends import BackendError, RunOutcome, RunTask, execute_task
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.ray_backend import import_ray
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

DEMO = shipped_configs() / "sweeps" / "demo.yaml"
MINI = {
    "name": "mini",
    "base": "sanity",
    "grid": {"beta": [0.1, 0.5]},
    "overrides": {
        "outer_iters": 6,
        "checkpoint_every": 2,
        "env.feature_dim": 32,
        "env.actor_feature_dim": 8,
        "probes.enabled": False,
    },
}
TIMING_FILES = {"rounds.csv", "rounds.jsonl"}


def _curves(path: Path) -> list[list[str]]:
    """A CSV (plain or a finished sweep run's .csv.gz) as text cells without wall-time
    columns."""
    rows = list(csv.reader(io.StringIO(read_table_text(path), newline="")))
    keep = [i for i, h in enumerate(rows[0]) if not h.endswith("_time_s")]
    return [[r[i] for i in keep] for r in rows]


def _tables(run: Path) -> dict[str, list[list[str]]]:
    out = {"learning_curves.csv": _curves(run / "learning_curves.csv")}
    for name in table_files(run / "probes"):
        if f"{name}.csv" not in TIMING_FILES:
            out[f"{name}.csv"] = _curves(run / "probes" / f"{name}.csv")
    return out


def _app() -> typer.Typer:
    from tdlens.cli import app

    return app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo sweep on local x1, local x2 and ray x2, sharing one catalog."""
    root = tmp_path_factory.mktemp("demo")
    catalog = root / "catalog.sqlite"
    results = {}
    for label, backend, jobs in (
        ("local1", "local", 1),
        ("local2", "local", 2),
        ("ray2", "ray", 2),
    ):
        prepared = prepare_sweep(DEMO, root / label)
        results[label] = execute_sweep(prepared, backend=backend, jobs=jobs, catalog=catalog)
    return results, catalog


def test_demo_is_bit_identical_on_local_and_ray_for_any_jobs(demo):
    results, _ = demo
    ids = [e["run_id"] for e in read_plan(results["local1"].sweep_dir)["runs"]]
    assert len(ids) == 4
    for res in results.values():
        assert res.counts == {"complete": 4} and res.skipped == 0
    for rid in ids:
        ref = _tables(run_dir(results["local1"].sweep_dir, rid))
        assert "fixed_point_probe.csv" in ref and len(ref["learning_curves.csv"]) == 7
        for label in ("local2", "ray2"):
            assert _tables(run_dir(results[label].sweep_dir, rid)) == ref, (label, rid)
    shipped = run_dir(results["ray2"].sweep_dir, ids[0])
    assert {"config.json", "status.json", "run_report.json"} <= {p.name for p in shipped.iterdir()}
    assert json.loads((shipped / "config.json").read_text())["threads"] == 1


def test_demo_summary_labels_and_boundary(demo):
    results, _ = demo
    sweep = results["local2"].sweep_dir
    names = {"summary.csv", "summary_configs.csv", "summary.json", "summary.md", "summary.html"}
    assert names <= {p.name for p in sweep.iterdir()}
    data = json.loads((sweep / "summary.json").read_text())
    labels = {(r["alpha_w"], r["beta"]): r["regime"] for r in data["runs"]}
    assert labels == {
        (1.0, 0.1): "frozen",
        (1.0, 0.5): "frozen",
        (1000.0, 0.1): "diverged:step-size",
        (1000.0, 0.5): "diverged:step-size",
    }
    assert data["stability_boundary"] == [
        {
            "beta": b,
            "largest_stable_alpha_w": 1.0,
            "smallest_diverged_alpha_w": 1000.0,
            "monotone": True,
        }
        for b in (0.1, 0.5)
    ]
    assert len(data["configs"]) == 4 and data["metric"] == "value_gap"
    assert "FROZEN_REL_STEP" in (sweep / "summary.md").read_text()


def test_summary_html_is_self_contained(demo):
    results, _ = demo
    sweep = results["local1"].sweep_dir
    text = (sweep / "summary.html").read_text()
    assert assert_offline(text) == 1  # one heatmap: alpha_w x beta
    assert "Stability boundary" in text and "FROZEN_REL_STEP" in text
    # every run is linked to its own report, relative to the sweep folder: run_report.md,
    # as a sweep run writes no HTML page (tdlens report RUN makes one)
    links = re.findall(r'<a href="(runs/[^"]+/run_report\.md)">', text)
    assert len(links) == 4 and all((sweep / unquote(link)).is_file() for link in links)
    assert not list(sweep.glob("runs/*/run_report.html"))


def test_catalog_indexes_every_run_and_sweep(demo):
    _, catalog = demo
    assert len(cat.query_runs(catalog)) == 12
    assert len(cat.query_runs(catalog, "regime = 'diverged:step-size'", sweep="demo")) == 6
    rows = cat.query_runs(catalog, "json_extract(params, '$.alpha_w') = 1.0 AND iters = 6")
    assert len(rows) == 6 and all(r["status"] == "complete" for r in rows)
    conn = cat.connect(catalog)
    sweeps = conn.execute("SELECT name, n_runs, backend, finished_at FROM sweeps").fetchall()
    conn.close()
    assert len(sweeps) == 3 and all(s[0] == "demo" and s[1] == 4 and s[3] for s in sweeps)
    assert {s[2] for s in sweeps} == {"local", "ray"}


def test_cli_summarize_and_compare(demo, tmp_path):
    results, catalog = demo
    sweep = results["local1"].sweep_dir
    runner = CliRunner()
    res = runner.invoke(
        _app(), ["summarize", str(sweep), "--metric", "td_loss", "--catalog", str(catalog)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((sweep / "summary.json").read_text())["metric"] == "td_loss"
    assert runner.invoke(_app(), ["summarize", str(tmp_path)]).exit_code == 2
    out = tmp_path / "cmp.html"
    runs = [str(p) for p in sorted((sweep / "runs").iterdir())[:2]]
    res = runner.invoke(
        _app(), ["compare", *runs, str(results["ray2"].sweep_dir), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert assert_offline(text) >= 5 and str(sweep) not in text  # no absolute paths
    assert "alpha_w" in text  # the differing config key is listed
    res = runner.invoke(_app(), ["compare", "no-such-run", "--catalog", str(catalog)])
    assert res.exit_code == 2 and "no-such-run" in res.output


def test_compare_escapes_every_string(demo, tmp_path):
    results, _ = demo
    src = next((results["local1"].sweep_dir / "runs").iterdir())
    run = tmp_path / "a&b<i>"
    shutil.copytree(src, run)
    config = json.loads((run / "config.json").read_text())
    config["name"] = "<script>alert('x')</script>"
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path / "cmp.html"
    res = CliRunner().invoke(_app(), ["compare", str(run), str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert_offline(text)
    text = text.replace(plotly_js(), "")  # the library's own strings are not the run's
    assert "<script>alert" not in text and "<i>" not in text
    assert (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "a&amp;b&lt;i&gt;" in text
    )


# --------------------------------------------------------------------------- faults


def _raise_for_beta05(task: RunTask):
    """Worker fn: an exception outside the Runner for one run (module level: picklable)."""
    if "beta0.5" in task.run_id:
        raise RuntimeError("injected failure")
    return execute_task(task)


def _die_mid_run(task: RunTask):
    """Worker fn: the beta=0.5 run's process dies (os._exit) after iteration 2."""
    if "beta0.5" not in task.run_id or task.resume:
        return execute_task(task)
    from threadpoolctl import threadpool_limits

    def bomb(progress) -> None:
        if progress.n == 2:
            os._exit(17)

    with threadpool_limits(limits=1):
        Runner(
            parse_config(task.config), task.run_dir, on_progress=bomb, handle_signals=False
        ).run()
    raise AssertionError("unreachable")


def _die_on_ray(task: RunTask):
    """Worker fn: the beta=0.5 run's Ray worker process dies at once."""
    if "beta0.5" in task.run_id and not task.resume:
        os._exit(3)
    return execute_task(task)


@pytest.fixture
def mini_spec(tmp_path) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(MINI))
    return path


def test_a_failing_run_never_stops_the_sweep(mini_spec, tmp_path):
    prepared = prepare_sweep(mini_spec, tmp_path / "out")
    res = execute_sweep(prepared, jobs=2, catalog=tmp_path / "c.db", fn=_raise_for_beta05)
    assert res.counts == {"complete": 1, "failed": 1}
    failed = next(o for o in res.outcomes.values() if o.status == "failed")
    assert "injected failure" in failed.reason and "Traceback" in failed.error
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    assert state["counts"] == {"complete": 1, "failed": 1}
    status = json.loads((run_dir(res.sweep_dir, failed.run_id) / "status.json").read_text())
    assert status["status"] == "failed" and "injected failure" in status["reason"]
    rows = json.loads((res.sweep_dir / "summary.json").read_text())["runs"]
    assert sorted(r["status"] for r in rows) == ["complete", "failed"]
    assert cat.query_runs(tmp_path / "c.db", "status = 'failed'")[0]["id"] == failed.run_id
    # --resume reruns the failed run from scratch and skips the complete one
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), jobs=2)
    assert again.skipped == 1 and again.counts == {"complete": 1}


def _reference(run, tmp_path: Path) -> Path:
    """The run uninterrupted, in this process."""
    ref_dir = tmp_path / f"ref_{run.run_id}"
    task = RunTask(run.run_id, str(ref_dir), run.config.model_copy(update={"threads": 1}).to_dict())
    assert execute_task(task).status == "complete"
    return ref_dir


def test_dead_worker_is_retried_from_its_checkpoint_bit_identical(mini_spec, tmp_path):
    prepared = prepare_sweep(mini_spec, tmp_path / "out")
    retried = []
    res = execute_sweep(
        prepared, jobs=1, fn=_die_mid_run, on_retry=lambda t, n, why: retried.append((n, why))
    )
    assert res.counts == {"complete": 2}
    dead = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    assert retried == [(2, "worker process died (exit code 17)")]
    assert res.outcomes[dead.run_id].attempts == 2
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    assert state["runs"][dead.run_id]["attempts"] == 2 and state["retries"] == 2
    status = json.loads((run_dir(res.sweep_dir, dead.run_id) / "status.json").read_text())
    assert status["resumed_at"]  # it went on from its checkpoint, not from the start
    assert _tables(run_dir(res.sweep_dir, dead.run_id)) == _tables(_reference(dead, tmp_path))


def _always_die(task: RunTask):
    """Worker fn: the beta=0.5 run's process dies (os._exit) after its first iteration on
    every attempt, resumed or not."""
    if "beta0.5" not in task.run_id:
        return execute_task(task)
    from threadpoolctl import threadpool_limits

    def bomb(progress) -> None:
        os._exit(19)

    cfg = None if task.resume else parse_config(task.config)
    with threadpool_limits(limits=1):
        Runner(cfg, task.run_dir, task.resume, on_progress=bomb, handle_signals=False).run()
    raise AssertionError("unreachable")


def test_retries_two_means_three_attempts_then_failed(mini_spec, tmp_path):
    """``retries=2``: the first attempt and two retries (attempts 2 and 3), then failed."""
    prepared = prepare_sweep(mini_spec, tmp_path / "out")
    retried = []
    res = execute_sweep(
        prepared, jobs=1, fn=_always_die, retries=2, on_retry=lambda t, n, why: retried.append(n)
    )
    assert res.counts == {"complete": 1, "failed": 1}
    dead = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    assert retried == [2, 3] and res.outcomes[dead.run_id].attempts == 3
    status = json.loads((run_dir(res.sweep_dir, dead.run_id) / "status.json").read_text())
    assert status["reason"].startswith("worker process died (exit code 19) on 3 attempt(s)")


def test_dead_worker_without_retries_fails_and_resume_is_bit_identical(mini_spec, tmp_path):
    prepared = prepare_sweep(mini_spec, tmp_path / "out")
    res = execute_sweep(prepared, jobs=1, fn=_die_mid_run, retries=0)
    assert res.counts == {"complete": 1, "failed": 1}
    dead = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    done = next(r for r in prepared.runs if "beta0.1" in r.run_id)
    dead_dir = run_dir(res.sweep_dir, dead.run_id)
    status = json.loads((dead_dir / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["reason"].startswith("worker process died (exit code 17) on 1 attempt(s)")
    assert (dead_dir / "checkpoints").is_dir()
    ref_dir = _reference(dead, tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(res.sweep_dir, copy)
    done_csv = table_file(run_dir(res.sweep_dir, done.run_id) / "learning_curves.csv")
    mtime = done_csv.stat().st_mtime_ns
    # resume on the local pool (from the spec: --output-dir is the sweep) and on Ray (from
    # the directory; the run's files travel to the worker and back as bytes)
    local = execute_sweep(prepare_sweep(mini_spec, res.sweep_dir, resume=True), jobs=1)
    ray = execute_sweep(prepare_sweep(copy, tmp_path, resume=True), backend="ray", jobs=1)
    for again, sweep in ((local, res.sweep_dir), (ray, copy)):
        assert again.skipped == 1 and again.counts == {"complete": 1}
        assert _tables(run_dir(sweep, dead.run_id)) == _tables(ref_dir)
    assert done_csv.stat().st_mtime_ns == mtime


def _slow_task(task: RunTask):
    """Worker fn: execute_task's run, 0.25 s slower per iteration (time to kill it)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        cfg = None if task.resume else parse_config(task.config)
        result = Runner(
            cfg,
            task.run_dir,
            resume=task.resume,
            handle_signals=False,
            write_report=partial(write_report, html=False),
            on_progress=lambda progress: time.sleep(0.25),
        ).run()
    return RunOutcome(task.run_id, result.status, result.reason, result.exit_code, result.next_iter)


def _kill_worker_of(run: Path, after_rows: int, killed: list[int]) -> None:
    """SIGKILL the process running `run` once its curves have `after_rows` rows."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        curves = run / "learning_curves.csv"
        if curves.exists() and curves.read_text().count("\n") > after_rows:
            pid = json.loads((run / "status.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_killed_local_worker_fails_its_run_only_and_resume_retries_it(mini_spec, tmp_path):
    """kill -9 of a pool worker (as the OOM killer does): its run is failed with the
    signal, the run beside it (whose worker the broken pool terminated) is retried without
    being charged and completes, the summary and catalog list the failure, and --resume
    then completes the killed run bit for bit."""
    catalog = tmp_path / "c.db"
    prepared = prepare_sweep(mini_spec, tmp_path / "out")
    victim = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_worker_of, args=(run_dir(prepared.sweep_dir, victim.run_id), 2, killed)
    )
    watcher.start()
    res = execute_sweep(prepared, jobs=2, fn=_slow_task, retries=0, catalog=catalog)
    watcher.join()
    assert len(killed) == 1
    assert res.counts == {"complete": 1, "failed": 1}
    reason = res.outcomes[victim.run_id].reason
    assert reason.startswith("worker process died (killed by SIGKILL (e.g. the out-of-memory")
    rows = json.loads((res.sweep_dir / "summary.json").read_text())["runs"]
    assert {r["run_id"]: r["status"] for r in rows}[victim.run_id] == "failed"
    md = (res.sweep_dir / "summary.md").read_text()
    assert "Runs that did not finish" in md and victim.run_id in md and "SIGKILL" in md
    row = cat.find_runs(catalog, victim.run_id)[0]
    assert row["status"] == "failed" and "SIGKILL" in row["reason"]
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), jobs=1)
    assert again.skipped == 1 and again.counts == {"complete": 1}
    ref = _tables(_reference(victim, tmp_path))
    assert _tables(run_dir(res.sweep_dir, victim.run_id)) == ref


def test_resume_of_a_spec_that_changed_is_refused(mini_spec, tmp_path):
    res = execute_sweep(prepare_sweep(mini_spec, tmp_path / "out"), jobs=1, fn=_raise_for_beta05)
    spec = yaml.safe_load(mini_spec.read_text())
    spec["grid"]["beta"] = [0.1, 0.3]
    mini_spec.write_text(yaml.safe_dump(spec))
    res2 = CliRunner().invoke(
        _app(), ["sweep", str(mini_spec), "--resume", "--output-dir", str(res.sweep_dir)]
    )
    assert res2.exit_code == 2 and "differs from the plan" in res2.output


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()
    res = CliRunner().invoke(
        _app(), ["sweep", str(DEMO), "--backend", "ray", "--output-dir", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "pip install" in res.output
    assert not (tmp_path / "o").exists()


def test_ctrl_c_checkpoints_running_runs_and_starts_no_more(tmp_path):
    spec = {**MINI, "grid": {"beta": [0.1, 0.2, 0.3]}}
    spec["overrides"] = {**MINI["overrides"], "outer_iters": 100_000, "checkpoint_every": 5}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    prepared = prepare_sweep(path, tmp_path / "out")
    curves = [run_dir(prepared.sweep_dir, r.run_id) / "learning_curves.csv" for r in prepared.runs]

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(p.exists() and p.read_text().count("\n") > 3 for p in curves) == 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # a pytest started in the background by a non-interactive shell inherits SIGINT
    # ignored (and Python then never raises KeyboardInterrupt): this test is Ctrl-C's
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Thread(target=interrupt_when_running, daemon=True)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            execute_sweep(prepared, jobs=2)
    finally:
        signal.signal(signal.SIGINT, old)
    timer.join()
    state = json.loads((prepared.sweep_dir / "sweep.json").read_text())
    assert state["interrupted"] is True and state["counts"] == {"incomplete": 2}
    for run in prepared.runs[:2]:
        status = json.loads((run_dir(prepared.sweep_dir, run.run_id) / "status.json").read_text())
        assert status["status"] == "incomplete" and "SIGINT" in status["reason"]
        assert list((run_dir(prepared.sweep_dir, run.run_id) / "checkpoints").iterdir())
    assert not run_dir(prepared.sweep_dir, prepared.runs[2].run_id).exists()


def test_dead_ray_worker_is_retried_then_failed_and_resumable(mini_spec, tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    try:
        prepared = prepare_sweep(mini_spec, tmp_path / "out")
        res = execute_sweep(prepared, backend="ray", jobs=2, fn=_die_on_ray, retries=1)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert res.counts == {"complete": 1, "failed": 1}
    dead = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    assert res.outcomes[dead.run_id].attempts == 2
    status = json.loads((run_dir(res.sweep_dir, dead.run_id) / "status.json").read_text())
    assert status["status"] == "failed" and "Ray worker or node lost" in status["reason"]
    assert "on 2 attempt(s); retry with --resume" in status["reason"]
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), jobs=1)
    assert again.skipped == 1 and again.counts == {"complete": 1}


def _die_after_streamed_checkpoint(task: RunTask):
    """Worker fn (Ray): the beta=0.5 run's worker dies after iteration 2, once the snapshot
    of its checkpoint at iteration 2 has gone back to the driver."""
    if "beta0.5" not in task.run_id or task.resume:
        return execute_task(task)
    from threadpoolctl import threadpool_limits

    from tdlens.sweeps.backends import progress_hook

    hook = progress_hook(task)
    assert hook is not None  # a Ray task streams snapshots

    def bomb(progress) -> None:
        hook(progress)
        if progress.n == 2:
            time.sleep(2.0)
            os._exit(17)

    with threadpool_limits(limits=1):
        Runner(
            parse_config(task.config),
            task.run_dir,
            on_progress=bomb,
            handle_signals=False,
            write_report=partial(write_report, html=False),
        ).run()
    raise AssertionError("unreachable")


def test_ray_run_lost_mid_run_resumes_from_its_streamed_checkpoint(mini_spec, tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    retried = []
    try:
        prepared = prepare_sweep(mini_spec, tmp_path / "out")
        res = execute_sweep(
            prepared,
            backend="ray",
            jobs=2,
            fn=_die_after_streamed_checkpoint,
            on_retry=lambda t, n, why: retried.append(n),
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert res.counts == {"complete": 2} and retried == [2]
    dead = next(r for r in prepared.runs if "beta0.5" in r.run_id)
    assert res.outcomes[dead.run_id].attempts == 2
    status = json.loads((run_dir(res.sweep_dir, dead.run_id) / "status.json").read_text())
    assert status["resumed_at"]  # from the checkpoint streamed back, not from the start
    assert _tables(run_dir(res.sweep_dir, dead.run_id)) == _tables(_reference(dead, tmp_path))


def _node_ip(task: RunTask):
    """Worker fn: the address of the Ray node running the task, as the outcome's reason."""
    import ray

    return RunOutcome(task.run_id, "complete", ray.util.get_node_ip_address())


def test_local_ray_stays_on_loopback(mini_spec, tmp_path):
    """The local Ray binds and advertises 127.0.0.1, never the machine's other addresses."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        prepared = prepare_sweep(mini_spec, tmp_path / "out")
        res = execute_sweep(prepared, backend="ray", jobs=1, fn=_node_ip)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert {o.reason for o in res.outcomes.values()} == {"127.0.0.1"}


class _FlippingHalt:
    """A shared halt code that the driver sets between two reads: GO, then `signum`."""

    def __init__(self, signum: int) -> None:
        self.reads = iter([0])
        self.signum = signum

    @property
    def value(self) -> int:
        return next(self.reads, self.signum)


def test_worker_stop_check_reads_the_halt_code_once(monkeypatch, tmp_path):
    """A driver's SIGHUP landing between the hook's reads of the halt code must not turn
    into a KeyboardInterrupt (which the run records as SIGINT): the hook reads the code
    once per iteration and hands the signal it read to the runner."""
    from types import SimpleNamespace

    from tdlens.sweeps import backends

    halt = _FlippingHalt(signal.SIGHUP)
    monkeypatch.setattr(backends._Worker, "halt", halt)
    stops: list[int] = []
    task = RunTask("r", str(tmp_path / "r"), {"checkpoint_every": 0})
    hook = backends.progress_hook(task, stops.append)
    progress = SimpleNamespace(n=3, outer_iters=10)
    try:
        hook(progress)  # reads GO: this iteration goes on
    except KeyboardInterrupt:
        pytest.fail("the hook raised KeyboardInterrupt: the run would record SIGINT")
    assert stops == []
    hook(progress)  # reads SIGHUP: the runner is told which signal
    assert stops == [signal.SIGHUP]
