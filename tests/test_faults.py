"""Fault injection: every failure leaves an honest status, loses nothing and resumes.

Each test breaks one thing (a full disk at the k-th write of some file, a corrupt
checkpoint, a file where a directory belongs, an oversized config, a dead process) and
checks the status, the message, the exit code, that no earlier result was lost, and that
`--resume` (or `tdlens report`) then gives the uninterrupted run's numbers bit for bit.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import sets, spawn_run, wait_rows
from tdlens import cli
from tdlens.cli import app
from tdlens.config import load_config
from tdlens.report import write_report
from tdlens.rundir import files
from tdlens.rundir.files import RunFileError
from tdlens.rundir.status import observed_status
from tdlens.runs.checkpoint import list_checkpoints, load_checkpoint
from tdlens.runs.runner import Runner

FAST = ["probes.enabled=false", "env.feature_dim=32", "env.actor_feature_dim=8"]
PROBED = [
    "env.feature_dim=32",
    "env.actor_feature_dim=8",
    "probes.every=3",
    "probes.distribution.permutations=0",
]
runner = CliRunner()


def _cfg(*extra: str):
    base = [*FAST, "outer_iters=9", "checkpoint_every=2"]
    return load_config("configs/sanity.yaml", [*base, *extra])


def _table(path: Path) -> list[list[str]]:
    """A CSV as text cells, without wall-time columns (``*_s``): bit-for-bit comparable."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith("_s")]
    return [[r[i] for i in keep] for r in rows]


def _curves(run_dir: Path) -> list[list[str]]:
    return _table(run_dir / "learning_curves.csv")


def _listed(run_dir: Path) -> dict:
    """The row of `run_dir` in `tdlens runs list --format json`."""
    result = runner.invoke(app, ["runs", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.output) if r["path"] == str(run_dir.resolve())]
    assert len(rows) == 1
    return rows[0]


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


class DiskFull:
    """Replaces files._write: the `nth` write to a file whose name matches `pattern` raises
    ENOSPC, and so does every later write when `persistent` (the disk stays full)."""

    def __init__(self, pattern: str, nth: int, persistent: bool) -> None:
        self.pattern = re.compile(pattern)
        self.nth = nth
        self.persistent = persistent
        self.seen = 0
        self.full = False
        self.real = files._write

    def __call__(self, fh, data, path: Path) -> None:
        if self.pattern.search(Path(path).name):
            self.seen += 1
            if self.seen == self.nth:
                self.full = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if self.full and self.persistent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.real(fh, data, path)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("full") / "run"
    assert Runner(_cfg(), d).run().status == "complete"
    return d


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "disk-stays-full"])
@pytest.mark.parametrize(
    ("pattern", "nth"),
    [
        (r"^learning_curves\.csv$", 2),  # the header, then row 0: fails on row 0's append
        (r"^learning_curves\.csv$", 6),  # mid-run, between checkpoints
        (r"^ckpt_000004\.npz$", 1),  # inside a checkpoint
        (r"^stdout\.log$", 4),  # the log
    ],
    ids=["first-row", "mid-run", "checkpoint", "log"],
)
def test_full_disk_fails_honestly_and_resumes_bit_identically(
    tmp_path, monkeypatch, full_run, pattern, nth, persistent
):
    d = tmp_path / "run"
    fault = DiskFull(pattern, nth, persistent)
    monkeypatch.setattr(files, "_write", fault)
    res = Runner(_cfg(), d).run()
    monkeypatch.setattr(files, "_write", fault.real)
    assert fault.seen >= nth
    assert res.status == "failed" and res.exit_code == 1
    assert "No space left on device" in res.reason and "\n" not in res.reason
    assert not list(d.rglob("*.tmp")), "an atomic write left its temporary file"
    status = _status(d)
    if persistent:
        # nothing could be written after the fault: the run says so, and is seen as crashed
        assert "status.json" in " ".join(res.unwritten)
        assert observed_status(d, status)["status"] == "crashed"
    else:
        assert status["status"] == "failed" and status["reason"] == res.reason
        assert res.unwritten == []
    # no earlier result was lost: the rows written equal the full run's first rows
    written = _curves(d)
    assert written == _curves(full_run)[: len(written)]
    for path in list_checkpoints(d):
        load_checkpoint(path)  # every checkpoint left behind verifies
    resumed = Runner(None, d, resume=True).run()
    assert resumed.status == "complete"
    assert _curves(d) == _curves(full_run)


