"""Figures of the HTML report (docs/model.md §8) as plotly specs ``{data, layout}`` (plain dicts).

Every function takes plain arrays or the run's tables and returns a spec (or None when
there is nothing to draw); :func:`tdlens.pages.kit.plot` puts it on the page. Every axis
names its quantity and unit (``iteration``: the 0-based outer iteration of the learning
curves), every figure over iterations has a linear/log button and a legend below the plot
(click a series to hide it), and every linear y axis is honest
(:mod:`tdlens.pages.honest`): at least ``MIN_REL_SPAN`` of the series' level wide, so a
negligible change is drawn flat, and titled "no change beyond noise" when it is one.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tdlens.pages.honest import FLAT_NOTE, change_of, y_range
from tdlens.pages.kit import log_linear_buttons
from tdlens.probes import registry
from tdlens.rundir.read import RunData, Table, latest_array

X_TITLE = "iteration (0-based)"
MAX_TICKS = 10
UNITS: dict[str, str] = {
    "fastest_timescale": "iterations",
    "slowest_timescale": "iterations",
    "growth_timescale": "iterations",
    "iter_time_s": "s",
    "w_sharp_drift": "norm",
    "noise_floor": "norm",
    "w_norm": "norm",
    "delta_w_norm": "norm/iteration",
}
"""Units of columns that have one; other columns are dimensionless ratios or values."""
SMALL_REL = 0.01
"""A series whose range is below this fraction of its level is titled with its change."""
TITLE = {"x": 0.01, "xanchor": "left", "y": 0.97, "yanchor": "top", "font": {"size": 14}}
LEGEND = {"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"}
"""Legends below the x axis title: never over the data."""
MARGIN = {"l": 70, "r": 40, "t": 64, "b": 40}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star")


def y_title(column: str) -> str:
    """``column`` with its unit: ``fastest_timescale (iterations)``."""
    unit = UNITS.get(column)
    return f"{column} ({unit})" if unit else column


def int_dtick(span: float) -> int:
    """An integer tick step (1, 2, 5 x 10^k) giving at most MAX_TICKS ticks over span."""
    raw = max(span, 1.0) / MAX_TICKS
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * base >= raw:
            return max(1, int(m * base))
    return max(1, int(10 * base))


def iteration_axis(x: np.ndarray) -> dict[str, Any]:
    """An x axis over iterations with integer ticks."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    span = float(x.max() - x.min()) if len(x) else 1.0
    return {
        "title": {"text": X_TITLE},
        "tickformat": "d",
        "dtick": int_dtick(span),
        "automargin": True,
        "zeroline": False,
    }


def line(x: np.ndarray, y: np.ndarray, name: str, i: int = 0, **extra: Any) -> dict[str, Any]:
    """A scatter trace of the finite points (lines and markers when there are few). The
    name is HTML-escaped: plotly reads tags in trace names (a run called ``a<i>`` would
    turn italic) and decodes the entities."""
    name = html.escape(name, quote=False)
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    trace = {
        "type": "scatter",
        "x": x[ok].tolist(),
        "y": y[ok].tolist(),
        "name": name,
        "mode": "lines+markers" if ok.sum() <= 60 else "lines",
        "line": {"color": COLORS[i % len(COLORS)], "width": 2},
        "marker": {"size": 6},
        "hovertemplate": f"{name}<br>iteration %{{x}}<br>%{{y:.6g}}<extra></extra>",
    }
    trace.update(extra)
    return trace


