"""Sweep faults: a signal to the driver, a driver killed outright, a resume after either,
a full disk mid-sweep, a runaway --where query and a damaged tree under `runs reindex`.

Each test checks the runs' status, the message, the exit code, that nothing finished
earlier was lost (or rewritten), and, where a run resumes, that its tables equal the
uninterrupted run's bit for bit. The driver tests run `tdlens sweep` as a child process
and read its workers from /proc (Linux, as the parent-death signal they check).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from tdlens.catalog import store as cat
from tdlens.catalog.records import RunRecord
from tdlens.cli import app
from tdlens.rundir import files
from tdlens.rundir.read import read_table_text, table_file
from tdlens.sweeps.backends import RunOutcome, RunTask, as_found, execute_task
from tdlens.sweeps.commands import _report_result
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

OVERRIDES = {
    "checkpoint_every": 2,
    "env.feature_dim": 32,
    "env.actor_feature_dim": 8,
    "probes.enabled": False,
}
runner = CliRunner()


def _spec(tmp_path: Path, outer_iters: int, betas: list[float]) -> Path:
    spec = {
        "name": "faults",
        "base": "sanity",
        "grid": {"beta": betas},
        "overrides": {**OVERRIDES, "outer_iters": outer_iters},
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _tables(run: Path) -> list[list[str]]:
    """learning_curves.csv (plain, or a finished sweep run's .csv.gz) as text cells without
    wall-time columns: bit-for-bit comparable."""
    text = read_table_text(run / "learning_curves.csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    keep = [i for i, h in enumerate(rows[0]) if not h.endswith("_time_s")]
    return [[r[i] for i in keep] for r in rows]


def _reference(run_id: str, sweep_dir: Path, tmp_path: Path) -> list[list[str]]:
    """The run's learning curves uninterrupted, from its own config.json, in this process."""
    config = json.loads((run_dir(sweep_dir, run_id) / "config.json").read_text())
    task = RunTask(run_id, str(tmp_path / f"ref_{run_id}"), config)
    assert execute_task(task).status == "complete"
    return _tables(tmp_path / f"ref_{run_id}")


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _sweep_state(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every live (not zombie) process, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids still running (a zombie waiting for its reaper has stopped running)."""
    live = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            live.add(pid)
    return live


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _start_driver(spec: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tdlens.cli", "sweep", str(spec), "--jobs", "2"]
    cmd += ["--output-dir", str(out), "--catalog", str(out / "catalog.sqlite")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_two_running(out: Path, proc: subprocess.Popen) -> Path:
    """The sweep directory, once two runs have written rows (the child still alive)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        curves = list(out.glob("*_faults/runs/*/learning_curves.csv"))
        if sum(p.read_text().count("\n") > 3 for p in curves) >= 2:
            return curves[0].parents[2]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the sweep did not start two runs")


def _workers(driver: int, sweep_dir: Path) -> set[int]:
    """The driver's descendants: its pool workers (the runs' pids) and resource tracker."""
    pids = _descendants(driver)
    running = {_status(p.parent)["pid"] for p in sweep_dir.glob("runs/*/status.json")}
    assert running <= pids and len(running) == 2
    return pids


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_a_sweep_as_ctrl_c_does(tmp_path, signum, code):
    """SIGTERM (kill, systemd, Slurm, docker stop) or SIGHUP to the driver: the running
    runs checkpoint and stop (incomplete, naming the signal), the queued run never starts,
    sweep.json says so, the exit code is the signal's, and no worker outlives the driver;
    --resume then finishes every run bit for bit."""
    spec = _spec(tmp_path, 150, [0.1, 0.2, 0.3])
    out = tmp_path / "out"
    proc = _start_driver(spec, out)
    sweep_dir = _wait_two_running(out, proc)
    workers = _workers(proc.pid, sweep_dir)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == code, stderr
    assert f"interrupted by {name}: continue with --resume" in stderr
    assert "Traceback" not in stderr
    assert _gone_within(workers, 10) == set()
    state = _sweep_state(sweep_dir)
    assert state["interrupted"] is True and state["signal"] == name
    assert state["counts"] == {"incomplete": 2}
    ids = [e["run_id"] for e in read_plan(sweep_dir)["runs"]]
    for run_id in state["runs"]:
        status = _status(run_dir(sweep_dir, run_id))
        assert status["status"] == "incomplete"
        assert f"interrupted by {name}" in status["reason"]
        assert list((run_dir(sweep_dir, run_id) / "checkpoints").iterdir())
    (queued,) = set(ids) - set(state["runs"])
    assert not run_dir(sweep_dir, queued).exists()
    if signum != signal.SIGTERM:
        return
    again = runner.invoke(app, ["sweep", str(sweep_dir), "--resume", "--jobs", "2"])
    assert again.exit_code == 0, again.output
    assert "3 run(s) executed (complete=3), 0 skipped" in again.output
    assert _sweep_state(sweep_dir)["counts"] == {"complete": 3}
    first = next(iter(state["runs"]))
    assert _tables(run_dir(sweep_dir, first)) == _reference(first, sweep_dir, tmp_path)


def test_a_driver_killed_outright_takes_its_workers_and_resume_finishes(tmp_path):
    """kill -9 of the driver: its workers (parent-death signal) and the resource tracker
    are gone within seconds, not orphaned; --resume then finishes the runs, and a second
    --resume skips them all as complete with sweep.json saying so."""
    spec = _spec(tmp_path, 150, [0.1, 0.2, 0.3])
    out = tmp_path / "out"
    proc = _start_driver(spec, out)
    sweep_dir = _wait_two_running(out, proc)
    workers = _workers(proc.pid, sweep_dir)
    assert len(workers) >= 3  # two workers and the resource tracker
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone_within(workers, 10) == set()
    again = runner.invoke(app, ["sweep", str(sweep_dir), "--resume", "--jobs", "2"])
    assert again.exit_code == 0, again.output
    assert _sweep_state(sweep_dir)["counts"] == {"complete": 3}
    state = _sweep_state(sweep_dir)
    state["runs"] = {k: {**v, "status": "failed"} for k, v in state["runs"].items()}
    (sweep_dir / "sweep.json").write_text(json.dumps(state))  # a stale record, as before
    third = runner.invoke(app, ["sweep", str(sweep_dir), "--resume", "--jobs", "1"])
    assert third.exit_code == 0, third.output
    assert "0 run(s) executed (none), 3 skipped as finished" in third.output
    assert _sweep_state(sweep_dir)["counts"] == {"complete": 3}


def test_a_worker_takes_a_run_as_its_directory_stands(tmp_path):
    """A run finished (by another process) since it was planned is reported as it is and
    not rewritten; a folder that never got its config.json starts over instead of
    "already exists"; a run with a config.json resumes."""
    spec = _spec(tmp_path, 4, [0.1])
    res = execute_sweep(prepare_sweep(spec, tmp_path / "out"), jobs=1)
    (run_id,) = res.outcomes
    done = run_dir(res.sweep_dir, run_id)
    config = json.loads((done / "config.json").read_text())
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    outcome = execute_task(RunTask(run_id, str(done), config, resume=False))
    assert (outcome.status, outcome.next_iter) == ("complete", 4)
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    half = tmp_path / "half"
    half.mkdir()
    (half / "stdout.log").write_text("a start that never wrote its config\n")
    task = RunTask(run_id, str(half), config, resume=True)
    assert as_found(task) == RunTask(run_id, str(half), config, resume=False)
    assert not half.exists()
    half.mkdir()
    (half / "stdout.log").write_text("again\n")
    assert execute_task(task).status == "complete"
    assert _tables(half) == _tables(done)
    assert as_found(RunTask(run_id, str(half), config)) == RunOutcome(
        run_id, "complete", None, 0, 4
    )


class _DiskFull:
    """files._write that raises ENOSPC from the `nth` write to learning_curves.csv on (the
    disk stays full for this worker: its status.json and checkpoints cannot be written)."""

    def __init__(self, nth: int) -> None:
        self.nth, self.seen, self.real = nth, 0, files._write

    def __call__(self, fh, data, path) -> None:
        self.seen += Path(path).name == "learning_curves.csv"
        if self.seen >= self.nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.real(fh, data, path)


def _disk_full_in_beta02(task: RunTask) -> RunOutcome:
    """Worker fn: the disk is full for the beta=0.2 run from its 4th curve write (the
    header and rows 0-1 written; iteration 2's row is not)."""
    if "beta0.2" not in task.run_id:
        return execute_task(task)
    real, files._write = files._write, _DiskFull(4)
    try:
        return execute_task(task)
    finally:
        files._write = real


def test_a_full_disk_stops_the_sweep_honestly_and_resume_finishes_it(tmp_path, capsys):
    """A run that meets a full disk is failed naming the file (by the driver, as its worker
    could not write status.json), no new run starts, sweep.json says why, the sweep exits
    1; once there is space --resume finishes it bit for bit and rewrites no finished run."""
    spec = _spec(tmp_path, 6, [0.1, 0.2, 0.3])
    prepared = prepare_sweep(spec, tmp_path / "out")
    ids = [r.run_id for r in prepared.runs]
    res = execute_sweep(prepared, jobs=1, fn=_disk_full_in_beta02)
    assert res.counts == {"complete": 1, "failed": 1}
    victim = run_dir(res.sweep_dir, ids[1])
    reason = f"No space left on device writing '{victim / 'learning_curves.csv'}' at iteration 2"
    assert res.outcomes[ids[1]].reason.startswith(reason)
    status = _status(victim)
    assert status["status"] == "failed" and status["reason"].startswith(reason)
    assert not run_dir(res.sweep_dir, ids[2]).exists()  # never started
    state = _sweep_state(res.sweep_dir)
    assert state["counts"] == {"complete": 1, "failed": 1}
    assert state["stopped"].startswith(f"run {ids[1]} failed on a full disk")
    assert "--resume" in state["stopped"]
    with pytest.raises(typer.Exit) as exit_info:
        _report_result(res)
    assert exit_info.value.exit_code == 1
    assert "stopped: run " in capsys.readouterr().err
    done = table_file(run_dir(res.sweep_dir, ids[0]) / "learning_curves.csv")
    mtime = done.stat().st_mtime_ns
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), jobs=1)
    assert again.skipped == 1 and again.counts == {"complete": 2}
    assert again.stopped is None and "stopped" not in _sweep_state(res.sweep_dir)
    assert _sweep_state(res.sweep_dir)["counts"] == {"complete": 3}
    assert _status(victim)["resumed_at"]
    assert _tables(victim) == _reference(ids[1], res.sweep_dir, tmp_path)
    assert done.stat().st_mtime_ns == mtime


