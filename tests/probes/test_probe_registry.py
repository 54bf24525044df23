"""The probe registry: a probe registered from this file alone is configured, scheduled,
run, written, loaded, reported and plotted, with no change anywhere else."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from tdlens.config import ConfigError, load_config
from tdlens.pages import plots
from tdlens.probes import registry
from tdlens.probes.registry import ProbeSpec, RoundContext
from tdlens.report import write_report
from tdlens.rundir.read import load_run
from tdlens.runs.runner import Runner, curve_columns
from tdlens.seeding import stream

OTHERS_OFF = [f"probes.{s}.enabled=false" for s in registry.sections()]
"""Every built-in probe off (read before the toy registers)."""


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    scale: float = 2.0


def run_toy(ctx: RoundContext) -> None:
    """toy_value = scale * n; toy_draw from the toy's own stream; a running count in state."""
    scale = ctx.cfg.probes.section("toy").scale
    count = ctx.state.get("toy_count")
    count = np.array([1.0]) if count is None else count + 1.0
    ctx.state["toy_count"] = count
    ctx.out.rows["toy_probe"] = {
        "toy_value": scale * ctx.n,
        "toy_draw": float(stream(ctx.cfg.seed, "probe_toy", ctx.n).random()),
        "toy_count": float(count[0]),
    }
    ctx.out.arrays[f"toy_{ctx.n:04d}.npy"] = np.arange(3.0) * ctx.n


@pytest.fixture
def toy():
    spec = registry.register(
        ProbeSpec(
            name="toy_probe",
            section="toy",
            run=run_toy,
            streams=("probe_toy",),
            summary={"toy_summary": "toy_value"},
            key_series=(("toy_value", None),),
            doc="a toy probe",
            config=ToyConfig,
        )
    )
    yield spec
    registry.unregister("toy_probe")


def test_a_probe_registered_from_a_test_file_runs_end_to_end(toy, tmp_path):
    overrides = ["outer_iters=6", "probes.every=2", "probes.toy.scale=3", *OTHERS_OFF]
    cfg = load_config("configs/sanity.yaml", overrides)
    with pytest.raises(ConfigError, match=r"probes\.toyy"):
        load_config("configs/sanity.yaml", ["probes.toyy.scale=3"])
    d = tmp_path / "run"
    assert Runner(cfg, d, write_report=write_report).run().status == "complete"
    data = load_run(d)
    # scheduled and timed: rounds at iterations 1, 3, 5, each with its toy_s
    assert list(data.rounds.values("iter")) == [1, 3, 5]
    assert np.all(data.rounds.values("toy_s") >= 0)
    # written and loaded: its table, its arrays, its state across rounds
    toy_table = data.probe("toy_probe")
    assert list(toy_table.values("toy_value")) == [3.0, 9.0, 15.0]
    assert list(toy_table.values("toy_count")) == [1.0, 2.0, 3.0]
    assert np.array_equal(np.load(d / "probes" / "toy_0003.npy"), [0.0, 3.0, 6.0])
    # copied into the learning curves where it ran, empty elsewhere
    assert "toy_summary" in curve_columns() and data.curves.has("toy_summary")
    summary = data.curves.values("toy_summary")
    assert list(summary[[1, 3, 5]]) == [3.0, 9.0, 15.0] and np.isnan(summary[[0, 2, 4]]).all()
    # reported: its own probe section, no missing-value complaint about it
    md = (d / "run_report.md").read_text()
    assert "### toy_probe" in md and "| toy_value |" in md
    report = json.loads((d / "run_report.json").read_text())
    checks = {c["name"]: c for c in report["health"]["checks"]}
    assert checks["probe_missing_values"]["verdict"] == "PASS"
    # plotted: with every other probe off, the key-series figure is the toy's alone
    assert plots.plot_key_probes(data) is not None


def test_a_resumed_run_restores_the_probe_state(toy, tmp_path):
    cfg = load_config(
        "configs/sanity.yaml",
        ["outer_iters=8", "probes.every=2", "checkpoint_every=4", *OTHERS_OFF],
    )
    Runner(cfg, tmp_path / "full").run()
    r = Runner(cfg, tmp_path / "cut")
    r.on_progress = lambda p: setattr(r, "_stop_signal", 15) if p.n == 4 else None
    assert r.run().status == "incomplete"
    assert Runner(None, tmp_path / "cut", resume=True).run().status == "complete"
    full = (tmp_path / "full" / "probes" / "toy_probe.csv").read_text()
    assert (tmp_path / "cut" / "probes" / "toy_probe.csv").read_text() == full
    assert "4.0" in full.splitlines()[-1]  # toy_count reached 4 across the resume