def over_iterations(
    title: str, y_label: str, traces: Sequence[dict[str, Any]], main: np.ndarray
) -> dict[str, Any]:
    """A figure of ``traces`` against the iteration. ``main`` is the series the honest
    axis and the flat label are judged on (the range also covers every trace)."""
    change = change_of(main)
    ys = np.concatenate([np.asarray(t["y"], float) for t in traces] or [np.zeros(0)])
    xs = np.concatenate([np.asarray(t["x"], float) for t in traces] or [np.zeros(0)])
    rng = y_range(ys)
    full = f"{title}: {FLAT_NOTE}" if change.flat else title
    if not change.flat and change.span < SMALL_REL * change.level:
        full = f"{title}: changed {100 * change.span / change.level:.2g}% of its level"
    yaxis: dict[str, Any] = {"title": {"text": y_label}, "automargin": True, "exponentformat": "e"}
    if rng is not None:
        yaxis["range"] = list(rng)
    menu = log_linear_buttons(list(rng) if rng is not None else None)
    return {
        "data": list(traces),
        "layout": {
            "title": TITLE | {"text": full},
            "xaxis": iteration_axis(xs),
            "yaxis": yaxis,
            "updatemenus": [menu],
            "showlegend": True,
            "legend": LEGEND,
            "margin": MARGIN,
            "modebar": {"orientation": "v"},
            "hovermode": "closest",
        },
    }


def probe_iters(data: RunData) -> np.ndarray:
    """Iterations with a probe round (rounds.csv, else the probe_reason column)."""
    if len(data.rounds):
        return data.rounds.iters()
    reasons = data.curves.texts("probe_reason")
    return data.curves.iters()[[r is not None for r in reasons]]


def plot_column(table: Table, column: str, marks: np.ndarray | None = None) -> dict | None:
    """One column against the iteration; the probe rounds (``marks``) as markers on it."""
    if not len(table) or not np.any(np.isfinite(table.values(column))):
        return None
    t, y = table.iters(), table.values(column)
    traces = [line(t, y, column)]
    if marks is not None and len(marks):
        at = np.isin(t, marks)
        traces.append(
            line(
                t[at],
                y[at],
                "probe rounds",
                3,
                mode="markers",
                marker={"size": 9, "symbol": "diamond-open", "color": "#ff7f0e"},
            )
        )
    return over_iterations(column, y_title(column), traces, y)


def plot_core(data: RunData, columns: Sequence[str]) -> list[dict[str, Any]]:
    """One figure per learning-curve column, probe rounds marked."""
    marks = probe_iters(data)
    figs = [plot_column(data.curves, c, marks) for c in columns if data.curves.has(c)]
    return [f for f in figs if f is not None]


def sparkline(t: np.ndarray, y: np.ndarray, width: int = 140, height: int = 26) -> str:
    """An inline SVG polyline of ``y`` against ``t`` (finite points only) on the honest
    range of :func:`tdlens.pages.honest.y_range` (a negligible change is drawn flat);
    its tooltip says "no change beyond noise" when it is one; '' for no points."""
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = np.asarray(t, float)[ok], np.asarray(y, float)[ok]
    if not len(y):
        return ""
    pad = 3.0
    lo, hi = y_range(y) or (0.0, 1.0)
    t_span = float(t.max() - t.min()) or 1.0
    xs = pad + (t - t.min()) / t_span * (width - 2 * pad)
    ys = pad + (hi - y) / (hi - lo) * (height - 2 * pad)
    flat = change_of(y).flat
    tip = f"<title>{FLAT_NOTE}</title>" if flat else ""
    color = "#888" if flat else "#1f77b4"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' class="spark{" flat" if flat else ""}">{tip}'
    )
    if len(y) == 1:
        return f'{head}<circle cx="{xs[0]:.1f}" cy="{ys[0]:.1f}" r="2" fill="{color}"/></svg>'
    points = " ".join(f"{x:.1f},{v:.1f}" for x, v in zip(xs, ys, strict=True))
    return (
        f'{head}<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{points}"/></svg>'
    )


def _plain(title: str, x_label: str, y_label: str, traces: list[dict]) -> dict[str, Any]:
    return {
        "data": traces,
        "layout": {
            "title": TITLE | {"text": title},
            "xaxis": {"title": {"text": x_label}, "automargin": True},
            "yaxis": {"title": {"text": y_label}, "automargin": True, "exponentformat": "e"},
            "legend": LEGEND,
            "margin": MARGIN,
            "modebar": {"orientation": "v"},
        },
    }


