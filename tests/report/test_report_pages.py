"""What the pages show (issue 15): honest axes, the verdict card, the settings table and
the figure specs, against hand calculations stated beside each number."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_report_fixtures import frozen_run, healthy_run

from tdlens.pages.fmt import fmt
from tdlens.pages.honest import FLAT_NOTE, MIN_REL_SPAN, change_of, y_range
from tdlens.pages.plots import int_dtick, over_iterations, plot_theory, sparkline
from tdlens.report import build_report, render_json, render_md
from tdlens.report.build import PAGE_SECTIONS, probe_section
from tdlens.report.card import Verdict, next_sentence, tail_mean
from tdlens.report.verdicts import NextStep
from tdlens.rundir.read import Table
from tdlens.sweeps.html import curves_figure, heatmap_figure

# --------------------------------------------------------------------------- honest axes


def test_a_steady_ramp_is_a_change_with_zero_noise():
    """y = 2 + 0.5 t, n = 40: k = 10, trend = 0.5 (mean t[30:40] - mean t[0:10]) = 0.5 x 30
    = 15 (hand); successive differences are all 0.5, so se = 0 and the ramp is no noise."""
    c = change_of(2 + 0.5 * np.arange(40.0))
    assert c.trend == pytest.approx(15.0) and c.se == 0.0 and not c.flat and c.note == ""


def test_alternating_noise_without_trend_is_flat():
    """y = 5 + (-1)^t, n = 40: the first and last 10 points each hold five +1 and five -1,
    so trend = 0 (hand); diffs are +-2, so se > 0 and 0 <= 2 se."""
    c = change_of(5 + (-1.0) ** np.arange(40))
    assert c.trend == 0.0 and c.se > 0 and c.flat and c.note == FLAT_NOTE


@pytest.mark.parametrize(("slope", "flat"), [(0.001, True), (0.1, False)])
def test_a_trend_counts_only_beyond_two_standard_errors(slope, flat):
    """y = (-1)^t + slope t, n = 40: trend = 30 slope (hand) against se ~ sqrt(2) x
    sqrt(2 / 10) = 0.63: 0.03 is within noise, 3.0 is not."""
    t = np.arange(40.0)
    c = change_of((-1.0) ** t + slope * t)
    assert c.trend == pytest.approx(30 * slope)
    assert 0.55 < c.se < 0.7 and c.flat is flat


def test_a_change_below_one_millionth_of_the_level_is_flat():
    """dist_action_kl of the seed run: 4.29952372e-2 plus 1e-13 ramps; span / level ~ 2e-12."""
    y = 4.29952372e-2 + 1e-13 * np.arange(16.0)
    assert change_of(y).flat


def test_the_seed_w_norm_is_drawn_flat():
    """w_norm 4.42909 -> 4.42895 (the issue): the axis spans at least MIN_REL_SPAN of the
    level, half = 0.05 x 4.42909 = 0.2214545 around mid 4.42902 (hand), so the whole
    change fills 1.4e-4 / 0.4429 = 0.03% of the axis height."""
    y = np.linspace(4.42909, 4.42895, 80)
    lo, hi = y_range(y)
    assert lo == pytest.approx(4.42902 - 0.2214545) and hi == pytest.approx(4.42902 + 0.2214545)
    assert (y.max() - y.min()) / (hi - lo) < 1e-3
    assert hi - lo >= MIN_REL_SPAN * 4.42909


def test_a_real_change_fills_its_axis():
    """y in [0, 10]: span 10 padded by 5% each side: (-0.5, 10.5) (hand); constant 0: (-1, 1)."""
    assert y_range(np.linspace(0.0, 10.0, 11)) == pytest.approx((-0.5, 10.5))
    assert y_range(np.zeros(5)) == (-1.0, 1.0)
    assert y_range(np.array([np.nan])) is None


def test_sparklines_are_honest_too():
    """The seed's w_norm as a 26 px sparkline: the polyline spans < 1 px; a noisy flat
    series says so in its tooltip."""
    t = np.arange(80.0)
    svg = sparkline(t, np.linspace(4.42909, 4.42895, 80))
    ys = [float(p.split(",")[1]) for p in svg.split('points="')[1].split('"')[0].split()]
    assert max(ys) - min(ys) < 1.0 and FLAT_NOTE not in svg
    assert f"<title>{FLAT_NOTE}</title>" in sparkline(t, 5 + (-1.0) ** t)
    assert sparkline(t, np.full(80, np.nan)) == ""


@pytest.mark.parametrize(("span", "dtick"), [(5, 1), (79, 10), (1000, 100), (0, 1)])
def test_iteration_ticks_are_integers(span, dtick):
    """dtick = the 1-2-5 step with at most 10 ticks (hand: 79 / 10 = 7.9 -> 10)."""
    assert int_dtick(span) == dtick


def test_figures_over_iterations_are_labelled_and_toggle_log():
    fig = over_iterations(
        "w_norm", "w_norm (norm)", [{"x": [0, 1, 2], "y": [1.0, 1.0, 1.0]}], np.ones(3)
    )
    layout = fig["layout"]
    assert layout["title"]["text"] == f"w_norm: {FLAT_NOTE}"
    assert layout["xaxis"]["title"]["text"] == "iteration (0-based)"
    assert layout["xaxis"]["tickformat"] == "d" and layout["yaxis"]["title"]["text"]
    labels = [b["label"] for b in layout["updatemenus"][0]["buttons"]]
    assert labels == ["linear", "log"] and layout["legend"]["y"] < 0  # below the plot


def test_theory_band_is_drawn_when_the_overlay_gives_one():
    """The overlay's band (pred_iters, band lo/hi, as theory_overlay gives it) becomes one
    closed polygon, x forward then back; then the mean path, then the measured points."""
    theory = {
        "value_gap": [0.5, 0.3],
        "measured_iters": [0, 10],
        "pred_iters": [0.0, 5.0, 10.0],
        "band": {"lo": [0.4, 0.3, 0.2], "hi": [0.6, 0.5, 0.4]},
        "curves": {"expected dynamics (mean path)": [0.5, 0.4, 0.3]},
    }
    band, mean_path, measured = plot_theory(theory)["data"]
    assert band["fill"] == "toself" and band["x"] == [0, 5, 10, 10, 5, 0]
    assert band["y"] == [0.6, 0.5, 0.4, 0.2, 0.3, 0.4]
    assert mean_path["y"] == [0.5, 0.4, 0.3] and measured["mode"] == "markers"
    assert measured["x"] == [0, 10] and measured["y"] == [0.5, 0.3]


# --------------------------------------------------------------------------- sweep figures


def test_compare_curves_keep_coinciding_runs_apart():
    """Four runs with the same curve: each a different colour, dash and marker, and the
    earlier ones wider, so all four stay visible."""
    x, y = np.arange(6.0), np.linspace(1, 2, 6)
    fig = curves_figure([(f"run{i}", x, y) for i in range(4)], "td_loss")
    styles = {(t["line"]["color"], t["line"]["dash"], t["marker"]["symbol"]) for t in fig["data"]}
    widths = [t["line"]["width"] for t in fig["data"]]
    assert len(styles) == 4 and widths == sorted(widths, reverse=True)
    assert fig["layout"]["xaxis"]["dtick"] == 1


def test_heatmap_labels_are_dark_on_light():
    z = np.array([[0.1, 0.9], [0.2, np.nan]])
    fig = heatmap_figure(z, [1.0, 1000.0], [0.1, 0.5], "alpha_w", "beta", "value_gap")
    notes = fig["layout"]["annotations"]
    assert len(notes) == 3 and {n["font"]["color"] for n in notes} == {"#000"}
    assert fig["layout"]["xaxis"]["ticktext"] == ["1", "1000"]


# --------------------------------------------------------------------------- the card


def test_tail_mean_interval():
    """x = 1..8: k = 2, mean of (7, 8) = 7.5; every diff is 1 so sigma = 0 (hand)."""
    assert tail_mean(np.arange(1.0, 9.0)) == (7.5, 7.5, 7.5)
    mean, lo, hi = tail_mean(5 + (-1.0) ** np.arange(40))
    assert mean == 5.0 and hi - mean == pytest.approx(mean - lo) and hi > mean


def test_frozen_card_says_why_and_what_to_do(tmp_path):
    """The seed's situation (fixtures): fastest = 1 / (0.08 x 7.4e-4) = 16,892 -> ~17,000;
    needed alpha_w = 0.08 x 16,892 x 3 / 20 = 202.7; half the critical 1.2 = 0.6, at which
    the fastest mode needs 16,892 x 0.08 / 0.6 = 2,252 iterations, x 3 = ~6,800; keeping
    alpha_w needs 3 x 16,892 = ~51,000 (all by hand)."""
    r = build_report(frozen_run().write(tmp_path / "run"))
    v = r.verdict
    # the number the card shows, read back from the run directory (hand value above)
    shown = {k.name: k.value for k in v.key_numbers}
    assert shown["fastest_timescale"] == pytest.approx(16891.9, abs=0.1)
    assert v.regime == "frozen" and v.health == "WARN"
    assert "~17,000 iterations" in v.why and "the run has 20" in v.why
    assert v.next.startswith("Raise alpha_w from 0.08 to 0.6 and outer_iters >= ~6,800")
    assert "alpha_w = 202.7" in v.next and "outer_iters >= ~51,000" in v.next
    names = [k.name for k in v.key_numbers]
    assert names[:4] == ["fastest_timescale", "critical_alpha_w", "eig_min_real", "median_rel_step"]


def test_a_capped_raise_reads_as_a_first_step():
    """When the 10x cap stops short of the alpha_w the run needs (the seed run's numbers
    while its advice did not help, before the probes' closed-form bar_phi: 0.8 next, 53
    needed), the card says the raise is stepwise, not the fix."""
    step = NextStep(
        "critic_frozen",
        "critic frozen",
        {
            "alpha_w_next": 0.8,
            "alpha_w_needed": 53.43,
            "alpha_w_critical": 2849.0,
            "run_iters": 80,
            "outer_iters_at_alpha_w": 53000.0,
        },
    )
    text = next_sentence([step], 0.08)
    assert text.startswith("Raise alpha_w stepwise (its sampling noise grows with it) from 0.08")
    assert "to 0.8, stable up to alpha_w = 2849" in text and "alpha_w = 53.43" in text


def test_card_leads_every_report_format(tmp_path):
    r = build_report(frozen_run().write(tmp_path / "run"))
    md = render_md(r)
    assert md.index("**Verdict: frozen**") < md.index("## Run Info")
    verdict = json.loads(render_json(r))["verdict"]
    assert list(verdict)[:4] == ["regime", "health", "why", "next"]
    assert verdict["reasons"] == r.health_reasons and verdict["status"] == "complete"
    assert {**Verdict(**{**r.verdict.__dict__}).as_dict(), "advice": r.advice} == verdict


def test_probe_intervals_come_from_lo_hi_columns(tmp_path):
    """A stability probe that writes critical_step_lo/_hi: critical_alpha_w's interval is
    scaled by critical_alpha_w / critical_step = 1 (fixtures: both 1.2)."""
    run = frozen_run()
    run.set_probe("stability_probe", "critical_step_lo", 1.0)
    run.set_probe("stability_probe", "critical_step_hi", 1.5)
    run.set_probe("stability_probe", "fastest_timescale_lo", 15000.0)
    run.set_probe("stability_probe", "fastest_timescale_hi", 19000.0)
    run.set_probe("stability_probe", "eig_min_real_lo", -3e-5)
    run.set_probe("stability_probe", "eig_min_real_hi", 2e-5)
    run.set_probe("stability_probe", "eig_min_real_is_bound", 1.0)
    v = build_report(run.write(tmp_path / "run")).verdict
    by = {k.name: k for k in v.key_numbers}
    assert (by["eig_min_real"].lo, by["eig_min_real"].hi) == (-3e-5, 2e-5)
    assert "certified lower bound" in by["eig_min_real"].note
    assert (by["critical_alpha_w"].lo, by["critical_alpha_w"].hi) == (1.0, 1.5)
    assert (by["fastest_timescale"].lo, by["fastest_timescale"].hi) == (15000.0, 19000.0)
    # the why reads aloud (issue 24): the interval stays in the key numbers
    assert "~17,000 iterations" in v.why and "15,000" not in v.why
    assert "alpha_w = 1.2 [1, 1.5]" in v.next


# --------------------------------------------------------------------------- settings


def test_constant_settings_leave_the_metric_tables():
    rows = tuple(
        {"iter": float(i), "batch_size": 4096.0, "tol": 1e-7, "ridge": float(i), "w_gap": 0.1 * i}
        for i in range(4)
    )
    sec = probe_section("toy", Table(("iter", "batch_size", "tol", "ridge", "w_gap"), rows))
    assert sec.settings == {"batch_size": 4096.0, "tol": 1e-7}
    assert set(sec.stats) == {"ridge", "w_gap"}  # a setting that changed stays a metric
    assert sec.iters == (0, 3) and "iter" not in sec.stats


def test_report_has_one_settings_table(tmp_path):
    r = build_report(healthy_run().write(tmp_path / "run"))
    md = render_md(r)
    assert md.count("### settings (constant over the run)") == 1
    assert all(p.name in {s[0] for s in r.settings} for p in r.probes if p.settings)
    assert r.settings and not re.search(r"^\| iter \| [-\d]", md, flags=re.M)  # no iter row


def test_learning_card_quotes_the_regime_numbers(tmp_path):
    """healthy_run learns (fixtures): the why says value_gap's fall in words with its two
    ends from label_regime's evidence (the rest stays in regime.evidence), the next is an
    action even with no rule fired."""
    r = build_report(healthy_run().write(tmp_path / "run"))
    v = r.verdict
    ev = r.regime.evidence
    assert v.regime == "learning" and v.why == (
        f"The critic is learning: value_gap fell from {fmt(ev['value_gap_first'])} to "
        f"{fmt(ev['value_gap_last'])} and is still falling."
    )
    assert v.next.startswith("Keep these settings")


def test_md_and_html_pages_show_their_sections_in_one_order(tmp_path):
    """Both renderers iterate build.PAGE_SECTIONS: every ``## `` heading of the Markdown
    page is an ``<h2>`` of the HTML page, in the same order (the HTML adds the card's
    Verdict and the Settings heading), with a traceback and a file problem so that every
    section shows."""
    from tdlens.report.render_html import render_html

    d = healthy_run().write(tmp_path / "run")
    r = build_report(d)
    r.status["traceback"] = "Traceback: boom"
    r.problems.append("probes/x.csv: unreadable")
    md = re.findall(r"^## (.+)$", render_md(r), re.M)
    html = iter(re.findall(r"<h2>(.*?)</h2>", render_html(r)))
    assert len(md) == len(PAGE_SECTIONS) - 1 and md[-1] == "Files"  # the card has no ##
    assert all(any(h == m for h in html) for m in md), md
