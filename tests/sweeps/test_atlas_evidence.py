"""The atlas's evidence tables (issue 23): label agreement over seeds, what each label's
intervention twin did (from explain.json, faked here: no twin is run), and the page's
hand-written tail that regeneration keeps."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import TINY_SWEEP, run_spec_sweep
from tdlens.catalog.records import RunRecord, load_record
from tdlens.cli import app
from tdlens.pages.fmt import fmt
from tdlens.sweeps.atlas.data import AtlasPoint, AtlasSweep, read_sweep
from tdlens.sweeps.atlas.geometry import _representatives
from tdlens.sweeps.atlas.page import HAND_WRITTEN, write_atlas
from tdlens.sweeps.atlas.seeds import agreement_lines, seed_agreement
from tdlens.sweeps.atlas.twins import run_values
from tdlens.sweeps.explain import ExplainError, predicted_for
from tdlens.sweeps.plan import read_plan, run_dir

cli = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SEEDED_SPEC = {
    "name": "tiny_seeded",
    "base": "sanity",
    "grid": {"alpha_w": [1.0, 1000.0], "theta_mu_offset_scale": [0.0, 1.0]},
    "seeds": [0, 1],
    "overrides": TINY_SWEEP,
}


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory) -> Path:
    """4 grid points x 2 seeds of 3-iteration runs (about 8 s)."""
    return run_spec_sweep(tmp_path_factory.mktemp("atlas_seeds"), SEEDED_SPEC)


def _pt(alpha_w: float, seed: int, regime: str) -> AtlasPoint:
    rec = RunRecord("r", Path("."), params={"alpha_w": alpha_w, "seed": seed}, regime=regime)
    return AtlasPoint(rec, 1.0, 0.0, 0.2, alpha_w, 0.1, seed=seed)


def test_seed_agreement_by_hand():
    """Five grid points (hand-counted): alpha_w 1 learning at all three seeds; 2 learning,
    slow-modes, learning (flips, family too); 3 slow-modes, noise-floor, slow-modes (label
    flips, family kept); 4 slow-modes at all seeds; 5 has no seed 2 (left out)."""
    runs = {
        1.0: ["learning"] * 3,
        2.0: ["learning", "plateau:slow-modes", "learning"],
        3.0: ["plateau:slow-modes", "plateau:noise-floor", "plateau:slow-modes"],
        4.0: ["plateau:slow-modes"] * 3,
        5.0: ["diverged:step-size"] * 2,
    }
    pts = [_pt(a, s, lab) for a, labels in runs.items() for s, lab in enumerate(labels)]
    got = {r.label: (r.points, r.kept, r.family_kept, r.others) for r in seed_agreement(pts)}
    assert got == {
        "learning": (2, 1, 1, {"plateau:slow-modes": 1}),
        "plateau:slow-modes": (2, 1, 2, {"plateau:noise-floor": 1}),
    }
    sweep = AtlasSweep({"name": "hand"}, "sigma_pi", [p for p in pts if p.seed == 0], pts)
    text = "\n".join(agreement_lines(sweep))
    assert "**2 of 4 grid points (50%) keep their label at all 3 seeds** (3 of 4, 75%" in text
    assert "| learning | 2 | 1 | 1 | plateau:slow-modes 1 |" in text
    assert "| plateau:slow-modes | 2 | 1 | 2 | plateau:noise-floor 1 |" in text
    assert agreement_lines(AtlasSweep({"name": "one"}, "sigma_pi", pts[:3])) == []


def test_a_seeded_sweep_is_drawn_at_its_first_seed_with_an_agreement_table(seeded_sweep, tmp_path):
    sweep = read_sweep(seeded_sweep, need_step=True)
    assert sweep.seeds == [0, 1]
    assert len(sweep.points) == 4 and {p.seed for p in sweep.points} == {0}
    assert len(sweep.seed_points) == 8
    # the labels each run's own record gives, grouped by grid point through the plan
    plan = read_plan(seeded_sweep)
    labels: dict[tuple, dict[int, str]] = {}
    for e in plan["runs"]:
        params = dict(e["overrides"])
        seed = params.pop("seed")
        rec = load_record(run_dir(seeded_sweep, e["run_id"]), e["overrides"])
        labels.setdefault(tuple(sorted(params.items())), {})[seed] = rec.regime
    kept = sum(v[0] == v[1] for v in labels.values())
    docs = tmp_path / "atlas.md"
    res = cli.invoke(app, ["atlas", str(seeded_sweep), "--docs", str(docs)])
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    assert "`tiny_seeded` (4 grid points x 2 seeds = 8 runs)" in page
    assert "## Label agreement over seeds" in page
    assert f"**{kept} of 4 grid points ({kept / 4:.0%}) keep their label at all 2 seeds**" in page
    assert "show each sweep's first seed only (seed 0)" in page
    rows = [line for line in page.splitlines() if "`tdlens run sanity" in line]
    assert rows and all("--set seed=0" in r for r in rows)
    assert "## What each label's intervention twin did" not in page  # only with --explain


def _fake_explain(parent: Path, label: str, twin: float, control: float) -> dict:
    return {
        "parent": str(parent),
        "label": label,
        "label_verdict": "confirmed" if twin < control else "refuted",
        "iteration": 0,
        "twins": [
            {
                "name": "alpha_w_x4",
                "set": {"alpha_w": 4.0},
                "predicted": {
                    "value_gap_end": 0.02,
                    "value_gap_end_lo": 0.01,
                    "value_gap_end_hi": 0.03,
                },
                "measured": {"value_gap": twin},
                "control": {"value_gap": control},
                "verdict": "confirmed" if twin < control else "refuted",
            }
        ],
    }


def test_twin_table_reads_explain_json_and_explains_the_rest(seeded_sweep, tmp_path):
    """The first representative has an explain.json for its label (reused, not rerun);
    the second's explainer fails (a row says why); the others get a fake explain."""
    sweep_dir = tmp_path / seeded_sweep.name
    shutil.copytree(seeded_sweep, sweep_dir)
    reps = _representatives(read_sweep(sweep_dir, need_step=True).points)
    assert len(reps) >= 2, reps
    assert {run_values(p) for p in reps.values()} <= {
        f"alpha_w {a}, theta_mu_offset_scale {m}" for a in ("1", "1000") for m in ("0", "1")
    }
    (first, p0), (second, p1), *rest = reps.items()
    (p0.record.path / "explain.json").write_text(
        json.dumps(_fake_explain(p0.record.path, first, 0.03, 0.06))
    )
    called: list[Path] = []
    labels = {p.record.path: label for label, p in reps.items()}

    def explainer(parent: Path, iters: int | None) -> dict:
        # a diverged label: explain's own default (from the start, the whole run)
        assert iters == (None if labels[parent].startswith("diverged") else 7), labels[parent]
        called.append(parent)
        if parent == p1.record.path:
            raise ExplainError(f"'{parent}' has no checkpoint to branch from")
        return _fake_explain(parent, "x", 0.09, 0.06)

    docs = tmp_path / "atlas.md"
    write_atlas(sweep_dir, docs, explain_iters=7, explainer=explainer)
    assert called == [p1.record.path, *(p.record.path for _, p in rest)]
    page = docs.read_text()
    assert "## What each label's intervention twin did" in page
    assert "`tdlens explain RUN_DIR --iters 7`" in page
    twins = page.split("## What each label's intervention twin did", 1)[1]
    assert twins.count("Sweep `tiny_seeded`:") == 1  # one table per sweep
    run0 = run_values(p0)
    unchanged = predicted_for(p0.record.path, {})  # the run report's control entry
    vs = f" vs {fmt(unchanged['value_gap_end'])}" if unchanged else ""
    assert (
        f"| {first} | confirmed | {run0} | alpha_w = 4 | "
        f"0.02 [0.01, 0.03]{vs} | 0.03 vs 0.06 (x0.5) |"
    ) in page
    assert f"| {second} | not run: '{p1.record.path}' has no checkpoint" in page
    assert f" | {run_values(p1)} | - | - | - |" in page
    for label, p in rest:
        assert f"| {label} | refuted | {run_values(p)} | alpha_w = 4 |" in page
        assert "| 0.09 vs 0.06 (x1.5) |" in page
    # an explain.json of another label is not reused
    (p0.record.path / "explain.json").write_text(
        json.dumps(_fake_explain(p0.record.path, "plateau:noise-floor", 0.03, 0.06))
    )
    called.clear()
    write_atlas(sweep_dir, docs, explain_iters=7, explainer=explainer)
    assert called[0] == p0.record.path


