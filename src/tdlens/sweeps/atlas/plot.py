"""The atlas's figures (matplotlib): step x mismatch and beta x offset, coloured and
marked by regime label (tdlens.regimes.REGIME_TABLE), and their PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tdlens.regimes import entry
from tdlens.sweeps.atlas.data import AtlasPoint, mismatch_name
from tdlens.sweeps.summary import majority_regime


def label_colour(label: str) -> str:
    """The label's colour (tdlens.regimes.REGIME_TABLE; an unknown label raises)."""
    return entry(label).colour


def label_marker(label: str) -> str:
    """The label's matplotlib marker (tdlens.regimes.REGIME_TABLE; an unknown label raises)."""
    return entry(label).marker


def step_mismatch_figure(
    points: Sequence[AtlasPoint],
    mkey: str,
    crossing: tuple[float, float, float],
    closed_form: float = math.nan,
) -> Figure:
    """Panels per beta: runs at (alpha_w / critical_step, mismatch), coloured by label,
    with the theory boundaries (module docstring)."""
    betas = sorted({p.beta for p in points})
    fig = Figure(figsize=(3.8 * len(betas) + 2.6, 4.0))
    axes = fig.subplots(1, len(betas), sharey=True, squeeze=False)[0]
    seen: dict[str, Any] = {}
    mid, lo, hi = crossing
    for ax, beta in zip(axes, betas, strict=True):
        for p in points:
            if p.beta != beta or not math.isfinite(p.step_ratio):
                continue
            h = ax.scatter(
                p.step_ratio,
                p.mismatch,
                c=label_colour(p.record.regime),
                marker=label_marker(p.record.regime),
                s=60,
                edgecolors="k",
                linewidths=0.4,
                zorder=3,
            )
            seen.setdefault(p.record.regime, h)
        seen.setdefault("eta = critical_step", ax.axvline(1.0, color="k", ls="--", lw=1))
        if math.isfinite(mid):
            seen.setdefault(
                "eig_min_real = 0 (medians)", ax.axhline(mid, color="m", ls=":", lw=1.6)
            )
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            seen.setdefault(
                "eig_min_real 95% interval", ax.axhspan(lo, hi, color="m", alpha=0.12, lw=0)
            )
        if math.isfinite(closed_form):
            seen.setdefault(
                "closed form sqrt(2/gamma)",
                ax.axhline(closed_form, color="0.45", ls="-.", lw=0.8),
            )
        ax.set_xscale("log")
        ax.set_xlabel("alpha_w / critical_step")
        ax.set_title(f"beta = {beta:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(mismatch_name(mkey))
    regimes = {p.record.regime for p in points}
    labels = sorted(k for k in seen if k in regimes) + [k for k in seen if k not in regimes]
    _legend_right(fig, seen, labels, 2.5, wspace=0.08)
    return fig


def beta_offset_figure(points: Sequence[AtlasPoint], mkey: str) -> Figure:
    """Panels per alpha_w: the majority label of each (beta, mismatch) cell."""
    alphas = sorted({p.alpha_w for p in points})
    betas = sorted({p.beta for p in points})
    mism = sorted({p.mismatch for p in points})
    cols = min(len(alphas), 3)
    rows = math.ceil(len(alphas) / cols)
    fig = Figure(figsize=(3.4 * cols + 2.4, 3.0 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    seen: dict[str, Any] = {}
    for ax, alpha in zip(axes, alphas, strict=False):
        for ix, beta in enumerate(betas):
            for iy, m in enumerate(mism):
                labels = [
                    p.record.regime
                    for p in points
                    if p.alpha_w == alpha and p.beta == beta and p.mismatch == m
                ]
                if not labels:
                    continue
                label = majority_regime(labels)
                h = ax.scatter(
                    ix,
                    iy,
                    c=label_colour(label),
                    marker=label_marker(label),
                    s=160,
                    edgecolors="k",
                    linewidths=0.4,
                )
                seen.setdefault(label, h)
        ratio = [p.step_ratio for p in points if p.alpha_w == alpha and math.isfinite(p.step_ratio)]
        extra = f" ({float(np.median(ratio)):.2g} x crit.)" if ratio else ""
        ax.set_title(f"alpha_w = {alpha:g}{extra}", fontsize=9)
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(mism)), [f"{m:g}" for m in mism])
        ax.set_xlim(-0.5, len(betas) - 0.5)
        ax.set_ylim(-0.5, len(mism) - 0.5)
        ax.set_xlabel("beta")
        ax.set_ylabel(mismatch_name(mkey))
    for ax in axes[len(alphas) :]:
        ax.set_visible(False)
    _legend_right(fig, seen, sorted(seen), 2.3, hspace=0.5, wspace=0.35)
    return fig


def _legend_right(
    fig: Figure, handles: dict[str, Any], labels: list[str], inches: float, **adjust: float
) -> None:
    """The legend of `labels` in a column `inches` wide right of the panels."""
    right = 1 - inches / fig.get_figwidth()
    fig.subplots_adjust(right=right, **adjust)
    fig.legend(
        [handles[k] for k in labels],
        labels,
        loc="center left",
        bbox_to_anchor=(right + 0.01, 0.5),
        fontsize=8,
    )


def _fig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()
