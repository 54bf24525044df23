"""Sweeps on a real Ray cluster: `ray start` head + worker node, joined with --address.

The cluster (tests/sweeps/loopback_cluster.py) runs in a private network namespace whose
only interface is loopback, with token authentication as Ray documents it: the token in
~/.ray/auth_token (HOME is a temporary folder), as after `ray get-auth-token --generate`,
and RAY_AUTH_MODE=token on every node. The driver is the `tdlens` command, with no Ray
setting at all, joining through ``--address 127.0.0.1:6390`` and finding the token
itself. Every run must equal the local backend's run bit for bit (tables as text, wall
times aside), also after the worker node is killed mid-sweep and after the driver itself
is killed and the sweep resumed.

Runs in CI, never skipped: a machine without network namespaces fails here with the reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from loopback_cluster import LoopbackCluster
from test_sweep_backends import DEMO, _tables

from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

TDLENS = str(Path(sys.executable).with_name("tdlens"))
SLOW = {  # 4 runs of a few seconds each: time to kill a node or the driver mid-sweep
    "name": "slow",
    "base": "sanity",
    "grid": {"beta": [0.1, 0.2, 0.3, 0.4]},
    "overrides": {
        "outer_iters": 400,
        "checkpoint_every": 50,
        "env.feature_dim": 64,
        "env.actor_feature_dim": 16,
        "probes.every": 50,
    },
}
LOOPBACK_HOSTS = {"127.0.0.1", "[::ffff:127.0.0.1]"}
ANY_HOSTS = {"*", "0.0.0.0", "[::]"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) and worker node (1 CPU) on 127.0.0.1 with token authentication."""
    c = LoopbackCluster()
    try:
        c.open()
        c.use_token()
        c.start_head()
        c.start_worker("w1")
        yield c
    finally:
        c.stop()
        assert c.pids() == [], "a cluster process outlived the teardown"


@pytest.fixture(scope="module")
def slow_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "slow.yaml"
    path.write_text(yaml.safe_dump(SLOW))
    return path


@pytest.fixture(scope="module")
def slow_local(slow_spec, tmp_path_factory):
    """The slow sweep on the local backend: the reference of the cluster runs."""
    res = execute_sweep(prepare_sweep(slow_spec, tmp_path_factory.mktemp("local")), jobs=2)
    assert res.counts == {"complete": 4}
    return res.sweep_dir


def _sweep_args(spec: Path | str, out: Path, *extra: str) -> list[str]:
    return [
        TDLENS,
        "sweep",
        str(spec),
        "--backend",
        "ray",
        "--address",
        "127.0.0.1:6390",
        "--output-dir",
        str(out),
        "--catalog",
        str(out / "catalog.sqlite"),
        *extra,
    ]


def _sweep_dir(out: Path) -> Path:
    found = [p for p in out.iterdir() if (p / "plan.json").is_file()]
    assert len(found) == 1, found
    return found[0]


def _same_runs(sweep: Path, ref: Path) -> None:
    ids = [e["run_id"] for e in read_plan(ref)["runs"]]
    assert [e["run_id"] for e in read_plan(sweep)["runs"]] == ids
    for rid in ids:
        status = json.loads((run_dir(sweep, rid) / "status.json").read_text())
        assert status["status"] in ("complete", "diverged"), (rid, status)
        assert _tables(run_dir(sweep, rid)) == _tables(run_dir(ref, rid)), rid


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