def test_a_diverged_label_is_explained_from_the_start_and_an_old_late_file_not_reused(
    tmp_path,
):
    """read_or_explain: a diverged label's explain.json is reused only when its twins
    branched at iteration 0; else explain runs with iters None (its diverged default)."""
    from tdlens.sweeps.atlas.twins import read_or_explain

    asked: list[int | None] = []

    def run(parent: Path, iters: int | None) -> dict:
        asked.append(iters)
        return {**_fake_explain(parent, "diverged", 0.01, 0.5), "iteration": 0}

    late = {**_fake_explain(tmp_path, "diverged", 0.4, 0.5), "iteration": 72}
    (tmp_path / "explain.json").write_text(json.dumps(late))
    found, _ = read_or_explain(tmp_path, "diverged", 20, run)
    assert asked == [None] and found["iteration"] == 0  # the late file was not reused
    (tmp_path / "explain.json").write_text(json.dumps(found))
    assert read_or_explain(tmp_path, "diverged", 20, run)[0] == found and asked == [None]
    late["label"] = "frozen"  # any other label: reused from its late branch, run with iters
    (tmp_path / "explain.json").write_text(json.dumps(late))
    assert read_or_explain(tmp_path, "frozen", 20, run)[0] == late
    assert read_or_explain(tmp_path, "plateau", 20, run)[0]["iteration"] == 0
    assert asked == [None, 20]


