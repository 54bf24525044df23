"""Small configs shared by the tests (importable as `helpers`: pytest's pythonpath)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

from tdlens.config import RunConfig, load_config

SMALL = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=4",
    "horizon=30",
    "outer_iters=5",
    "threads=1",
]


FAST_PROBES = (
    "probes.plateau.enabled=false",
    "probes.fixed_point.batch_size=128",
    "probes.stability.batch_size=128",
    "probes.stability.k_mc=2",
    "probes.distribution.num_samples=64",
    "probes.distribution.action_samples=8",
    "probes.distribution.permutations=20",
    "probes.q_kernel.cache_batch_size=2",
    "probes.rho_audit.batch_size=128",
)
"""Every probe on, with small batches (seconds per run at the SMALL sizes)."""

TINY_SWEEP = {
    "outer_iters": 3,
    "env.feature_dim": 32,
    "env.actor_feature_dim": 8,
    "trajectories": 4,
    "horizon": 20,
    "probes.every": 2,
}
"""Overrides of a sweep whose runs take about a second each."""
TINY_SEED = {
    "outer_iters": 6,
    "env.feature_dim": 64,
    "env.actor_feature_dim": 16,
    "trajectories": 4,
    "horizon": 30,
    "probes.every": 2,
}
"""The seed run's config made tiny (D=64, N=16, B=4, T=30, 6 iterations, probes every 2:
rounds 1, 3 and 5)."""


def small_config(*overrides: str) -> RunConfig:
    """A tiny but complete run config (D=64, N=16, B=4, T=30) plus overrides."""
    return load_config(None, [*SMALL, *overrides])


def sets(overrides: list[str]) -> list[str]:
    """``--set`` options for each override."""
    return [a for o in overrides for a in ("--set", o)]


def spawn_run(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    """``tdlens run sanity --run-dir RUN_DIR --set ...`` in a child process."""
    cmd = [sys.executable, "-m", "tdlens.cli", "run", "sanity", "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*cmd, *sets(overrides)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until learning_curves.csv has more than `n` lines (the child still alive)."""
    deadline = time.monotonic() + timeout
    path = run_dir / "learning_curves.csv"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("run did not reach the expected row count")


def run_spec_sweep(root: Path, spec: dict) -> Path:
    """Write `spec` as ``root/<name>.yaml``, run ``tdlens sweep`` on it (one job, its own
    catalog) and return the sweep directory; a sweep with diverged runs (exit 1) is a
    finished sweep."""
    import yaml
    from typer.testing import CliRunner

    from tdlens.cli import app

    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(
        app,
        ["sweep", str(path), "--output-dir", str(root / "sweeps"), "--jobs", "1"],
        env={"TDLENS_CATALOG": str(root / "c.sqlite")},
    )
    assert res.exit_code in (0, 1), res.output  # diverged runs are runs
    (sweep,) = (root / "sweeps").iterdir()
    return sweep


def fail_at_iteration(monkeypatch, n: int, exc: BaseException) -> None:
    """Make every Runner in this test raise `exc` at outer iteration `n` (the iterations
    before it run for real, so their rows are written)."""
    from tdlens.runs import runner as runner_mod

    real = runner_mod.outer_iteration

    def fail(cfg, maps, params, k, workspace=None, **options):
        if k == n:
            raise exc
        return real(cfg, maps, params, k, workspace, **options)

    monkeypatch.setattr(runner_mod, "outer_iteration", fail)


def curves(run_dir: Path, drop: tuple[str, ...] = ("iter_time_s",)) -> list[list[str]]:
    """learning_curves.csv of `run_dir` as text cells, without the columns in `drop` (the
    wall-time column by default: the only one two identical runs may differ in)."""
    with open(run_dir / "learning_curves.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, c in enumerate(rows[0]) if c not in drop]
    return [[r[i] for i in keep] for r in rows]
