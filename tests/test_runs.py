"""Run lifecycle: run directory, checkpoints, resume, signals, faults (docs/model.md §7, §15)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import curves, fail_at_iteration, spawn_run, wait_rows
from tdlens.config import load_config
from tdlens.rundir.files import RunFileError, TableWriter, read_csv_rows, truncate_table
from tdlens.rundir.lock import RunLock, RunLockedError
from tdlens.runs.checkpoint import latest_checkpoint, load_checkpoint
from tdlens.runs.runner import RunDirError, Runner, curve_columns

FAST = ["probes.enabled=false", "env.feature_dim=32", "env.actor_feature_dim=8"]


def _cfg(*extra: str):
    return load_config("configs/sanity.yaml", [*FAST, *extra])


def test_fresh_run_writes_the_run_directory(tmp_path):
    cfg = _cfg("outer_iters=5", "checkpoint_every=2")
    res = Runner(cfg, tmp_path / "run").run()
    assert res.status == "complete" and res.exit_code == 0 and res.next_iter == 5
    d = tmp_path / "run"
    assert json.loads((d / "config.json").read_text()) == cfg.to_dict()
    rows = read_csv_rows(d / "learning_curves.csv")
    assert [r["iter"] for r in rows] == [0, 1, 2, 3, 4]
    assert list(rows[0]) == list(curve_columns())
    assert rows[0]["fixed_point_gap"] is None  # no probe ran: empty, not NaN
    status = json.loads((d / "status.json").read_text())
    assert status["status"] == "complete" and status["next_iter"] == 5
    names = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert names == ["ckpt_000002.npz", "ckpt_000004.npz", "ckpt_000005.npz"]
    assert "complete" in (d / "stdout.log").read_text()


def test_refuses_an_existing_run_directory(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg("outer_iters=1"), d).run()
    with pytest.raises(RunDirError, match="already exists"):
        Runner(_cfg("outer_iters=1"), d)
    with pytest.raises(RunDirError, match="does not exist"):
        Runner(None, tmp_path / "nothing", resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        Runner(None, tmp_path / "empty", resume=True)


def _stop_at(runner: Runner, n_stop: int) -> None:
    def hook(p):
        if p.n == n_stop:
            runner._stop_signal = signal.SIGTERM

    runner.on_progress = hook


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    cfg = _cfg("outer_iters=9", "checkpoint_every=4", "theta_mu_offset_scale=0.3")
    Runner(cfg, tmp_path / "full").run()
    r = Runner(cfg, tmp_path / "cut")
    _stop_at(r, 5)
    res = r.run()
    assert res.status == "incomplete" and res.exit_code == 143
    assert "SIGTERM" in res.reason and "6 of 9" in res.reason
    status = json.loads((tmp_path / "cut" / "status.json").read_text())
    assert status["status"] == "incomplete" and "SIGTERM" in status["reason"]
    # the interruption checkpointed at next_iter 6; resume continues from there
    assert load_checkpoint(latest_checkpoint(tmp_path / "cut")).next_iter == 6
    res2 = Runner(None, tmp_path / "cut", resume=True).run()
    assert res2.status == "complete"
    assert curves(tmp_path / "cut") == curves(tmp_path / "full")


def test_resumed_probes_keep_the_drift_and_its_noise_bit_identical(tmp_path):
    """The fixed-point probe's state (the previous w# and its two half-batch w#) is
    checkpointed: a run stopped between probe rounds and resumed writes the same
    fixed_point_probe table, w_sharp_drift and w_sharp_drift_noise included."""
    cfg = load_config(
        "configs/sanity.yaml",
        [
            "env.feature_dim=32",
            "env.actor_feature_dim=8",
            "outer_iters=9",
            "checkpoint_every=4",
            "probes.every=2",
            "probes.fixed_point.batch_size=256",
            *(f"probes.{p}.enabled=false" for p in _OTHER_PROBES),
        ],
    )
    Runner(cfg, tmp_path / "full", write_report=False).run()
    r = Runner(cfg, tmp_path / "cut", write_report=False)
    _stop_at(r, 4)
    assert r.run().status == "incomplete"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    split = np.asarray(ckpt.probe_state["w_sharp_split_prev"])
    assert ckpt.next_iter == 5 and split.shape == (32,)
    Runner(None, tmp_path / "cut", resume=True, write_report=False).run()
    table = "probes/fixed_point_probe.csv"
    full = (tmp_path / "full" / table).read_text()
    assert (tmp_path / "cut" / table).read_text() == full
    noise = [r["w_sharp_drift_noise"] for r in read_csv_rows(tmp_path / "full" / table)]
    assert noise[0] == 0.0 and all(v > 0 for v in noise[1:]) and len(noise) == 5


_OTHER_PROBES = ("plateau", "stability", "distribution", "q_kernel", "rho_audit")


def test_resume_truncates_rows_after_the_checkpoint(tmp_path):
    cfg = _cfg("outer_iters=7", "checkpoint_every=3")
    Runner(cfg, tmp_path / "full").run()
    d = tmp_path / "cut"
    r = Runner(cfg, d)
    _stop_at(r, 4)
    r.run()
    # pretend the process died after writing rows past its last checkpoint (kill -9)
    (d / "checkpoints" / "ckpt_000005.npz").unlink()
    assert len(read_csv_rows(d / "learning_curves.csv")) == 5
    Runner(None, d, resume=True).run()
    assert curves(d) == curves(tmp_path / "full")


def test_diverged_run_keeps_finite_rows(tmp_path):
    cfg = _cfg("outer_iters=50", "alpha_w=1e12", "alpha_pi=0", "gamma=0.99")
    res = Runner(cfg, tmp_path / "div").run()
    assert res.status == "diverged" and "non-finite" in res.reason
    rows = read_csv_rows(tmp_path / "div" / "learning_curves.csv")
    assert len(rows) == res.next_iter < 50
    assert all(np.isfinite(r["w_norm"]) for r in rows)


def test_exception_marks_the_run_failed_with_traceback(tmp_path, monkeypatch):
    fail_at_iteration(monkeypatch, 2, FloatingPointError("injected"))
    res = Runner(_cfg("outer_iters=5"), tmp_path / "f").run()
    assert res.status == "failed" and res.exit_code == 1 and "injected" in res.reason
    status = json.loads((tmp_path / "f" / "status.json").read_text())
    assert "FloatingPointError: injected" in status["traceback"]
    assert len(read_csv_rows(tmp_path / "f" / "learning_curves.csv")) == 2


def test_lock_refuses_a_second_process(tmp_path):
    tmp_path.joinpath("run").mkdir()
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match="in use"):
            RunLock(tmp_path / "run").acquire()
    RunLock(tmp_path / "run").acquire()  # released: free again


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path):
    cfg = _cfg("outer_iters=9", "checkpoint_every=2")
    Runner(cfg, tmp_path / "full").run()
    d = tmp_path / "run"
    r = Runner(cfg, d)
    _stop_at(r, 6)  # checkpoints 2, 4, 6 and the interruption's 7 (3 kept: 4, 6, 7)
    r.run()
    names = [p.name for p in sorted((d / "checkpoints").iterdir())]
    assert names == ["ckpt_000004.npz", "ckpt_000006.npz", "ckpt_000007.npz"]
    latest = d / "checkpoints" / "ckpt_000007.npz"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the arrays
    latest.write_bytes(bytes(data))
    res = Runner(None, d, resume=True).run()
    assert res.status == "complete"
    assert "ckpt_000006.npz" in res.resumed_from and "ckpt_000007.npz" in res.resumed_from
    assert "skipped checkpoint" in (d / "stdout.log").read_text()
    assert curves(d) == curves(tmp_path / "full")


def test_corrupt_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    TableWriter(path, ["iter", "x"]).append({"iter": 0, "x": 1.5})
    with open(path, "a") as fh:
        fh.write("1,2,3\n")
    with pytest.raises(RunFileError, match="line 3"):
        read_csv_rows(path)
    with pytest.raises(RunFileError, match="header"):
        TableWriter(path, ["iter", "y"])


def test_truncate_table_drops_rows_and_torn_lines(tmp_path):
    path = tmp_path / "p.csv"
    w = TableWriter(path, ["iter", "x"], jsonl=True)
    for i in range(5):
        w.append({"iter": i, "x": float(i) / 3})
    with open(path, "a") as fh:
        fh.write("5,0.1")  # a torn row from a crash (no newline, still 2 cells)
    truncate_table(path, 3)
    assert [r["iter"] for r in read_csv_rows(path)] == [0, 1, 2]
    lines = path.with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(x)["iter"] for x in lines] == [0, 1, 2]
    assert read_csv_rows(path)[1]["x"] == 1 / 3  # repr floats round-trip exactly


SLOW = ["outer_iters=400", "checkpoint_every=7", "env.feature_dim=256", "horizon=100"]


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    Runner(_cfg(*SLOW), tmp_path / "full").run()
    d = tmp_path / "killed"
    proc = spawn_run(d, [*FAST, *SLOW])
    wait_rows(d, 20, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((d / "status.json").read_text())["status"] == "running"
    done = subprocess.run(
        [sys.executable, "-m", "tdlens.cli", "run", str(d), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert curves(d) == curves(tmp_path / "full")


def test_sigint_stops_cleanly_with_exit_130(tmp_path):
    d = tmp_path / "int"
    proc = spawn_run(d, [*FAST, *SLOW])
    wait_rows(d, 5, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    status = json.loads((d / "status.json").read_text())
    assert status["status"] == "incomplete" and "SIGINT" in status["reason"]
    ckpt = load_checkpoint(latest_checkpoint(d))
    assert ckpt.next_iter == len(read_csv_rows(d / "learning_curves.csv"))
