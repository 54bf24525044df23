"""The one HTML kit of every page tdlens writes (run report, sweep summary, compare, the
sanity summary): escaping, tables, interactive figures and the page frame.

Pages have no external resources and work offline from a copied folder: styles are
inline, and figures are plotly.js charts (zoom, hover, legend toggles, a log/linear
button) whose library is embedded in the page once, in one ``<script>`` of the head,
only when the page has a figure. A figure is a plain plotly spec ``{data, layout}`` kept
in a ``<script type="application/json" class="tdfig">`` beside its ``<div>``, drawn by one
loader script at the end of the body (so other tools can read the figures back:
:func:`figure_specs`). Every string shown goes through :func:`esc`; numbers through
:func:`tdlens.pages.fmt.fmt` (4 significant digits, ``-`` for a missing value).
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from tdlens.pages.fmt import fmt
from tdlens.rundir.files import to_jsonable

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:1em auto;max-width:1220px;padding:0 12px;
color:#222;font-size:15px;line-height:1.4}
h1{font-size:24px;margin:.3em 0} h2{font-size:20px;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px;max-width:100%}
.scroll{overflow-x:auto;max-width:100%}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.plot{width:100%;height:380px;min-width:0} .plot.wide{height:460px}
.card{border:2px solid #888;border-radius:8px;padding:10px 16px;margin:.4em 0 1em;
background:#fafafa} .card h2{margin:.1em 0 .3em} .card p{margin:.3em 0}
.card.c-frozen{border-color:#06a}.card.c-learning{border-color:#070}
.card.c-plateau{border-color:#a60}.card.c-diverged{border-color:#b00}
.regime{font-size:22px;font-weight:bold}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.t{text-align:left}
td.t{max-width:30em;overflow-wrap:break-word}
th{background:#f0f0f0} .PASS{color:#1a7f37;font-weight:bold}
.WARN{color:#b35900;font-weight:bold} .FAIL{color:#cf222e;font-weight:bold}
.diverged{color:#b00}.learning{color:#070}.plateau{color:#a60}.frozen{color:#06a}
pre{background:#f6f8fa;padding:8px;overflow-x:auto} img{max-width:100%}
figcaption{font-size:13px;color:#555} p.doc{font-size:13px;color:#333}
code{overflow-wrap:anywhere} summary{cursor:pointer;margin:.3em 0}
"""
FONT = {"family": "system-ui, sans-serif", "size": 13}
"""Figure font: 13 px, readable at 100% zoom."""
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
LOADER = (
    "<script>document.querySelectorAll('script.tdfig').forEach(function(s){"
    "var f=JSON.parse(s.textContent);"
    "Plotly.newPlot(s.getAttribute('data-for'),f.data,f.layout,f.config);});</script>"
)
"""Draws every figure of the page (one script for all of them)."""
_FIG_RE = re.compile(r'<script type="application/json" class="tdfig"[^>]*>(.*?)</script>', re.S)
MARKED = frozenset({"PASS", "WARN", "FAIL", "diverged", "learning", "plateau", "frozen"})
"""Cell texts (or the family before ``:`` of a regime label) that get a class of that name
(a colour in STYLE)."""


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
            family = text.split(":", 1)[0]  # "plateau:slow-modes" is coloured as plateau
            classes = (["t"] if is_text else []) + ([family] if family in MARKED else [])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    rows_html = "".join(body)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows_html}</tbody></table></div>"
    )


def _reads_as_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


@functools.cache
def plotly_js() -> str:
    """The plotly.js library shipped with the plotly package (read once per process)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def log_linear_buttons(
    linear_range: Sequence[float] | None = None, axis: str = "yaxis"
) -> dict[str, Any]:
    """An updatemenus entry with two buttons switching ``axis`` between linear (back to
    ``linear_range`` when given) and log (autoranged)."""
    linear: dict[str, Any] = {f"{axis}.type": "linear"}
    if linear_range is not None:
        linear[f"{axis}.range"] = list(linear_range)
    else:
        linear[f"{axis}.autorange"] = True
    return {
        "type": "buttons",
        "direction": "right",
        "x": 0.0,
        "xanchor": "left",
        "y": 1.01,
        "yanchor": "bottom",
        "pad": {"r": 0, "t": 0},
        "font": {"size": 11},
        "buttons": [
            {"label": "linear", "method": "relayout", "args": [linear]},
            {
                "label": "log",
                "method": "relayout",
                "args": [{f"{axis}.type": "log", f"{axis}.autorange": True}],
            },
        ],
    }


def plot(fig: dict[str, Any], wide: bool = False) -> str:
    """A figure: its ``<div>`` and its spec (``{data, layout}``, NaN -> null) for the
    page's loader. The id is a hash of the spec, so pages are reproducible."""
    spec = to_jsonable({"data": fig["data"], "layout": fig.get("layout", {})})
    spec["layout"].setdefault("font", FONT)
    spec["config"] = PLOT_CONFIG
    text = json.dumps(spec, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    div_id = "fig-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    cls = "plot wide" if wide else "plot"
    return (
        f'<div class="{cls}" id="{div_id}"></div>'
        f'<script type="application/json" class="tdfig" data-for="{div_id}">{text}</script>'
    )


def figure_specs(page_text: str) -> list[dict[str, Any]]:
    """The figure specs of a page written with :func:`plot`, in page order."""
    return [json.loads(m.replace("<\\/", "</")) for m in _FIG_RE.findall(page_text)]


def page(title: str, body: str, heading: bool = True) -> str:
    """A complete self-contained HTML document (with an ``<h1>`` of the title unless
    `heading` is False, for pages whose body starts with their own); plotly.js is
    embedded once when the body has a figure."""
    h1 = f"<h1>{esc(title)}</h1>\n" if heading else ""
    has_plots = 'class="tdfig"' in body
    script = f"<script>{plotly_js()}</script>" if has_plots else ""
    loader = LOADER if has_plots else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>{script}</head>"
        f"<body>{h1}{body}\n{loader}</body></html>\n"
    )