def plot_rho(data: RunData) -> tuple[dict | None, str]:
    """Histogram of the latest raw rho sample (probes/rho_hist_<iter>.npy); without one,
    the per-iteration rho quantiles of the learning curves. Returns (spec, caption)."""
    it, rho = latest_array(
        data.run_dir, "rho_hist", feature_dim=data.cfg.env.feature_dim if data.cfg else None
    )
    if isinstance(rho, np.ndarray) and rho.size:
        rho = rho[np.isfinite(rho)].ravel()
        lo, hi = (float(rho.min()), float(rho.max())) if rho.size else (1.0, 1.0)
        if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # on-policy: every ratio is exactly 1
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(rho, bins=60, range=(lo, hi))
        top = float(counts.max())
        mean = float(rho.mean())
        traces = [
            {
                "type": "bar",
                "x": (0.5 * (edges[1:] + edges[:-1])).tolist(),
                "y": counts.tolist(),
                "name": "rho sample",
                "marker": {"color": "#1f77b4"},
            },
            line([1.0, 1.0], [0, top], "rho = 1", 6, mode="lines", line={"dash": "dash"}),
            line([mean, mean], [0, top], f"mean {mean:.4g}", 1, mode="lines"),
        ]
        spec = _plain(f"raw rho at iteration {it}", "rho (unclipped)", "count", traces)
        return spec, f"raw rho sample of the rho audit at iteration {it}"
    cols = [
        c for c in ("min_rho", "mean_rho", "p95_rho", "p99_rho", "max_rho") if data.curves.has(c)
    ]
    spec = None
    if cols and len(data.curves):
        t = data.curves.iters()
        traces = [line(t, data.curves.values(c), c, i) for i, c in enumerate(cols)]
        spec = over_iterations("rho quantiles", "rho", traces, data.curves.values(cols[0]))
    return spec, "no raw rho sample saved: per-iteration rho quantiles of the training batches"


def plot_q_kernel(data: RunData) -> tuple[list[dict], str]:
    """Heatmap of the latest Q_hat and its lag profile C(tau) = mean_t Q_hat(t, t + tau)."""
    it, Q = latest_array(
        data.run_dir, "q_kernel", feature_dim=data.cfg.env.feature_dim if data.cfg else None
    )
    if not isinstance(Q, np.ndarray) or Q.ndim != 2 or not Q.size:
        return [], "no Q_hat saved"
    _, lag = latest_array(
        data.run_dir,
        "q_kernel_lag",
        at_or_before=it,
        feature_dim=data.cfg.env.feature_dim if data.cfg else None,
    )
    if not isinstance(lag, np.ndarray) or lag.ndim != 1:
        lag = np.array([np.mean(np.diagonal(Q, offset=k)) for k in range(Q.shape[0])])
    vmax = float(np.nanmax(np.abs(Q))) or 1.0
    heat = _plain(f"Q_hat(t, t') at iteration {it}", "t' (step)", "t (step)", [])
    heat["data"] = [
        {
            "type": "heatmap",
            "z": np.asarray(Q, float).tolist(),
            "zmin": -vmax,
            "zmax": vmax,
            "colorscale": "RdBu",
            "name": "Q_hat",
            "hovertemplate": "t %{y}, t' %{x}<br>Q_hat %{z:.4g}<extra></extra>",
        }
    ]
    heat["layout"]["yaxis"]["scaleanchor"] = "x"
    tau = np.arange(len(lag), dtype=float)
    prof = _plain(
        "lag profile C(tau)",
        "lag tau (steps)",
        "C(tau)",
        [line(tau, lag, "C(tau)", hovertemplate="tau %{x}<br>C %{y:.4g}<extra></extra>")],
    )
    return [heat, prof], f"TD-error kernel of the q_kernel probe at iteration {it}"