def test_without_the_toy_nothing_of_it_remains(tmp_path):
    assert "toy_probe" not in registry.names()
    assert "toy_summary" not in curve_columns()
    with pytest.raises(ConfigError, match=r"probes\.toy"):
        load_config("configs/sanity.yaml", ["probes.toy.scale=3"])


def test_registering_twice_or_a_taken_column_is_refused(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(toy)
    clash = ProbeSpec("other", "toy", run_toy, summary={"toy_summary": "x"})
    with pytest.raises(ValueError, match="already taken"):
        registry.register(clash)


def test_a_probe_without_a_config_section_is_refused_at_registration():
    """Not at its first round (``failed: AttributeError`` at iteration 0): a spec whose
    section ProbesConfig lacks must bring its config model, with an ``enabled`` field, and
    may not take a section that exists."""
    with pytest.raises(ValueError, match=r"no config section 'probes\.unconfigured'"):
        registry.register(ProbeSpec("unconfigured_probe", "unconfigured", run_toy))
    with pytest.raises(ValueError, match=r"no config section 'probes\.every'"):
        registry.register(ProbeSpec("every_probe", "every", run_toy))

    class NoSwitch(BaseModel):
        scale: float = 1.0

    with pytest.raises(ValueError, match="needs an 'enabled' field"):
        registry.register(ProbeSpec("unconfigured_probe", "unconfigured", run_toy, config=NoSwitch))
    with pytest.raises(ValueError, match=r"'probes\.stability' is taken"):
        registry.register(ProbeSpec("unconfigured_probe", "stability", run_toy, config=ToyConfig))
    assert "unconfigured_probe" not in registry.names()


def test_a_probe_declares_its_section_by_fields_without_a_model_class(tmp_path):
    """``config={"enabled": (bool, True), "scale": (float, 2.0)}``: the registry builds
    the section's model (so it need not import the probe's module); the section loads,
    validates and refuses unknown keys like any other."""
    spec = ProbeSpec(
        "fields_probe",
        "fields",
        run_toy,
        config={"enabled": (bool, True), "scale": (float, 2.0)},
    )
    registry.register(spec)
    try:
        cfg = load_config("configs/sanity.yaml", ["probes.fields.scale=3"])
        assert cfg.probes.section("fields").scale == 3.0 and cfg.probes.fields.enabled
        with pytest.raises(ConfigError, match=r"'probes\..*scal'"):
            load_config("configs/sanity.yaml", ["probes.fields.scal=3"])
    finally:
        registry.unregister("fields_probe")


def test_the_report_expects_the_declared_columns_of_a_new_probe(toy, tmp_path):
    """A registered probe's declared columns are the ones its report section expects:
    one it never wrote shows as missing instead of disappearing."""
    from report.test_report_fixtures import healthy_run
    from tdlens.report import build_report

    registry.unregister("toy_probe")
    registry.register(ProbeSpec(**{**toy.__dict__, "columns": ("iter", "toy_value", "toy_x")}))
    run = healthy_run()  # its toy rows hold every declared column: drop one
    for row in run.probes["toy_probe"]:
        del row["toy_x"]
    report = build_report(run.write(tmp_path / "run"))
    section = next(p for p in report.probes if p.name == "toy_probe")
    assert section.stats["toy_x"] is None and section.stats["toy_value"] is not None


def test_every_registered_probe_is_in_the_glossary():
    """docs/metrics.md has a section per probe naming every column it copies into the
    learning curves and every series the report plots."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for spec in registry.specs():
        assert f"### {spec.name}" in text, spec.name
        section = text.split(f"### {spec.name}", 1)[1].split("\n### ", 1)[0]
        named = [*spec.summary.values(), *(c for c, _ in spec.key_series)]
        missing = [c for c in named if not re.search(rf"(?<![\w.]){c}(?!\w)", section)]
        assert not missing, (spec.name, missing)
        assert spec.doc