def test_demo_sweep_through_address_equals_local_run_for_run(cluster, tmp_path):
    local = execute_sweep(prepare_sweep(DEMO, tmp_path / "local"), jobs=2)
    res = cluster.run(_sweep_args(DEMO, tmp_path / "ray"), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done: 4 run(s) executed (complete=4)" in res.stdout
    assert "Traceback" not in res.stderr
    sweep = _sweep_dir(tmp_path / "ray")
    _same_runs(sweep, local.sweep_dir)
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["address"] == "127.0.0.1:6390" and state["counts"] == {"complete": 4}
    # every TCP socket of the cluster: bound to and talking with 127.0.0.1 only
    lines = [ln.split() for ln in cluster.sockets().splitlines()[1:] if ln.strip()]
    assert len(lines) > 10
    for cols in lines:
        local_addr, peer = cols[3], cols[4]
        assert _host(local_addr) in LOOPBACK_HOSTS, cols
        assert _host(peer) in LOOPBACK_HOSTS | ANY_HOSTS, cols


def test_bad_or_unreachable_address_and_missing_token_are_exit_2(cluster, tmp_path):
    res = cluster.run([*_sweep_args(DEMO, tmp_path / "a")[:6], "127.0.0.1"], timeout=60)
    assert res.returncode == 2 and "expected HOST:PORT" in res.stderr
    res = cluster.run(
        [*_sweep_args(DEMO, tmp_path / "b")[:6], "127.0.0.1:6399", "--output-dir", "x"],
        timeout=60,
    )
    assert res.returncode == 2 and "no Ray cluster answers there" in res.stderr, res.stderr
    assert not (tmp_path / "b").exists()
    home = tmp_path / "home"  # no token anywhere: the cluster refuses the driver
    home.mkdir()
    t0 = time.monotonic()
    res = cluster.run(
        _sweep_args(DEMO, tmp_path / "c"), timeout=180, env={**cluster.env, "HOME": str(home)}
    )
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr
    assert "no token was found" in err and "RAY_AUTH_TOKEN_PATH" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "c").exists()
    assert time.monotonic() - t0 < 15  # one request, not Ray's ~20 s of retries


def test_resume_after_the_driver_is_killed(cluster, slow_spec, slow_local, tmp_path):
    out = tmp_path / "ray"
    driver = cluster.popen(_sweep_args(slow_spec, out), "driver.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill -9 once the first run came back
            runs = out.glob("*_slow/runs/*/status.json")
            if any(json.loads(p.read_text())["status"] == "complete" for p in runs):
                break
            assert driver.poll() is None, (cluster.root / "driver.log").read_text()
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    sweep = _sweep_dir(out)
    # finished as resume reads it: status.json final (the driver writes it after the
    # run's other files, so a kill in between leaves a report but a run to redo)
    done = [p for p in (sweep / "runs").iterdir() if _final(p / "status.json")]
    assert 1 <= len(done) < 4
    res = cluster.run(_sweep_args(sweep, out, "--resume"), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(done)} skipped as finished" in res.stdout
    _same_runs(sweep, slow_local)


def _final(status_path: Path) -> bool:
    """Whether a run's status.json says complete or diverged (what resume skips)."""
    try:
        return json.loads(status_path.read_text())["status"] in ("complete", "diverged")
    except (OSError, ValueError, KeyError):
        return False


def _running_tasks(cluster: LoopbackCluster, node: int) -> list[int]:
    """Pids of node `node` (a session) executing a tdlens Ray task (ray::_ray_stream)."""
    found = []
    for pid in cluster.session(node):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_ray_stream"):
                found.append(pid)
        except OSError:
            continue
    return found


def _streamed_run_on(cluster: LoopbackCluster, node: int, out: Path) -> Path | None:
    """A run the driver holds a streamed checkpoint of, still running on node `node`."""
    for status_path in out.glob("*_slow/runs/*/status.json"):
        try:
            status = json.loads(status_path.read_text())
        except (OSError, ValueError):
            continue
        run = status_path.parent
        if (
            status.get("status") == "running"
            and status.get("pid") in _running_tasks(cluster, node)
            and any((run / "checkpoints").glob("*"))
        ):
            return run
    return None


def test_a_lost_worker_node_is_survived(cluster, slow_spec, slow_local, tmp_path):
    """kill -9 of the whole worker node while it runs a task whose checkpoint the driver
    already holds: the task is retried on the head from that checkpoint and every run
    completes, equal to the local runs."""
    out = tmp_path / "ray"
    node = cluster.nodes["w1"]
    driver = cluster.popen(_sweep_args(slow_spec, out), "driver2.log")
    try:
        deadline = time.monotonic() + 120
        while (victim := _streamed_run_on(cluster, node.pid, out)) is None:
            assert time.monotonic() < deadline, "no checkpoint came back from the worker node"
            assert driver.poll() is None, (cluster.root / "driver2.log").read_text()
            time.sleep(0.05)
        cluster.kill_node("w1")
        code = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    log = (cluster.root / "driver2.log").read_text()
    assert code == 0, log
    retry = rf"\[retry\] {victim.name}: Ray worker or node lost \(\w+.*\(from its checkpoint\)"
    assert re.search(retry, log), log
    sweep = _sweep_dir(out)
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["counts"] == {"complete": 4}
    assert state["runs"][victim.name]["attempts"] == 2
    assert json.loads((victim / "status.json").read_text())["resumed_at"]
    _same_runs(sweep, slow_local)