def test_twin_row_of_a_diverged_twin_and_of_a_label_without_intervention(tmp_path):
    from tdlens.sweeps.atlas.twins import twin_rows

    result = _fake_explain(tmp_path, "diverged:off-policy", math.inf, 0.5)
    result["twins"][0]["predicted"] = None
    (row,) = twin_rows(result, "s", "diverged:off-policy", "r")
    assert row.predicted == "not predicted"  # a step change the report did not predict
    result["twins"][0]["set"] = {"sigma_mu": 0.5}
    (row,) = twin_rows(result, "s", "diverged:off-policy", "r")
    assert row.predicted == "not predicted (changes A)"
    assert row.measured == "diverged vs 0.5" and row.verdict == "refuted"
    result["twins"][0]["measured"] = {"value_gap": None, "status": "diverged"}  # as in the file
    result["twins"][0]["control"] = {"value_gap": None, "status": "diverged"}
    (row,) = twin_rows(result, "s", "diverged:off-policy", "r")
    assert row.measured == "diverged vs diverged"
    (row,) = twin_rows({"label": "learning", "twins": []}, "s", "learning", "r")
    assert row.verdict == "untested" and row.intervention == "none"


def test_an_off_policy_twin_row_shows_the_eig_min_real_intervals_its_verdict_reads(tmp_path):
    from tdlens.sweeps.atlas.twins import twin_rows

    result = _fake_explain(tmp_path, "diverged:off-policy", 3.8e23, 7261.0)
    result["twins"][0]["eig_min_real"] = {"lo": 1.98e-4, "hi": 3.13e-4, "iter": 79}
    result["twins"][0]["control_eig_min_real"] = {"lo": -1.76e-3, "hi": -1.45e-3, "iter": 79}
    (row,) = twin_rows(result, "s", "diverged:off-policy", "r")
    assert row.measured.startswith("eig_min_real [0.000198, 0.000313] vs [-0.00176, -0.00145]")
    assert "value_gap 3.8e+23 vs 7261" in row.measured


def test_regeneration_keeps_the_hand_written_tail(seeded_sweep, tmp_path):
    docs = tmp_path / "atlas.md"
    tail = f"{HAND_WRITTEN}\n\n## Is moving-target ever the cause?\n\nEvidence.\n"
    docs.write_text("# old generated page\n\n" + tail)
    write_atlas(seeded_sweep, docs)
    page = docs.read_text()
    assert page.endswith("\n" + tail) and "old generated page" not in page
    write_atlas(seeded_sweep, docs)
    assert docs.read_text() == page  # idempotent: the tail is kept once


def test_the_shipped_atlas_page_keeps_its_evidence_section():
    page = (ROOT / "docs" / "atlas.md").read_text()
    generated, _, tail = page.partition(HAND_WRITTEN)
    assert "## Is moving-target ever the cause?" in tail
    assert generated.startswith("# The regime atlas")
    assert "## Label agreement over seeds" in generated
    assert "## What each label's intervention twin did" in generated


def test_atlas_explain_bad_input_exits_2(seeded_sweep, tmp_path):
    docs = tmp_path / "a.md"
    for flag in (["--explain-iters", "0"], ["--jobs", "0"]):
        res = cli.invoke(app, ["atlas", str(seeded_sweep), "--docs", str(docs), "--explain", *flag])
        assert res.exit_code == 2 and flag[0] in res.output, res.output
    assert not docs.exists()


def test_atlas_explain_runs_real_twins_and_reuses_them(seeded_sweep, tmp_path):
    """`tdlens atlas --explain` on a copy of the tiny sweep runs `tdlens explain` (2
    iterations; a diverged label from the start for the run's 3) in each representative
    run; the page's verdicts are explain.json's; a second call reuses the files (their
    twins are not made again)."""
    sweep_dir = tmp_path / seeded_sweep.name
    shutil.copytree(seeded_sweep, sweep_dir)
    docs = tmp_path / "atlas.md"
    args = ["atlas", str(sweep_dir), "--docs", str(docs), "--explain", "--explain-iters", "2"]
    env = {"TDLENS_CATALOG": str(tmp_path / "c.sqlite")}
    res = cli.invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    page = docs.read_text()
    reps = _representatives(read_sweep(sweep_dir, need_step=True).points)
    for label, p in reps.items():
        result = json.loads((p.record.path / "explain.json").read_text())
        assert result["label"] == label
        if label.startswith("diverged"):
            assert result["iteration"] == 0 and result["start"] == "initial"
            assert result["iters"] == p.record.outer_iters == 3
        else:
            assert result["iters"] == 2 and result["start"] == "checkpoint"
        for twin in result["twins"]:
            assert f"| {label} | {twin['verdict']} | {run_values(p)} |" in page
    twins_made = sorted((sweep_dir / "runs").glob("*.explain"))
    assert len(twins_made) == len(reps)
    res = cli.invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    assert sorted((sweep_dir / "runs").glob("*.explain")) == twins_made
    assert docs.read_text() == page
