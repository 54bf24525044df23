"""Joining a Ray cluster without one: address parsing, the token search, the reachability
probe and the CLI's exit-2 errors (the real cluster is tests/sweeps/test_ray_cluster.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from test_sweep_backends import DEMO, _app
from typer.testing import CliRunner

from tdlens.sweeps.backends import BackendError
from tdlens.sweeps.ray_backend import parse_address, probe, token_source


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("auto", None),
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("head-node.example:6390", ("head-node.example", 6390)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:0", "h:70000", "a b:1", ":6379", ""])
def test_parse_address_refuses_what_is_not_host_port(address):
    with pytest.raises(BackendError, match="expected HOST:PORT"):
        parse_address(address)


@pytest.fixture
def no_token_env(monkeypatch, tmp_path):
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_token_source_follows_rays_order(no_token_env, monkeypatch):
    home = no_token_env
    assert token_source() is None
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("t0")
    assert token_source() == str(home / ".ray" / "auth_token")
    named = home / "named"
    named.write_text("t1\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert token_source() == f"RAY_AUTH_TOKEN_PATH={named}"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t2")
    assert token_source() == "RAY_AUTH_TOKEN"


def test_a_bad_token_path_is_named(no_token_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token_env / "missing"))
    with pytest.raises(BackendError, match=r"RAY_AUTH_TOKEN_PATH=.*missing: cannot read"):
        token_source()
    (no_token_env / "empty").write_text("  \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token_env / "empty"))
    with pytest.raises(BackendError, match="token file is empty"):
        token_source()


@pytest.mark.parametrize(
    ("mode", "token", "expected"),
    [(None, True, "token"), (None, False, None), ("disabled", True, "disabled")],
)
def test_token_mode_is_enabled_only_when_unset_and_a_token_exists(tmp_path, mode, token, expected):
    """In a fresh process (RAY_AUTH_MODE is process-wide): what Ray sees after
    enable_token_auth()."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    if mode:
        env["RAY_AUTH_MODE"] = mode
    if token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("secret")
    code = (
        "import os; from tdlens.sweeps.ray_backend import enable_token_auth; "
        "enable_token_auth(); print(os.environ.get('RAY_AUTH_MODE'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_of_a_closed_port_is_a_clear_error():
    port = _closed_port()
    with pytest.raises(BackendError, match=rf"127\.0\.0\.1:{port}: no Ray cluster answers there"):
        probe("127.0.0.1", port)


def test_cli_bad_address_or_retries_is_exit_2_with_nothing_written(tmp_path):
    out = tmp_path / "o"
    for extra, message in (
        (["--address", "nonsense"], "expected HOST:PORT"),
        (["--address", f"127.0.0.1:{_closed_port()}"], "no Ray cluster answers there"),
        (["--retries", "-1"], "--retries: expected >= 0"),
    ):
        res = CliRunner().invoke(
            _app(), ["sweep", str(DEMO), "--backend", "ray", "--output-dir", str(out), *extra]
        )
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()


def test_unpack_writes_tables_then_checkpoints_then_status(tmp_path, monkeypatch):
    """A driver killed while it writes a run's files must never hold a checkpoint ahead of
    the rows it has: a resume from that checkpoint would skip them for good (seen once in
    CI as a resumed sweep run missing its last probe rows); nor a final status beside an
    older snapshot's files (a compacted run's stale plain table, seen once in a test of a
    killed driver)."""
    from tdlens.sweeps import ray_backend

    files = {
        "status.json": b"{}",
        "checkpoints/ckpt_000010.npz": b"c",
        "learning_curves.csv": b"l",
        "probes/stability_probe.csv": b"s",
        "run_report.json": b"r",
        "config.json": b"k",
    }
    written = []
    real = ray_backend.atomic_write_bytes
    stale = tmp_path / "probes" / "fixed_point_probe.csv"  # an older snapshot's table
    stale.parent.mkdir()
    stale.write_text("iter\n0\n")
    gone_before_status = []
    monkeypatch.setattr(
        ray_backend,
        "atomic_write_bytes",
        lambda path, data: (
            written.append(path.relative_to(tmp_path).as_posix()),
            gone_before_status.append(not stale.exists()) if path.name == "status.json" else None,
            real(path, data),
        ),
    )
    ray_backend.unpack_dir(tmp_path, files)
    assert written[-1] == "status.json"
    assert written[-2] == "checkpoints/ckpt_000010.npz"
    assert set(written) == set(files)
    assert gone_before_status == [True]  # a final status never sits beside stale files
