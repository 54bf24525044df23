"""The figures of sweep pages (summary heatmaps, compare's overlaid curves).

Pages are assembled with :mod:`tdlens.report.kit` (escaping, tables, inline PNGs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tdlens.report.fmt import fmt

ANNOTATE_MAX_CELLS = 144
"""Heatmaps with at most this many cells print each cell's value."""


def heatmap_figure(
    z: np.ndarray,
    x_values: Sequence[Any],
    y_values: Sequence[Any],
    x_label: str,
    y_label: str,
    title: str,
) -> Figure:
    """``z [len(y), len(x)]`` as a heatmap; log10 colour scale when positive and spanning
    more than two decades; NaN cells (no finite value) left blank."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    finite = z[np.isfinite(z)]
    log = finite.size > 0 and np.all(finite > 0) and finite.max() / finite.min() > 100
    shown = np.log10(np.where(z > 0, z, np.nan)) if log else z
    im = ax.imshow(np.ma.masked_invalid(shown), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label=f"log10 {title}" if log else title)
    ax.set_xticks(range(len(x_values)), [fmt(_num(v)) for v in x_values], rotation=60)
    ax.set_yticks(range(len(y_values)), [fmt(_num(v)) for v in y_values])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    if z.size <= ANNOTATE_MAX_CELLS:
        for (iy, ix), value in np.ndenumerate(z):
            if np.isfinite(value):
                ax.text(ix, iy, f"{value:.3g}", ha="center", va="center", fontsize=7, color="w")
    return fig


def curves_figure(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]], y_label: str, log: bool = False
) -> Figure:
    """Overlaid curves ``(label, x, y)`` on one axis."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot()
    for label, x, y in series:
        ax.plot(x, y, label=label, lw=1.2, marker="." if len(x) < 30 else None)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iter")
    ax.set_ylabel(y_label)
    if 0 < len(series) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _num(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
