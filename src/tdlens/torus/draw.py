"""Draw Torus Goblet & Ghost states with matplotlib (docs/model.md §1).

No global pyplot state: every picture is a :class:`matplotlib.figure.Figure` drawn on its
own Agg canvas, so rendering is safe in worker processes and threads.

A picture shows the torus square ``[0, L]^2``, the adventurer (blue dot), the ghost (purple
dot, dashed circle of radius eps_catch), the goblets as discs of radius eps_pick coloured by
type (+1 green, -1 red), the last executed action as an arrow from the adventurer (an
action of norm v_max is drawn ``ARROW_FRACTION * L`` long), and the events of the
transition that led to the state as text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle

from tdlens.config import EnvConfig
from tdlens.torus.dynamics import TorusState

ARROW_FRACTION = 0.15
DEFAULT_SIZE_PX = 256
_DPI = 100
ADVENTURER_COLOUR = "tab:blue"
GHOST_COLOUR = "tab:purple"
_GOBLET_COLOURS = {1.0: "tab:green", -1.0: "tab:red"}


def event_text(state: TorusState, index: int = 0) -> str:
    """The events of the transition that led to ``state`` (row `index`), e.g. ``caught``."""
    events = []
    if state.caught[index]:
        events.append("caught")
    if state.picked[index]:
        events.append(f"picked {int(state.picked_type[index]):+d}")
    if state.restart[index]:
        events.append("restart")
    return ", ".join(events) if events else "no event"


def _add_wrapped_circle(
    ax: Axes, centre: np.ndarray, radius: float, L: float, **style: Any
) -> None:
    """A circle on the torus: every periodic copy that overlaps the square [0, L]^2."""
    for dx in (-L, 0.0, L):
        for dy in (-L, 0.0, L):
            cx, cy = centre[0] + dx, centre[1] + dy
            if -radius < cx < L + radius and -radius < cy < L + radius:
                ax.add_patch(Circle((cx, cy), radius, **style))


def draw_state(
    ax: Axes,
    state: TorusState,
    env: EnvConfig,
    action: np.ndarray | None = None,
    index: int = 0,
    title: str | None = None,
) -> None:
    """Draw environment `index` of the batch ``state`` on `ax`.

    ``action [2]`` (optional) is the last executed action, drawn as an arrow from the
    adventurer; `title` (optional) is prefixed to the event text.
    """
    L = env.torus_size
    ax.set_xlim(0.0, L)
    ax.set_ylim(0.0, L)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.add_patch(Rectangle((0.0, 0.0), L, L, facecolor="whitesmoke", edgecolor="black"))
    for pos, kind in zip(state.goblets[index], state.types[index], strict=True):
        colour = _GOBLET_COLOURS.get(float(kind), "tab:gray")
        _add_wrapped_circle(ax, pos, max(env.eps_pick, 0.01 * L), L, color=colour, alpha=0.8)
    x_g = state.x_g[index]
    _add_wrapped_circle(ax, x_g, env.eps_catch, L, fill=False, ls="--", color=GHOST_COLOUR)
    ax.plot(*x_g, "o", color=GHOST_COLOUR, ms=9)
    x_a = state.x_a[index]
    ax.plot(*x_a, "o", color=ADVENTURER_COLOUR, ms=9)
    if action is not None:
        arrow = np.asarray(action, dtype=np.float64).reshape(2) * (ARROW_FRACTION * L / env.v_max)
        if np.all(np.isfinite(arrow)) and np.hypot(*arrow) > 0:
            ax.add_patch(
                FancyArrowPatch(
                    tuple(x_a),
                    tuple(x_a + arrow),
                    arrowstyle="->",
                    mutation_scale=12,
                    color=ADVENTURER_COLOUR,
                    lw=2,
                )
            )
    text = event_text(state, index)
    ax.set_title(f"{title}: {text}" if title else text, fontsize=9)


def legend_handles(env: EnvConfig) -> list[Line2D]:
    """Proxy artists naming what :func:`draw_state` draws, in its own colours and markers:
    the adventurer, its last action, the ghost with its catch radius, and the goblets by
    type (for a legend beside the picture)."""
    return [
        Line2D(
            [], [], ls="", marker="o", ms=8, color=ADVENTURER_COLOUR, label="adventurer (agent)"
        ),
        Line2D([], [], ls="-", lw=2, marker=">", ms=6, color=ADVENTURER_COLOUR, label="action a_t"),
        Line2D([], [], ls="", marker="o", ms=8, color=GHOST_COLOUR, label="ghost"),
        Line2D([], [], ls="--", color=GHOST_COLOUR, label=f"catch radius {env.eps_catch:g}"),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            ms=8,
            color=_GOBLET_COLOURS[1.0],
            alpha=0.8,
            label="goblet, type +1",
        ),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            ms=8,
            color=_GOBLET_COLOURS[-1.0],
            alpha=0.8,
            label="goblet, type -1",
        ),
    ]


def render_rgb(
    state: TorusState,
    env: EnvConfig,
    action: np.ndarray | None = None,
    size_px: int = DEFAULT_SIZE_PX,
    index: int = 0,
    title: str | None = None,
) -> np.ndarray:
    """The picture of :func:`draw_state` as an ``[size_px, size_px, 3]`` uint8 RGB array."""
    if size_px < 32:
        raise ValueError(f"size_px: must be at least 32 pixels, got {size_px}")
    fig = Figure(figsize=(size_px / _DPI, size_px / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.04, 0.02, 0.92, 0.88))
    draw_state(ax, state, env, action=action, index=index, title=title)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])