def test_full_disk_inside_the_report_keeps_the_run_and_report_rewrites_it(
    tmp_path, monkeypatch, full_run
):
    d = tmp_path / "run"
    fault = DiskFull(r"^run_report\.md$", 1, persistent=True)
    monkeypatch.setattr(files, "_write", fault)
    res = Runner(_cfg(), d, write_report=partial(write_report, html=False)).run()
    monkeypatch.setattr(files, "_write", fault.real)
    assert res.status == "complete"
    assert any(w.startswith("run report") and "No space" in w for w in res.unwritten)
    assert not (d / "run_report.md").exists()
    assert _curves(d) == _curves(full_run)
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 0, result.output
    assert (d / "run_report.md").is_file()


def test_full_disk_during_a_probe_round_resumes_with_the_probe_tables(tmp_path, monkeypatch):
    cfg = load_config("configs/sanity.yaml", [*PROBED, "outer_iters=8", "checkpoint_every=2"])
    full = tmp_path / "full"
    Runner(cfg, full).run()
    d = tmp_path / "run"
    fault = DiskFull(r"^stability_probe\.csv$", 3, persistent=False)  # round 2 (iteration 5)
    monkeypatch.setattr(files, "_write", fault)
    res = Runner(cfg, d).run()
    monkeypatch.setattr(files, "_write", fault.real)
    assert res.status == "failed" and "stability_probe.csv" in res.reason
    assert Runner(None, d, resume=True).run().status == "complete"
    assert _curves(d) == _curves(full)
    for name in ("fixed_point_probe", "stability_probe", "distribution_probe", "rho_audit"):
        path = Path("probes") / f"{name}.csv"
        assert _table(d / path) == _table(full / path), name


def test_cli_exits_1_and_says_what_a_full_disk_kept_it_from_writing(tmp_path, monkeypatch):
    fault = DiskFull(r"^run_report\.md$", 1, persistent=True)
    monkeypatch.setattr(files, "_write", fault)
    d = tmp_path / "r"
    result = runner.invoke(app, ["run", "sanity", "--run-dir", str(d), *sets(FAST)])
    assert result.exit_code == 1
    assert "status: complete" in result.output
    assert "could not write run report" in result.output and "No space left" in result.output
    assert "Traceback" not in result.output


def test_a_fresh_run_that_cannot_write_its_config_leaves_nothing(tmp_path, monkeypatch):
    fault = DiskFull(r"^config\.json$", 1, persistent=True)
    monkeypatch.setattr(files, "_write", fault)
    result = runner.invoke(app, ["run", "sanity", "--run-dir", str(tmp_path / "r"), *sets(FAST)])
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "nothing was kept" in result.output
    assert not (tmp_path / "r").exists()


def test_checkpoint_with_altered_arrays_fails_its_checksum(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg(), d).run()
    path = list_checkpoints(d)[-1]
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["w"] = arrays["w"] + 1e-12  # a valid zip whose content changed
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(RunFileError, match="checksum"):
        load_checkpoint(path)


def test_checkpoints_are_kept_to_checkpoint_keep(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg("checkpoint_keep=2"), d).run()
    assert [p.name for p in list_checkpoints(d)] == ["ckpt_000008.npz", "ckpt_000009.npz"]


def test_all_checkpoints_corrupt_resumes_from_the_start(tmp_path, full_run):
    d = tmp_path / "run"
    r = Runner(_cfg(), d)
    r.on_progress = lambda p: setattr(r, "_stop_signal", signal.SIGTERM) if p.n == 4 else None
    r.run()
    for path in list_checkpoints(d):
        path.write_bytes(b"garbage")
    res = Runner(None, d, resume=True).run()
    assert res.status == "complete" and res.resumed_from.startswith("the start")
    assert _curves(d) == _curves(full_run)


