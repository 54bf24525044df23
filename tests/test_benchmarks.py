"""The benchmark scripts still run (BENCHMARKS.md quotes their commands).

Each script runs once as a user would, with the smallest settings it accepts, and must
exit 0 and print its headline figure. This checks that the scripts keep up with the
code, not their timings (figures come from the scripts themselves, never from tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=2",
    "horizon=16",
    "outer_iters=3",
    "probes.every=1",
    "probes.fixed_point.batch_size=128",
    "probes.stability.batch_size=128",
    "probes.stability.k_mc=2",
    "probes.distribution.num_samples=64",
    "probes.distribution.permutations=10",
    "probes.q_kernel.cache_batch_size=2",
    "probes.q_kernel.max_horizon=8",
    "probes.rho_audit.batch_size=128",
]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def run_script(name: str, *args: str, cwd: Path) -> str:
    """Run benchmarks/<name> and return its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize(
    ("name", "args", "headline"),
    [
        ("bench_iteration.py", ["--repeats", "2", *_sets(TINY)], "outer iteration: median"),
        ("bench_probes.py", ["--rounds", "1", *_sets(TINY)], "probe round (1 rounds): median"),
        ("bench_bar_phi.py", ["--repeats", "2", *_sets(TINY)], "mean (y_mc - y_exact)^2"),
        ("bench_seed_run.py", ["--repeats", "1", *_sets(TINY)], "seed run end to end: median"),
        ("bench_critical_path_round.py", ["--rounds", "2", *_sets(TINY)], "median of rounds 1-1 ("),
        ("bench_inrun_round.py", ["--cpu-split", *_sets(TINY)], "in-run minus replay, wall: mean"),
        (
            "bench_floor.py",
            [
                "--dim",
                "64",
                "--batch",
                "128",
                "--repeats",
                "1",
                "--round-cpu",
                "1",
                "--target",
                "0.5",
            ],
            "target 0.500 s leaves",
        ),
        (
            "bench_critical_path_iteration.py",
            ["--repeats", "2", *_sets(TINY)],
            "critical path: median",
        ),
    ],
)
def test_benchmark_script_runs(name, args, headline, tmp_path):
    out = run_script(name, *args, cwd=tmp_path)
    assert out.startswith("machine: ")
    assert headline in out, out[-2000:]


def test_bench_report_runs_on_a_given_run(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tdlens.cli", "run", "sanity", "--run-dir", str(run_dir)]
    done = subprocess.run(
        [*command, *_sets(TINY)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = run_script("bench_report.py", "--repeats", "1", "--run-dir", str(run_dir), cwd=tmp_path)
    assert "report: " in out


def test_bench_scaling_plots_its_figure(tmp_path):
    png = tmp_path / "scaling.png"
    out = run_script(
        "bench_scaling.py",
        *("--rounds", "1", "--batches", "128", "--dims", "128", "--plot", str(png)),
        cwd=tmp_path,
    )
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["128"], ["4096"])]
    assert [(r[0], r[1]) for r in rows] == [("128", "2048"), ("4096", "128")]
    for r in rows:  # ... iteration s, peak MiB, estimate MiB, est/peak
        iteration, peak, est, ratio = (float(x) for x in r[-4:])
        assert iteration > 0 and est > 0 and ratio == pytest.approx(est / peak, abs=0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sweep_extrapolates_short_runs(tmp_path):
    out = run_script(
        "bench_sweep.py", "--runs", "2", "--jobs", "2", "--iters", "2", "--no-ray", cwd=tmp_path
    )
    assert "local backend, 2 runs x 2 iterations, --jobs 2:" in out
    assert "extrapolated to 200 iterations (20 probe rounds)" in out


def test_bench_probes_cpu_split_names_every_stage(tmp_path):
    """--cpu-split prints, for every round, the CPU seconds of each wrapped stage: the
    wrappers reach the functions the probes call (a stage the round never enters, or a
    renamed function, would be missing from the line)."""
    out = run_script("bench_probes.py", "--rounds", "2", "--cpu-split", *_sets(TINY), cwd=tmp_path)
    lines = [line for line in out.splitlines() if line.strip().startswith("CPU s: ")]
    assert len(lines) == 2, out[-2000:]
    stages = [dict(p.rsplit(" ", 1) for p in ln.split(": ", 1)[1].split(", ")) for ln in lines]
    always = {"moments", "spectrum", "solves", "measure", "prediction", "critic_features"}
    always |= {"trainer_td_errors"}  # probes.bar_phi: exact under the trainer's bar_phi: mc
    assert always | {"counterfactuals"} <= stages[0].keys(), lines[0]
    assert always <= stages[1].keys() and "counterfactuals" not in stages[1], lines[1]
    assert all(float(v) >= 0 for s in stages for v in s.values())


def test_bench_issue28_tabulates_two_codes(tmp_path):
    """Two codes (here the same src twice), one alternation: every row of the issue's
    table has a figure for each code, read from the runs' own files."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = run_script(
        "bench_issue28.py",
        *("--src", src, "--src", src, "--alternations", "1", *_sets(TINY)),
        cwd=tmp_path,
    )
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0] == f"| what | {src} | {src} |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table[1:]}
    assert set(rows) == {
        "seed run wall (s)",
        "seed run peak RSS (MiB)",
        "iteration, 2 threads (s)",
        "probe round, 2 threads (s)",
        "iteration, 1 thread beside a second run (s)",
        "probe round, 1 thread beside a second run (s)",
    }
    for cells in rows.values():
        assert all(float(c.strip(" |")) > 0 for c in cells), cells


def test_bench_probe_features_times_each_stage(tmp_path):
    """The probe chains' features benchmark (issue 28, session 9) prints each stage."""
    out = run_script("bench_probe_features.py", "--reps", "2", *_sets(TINY), cwd=tmp_path)
    assert out.startswith("machine: ")
    for stage in ("rollout", "rollout_wall", "features", "trainer"):
        assert f"{stage}: min " in out, out[-2000:]