@pytest.fixture
def one_row_catalog(tmp_path) -> Path:
    path = tmp_path / "catalog.sqlite"
    cat.index_runs(path, [RunRecord("r1", tmp_path / "r1", status="complete")])
    return path


RECURSIVE = (
    "id IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT x FROM c WHERE x < 0)"
)


def test_a_where_query_that_never_ends_is_stopped(one_row_catalog):
    """A recursive WITH that never returns: stopped at --timeout, exit 2, one line; a
    query that ends in time is untouched by the timeout."""
    t0 = time.monotonic()
    with pytest.raises(cat.CatalogError, match=r"stopped after 0\.5 s"):
        cat.query_runs(one_row_catalog, RECURSIVE, timeout=0.5)
    assert time.monotonic() - t0 < 5
    args = ["runs", "list", "--catalog", str(one_row_catalog), "--where", RECURSIVE]
    res = runner.invoke(app, [*args, "--timeout", "0.5"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "stopped after 0.5 s" in lines[0] and "--timeout" in lines[0]
    assert [r["id"] for r in cat.query_runs(one_row_catalog, "status = 'complete'")] == ["r1"]
    bad = runner.invoke(app, ["runs", "list", "--catalog", str(one_row_catalog), "--timeout", "0"])
    assert bad.exit_code == 2 and "--timeout" in bad.output


def test_reindex_skips_and_names_a_bad_plan_and_a_symlinked_run(tmp_path):
    """One malformed plan.json does not abort `runs reindex`: that sweep is skipped and
    named, every other run is indexed; a symlinked run directory (alone, or inside a
    sweep) is reported, not followed."""
    spec = _spec(tmp_path, 2, [0.1])
    good = execute_sweep(prepare_sweep(spec, tmp_path / "outputs" / "a"), jobs=1)
    bad = execute_sweep(prepare_sweep(spec, tmp_path / "outputs" / "b"), jobs=1)
    (bad.sweep_dir / "plan.json").write_text('{"runs": [')
    (tmp_path / "outputs" / "link").symlink_to(next((good.sweep_dir / "runs").iterdir()))
    linked = execute_sweep(prepare_sweep(spec, tmp_path / "outputs" / "c"), jobs=1)
    (linked_run,) = (linked.sweep_dir / "runs").iterdir()
    linked_run.rename(tmp_path / "elsewhere")
    linked_run.symlink_to(tmp_path / "elsewhere")
    catalog = tmp_path / "catalog.sqlite"
    res = runner.invoke(
        app, ["runs", "reindex", str(tmp_path / "outputs"), "--catalog", str(catalog)]
    )
    assert res.exit_code == 0, res.output
    assert f"catalog {catalog}: 1 run(s), 2 sweep(s)" in res.output
    assert f"skipped: '{bad.sweep_dir / 'plan.json'}' is not valid JSON" in res.output
    assert "its sweep is not indexed" in res.output
    assert f"skipped: '{tmp_path / 'outputs' / 'link'}' is a symbolic link" in res.output
    assert f"skipped: '{linked_run}' is a symbolic link" in res.output
    rows = cat.query_runs(catalog)
    assert [r["sweep_path"] for r in rows] == [str(good.sweep_dir.resolve())]


# --------------------------------------------------------------------------- Ray backend


@pytest.fixture(scope="module")
def ray_2cpu():
    """One local Ray (2 CPUs) shared by the Ray tests below (its start-up is slow); they
    run this module's worker functions, which its workers cannot import, by value."""
    import ray

    from tdlens.sweeps.ray_backend import ray_session

    with ray_session(2):
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            yield ray
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _after_victim_failed(task: RunTask, victim_status: str) -> RunOutcome:
    """Ray worker fn: the beta=0.2 run meets a full disk (as in `_disk_full_in_beta02`);
    the other runs hold their CPU until the driver has the victim failed, so (2 CPUs) the
    only CPU that frees up for the third run is the victim's (a local test: one machine)."""
    if "beta0.2" not in task.run_id:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = Path(victim_status)
            if status.is_file() and '"failed"' in status.read_text():
                break
            time.sleep(0.05)
    return _disk_full_in_beta02(task)


def test_a_full_disk_on_a_ray_worker_stops_the_sweep_and_resume_finishes(
    ray_2cpu, tmp_path, capsys
):
    """Ray: the run that meets a full disk is failed naming the file (the sweep's copy of
    it), the run that takes its CPU never starts (its task reads the halt code the failed
    run set), sweep.json says `stopped`, exit 1; --resume on Ray finishes bit for bit."""
    from functools import partial

    spec = _spec(tmp_path, 6, [0.1, 0.2, 0.3])
    prepared = prepare_sweep(spec, tmp_path / "out")
    ids = [r.run_id for r in prepared.runs]
    victim = run_dir(prepared.sweep_dir, ids[1])
    fn = partial(_after_victim_failed, victim_status=str(victim / "status.json"))
    res = execute_sweep(prepared, backend="ray", jobs=2, fn=fn)
    assert res.counts == {"complete": 1, "failed": 1}
    ran, queued = sorted((ids[0], ids[2]), key=lambda i: i not in res.outcomes)
    assert res.outcomes[ran].status == "complete"
    reason = f"No space left on device writing '{victim / 'learning_curves.csv'}' at iteration 2"
    assert res.outcomes[ids[1]].reason.startswith(reason)
    assert "in the Ray worker's copy on" in res.outcomes[ids[1]].reason
    status = _status(victim)
    assert status["status"] == "failed" and status["reason"].startswith(reason)
    assert not run_dir(res.sweep_dir, queued).exists()  # never started
    state = _sweep_state(res.sweep_dir)
    assert state["counts"] == {"complete": 1, "failed": 1}
    assert state["stopped"].startswith(f"run {ids[1]} failed on a full disk")
    with pytest.raises(typer.Exit) as exit_info:
        _report_result(res)
    assert exit_info.value.exit_code == 1
    assert "stopped: run " in capsys.readouterr().err
    done = table_file(run_dir(res.sweep_dir, ran) / "learning_curves.csv")
    mtime = done.stat().st_mtime_ns
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), backend="ray")
    assert again.skipped == 1 and again.counts == {"complete": 2}
    assert again.stopped is None and "stopped" not in _sweep_state(res.sweep_dir)
    assert _sweep_state(res.sweep_dir)["counts"] == {"complete": 3}
    assert _status(victim)["resumed_at"]
    assert _tables(victim) == _reference(ids[1], res.sweep_dir, tmp_path)
    assert done.stat().st_mtime_ns == mtime