def test_a_file_where_the_probes_directory_belongs(tmp_path):
    cfg = load_config("configs/sanity.yaml", [*PROBED, "outer_iters=5"])
    d = tmp_path / "run"
    r = Runner(cfg, d)
    d.mkdir()
    (d / "probes").write_text("not a folder")
    res = r.run()
    assert res.status == "failed" and "probes" in res.reason
    (d / "probes").unlink()
    assert Runner(None, d, resume=True).run().status == "complete"


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Runner(_cfg("outer_iters=2"), tmp_path / "a", write_report=write_report).run()
        os.umask(0o077)
        Runner(_cfg("outer_iters=2"), tmp_path / "b", write_report=write_report).run()
    finally:
        os.umask(old)
    for name in ("config.json", "status.json", "learning_curves.csv", "run_report.md"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644, name
        assert (tmp_path / "b" / name).stat().st_mode & 0o777 == 0o600, name
    ckpt = list_checkpoints(tmp_path / "a")[-1]
    assert ckpt.stat().st_mode & 0o777 == 0o644


def test_finished_run_has_no_lock_and_resume_rewrites_nothing(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg("outer_iters=2"), d).run()
    assert not (d / ".lock").exists()
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()}
    result = runner.invoke(app, ["run", str(d), "--resume"])
    assert result.exit_code == 0
    assert "already complete" in result.output and "nothing to resume" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--output-dir", "README.md"], "is a file"),
        (["run", "outputs/runs/does_not_exist", "--resume"], "does not exist"),
        (["run", "README.md", "--resume"], "not a run directory"),
        (["run", "--run-dir", "README.md/sub"], "'README.md' is a file"),
    ],
)
def test_bad_paths_exit_2_with_one_line(args, message):
    result = runner.invoke(app, [*args, *sets(FAST)] if "--resume" not in args else args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_oversized_config_is_refused_before_anything_is_written(tmp_path):
    result = runner.invoke(
        app, ["run", "--output-dir", str(tmp_path / "o"), "--set", "env.feature_dim=1000000000"]
    )
    assert result.exit_code == 2
    assert "of memory" in result.output and "env.feature_dim" in result.output
    assert "--force" in result.output
    assert not (tmp_path / "o").exists()


def test_forced_oversized_config_fails_with_a_status_not_a_traceback(tmp_path):
    """10^12 features: W_phi alone is 168 TB, past any machine's address space."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdlens.cli",
            "run",
            "sanity",
            "--force",
            "--run-dir",
            str(tmp_path / "r"),
            *sets(["env.feature_dim=1000000000000", "probes.enabled=false"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "status: failed (out of memory at iteration 0" in proc.stdout
    status = _status(tmp_path / "r")
    assert status["status"] == "failed" and status["reason"].startswith("out of memory")
    assert "out of memory" in (tmp_path / "r" / "run_report.md").read_text()


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("injected\nsecond line")

    monkeypatch.setattr(cli, "load_cli_config", boom)
    monkeypatch.setitem(cli._debug, "on", False)
    assert cli.main(["run"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: injected second line" in err and "--debug" in err
    assert "Traceback" not in err
    assert cli.main(["--debug", "run"]) == 1
    assert "Traceback" in capsys.readouterr().err


SLOW = ["outer_iters=300", "checkpoint_every=7", "env.feature_dim=256", "horizon=100"]


def test_killed_run_is_listed_and_reported_as_crashed_and_resumes(tmp_path):
    d = tmp_path / "killed"
    proc = spawn_run(d, [*FAST, *SLOW])
    wait_rows(d, 10, proc)
    assert _listed(d)["status"] == "running"  # alive: not crashed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _status(d)["status"] == "running"
    assert _listed(d)["status"] == "crashed"
    assert runner.invoke(app, ["report", str(d)]).exit_code == 0
    report = json.loads((d / "run_report.json").read_text())
    assert report["status"]["status"] == "crashed" and "--resume" in report["status"]["reason"]
    done = subprocess.run(
        [sys.executable, "-m", "tdlens.cli", "run", str(d), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _status(d)["status"] == "complete"


def test_sighup_marks_the_run_incomplete_with_exit_129(tmp_path):
    d = tmp_path / "hup"
    proc = spawn_run(d, [*FAST, *SLOW])
    wait_rows(d, 5, proc)
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=120)
    assert proc.returncode == 129
    status = _status(d)
    assert status["status"] == "incomplete" and "SIGHUP" in status["reason"]


def test_corrupt_catalog_points_to_reindex_which_rebuilds_it(tmp_path, monkeypatch):
    catalog = tmp_path / "c.sqlite"
    monkeypatch.setenv("TDLENS_CATALOG", str(catalog))
    out = tmp_path / "outputs"
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["run", "sanity", "--output-dir", str(out), "--name", name, *sets(FAST)]
        )
        assert result.exit_code == 0, result.output
    catalog.write_bytes(b"this is not a database" * 100)
    for side in (Path(f"{catalog}-wal"), Path(f"{catalog}-shm")):
        side.unlink(missing_ok=True)
    listed = runner.invoke(app, ["runs", "list"])
    assert listed.exit_code == 2 and "tdlens runs reindex" in listed.output
    assert "Traceback" not in listed.output
    rebuilt = runner.invoke(app, ["runs", "reindex", str(out)])
    assert rebuilt.exit_code == 0 and "2 run(s)" in rebuilt.output, rebuilt.output
    rows = sqlite3.connect(catalog).execute("SELECT name, status FROM runs").fetchall()
    assert sorted(rows) == [("a", "complete"), ("b", "complete")]


def test_audit_uses_the_newest_checkpoint_that_verifies(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg(), d).run()
    newest = list_checkpoints(d)[-1]
    newest.write_bytes(b"garbage")
    result = runner.invoke(app, ["audit", "rho", str(d)])
    assert result.exit_code in (0, 1), result.output  # audited, whatever its verdict
    assert "at iteration 7" in result.output  # ckpt_000008 (after iteration 7), not the 9th


# ------------------------------------------ issue 26: nothing lost, nothing let in


def _stopped(d: Path, *extra: str, after: int = 5) -> None:
    """A run of _cfg(*extra) stopped (as by SIGINT) after `after` iterations: checkpoints
    after iterations 2, 4 and `after`, status incomplete."""
    r = Runner(_cfg(*extra), d, handle_signals=False)

    def stop(p) -> None:
        if p.n + 1 >= after:
            r._stop_signal = signal.SIGINT

    r.on_progress = stop
    assert r.run().status == "incomplete"


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file of a run directory (but the log) by relative path: what must not change."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != "stdout.log"
    }


def test_resume_against_a_changed_config_is_exit_2_naming_the_keys_and_loses_nothing(
    tmp_path, full_run
):
    d = tmp_path / "run"
    _stopped(d)
    config = json.loads((d / "config.json").read_text())
    edited = {**config, "gamma": 0.5, "env": {**config["env"], "p_mix": 0.2}}
    (d / "config.json").write_text(json.dumps(edited))
    before = _snapshot(d)
    result = runner.invoke(app, ["run", str(d), "--resume"])
    assert result.exit_code == 2, result.output
    assert "differing keys: env.p_mix, gamma" in result.output and "--restart" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(d) == before  # nothing truncated, no status rewritten
    (d / "config.json").write_text(json.dumps(config))
    assert Runner(None, d, resume=True).run().status == "complete"
    assert _curves(d) == _curves(full_run)


def test_resume_against_a_config_json_changed_before_any_checkpoint_is_exit_2(tmp_path):
    """No checkpoint to compare with: status.json's config_hash is the witness."""
    d = tmp_path / "run"
    _stopped(d, "checkpoint_every=100", after=1)
    for ckpt in list_checkpoints(d):
        ckpt.unlink()
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "seed": 7}))
    before = _snapshot(d)
    result = runner.invoke(app, ["run", str(d), "--resume"])
    assert result.exit_code == 2 and "is not the config the run was started with" in result.output
    assert _snapshot(d) == before


