"""What a sweep run leaves on disk (issue 24): md/json reports and no HTML page, its final
checkpoint only, the TD-error kernel by its factor; the disk budget against the measured
directories; ``sweep --force`` and what ``sweep --dry-run`` expects."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from helpers import TINY_SEED
from page_checks import assert_offline
from tdlens.config import config_from_json, shipped_configs
from tdlens.rundir.read import load_array, load_run
from tdlens.runs import budget
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.sweep import execute_sweep, prepare_sweep

DEMO = shipped_configs() / "sweeps" / "demo.yaml"
LIMIT = 300_000
"""Bytes a sweep run's directory may hold, every file counted (issue 24)."""
STEP_C_BYTES_PER_ITER = 650
"""A compacted Step-C run's growth per iteration beyond 20: the measured 623 B rounded up
(BENCHMARKS.md: 289,905 B at 200 iterations, 177,704 B at 20)."""


def _app() -> typer.Typer:
    from tdlens.cli import app

    return app


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("footprint")
    result = execute_sweep(prepare_sweep(DEMO, root), jobs=1, catalog=root / "c.sqlite")
    assert result.counts == {"complete": 4}
    return result.sweep_dir


def _runs(sweep: Path) -> list[Path]:
    return [run_dir(sweep, e["run_id"]) for e in read_plan(sweep)["runs"]]


def test_demo_sweep_runs_fit_in_300_kb_without_html(demo):
    for run in _runs(demo):
        files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
        assert {"run_report.md", "run_report.json", "config.json"} <= files
        assert "run_report.html" not in files
        assert [f for f in files if f.startswith("checkpoints/")] == ["checkpoints/ckpt_000006.npz"]
        assert _size(run) <= LIMIT, (run.name, _size(run))


def test_the_final_checkpoint_leaves_out_only_the_next_rounds_probe_state(demo, tmp_path):
    """compact.DROPPED_STATE (w#_1 - w#_2, read only by a next round) is gone from a
    finished sweep run's checkpoint, its checksum holds and the rest of the state is
    there; a branch from it runs, its first round's drift defined and its own noise 0."""
    from tdlens.runs.branch import create_branch, run_branch
    from tdlens.runs.checkpoint import latest_checkpoint, load_checkpoint
    from tdlens.sweeps.compact import DROPPED_STATE

    run = _runs(demo)[0]
    ckpt = load_checkpoint(latest_checkpoint(run))  # verifies the checksum
    for key in DROPPED_STATE:
        assert key not in ckpt.probe_state and f"{key}_defined" not in ckpt.probe_state
    assert ckpt.probe_state["w_sharp_prev_defined"] == 1
    twin = create_branch(run, {"probes.every": 1}, iters=2, run_dir=tmp_path / "twin")
    run_branch(twin, write_report=False)
    fp = load_run(twin).probe("fixed_point_probe")
    k = int(np.argmax(fp.iters() >= ckpt.next_iter))  # the branch's first round
    assert fp.iters()[k] >= ckpt.next_iter
    assert fp.values("w_sharp_drift_defined")[k] == 1
    assert fp.values("w_sharp_drift_noise")[k] == 0
    assert fp.values("w_sharp_drift_noise")[-1] > 0  # and the round after it has one


def test_summary_links_the_md_reports_and_shows_the_boundary(demo):
    md = (demo / "summary.md").read_text()
    assert "## Stability boundary (largest alpha_w" in md and "Nothing diverged" not in md
    html = (demo / "summary.html").read_text()
    for run in _runs(demo):
        assert f'href="runs/{quote(run.name)}/run_report.md"' in html


def test_q_kernel_is_saved_by_its_factor_and_read_back_as_q_hat(demo):
    run = _runs(demo)[0]
    cfg = config_from_json(run / "config.json")
    path = run / "probes" / "q_kernel_0005.npz"
    with np.load(path) as stored:
        assert list(stored.files) == ["gram_factor"]
        Delta = stored["gram_factor"]
    B_c = min(cfg.probes.q_kernel.cache_batch_size, cfg.trajectories)
    T_c = min(cfg.probes.q_kernel.max_horizon, cfg.horizon)
    assert Delta.shape == (B_c, T_c) and Delta.dtype == np.float64
    Q = load_array(path)
    assert Q.shape == (T_c, T_c)
    # the diagonal mean of Q_hat is the TD loss of the cached entries (the probe's own row)
    row = load_run(run).probe("q_kernel_probe").rows[-1]
    assert np.mean(np.diagonal(Q)) == pytest.approx(row["td_loss_from_Q"], rel=1e-12)
    assert path.stat().st_size < 8 * T_c * T_c / 4  # the Q_hat .npy it replaces: 8 T_c^2