def test_a_full_disk_where_the_driver_writes_a_ray_runs_files(
    ray_2cpu, tmp_path, monkeypatch, capsys
):
    """Ray: the driver cannot write a run's returned files (its disk is full): that run is
    failed naming the driver's file, sweep.json stays honest (`stopped`, the counts), exit
    1 with the file named; once there is space --resume finishes it bit for bit."""
    from tdlens.sweeps import ray_backend

    spec = _spec(tmp_path, 6, [0.1, 0.2])
    prepared = prepare_sweep(spec, tmp_path / "out")
    ids = [r.run_id for r in prepared.runs]
    victim = run_dir(prepared.sweep_dir, ids[1])
    target = victim / "learning_curves.csv.gz"  # a finished sweep run's tables: compacted
    real = ray_backend.atomic_write_bytes

    def full_for_victim(path, data) -> None:
        if Path(path) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(ray_backend, "atomic_write_bytes", full_for_victim)
    res = execute_sweep(prepared, backend="ray", jobs=2)
    monkeypatch.undo()
    assert res.counts == {"complete": 1, "failed": 1}
    reason = f"No space left on device writing '{target}' (the driver, receiving the run's"
    assert res.outcomes[ids[1]].reason.startswith(reason)
    assert "ended complete at iteration 6" in res.outcomes[ids[1]].reason
    assert _status(victim)["status"] == "failed"
    assert not target.exists()
    state = _sweep_state(res.sweep_dir)
    assert state["counts"] == {"complete": 1, "failed": 1}
    assert state["runs"][ids[1]]["reason"].startswith(reason)
    assert state["stopped"].startswith(f"run {ids[1]} failed on a full disk")
    with pytest.raises(typer.Exit) as exit_info:
        _report_result(res)
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert f"writing '{target}'" in err and "--resume" in err
    again = execute_sweep(prepare_sweep(res.sweep_dir, tmp_path, resume=True), backend="ray")
    assert again.skipped == 1 and again.counts == {"complete": 1}
    assert _sweep_state(res.sweep_dir)["counts"] == {"complete": 2}
    assert _tables(victim) == _reference(ids[1], res.sweep_dir, tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_ray_sweep_naming_the_signal(ray_2cpu, tmp_path, signum):
    """SIGTERM or SIGHUP to a Ray sweep's driver: the running runs checkpoint and stop
    `incomplete` with that signal (not SIGINT) as their reason, the queued run never
    starts, sweep.json records the signal."""
    spec = _spec(tmp_path, 100_000, [0.1, 0.2, 0.3])
    prepared = prepare_sweep(spec, tmp_path / "out")
    curves = [run_dir(prepared.sweep_dir, r.run_id) / "learning_curves.csv" for r in prepared.runs]

    def signal_when_two_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(p.exists() and p.read_text().count("\n") > 3 for p in curves) == 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    timer = threading.Thread(target=signal_when_two_run, daemon=True)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        execute_sweep(prepared, backend="ray", jobs=2)
    timer.join()
    name = signal.Signals(signum).name
    state = _sweep_state(prepared.sweep_dir)
    assert state["interrupted"] is True and state["signal"] == name
    assert state["counts"] == {"incomplete": 2}
    for run_id in state["runs"]:
        status = _status(run_dir(prepared.sweep_dir, run_id))
        assert status["status"] == "incomplete"
        assert status["reason"].startswith(f"interrupted by {name} after ")
        assert list((run_dir(prepared.sweep_dir, run_id) / "checkpoints").iterdir())
    (queued,) = {r.run_id for r in prepared.runs} - set(state["runs"])
    assert not run_dir(prepared.sweep_dir, queued).exists()