def test_restart_starts_over_on_purpose_and_keeps_the_old_files(tmp_path, full_run):
    d = tmp_path / "run"
    _stopped(d, "gamma=0.5")
    old = _snapshot(d)
    (d / "config.json").write_bytes((full_run / "config.json").read_bytes())
    old["config.json"] = (d / "config.json").read_bytes()
    result = runner.invoke(app, ["run", str(d), "--restart"])
    assert result.exit_code == 0, result.output
    (previous,) = (d / "previous").iterdir()
    assert re.fullmatch(r"\d{8}_\d{6}", previous.name)
    assert _snapshot(previous) == old  # every old file, byte for byte
    assert not (previous / ".lock").exists()
    assert _status(d)["status"] == "complete"
    assert _curves(d) == _curves(full_run)  # the full run's config, started over
    assert "restarted on purpose" in (d / "stdout.log").read_text()
    both = runner.invoke(app, ["run", str(d), "--resume", "--restart"])
    assert both.exit_code == 2 and "exclude each other" in both.output


@pytest.mark.parametrize("key", ["rho_clip", "theta_radius"])
def test_inf_settings_resume_bit_identically(tmp_path, key):
    """inf ("no limit") is stored as the token "inf": the resume continues from the
    checkpoint (not from the start) and equals the uninterrupted run."""
    full, d = tmp_path / "full", tmp_path / "run"
    Runner(_cfg(f"{key}=.inf"), full).run()
    assert json.loads((full / "config.json").read_text())[key] == "inf"
    _stopped(d, f"{key}=.inf")
    resumed = Runner(None, d, resume=True).run()
    assert resumed.status == "complete" and "ckpt_000005.npz" in resumed.resumed_from
    assert _curves(d) == _curves(full)


