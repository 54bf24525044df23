"""Self-contained HTML pieces for summaries and comparisons (SPEC sections 11 and 15).

Pages have no external resources: styles are inline, plots are base64 PNGs drawn with
matplotlib's Agg backend on a bare ``Figure`` (no pyplot state, no display). Every string
shown goes through :func:`esc` (``html.escape`` with quotes), numbers through :func:`fmt`
(4 significant digits, as the run report).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ANNOTATE_MAX_CELLS = 144
"""Heatmaps with at most this many cells print each cell's value."""
STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "th{background:#f0f0f0}td.t{text-align:left}"
    ".diverged{color:#b00}.learning{color:#070}.plateau{color:#a60}.frozen{color:#06a}"
    "img{max-width:100%}p.doc{font-size:13px;color:#333}"
)


def esc(value: Any) -> str:
    """HTML-escaped text of any value (None -> '')."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any) -> str:
    """4 significant digits for floats; '' for None/NaN; 'inf' kept; other values as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: bool = True) -> str:
    """An HTML table; every cell escaped, numbers right-aligned, text left-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            text = fmt(cell)
            is_text = not isinstance(cell, int | float | np.number) or isinstance(cell, bool)
            cls = ["t"] if is_text else []
            if classes and text in ("diverged", "learning", "plateau", "frozen"):
                cls.append(text)
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def png_img(fig: Figure, alt: str) -> str:
    """An ``<img>`` with the figure inlined as a base64 PNG."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, body: str) -> str:
    """A complete self-contained HTML document."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


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