def test_report_on_demand_writes_the_self_contained_page(demo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(_runs(demo)[0], run)
    res = CliRunner().invoke(_app(), ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert assert_offline((run / "run_report.html").read_text()) >= 1  # plotly.js inline


def test_disk_budget_counts_what_sweep_runs_write(demo):
    """The sweep-run estimate (no HTML, the final checkpoint, compacted) bounds each
    measured run directory within 2x; the old model (an 8 MiB page) counted 40x too much."""
    for run in _runs(demo):
        cfg = config_from_json(run / "config.json")
        predicted = budget.estimate(cfg, html=False, checkpoints=1, compact=True).disk_bytes
        used = _size(run)
        assert used <= predicted <= 2 * used, (run.name, used, predicted)
        assert budget.estimate(cfg).disk_bytes > 40 * used
    cfgs = [config_from_json(r / "config.json") for r in _runs(demo)]
    whole = budget.estimate_sweep(cfgs, jobs=2)
    used = _size(demo)
    assert used <= whole.disk_bytes <= 2 * used + budget.SUMMARY_BYTES


def test_sweep_refused_for_disk_unless_force(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "free_disk", lambda path: 1024**2)
    out = tmp_path / "sweeps"
    args = ["sweep", str(DEMO), "--jobs", "1", "--output-dir", str(out)]
    res = CliRunner().invoke(_app(), [*args, "--catalog", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 2
    assert "this sweep writes about" in res.output and "--force" in res.output
    assert not out.exists() and not (tmp_path / "c.sqlite").exists()  # nothing written
    res = CliRunner().invoke(_app(), [*args, "--dry-run"])
    assert res.exit_code == 2 and "would be refused" in res.output
    res = CliRunner().invoke(_app(), [*args, "--dry-run", "--force"])
    assert res.exit_code == 0 and "--force: would start anyway" in res.output
    assert not out.exists()


def test_dry_run_states_disk_memory_and_time():
    res = CliRunner().invoke(
        _app(),
        ["sweep", str(shipped_configs() / "sweeps" / "stepC.yaml"), "--dry-run", "--jobs", "2"],
    )
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("expects:"))
    assert "1000 run(s)" in line and "on disk" in line and "peak memory" in line
    assert "of compute" in line and "on 2 job(s)" in line
    # the time model against the measured Step-C run (57 s on one core, BENCHMARKS.md)
    from tdlens.config import load_config

    one = budget.expected_seconds(load_config(shipped_configs() / "plateau.yaml"))
    assert 57 / 2 <= one + budget.STARTUP_S <= 57 * 2


def test_step_c_sized_sweep_run_against_the_disk_budget(tmp_path):
    """The Step-C base (plateau, D = 2048), cut to 20 iterations (2 probe rounds): a
    compacted sweep run writes no HTML, keeps one (compressed) checkpoint, the newest
    q_kernel factor and raw-rho sample, its tables gzip-compressed, and the budget bounds
    its directory within 2x. Per-round argument (BENCHMARKS.md, measured once by hand):
    the full 200-iteration, 20-round run is 1.01 MB written and 290 KB compacted, the
    20-iteration one 178 KB, so the run grows ~0.62 KB an iteration at one round in ten
    ((289,905 - 177,704) / 180) and 300 KB holds runs up to ~216 iterations: the
    Step-C run fits. Asserted here: the 20-iteration run plus 180 iterations at that
    rate rounded up (learning curves 0.24 KB an iteration gzip-compressed and a log line;
    per round its compressed table rows, report rows and trimmed expected dynamics)."""
    from tdlens.sweeps.inline import inline_spec

    spec = inline_spec("plateau", ["alpha_w=0.08"], overrides=["outer_iters=20"])
    result = execute_sweep(prepare_sweep(spec, tmp_path), jobs=1, catalog=None)
    assert result.counts == {"complete": 1}
    (run,) = _runs(result.sweep_dir)
    assert not (run / "run_report.html").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_000020.npz"]
    cfg = config_from_json(run / "config.json")
    assert cfg.env.feature_dim == 2048
    used = _size(run)
    assert used + 180 * STEP_C_BYTES_PER_ITER <= LIMIT, used
    predicted = budget.estimate(cfg, html=False, checkpoints=1, compact=True).disk_bytes
    assert used <= predicted <= 2 * used, (used, predicted)
    probes = run / "probes"
    assert [p.name for p in probes.glob("q_kernel_[0-9]*.npz")] == ["q_kernel_0019.npz"]
    assert [p.name for p in probes.glob("rho_hist_*.npy")] == ["rho_hist_0019.npy"]
    assert not list(probes.glob("*.jsonl")) and (probes / "rounds.jsonl.gz").is_file()
    assert not list(run.rglob("*.csv")) and (run / "learning_curves.csv.gz").is_file()
    curves = gzip.decompress((run / "learning_curves.csv.gz").read_bytes()).decode()
    assert len(curves.splitlines()) == 21  # the header and 20 rows
    assert set(json.loads((probes / "q_kernel_cv.json").read_text())) == {"9"}


def test_sweep_refused_for_memory_of_its_jobs_at_once(tmp_path, monkeypatch):
    """Two workers hold two runs in memory: refused when twice a run's peak does not fit."""
    cfgs = [r.config for r in prepare_sweep(DEMO, tmp_path).runs]
    one = max(budget.estimate(c).peak_bytes for c in cfgs)
    assert budget.estimate_sweep(cfgs, jobs=2).peak_bytes == 2 * one
    monkeypatch.setattr(budget, "available_memory", lambda: int(1.5 * one))
    out = tmp_path / "sweeps"
    args = ["sweep", str(DEMO), "--output-dir", str(out), "--catalog", str(tmp_path / "c")]
    res = CliRunner().invoke(_app(), [*args, "--jobs", "2"])
    assert res.exit_code == 2 and "2 runs at once" in res.output and "--jobs" in res.output
    assert not out.exists()
    res = CliRunner().invoke(_app(), [*args, "--jobs", "1", "--dry-run"])
    assert res.exit_code == 0 and "would be refused" not in res.output


# The seed config made tiny (D=64, 6 iterations, probes every 2: rounds 1, 3 and 5), so
# every compacted array has older rounds; the q_kernel cache holds 2 of the 4 trajectories,
# so the loss-convention tolerance depends on each round's trajectory CV.
TINY = {**TINY_SEED, "probes.q_kernel.cache_batch_size": 2}


def _without_run_dir(report: dict) -> dict:
    return {**report, "run_info": {**report["run_info"], "run_dir": None}}


def test_compaction_changes_no_number_any_reader_computes(tmp_path):
    """A single run keeps everything; its compacted copy gives the same report (json and
    md, but for the run_dir line), the same sweep record, the same tables and newest
    arrays through open_run, and the same loss-convention tolerances from the packed
    q_kernel CVs of the rounds it pruned."""
    import tdlens
    from tdlens.catalog.records import load_record
    from tdlens.report import write_report
    from tdlens.report.probe_checks import _loss_tolerances
    from tdlens.sweeps.compact import compact_run

    full = tmp_path / "full"
    run = tdlens.run("seed_plateau", TINY, run_dir=full, progress=False, catalog=None)
    assert run.result is not None and run.result.exit_code == 0
    probes = full / "probes"
    assert {p.name for p in probes.glob("q_kernel_[0-9]*.npz")} == {
        f"q_kernel_000{i}.npz" for i in (1, 3, 5)
    }
    assert (probes / "fixed_point_probe.jsonl").is_file()  # tdlens run keeps everything
    small = tmp_path / "small"
    shutil.copytree(full, small)
    changed = compact_run(small)
    assert "probes/q_kernel_0001.npz" in changed and "probes/rho_hist_0003.npy" in changed
    assert "probes/expected_dynamics_0003.npz" in changed
    html = (full / "run_report.html").stat().st_size  # the single run's page, in both
    assert _size(small) - html < 0.7 * (_size(full) - html)
    packed = json.loads((small / "probes" / "q_kernel_cv.json").read_text())
    assert set(packed) == {"1", "3"}

    for d in (full, small):
        write_report(d, html=False)
    a, b = (json.loads((d / "run_report.json").read_text()) for d in (full, small))
    assert _without_run_dir(a) == _without_run_dir(b)
    md_a, md_b = ((d / "run_report.md").read_text() for d in (full, small))
    assert md_a.replace(str(full), "RUN") == md_b.replace(str(small), "RUN")
    se_a, se_b = (
        _loss_tolerances(load_run(d), load_run(d).probe("q_kernel_probe")) for d in (full, small)
    )
    assert len(set(se_a.tolist())) == 3  # the CVs differ from round to round and matter
    np.testing.assert_array_equal(se_a, se_b)
    rec_a, rec_b = load_record(full), load_record(small)
    where = {"run_id": None, "path": None}
    assert {**vars(rec_a), **where} == {**vars(rec_b), **where}

    ra, rb = tdlens.open_run(full), tdlens.open_run(small)
    assert ra.curves.equals(rb.curves) and ra.rounds.equals(rb.rounds)
    assert set(ra.probes) == set(rb.probes)
    for name in ra.probes:
        assert ra.probes[name].equals(rb.probes[name]), name
    for name in ("q_kernel", "q_kernel_lag", "rho_hist", "stability_eigs"):
        np.testing.assert_array_equal(ra.array(name), rb.array(name))
    first = ra.array("expected_dynamics", 1)
    for key, value in rb.array("expected_dynamics", 1).items():
        np.testing.assert_array_equal(value, first[key])


def test_compaction_is_idempotent_and_its_failure_never_fails_the_run(demo, tmp_path, monkeypatch):
    """A compacted run compacted again: only run_report.json is rewritten, every byte the
    same. A compaction that raises is a line in stdout.log, not an exception."""
    from tdlens.sweeps import compact
    from tdlens.sweeps.backends import compact_finished

    run = tmp_path / "run"
    shutil.copytree(_runs(demo)[0], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert compact.compact_run(run) == ["run_report.json"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    def broken(run_dir: Path) -> list[str]:
        raise OSError("No space left on device")

    monkeypatch.setattr(compact, "compact_run", broken)
    compact_finished(run)
    log = (run / "stdout.log").read_text().splitlines()[-1]
    assert "compaction skipped: OSError: No space left on device" in log


def _plain_copy(sweep: Path, dest: Path) -> Path:
    """The sweep with every compressed table stored plain again: the runs as written."""
    shutil.copytree(sweep, dest)
    for packed in dest.rglob("*.gz"):
        packed.with_name(packed.name[: -len(".gz")]).write_bytes(
            gzip.decompress(packed.read_bytes())
        )
        packed.unlink()
    return dest


def _without(value, *roots: Path):
    """`value` with every string that names a path under `roots` dropped (dicts, lists)."""
    if isinstance(value, dict):
        return {k: _without(v, *roots) for k, v in value.items() if not _names(v, roots)}
    if isinstance(value, list):
        return [_without(v, *roots) for v in value]
    return value


def _names(value, roots) -> bool:
    return isinstance(value, str) and any(str(r) in value for r in roots)


def test_every_reader_reads_a_compacted_run_as_the_run_written(demo, tmp_path):
    """The demo sweep as compacted (learning_curves.csv.gz, probes/*.csv.gz,
    probes/rounds.jsonl.gz) against the same sweep with those tables plain again: the
    report (json and md), open_run's tables, the sweep summary, the catalog rebuilt by
    reindex, and what an export reads (its series and its up-to-date fingerprint) are
    equal; a sweep --resume counts the compacted runs complete and rewrites none."""
    import tdlens
    from tdlens.catalog.store import query_runs
    from tdlens.export import fingerprint, scalar_series
    from tdlens.report import write_report
    from tdlens.sweeps.reindex import reindex
    from tdlens.sweeps.summary import summarize

    small = tmp_path / "small"
    shutil.copytree(demo, small)
    plain = _plain_copy(demo, tmp_path / "plain")
    for run in _runs(small):
        packed = {p.relative_to(run).as_posix() for p in run.rglob("*.gz")}
        assert {"learning_curves.csv.gz", "probes/rounds.csv.gz", "probes/rounds.jsonl.gz"} <= (
            packed
        )
        assert "probes/fixed_point_probe.csv.gz" in packed and not list(run.rglob("*.csv"))
    for a, b in zip(_runs(plain), _runs(small), strict=True):
        assert len(load_run(a).curves) == 6 and load_run(b).problems == ()
        assert fingerprint(a) == fingerprint(b)  # the same files, copied: up to date
        for d in (a, b):
            write_report(d, html=False)
        ja, jb = (json.loads((d / "run_report.json").read_text()) for d in (a, b))
        assert _without(ja, plain, small) == _without(jb, plain, small)
        md_a, md_b = ((d / "run_report.md").read_text() for d in (a, b))
        assert md_a.replace(str(a), "RUN") == md_b.replace(str(b), "RUN")
        ra, rb = tdlens.open_run(a), tdlens.open_run(b)
        assert ra.curves.equals(rb.curves) and ra.rounds.equals(rb.rounds)
        assert set(ra.probes) == set(rb.probes) and len(ra.probes) >= 5
        for name in ra.probes:
            assert ra.probes[name].equals(rb.probes[name]), name
        assert scalar_series(load_run(a)) == scalar_series(load_run(b))
    sa, sb = summarize(plain), summarize(small)
    assert len(sa.records) == len(sb.records) == 4
    ja, jb = (json.loads((d / "summary.json").read_text()) for d in (plain, small))
    assert _without(ja, plain, small) == _without(jb, plain, small)  # NaN -> null
    assert len(ja["runs"]) == 4 and ja["configs"] and ja["marginals"]
    assert (plain / "summary.md").read_text().replace(str(plain), "S") == (
        small / "summary.md"
    ).read_text().replace(str(small), "S")
    rows = []
    for root in (plain, small):
        assert reindex(tmp_path / f"{root.name}.sqlite", [root])[:2] == (4, 1)
        found = query_runs(tmp_path / f"{root.name}.sqlite")
        rows.append(sorted((_without(r, plain, small) for r in found), key=str))
    strip = ("indexed_at", "updated_at", "created_at", "sweep_id")  # sweep_id: its folder
    kept = [[{k: v for k, v in r.items() if k not in strip} for r in x] for x in rows]
    assert kept[0] == kept[1] and len(kept[0]) == 4
    before = {p: p.read_bytes() for p in small.rglob("*") if p.is_file() and "runs" in p.parts}
    again = execute_sweep(prepare_sweep(small, tmp_path, resume=True), jobs=1, catalog=None)
    assert again.skipped == 4 and again.counts == {}  # final: none run again
    assert {p: p.read_bytes() for p in before} == before


def test_compressed_tables_are_deterministic_and_exact(demo, tmp_path):
    """gzip of the table's exact bytes with mtime 0: decompresses to the bytes written,
    and the same table compressed again is the same file."""
    from tdlens.sweeps.compact import gzip_table

    run = _runs(demo)[0]
    packed = (run / "learning_curves.csv.gz").read_bytes()
    assert packed[:4] == b"\x1f\x8b\x08\x00" and packed[4:8] == b"\0\0\0\0"  # no name, mtime 0
    text = gzip.decompress(packed)
    assert text.startswith(b"iter,") and text.count(b"\n") == 7
    again = tmp_path / "learning_curves.csv"
    again.write_bytes(text)
    assert gzip_table(again) and not again.exists()
    assert (tmp_path / "learning_curves.csv.gz").read_bytes() == packed
    assert not gzip_table(again)  # nothing plain left: nothing to do


def test_a_stale_plain_table_beside_its_gzip_twin_is_not_read(demo, tmp_path):
    """X.gz is made only from a finished table, so where a plain X sits beside it (an older
    snapshot a killed Ray driver left, or an interrupted compaction or expansion) the twin
    is the table: load_run reads every row, and a resume or branch expands the twin's."""
    from tdlens.runs.writer import RunFiles

    run = tmp_path / "run"
    shutil.copytree(_runs(demo)[0], run)
    full = load_run(run).curves.iters()
    table = run / "learning_curves.csv"
    lines = gzip.decompress((run / "learning_curves.csv.gz").read_bytes()).splitlines(True)
    table.write_bytes(b"".join(lines[:3]))  # an older copy: two rows
    np.testing.assert_array_equal(load_run(run).curves.iters(), full)
    RunFiles(run).expand_tables()
    assert not (run / "learning_curves.csv.gz").exists()
    assert table.read_bytes() == b"".join(lines)


def test_a_compressed_table_is_size_checked_and_named_when_broken(demo, tmp_path):
    """A table that inflates past the run's limit (table_limit: 16 MiB for a demo run) or
    is not gzip is one problem naming the file; the report still builds, open_run gives
    an empty table, and read_table_text raises naming the file."""
    from tdlens.rundir.files import RunFileError
    from tdlens.rundir.read import read_table_text, table_limit

    run = tmp_path / "run"
    shutil.copytree(_runs(demo)[0], run)
    cfg = config_from_json(run / "config.json")
    limit = table_limit(cfg.outer_iters)
    assert limit == 2**24
    bomb = b"iter,td_loss\n" + b"0,0\n" * (limit // 4 + 1)
    packed = gzip.compress(bomb, mtime=0)
    assert len(packed) < 100_000  # 16 MiB of text in a small file
    (run / "learning_curves.csv.gz").write_bytes(packed)
    (run / "probes" / "rounds.csv.gz").write_bytes(b"not gzip")
    data = load_run(run)
    assert len(data.curves) == 0 and len(data.rounds) == 0
    curves = run / "learning_curves.csv.gz"
    assert any(f"'{curves}' decompresses to more than {limit} bytes" in p for p in data.problems)
    assert any(f"'{run / 'probes' / 'rounds.csv.gz'}' cannot be read" in p for p in data.problems)
    with pytest.raises(RunFileError, match=r"learning_curves\.csv\.gz' decompresses to more"):
        read_table_text(run / "learning_curves.csv", limit)
    assert read_table_text(run / "learning_curves.csv").count("\n") == limit // 4 + 2
    res = CliRunner().invoke(_app(), ["report", str(run)])
    assert "learning_curves.csv.gz" in (run / "run_report.md").read_text(), res.output


def test_branch_of_a_compacted_run_gets_its_tables_plain(demo, tmp_path):
    """A branch (explain's twins) of a compacted sweep run starts from its parent's rows
    before k (the final checkpoint's: all of them), decompressed into plain tables, and
    runs on appending to them."""
    from tdlens.rundir.read import read_table
    from tdlens.runs.branch import create_branch, run_branch

    parent = _runs(demo)[0]
    child = create_branch(parent, {"alpha_w": 0.2}, iters=2, run_dir=tmp_path / "child")
    assert (child / "learning_curves.csv").is_file() and not list(child.rglob("*.gz"))
    assert json.loads((child / "branch.json").read_text())["iteration"] == 6
    theirs = read_table(parent / "learning_curves.csv")
    assert read_table(child / "learning_curves.csv").rows == theirs.rows and len(theirs) == 6
    assert (child / "probes" / "rounds.jsonl").is_file()
    for name in ("fixed_point_probe", "rounds"):
        mine = read_table(child / "probes" / f"{name}.csv")
        assert mine.rows == read_table(parent / "probes" / f"{name}.csv").rows and len(mine)
    assert run_branch(child, write_report=False).status == "complete"
    mine = read_table(child / "learning_curves.csv")
    assert len(mine) == 8 and mine.rows[:6] == theirs.rows
    assert mine.rows[6]["iter"] == 6.0 and not (child / "learning_curves.csv.gz").exists()


def test_a_compacted_run_that_goes_on_gets_plain_tables_cut_to_its_checkpoint(demo, tmp_path):
    """A compacted run that is resumed after all (its status no longer final, e.g. the
    driver failed it while receiving its files): cut_tables stores each compressed table
    plain again, the same bytes, before cutting it to the checkpoint's iteration."""
    from tdlens.rundir.read import read_table
    from tdlens.runs.writer import RunFiles

    run = tmp_path / "run"
    shutil.copytree(_runs(demo)[0], run)
    whole = {
        name: read_table(run / name)
        for name in ("learning_curves.csv", "probes/fixed_point_probe.csv", "probes/rounds.csv")
    }
    RunFiles(run).cut_tables(4)
    assert not list(run.rglob("*.gz")) and (run / "probes" / "rounds.jsonl").is_file()
    for name, table in whole.items():
        cut = read_table(run / name)
        assert cut.rows == tuple(r for r in table.rows if r["iter"] < 4) and len(cut), name
    assert len(read_table(run / "learning_curves.csv")) == 4
