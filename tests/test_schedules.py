"""Step-size schedules (issue 27, docs/model.md §4): eta_t against hand values, the config
section and its errors, unchanged hashes and numbers of constant runs, resume under an
annealed schedule, and the predictions that follow the schedule."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import curves
from tdlens import learner
from tdlens.cli import app
from tdlens.config import (
    ConfigError,
    StepSchedule,
    eta_t,
    load_config,
    shipped_configs,
)
from tdlens.learner import Params, project
from tdlens.rundir.files import read_csv_rows
from tdlens.runs.runner import Runner
from test_config import SHIPPED_HASHES

FAST = ["probes.enabled=false", "env.feature_dim=32", "env.actor_feature_dim=8"]


def _cfg(*extra: str):
    return load_config("configs/sanity.yaml", [*FAST, *extra])


# ---------------------------------------------------------------- eta_t


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (StepSchedule(), [2.0, 2.0, 2.0, 2.0, 2.0]),
        # 2 / (1 + t / 4): 2, 1.6, 4/3, 8/7, 1
        (StepSchedule(kind="inverse_time", t0=4.0), [2.0, 1.6, 4 / 3, 8 / 7, 1.0]),
        # 2 * 0.5^t
        (StepSchedule(kind="exponential", decay=0.5), [2.0, 1.0, 0.5, 0.25, 0.125]),
        # x0.1 from t = 1 on, x0.01 from t = 3 on
        (StepSchedule(kind="step", factor=0.1, milestones=(1, 3)), [2.0, 0.2, 0.2, 0.02, 0.02]),
        # 2 (0.1 + 0.9 (1 + cos(pi t / 2)) / 2) up to t = period = 2, then 0.2
        (
            StepSchedule(kind="cosine", final_fraction=0.1, period=2),
            [2.0, 2 * (0.1 + 0.45), 0.2, 0.2, 0.2],
        ),
    ],
)
def test_eta_t_matches_hand_values(schedule, expected):
    t = np.arange(5)
    np.testing.assert_allclose(eta_t(schedule, 2.0, t), expected, rtol=1e-15)
    for k in range(5):
        assert eta_t(schedule, 2.0, k) == pytest.approx(expected[k], rel=1e-15)
        assert isinstance(eta_t(schedule, 2.0, k), float)


def test_kind_alone_is_a_complete_schedule_with_defaults_from_outer_iters():
    cfg = load_config(None, ["outer_iters=40", "schedules.alpha_w.kind=inverse_time"])
    assert cfg.schedules.alpha_w.t0 == 4.0  # outer_iters / 10
    assert cfg.step_sizes(0) == (cfg.alpha_w, cfg.alpha_pi)
    assert cfg.step_sizes(4)[0] == pytest.approx(cfg.alpha_w / 2)
    for kind in ("exponential", "step", "cosine"):
        cfg = load_config(None, ["outer_iters=40", f"schedules.alpha_pi.kind={kind}"])
        # each default ends the run at 1% of the base step
        assert eta_t(cfg.schedules.alpha_pi, 1.0, 40) == pytest.approx(0.01), kind
    cfg = load_config(None, ["outer_iters=40", "schedules.alpha_w.kind=step"])
    assert cfg.schedules.alpha_w.milestones == (20, 30)
    # the resolved schedule is what config.json keeps, and it reads back unchanged
    from tdlens.config import parse_config

    assert parse_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("schedules.alpha_w.kind=linear", "schedules.alpha_w.kind"),
        ("schedules.alpha_pi.decay=1.5", "schedules.alpha_pi.decay"),
        ("schedules.alpha_w.decay=0.5", "schedules.alpha_w.decay"),  # kind constant
        ("schedules.alpha_w.milestones=[5, 3]", "schedules.alpha_w.milestones"),
        ("schedules.alpha_w.t0=0", "schedules.alpha_w.t0"),
        ("schedules.alpha_w.kindd=step", "schedules.alpha_w.kindd"),
    ],
)
def test_bad_schedules_exit_2_naming_the_key(tmp_path, override, key):
    extra = ["schedules.alpha_w.kind=step"] if "milestones" in override else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [*extra, override])
    args = ["run", "sanity", "--output-dir", str(tmp_path)]
    for o in (*extra, override):
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and key in res.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- constant runs unchanged


def test_a_schedule_changes_the_hash_its_default_does_not():
    """The default constant schedules leave every shipped hash as recorded before schedules
    existed (test_config.SHIPPED_HASHES, the one record); any other schedule counts."""
    found = {p.stem: load_config(p).config_hash() for p in shipped_configs().glob("*.yaml")}
    assert found == {k: v for k, v in SHIPPED_HASHES.items() if k != "defaults"}
    annealed = load_config("configs/sanity.yaml", ["schedules.alpha_w.kind=inverse_time"])
    assert annealed.config_hash() != SHIPPED_HASHES["sanity"]


def _update_before_schedules(cfg, params, G_w, G_theta):
    """learner.update as it was before schedules (commit 15575d6), verbatim."""
    s = cfg.step_scale
    w = params.w + cfg.alpha_w * s * G_w
    theta_pi = params.theta_pi + cfg.alpha_pi * s * G_theta
    theta_mu = (1.0 - cfg.beta) * params.theta_mu + cfg.beta * theta_pi
    return Params(
        theta_mu=project(theta_mu, cfg.theta_radius),
        theta_pi=project(theta_pi, cfg.theta_radius),
        w=w,
    )


def test_constant_runs_are_bit_identical_to_the_update_before_schedules(tmp_path, monkeypatch):
    cfg = _cfg("outer_iters=4", "theta_mu_offset_scale=0.3")
    Runner(cfg, tmp_path / "now").run()
    # a step schedule whose first milestone lies beyond the run multiplies by 0.1^0 = 1
    late = _cfg(
        "outer_iters=4",
        "theta_mu_offset_scale=0.3",
        "schedules.alpha_w.kind=step",
        "schedules.alpha_w.milestones=[10]",
    )
    Runner(late, tmp_path / "late").run()
    monkeypatch.setattr(learner, "update", _update_before_schedules)
    Runner(cfg, tmp_path / "before").run()
    assert curves(tmp_path / "now") == curves(tmp_path / "before")
    assert curves(tmp_path / "late") == curves(tmp_path / "now")
    rows = read_csv_rows(tmp_path / "now" / "learning_curves.csv")
    assert [r["alpha_w_t"] for r in rows] == [cfg.alpha_w] * 4
    assert [r["alpha_pi_t"] for r in rows] == [cfg.alpha_pi] * 4


# ---------------------------------------------------------------- annealed runs


def _stop_at(runner: Runner, n_stop: int) -> None:
    import signal

    def hook(p):
        if p.n == n_stop:
            runner._stop_signal = signal.SIGTERM

    runner.on_progress = hook


def test_annealed_run_writes_its_steps_and_resumes_bit_identically(tmp_path):
    cfg = _cfg(
        "outer_iters=9",
        "checkpoint_every=4",
        "theta_mu_offset_scale=0.3",
        "schedules.alpha_w.kind=exponential",
        "schedules.alpha_w.decay=0.7",
        "schedules.alpha_pi.kind=cosine",
    )
    Runner(cfg, tmp_path / "full").run()
    rows = read_csv_rows(tmp_path / "full" / "learning_curves.csv")
    n = np.arange(9)
    np.testing.assert_array_equal([r["alpha_w_t"] for r in rows], cfg.alpha_w * 0.7**n)
    expected_pi = eta_t(cfg.schedules.alpha_pi, cfg.alpha_pi, n)
    np.testing.assert_allclose([r["alpha_pi_t"] for r in rows], expected_pi, rtol=1e-15)
    # the annealing changed the numbers (the constant twin differs from iteration 1 on)
    Runner(_cfg("outer_iters=9", "theta_mu_offset_scale=0.3"), tmp_path / "const").run()
    full, const = curves(tmp_path / "full"), curves(tmp_path / "const")
    w_norm = full[0].index("w_norm")
    assert full[1][w_norm] == const[1][w_norm] and full[2][w_norm] != const[2][w_norm]
    r = Runner(cfg, tmp_path / "cut")
    _stop_at(r, 5)
    assert r.run().status == "incomplete"
    assert Runner(None, tmp_path / "cut", resume=True).run().status == "complete"
    assert curves(tmp_path / "cut") == full


def test_an_old_run_without_the_step_columns_resumes_and_reads(tmp_path):
    """A run directory written before schedules (no alpha_w_t, alpha_pi_t columns) keeps
    its table on resume, and its rows read as before."""
    cfg = _cfg("outer_iters=6", "checkpoint_every=3")
    Runner(cfg, tmp_path / "full").run()
    d = tmp_path / "old"
    r = Runner(cfg, d)
    _stop_at(r, 3)
    r.run()
    path = d / "learning_curves.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, c in enumerate(rows[0]) if c not in ("alpha_w_t", "alpha_pi_t")]
    path.write_text("".join(",".join(r[i] for i in keep) + "\n" for r in rows))
    assert Runner(None, d, resume=True).run().status == "complete"
    old = read_csv_rows(path)
    assert len(old) == 6 and "alpha_w_t" not in old[0]
    drop = ("iter_time_s", "alpha_w_t", "alpha_pi_t")
    assert curves(d, drop) == curves(tmp_path / "full", drop)
    assert math.isfinite(old[-1]["w_norm"])


def test_report_shows_the_schedules_in_run_info_and_the_card(tmp_path):
    from tdlens.report import write_report

    cfg = _cfg("outer_iters=3", "schedules.alpha_w.kind=inverse_time", "schedules.alpha_w.t0=2")
    Runner(cfg, tmp_path / "annealed", write_report=write_report).run()
    md = (tmp_path / "annealed" / "run_report.md").read_text()
    # 0.1 / (1 + 2 / 2) = 0.05 at the last iteration
    line = "alpha_w: inverse_time (t0=2), 0.1 -> 0.05 at iteration 2; alpha_pi: constant 0.05"
    assert f"- schedules: {line}" in md and f"> **Steps:** {line}" in md
    html = (tmp_path / "annealed" / "run_report.html").read_text()
    assert "<b>Steps:</b>" in html and "inverse_time (t0=2)" in html
    Runner(_cfg("outer_iters=2"), tmp_path / "const", write_report=write_report).run()
    md = (tmp_path / "const" / "run_report.md").read_text()
    assert "- schedules: alpha_w: constant 0.1; alpha_pi: constant 0.05" in md
    assert "**Steps:**" not in md


# ---------------------------------------------------------------- predictions


def _brute_force(A, e0, U, rows, etas, B):
    """float64 twin of the scheduled prediction by explicit matrix products:
    ``mid_j = RMS rows Phi(j, 0) e0 / sqrt(D)`` and ``noise_j^2 = (1/B) sum_{i<j} eta_i^2
    ||rows Phi(j, i+1) U||_F^2 / (n D)``, ``Phi(j, i) = (I - eta_{j-1} A) ... (I - eta_i A)``."""
    n, D = rows.shape
    steps = len(etas)

    def phi(j, i):
        out = np.eye(D)
        for k in range(i, j):
            out = (np.eye(D) - etas[k] * A) @ out
        return out

    mid = [np.sqrt(np.mean((rows @ phi(j, 0) @ e0) ** 2) / D) for j in range(steps + 1)]
    var = [
        sum(etas[i] ** 2 * np.sum((rows @ phi(j, i + 1) @ U) ** 2) for i in range(j)) / (B * n * D)
        for j in range(steps + 1)
    ]
    return np.array(mid), np.sqrt(var)


@pytest.mark.parametrize("eta", [0.004, 0.3])  # kappa < 1/2 (series) and > 1/2 (step loop)
def test_scheduled_prediction_matches_explicit_products(eta):
    from tdlens.probes import expected as ex

    rng = np.random.default_rng(7)
    D, n, C, B, steps = 6, 40, 5, 3, 12
    A = np.eye(D) + 0.3 * rng.standard_normal((D, D))
    e0, U = rng.standard_normal(D), rng.standard_normal((D, C))
    rows = rng.standard_normal((n, D))
    etas = eta * eta_t(StepSchedule(kind="inverse_time", t0=3.0), 1.0, 1 + np.arange(steps))
    assert ex._binomial(A, float(etas.max()), steps) == (eta < 0.01)
    pred = ex.predict_scheduled(A, e0, U, rows, etas, B, est=0.0)
    mid, noise = _brute_force(A, e0, U, rows, etas, B)
    np.testing.assert_allclose(pred.mid, mid, rtol=1e-10)
    np.testing.assert_allclose(pred.noise, noise, rtol=1e-10, atol=1e-14)
    # the fallback's two forms, covariance and factor, agree (each run on its own)
    if eta > 0.01:
        rows_s = rows[:: max(1, n // ex.NOISE_ROWS)]
        factored = ex._noise_factored(A, U, rows_s, etas) / B
        np.testing.assert_allclose(np.sqrt(factored), noise, rtol=1e-10, atol=1e-14)
    # constant etas reduce to the constant path
    const = ex.predict(A, e0, U, rows, eta, B, steps, est=0.0)
    again = ex.predict_scheduled(A, e0, U, rows, np.full(steps, eta), B, est=0.0)
    np.testing.assert_allclose(again.mid, const.mid, rtol=1e-10)
    np.testing.assert_allclose(again.noise, const.noise, rtol=1e-10)


NOISE_FLOOR = [
    "env.feature_dim=64",
    "alpha_w=500",
    "probes.every=15",
    "probes.fixed_point.batch_size=16384",
    "probes.stability.enabled=false",
    "probes.distribution.enabled=false",
    "probes.q_kernel.enabled=false",
    "probes.rho_audit.enabled=false",
]
"""configs/regime_noise_floor.yaml at D = 64 (alpha_w 500, below its critical step there):
value_gap sits at its noise floor from the second probe on. The probe batch of 16384
steps makes the w# error est = value_noise_floor / 2 (~0.0045) half the constant-step
floor value_gap_floor (~0.0093), so a value_gap below that floor is measurable."""


def _tail(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the probes' value_gap over the run's second half."""
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def test_annealing_goes_below_the_constant_floor_inside_its_predicted_band(tmp_path):
    from tdlens.report.theory import expected_dynamics
    from tdlens.rundir.read import load_run

    runs = {}
    for name, extra in (("constant", []), ("annealed", ["schedules.alpha_w.kind=inverse_time"])):
        cfg = load_config("configs/regime_noise_floor.yaml", [*NOISE_FLOOR, *extra])
        assert Runner(cfg, tmp_path / name).run().status == "complete"
        runs[name] = load_run(tmp_path / name)
    out = {}
    for name, data in runs.items():
        fp = data.probe("fixed_point_probe")
        late = fp.iters() >= data.cfg.outer_iters / 2
        gap = fp.values("value_gap")
        floor, est = fp.last("value_gap_floor"), fp.last("value_noise_floor") / 2
        out[name] = (*_tail(gap[late]), math.hypot(floor, est), expected_dynamics(data))
    c_mean, c_se, c_floor, c_dyn = out["constant"]
    a_mean, a_se, a_floor, a_dyn = out["annealed"]
    # value_gap_floor is the constant base step's in both runs (docs/metrics.md)
    assert a_floor == pytest.approx(c_floor, rel=0.05)  # policies differ a little
    # the constant twin stays at its predicted floor, inside its band throughout
    assert 0.75 < c_mean / c_floor < 1.33, (c_mean, c_floor)
    assert c_dyn.inside.all()
    # the annealed run ends below the constant-step floor by more than 2 standard errors
    assert a_mean < c_mean - 2 * math.hypot(a_se, c_se), (a_mean, a_se, c_mean, c_se)
    assert a_mean < c_floor - 2 * a_se
    # ... and inside the band predicted from its first probe, which follows the schedule
    assert a_dyn.inside.all() and a_dyn.inside.size >= 7
    assert a_dyn.mid[-1] < 0.1 * c_dyn.hi[-1] and a_dyn.hi[-1] < c_dyn.hi[-1]
    # the report's theory overlay says the band follows the schedule (constant: nothing)
    from tdlens.report.render_md import theory_lines
    from tdlens.report.theory import theory_overlay

    said = theory_lines(theory_overlay(runs["annealed"]))[0]
    assert said.startswith("- the band follows schedules.alpha_w = inverse_time (t0=12)")
    assert "schedule" not in theory_overlay(runs["constant"])