def plot_spectrum(data: RunData) -> tuple[dict | None, str]:
    """Eigenvalues of A of the latest stability probe (probes/stability_eigs_<iter>.npy)
    in the complex plane, with the +-spectral_noise band of Re(l)."""
    it, eigs = latest_array(
        data.run_dir, "stability_eigs", feature_dim=data.cfg.env.feature_dim if data.cfg else None
    )
    if not isinstance(eigs, np.ndarray) or not eigs.size:
        return None, "no eigenvalues saved"
    traces = [
        {
            "type": "scatter",
            "mode": "markers",
            "x": eigs.real.tolist(),
            "y": eigs.imag.tolist(),
            "name": "eigenvalues of A",
            "marker": {"size": 5, "color": "#1f77b4"},
        }
    ]
    noise = data.probe("stability_probe").last("spectral_noise")
    if noise is not None and np.isfinite(noise):
        hi = float(np.max(np.abs(eigs.imag))) or 1.0
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": [-noise, noise, noise, -noise, -noise],
                "y": [-hi, -hi, hi, hi, -hi],
                "fill": "toself",
                "fillcolor": "rgba(128,128,128,0.2)",
                "line": {"width": 0},
                "name": "|Re| &lt; spectral_noise",
            }
        )
    spec = _plain(f"spectrum of A at iteration {it}", "Re eig(A)", "Im eig(A)", traces)
    return spec, f"eigenvalues of A from the stability probe at iteration {it}"


def plot_theory(theory: dict[str, Any]) -> dict | None:
    """Measured value_gap (points) against the overlay's prediction
    (:func:`tdlens.report.theory.theory_overlay`): its ``band`` (``lo``/``hi``) over the
    whole run and each of its ``curves`` (the mean path)."""
    band = theory.get("band") or {}
    if not (theory.get("value_gap") or band.get("lo") or theory.get("curves")):
        return None
    x_pred = theory.get("pred_iters", [])
    traces: list[dict[str, Any]] = []
    if band.get("lo") and band.get("hi"):
        xp = np.asarray(x_pred, float)
        lo, hi = np.asarray(band["lo"], float), np.asarray(band["hi"], float)
        area = line(
            np.concatenate([xp, xp[::-1]]),
            np.concatenate([hi, lo[::-1]]),
            "predicted band",
            0,
            mode="lines",
            fill="toself",
            fillcolor="rgba(31,119,180,0.15)",
            line={"width": 0},
        )
        traces.append(area)
    for i, (label, values) in enumerate(theory.get("curves", {}).items()):
        traces.append(line(x_pred, values, label, i + 2, mode="lines", line={"dash": "dash"}))
    gap = np.asarray(theory.get("value_gap") or [], float)
    if len(gap):
        measured = line(theory["measured_iters"], gap, "measured value_gap", 1)
        traces.append({**measured, "mode": "markers", "marker": {"size": 8, "color": COLORS[1]}})
    main = gap if len(gap) else np.asarray(traces[0]["y"], float)
    return over_iterations("value_gap: measured vs predicted", "value_gap", traces, main)


def plot_key_probes(data: RunData) -> list[dict[str, Any]]:
    """The probes' key series against the iteration (each probe's registry
    ``key_series``), each with its reference where it has one (drift vs noise_floor,
    eig_min_real vs -spectral_noise, drawn negated)."""
    figs = []
    for probe, col, ref in registry.key_series():
        table = data.probe(probe)
        if not len(table) or not table.has(col):
            continue
        t, y = table.iters(), table.values(col)
        traces = [line(t, y, col)]
        if ref is not None and table.has(ref):
            sign = -1.0 if ref == "spectral_noise" else 1.0
            label = f"-{ref}" if ref == "spectral_noise" else ref
            traces.append(line(t, sign * table.values(ref), label, 1, line={"dash": "dash"}))
        figs.append(over_iterations(f"{probe}.{col}", y_title(col), traces, y))
    return figs
