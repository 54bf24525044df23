"""The figures of sweep pages (summary heatmaps, compare's overlaid curves) as plotly specs.

Pages are assembled with :mod:`tdlens.pages.kit` (escaping, tables, figures); axes and
honest ranges come from :mod:`tdlens.pages.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tdlens.pages import plots as P
from tdlens.pages.fmt import fmt

NEST = 4
"""Line widths and marker sizes shrink over this many runs, then repeat."""
ANNOTATE_MAX_CELLS = 144
"""Heatmaps with at most this many cells print each cell's value."""


def heatmap_figure(
    z: np.ndarray,
    x_values: Sequence[Any],
    y_values: Sequence[Any],
    x_label: str,
    y_label: str,
    title: str,
) -> dict[str, Any]:
    """``z [len(y), len(x)]`` as a heatmap; log10 colour scale when positive and spanning
    more than two decades; NaN cells (no finite value) left blank. Cell labels are black
    on a white box, readable on any colour."""
    finite = z[np.isfinite(z)]
    log = bool(finite.size > 0 and np.all(finite > 0) and finite.max() / finite.min() > 100)
    shown = np.log10(np.where(z > 0, z, np.nan)) if log else z
    xs, ys = [fmt(_num(v)) for v in x_values], [fmt(_num(v)) for v in y_values]
    trace = {
        "type": "heatmap",
        "z": shown.tolist(),
        "x": list(range(len(xs))),
        "y": list(range(len(ys))),
        "customdata": z.tolist(),
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": f"log10 {title}" if log else title}},
        "hovertemplate": f"{title} %{{customdata:.4g}}<extra></extra>",
        "xgap": 1,
        "ygap": 1,
    }
    notes = []
    if z.size <= ANNOTATE_MAX_CELLS:
        for (iy, ix), value in np.ndenumerate(z):
            if math.isfinite(value):
                notes.append(
                    {
                        "x": ix,
                        "y": iy,
                        "text": f"{value:.3g}",
                        "showarrow": False,
                        "font": {"size": 13, "color": "#000"},
                        "bgcolor": "rgba(255,255,255,0.85)",
                    }
                )
    return {
        "data": [trace],
        "layout": {
            "title": P.TITLE | {"text": f"{title} over {x_label} x {y_label}"},
            "xaxis": _category_axis(x_label, xs),
            "yaxis": _category_axis(y_label, ys),
            "annotations": notes,
            "margin": P.MARGIN,
        },
    }


def curves_figure(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]], y_label: str, log: bool = False
) -> dict[str, Any]:
    """Overlaid curves ``(label, x, y)`` against the iteration. Run i gets colour, dash
    and open marker symbol i (modulo their counts), and earlier runs are drawn wider with
    larger markers, so runs whose curves coincide stay visible as nested marks; the
    legend (click to hide a run) sits below the plot."""
    traces = []
    for i, (label, x, y) in enumerate(series):
        nest = i % NEST
        traces.append(
            P.line(
                x,
                y,
                label,
                i,
                mode="lines+markers",
                line={
                    "color": P.COLORS[i % len(P.COLORS)],
                    "dash": P.DASHES[i % len(P.DASHES)],
                    "width": 4.5 - nest,
                },
                marker={
                    "symbol": P.SYMBOLS[i % len(P.SYMBOLS)] + "-open",
                    "size": 15 - 3 * nest,
                    "line": {"width": 2},
                },
            )
        )
    ys = [np.asarray(y, float) for _, _, y in series]
    main = max(ys, key=lambda y: float(np.nanmax(np.abs(y))) if len(y) else 0.0)
    fig = P.over_iterations(y_label, y_label, traces, main)
    if log:
        fig["layout"]["yaxis"] = {**fig["layout"]["yaxis"], "type": "log"}
        fig["layout"]["yaxis"].pop("range", None)
    return fig


def _category_axis(label: str, names: Sequence[str]) -> dict[str, Any]:
    """An axis over cells 0..n-1 labelled with the swept values."""
    return {
        "title": {"text": label},
        "tickvals": list(range(len(names))),
        "ticktext": list(names),
        "showgrid": False,
        "zeroline": False,
        "automargin": True,
    }


def _num(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