def test_a_non_numeric_iter_fails_the_resume_naming_file_and_row(tmp_path, full_run):
    d = tmp_path / "run"
    _stopped(d)
    path = d / "learning_curves.csv"
    lines = path.read_text().splitlines(keepends=True)
    good = lines[3]
    lines[3] = "abc" + good[good.index(",") :]
    path.write_text("".join(lines))
    before = _snapshot(d)
    result = runner.invoke(app, ["run", str(d), "--resume"])
    assert result.exit_code == 2, result.output
    assert "learning_curves.csv' line 4: iter 'abc' is not a number" in result.output
    status = _status(d)
    assert status["status"] == "failed" and "line 4" in status["reason"]
    after = _snapshot(d)
    after.pop("status.json"), before.pop("status.json")
    assert after == before  # no table cut
    lines[3] = good
    path.write_text("".join(lines))
    assert Runner(None, d, resume=True).run().status == "complete"
    assert _curves(d) == _curves(full_run)


@pytest.mark.parametrize("name", ["x/../../../../escape", "..", "a\x1b[31mred"])
def test_a_run_name_is_never_a_path(tmp_path, name):
    out = tmp_path / "outputs" / "runs"
    result = runner.invoke(app, ["run", "sanity", "--output-dir", str(out), "--name", name])
    assert result.exit_code == 2 and "name: use letters" in result.output, result.output
    assert "\x1b" not in result.output
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: {json.dumps(name)}\n")
    result = runner.invoke(app, ["run", str(spec), "--output-dir", str(out)])
    assert result.exit_code == 2 and "name: use letters" in result.output
    assert not (tmp_path / "outputs").exists() and not (tmp_path.parent / "escape").exists()
    with pytest.raises(ValueError, match="name: use letters"):
        Runner(_cfg().model_copy(update={"name": name}), tmp_path / "r")


def test_control_characters_in_names_never_reach_the_terminal(tmp_path, monkeypatch):
    """A run directory (an explicit --run-dir) and a config.json name (written by hand or
    an old version) holding ANSI escapes: `runs list` (table and csv) and `run --resume`
    show them escaped."""
    monkeypatch.setenv("TDLENS_CATALOG", str(tmp_path / "c.sqlite"))
    d = tmp_path / "outputs" / "evil\x1b[2J\x1b[31m"
    _stopped(d, after=1)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "name": "evil\x1b[2J"}))
    assert runner.invoke(app, ["runs", "reindex", str(tmp_path / "outputs")]).exit_code == 0
    for fmt in ("table", "csv"):
        listed = runner.invoke(app, ["runs", "list", "--format", fmt])
        assert listed.exit_code == 0 and "\x1b" not in listed.output, listed.output
        assert "evil\\x1b[2J" in listed.output
    resumed = runner.invoke(app, ["run", str(d), "--resume"])
    assert resumed.exit_code == 0 and "\x1b" not in resumed.output
    assert "evil\\x1b[2J" in resumed.output


@pytest.mark.parametrize("target", [".lock", "stdout.log", "learning_curves.csv"])
def test_a_symlink_in_the_run_directory_is_refused_and_its_target_untouched(tmp_path, target):
    d = tmp_path / "run"
    _stopped(d)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (d / target).unlink(missing_ok=True)
    (d / target).symlink_to(victim)
    before = _snapshot(d)
    result = runner.invoke(app, ["run", str(d), "--resume"])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and target in result.output
    assert victim.read_text() == "precious\n" and _snapshot(d) == before


