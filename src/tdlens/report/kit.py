"""The one HTML kit of every page tdlens writes (run report, sweep summary, compare, the
sanity summary): escaping, tables, inline PNG figures and the page frame.

Pages have no external resources: styles are inline and figures are base64 PNGs drawn on
a bare matplotlib ``Figure`` with the Agg canvas (no pyplot state, no display, safe in
threads). Every string shown goes through :func:`esc`; numbers through
:func:`tdlens.report.fmt.fmt` (4 significant digits, ``-`` for a missing value).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tdlens.report.fmt import fmt

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.t{text-align:left}
th{background:#f0f0f0} .PASS{color:#1a7f37;font-weight:bold}
.WARN{color:#b35900;font-weight:bold} .FAIL{color:#cf222e;font-weight:bold}
.diverged{color:#b00}.learning{color:#070}.plateau{color:#a60}.frozen{color:#06a}
pre{background:#f6f8fa;padding:8px;overflow-x:auto} img{max-width:100%}
figcaption{font-size:12px;color:#555} p.doc{font-size:13px;color:#333}
"""
MARKED = frozenset({"PASS", "WARN", "FAIL", "diverged", "learning", "plateau", "frozen"})
"""Cell texts that get a class of their own name (a colour in STYLE)."""


class Html(str):
    """Text that is HTML already (a link): :func:`table` puts it in a cell unescaped."""


def esc(x: Any) -> str:
    """HTML-escaped text of any value, quotes included (None -> '')."""
    return html.escape("" if x is None else str(x), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table. Strings are shown as they are, other values through ``fmt``; numbers
    (and strings that read as one) are right-aligned, text left-aligned; verdicts and
    regime labels get their colour class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, Html):
                cells.append(f'<td class="t">{cell}</td>')
                continue
            text = cell if isinstance(cell, str) else fmt(cell)
            is_text = not _reads_as_number(text) or isinstance(cell, bool)
            mark = text.split(":", 1)[0]  # a regime's base label: diverged:off-policy
            classes = (["t"] if is_text else []) + ([mark] if mark in MARKED else [])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _reads_as_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def png_data_uri(fig: Figure, dpi: int = 90, tight: bool = False) -> str:
    """``fig`` as a PNG data URI (no timestamp metadata, so the bytes are reproducible)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=dpi,
        metadata={"Software": None},
        bbox_inches="tight" if tight else None,
    )
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_img(fig: Figure, alt: str, dpi: int = 90) -> str:
    """An ``<img>`` with the figure inlined as a PNG."""
    return f'<img alt="{esc(alt)}" src="{png_data_uri(fig, dpi, tight=True)}">'


def page(title: str, body: str, heading: bool = True) -> str:
    """A complete self-contained HTML document (with an ``<h1>`` of the title unless
    `heading` is False, for pages whose body starts with their own)."""
    h1 = f"<h1>{esc(title)}</h1>\n" if heading else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body>{h1}{body}\n</body></html>\n"
    )