def test_run_files_are_opened_without_following_links(tmp_path):
    """The backstop under the directory check (a link made after it): O_NOFOLLOW."""
    from tdlens.rundir.lock import RunLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (".lock", "log", "table.csv"):
        (tmp_path / name).symlink_to(victim)
    with pytest.raises(RunFileError, match="symbolic link"):
        RunLock(tmp_path).acquire()
    with pytest.raises(RunFileError, match="symbolic link"):
        files.append_text(tmp_path / "log", "x\n")
    with pytest.raises(RunFileError, match="symbolic link"):
        files.atomic_write_text(tmp_path / "table.csv", "x\n")
    assert victim.read_text() == "precious\n"


def test_hostile_configs_are_exit_2_in_one_line_before_anything_is_written(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + "\n")
    cases = [
        ([str(bomb)], "aliases expand to more than"),
        ([str(fifo)], "is a FIFO"),
        ([str(tmp_path)], "is a directory"),
        (["/dev/zero"], "is a character device"),
        (["sanity", "--set", "sigma_mu=1e308"], "sigma_mu: Input should be less than"),
        (["sanity", "--set", "alpha_w=.inf"], "alpha_w: Input should be a finite number"),
        (["sanity", "--set", "rho_clip=nan"], "rho_clip: nan is not allowed"),
        (["sanity", "--set", "probes.distribution.chains=1"], "36% false positives"),
    ]
    out = tmp_path / "outputs"
    for args, message in cases:
        result = runner.invoke(app, ["run", *args, "--output-dir", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    assert not out.exists()


def _npz_bomb(path: Path) -> None:
    """64 MiB of float64 zeros, deflated to ~64 kB: over the limit of a D = 32 run."""
    np.savez_compressed(path, Q_hat=np.zeros((8192, 1024)))


def test_an_inflating_array_is_refused_by_its_header_in_the_one_reader(tmp_path):
    from tdlens.rundir.read import load_array

    d = tmp_path / "run"
    Runner(_cfg("probes.enabled=true", *PROBED[2:], "outer_iters=4"), d).run()
    bomb = d / "probes" / "q_kernel_0003.npz"  # the kernel's saved factor, replaced
    bomb.unlink()
    _npz_bomb(bomb)
    assert bomb.stat().st_size < 200_000
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 2, result.output
    assert "q_kernel_0003.npz" in result.output and "refused before loading" in result.output
    with pytest.raises(RunFileError, match="8388608 array elements"):
        load_array(bomb, 32)
    assert isinstance(load_array(bomb, 1024), dict)  # the same file fits a D = 1024 run
    ckpt = list_checkpoints(d)[-1]
    _npz_bomb(ckpt)
    with pytest.raises(RunFileError, match=r"refused|checksum|lacks"):
        load_checkpoint(ckpt)


def test_a_temporary_file_of_a_killed_checkpoint_write_is_removed_on_resume(tmp_path, full_run):
    d = tmp_path / "run"
    _stopped(d)
    tmp = d / "checkpoints" / ".ckpt_000006.npz.k1ll3d.tmp"
    tmp.write_bytes(b"half a checkpoint")
    assert Runner(None, d, resume=True).run().status == "complete"
    assert not tmp.exists() and not list(d.rglob("*.tmp"))
    assert "removed 'checkpoints/.ckpt_000006.npz.k1ll3d.tmp'" in (d / "stdout.log").read_text()
    assert _curves(d) == _curves(full_run)


def test_garbage_in_a_probe_table_fails_the_missing_value_check(tmp_path):
    d = tmp_path / "run"
    Runner(_cfg("probes.enabled=true", *PROBED[2:], "outer_iters=4"), d).run()
    path = d / "probes" / "fixed_point_probe.csv"
    header, *rows = path.read_text().splitlines()
    col = header.split(",").index("value_gap")
    cells = rows[0].split(",")
    cells[col] = "garbage"
    path.write_text("\n".join([header, ",".join(cells), *rows[1:]]) + "\n")
    write_report(d)
    report = json.loads((d / "run_report.json").read_text())
    check = next(c for c in report["health"]["checks"] if c["name"] == "probe_missing_values")
    assert check["verdict"] == "FAIL" and "fixed_point_probe.value_gap" in check["detail"]
    assert "'garbage'" in check["detail"]
