"""Plots of the HTML report (SPEC 8), as base64 PNG data URIs.

matplotlib is used through ``matplotlib.figure.Figure`` with the Agg canvas only (no
pyplot, no global state), so plotting is thread-safe and never opens a window. Every
function takes plain arrays or tables and returns ``data:image/png;base64,...`` or None
when there is nothing to draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tdlens.probes import registry
from tdlens.report.kit import png_data_uri
from tdlens.rundir.read import RunData, Table, latest_array

DPI = 80
TICKS = 4
"""Target number of ticks per axis (fewer ticks draw much faster)."""
LOG_RATIO = 100.0
"""Use a log y axis when a positive series spans more than this factor."""


def to_data_uri(fig: Figure) -> str:
    """Render ``fig`` to a PNG data URI at the report's DPI (:func:`kit.png_data_uri`)."""
    return png_data_uri(fig, DPI)


def _scale(ax: Any, y: np.ndarray) -> None:
    y = y[np.isfinite(y)]
    if len(y) and np.all(y > 0) and y.max() / y.min() > LOG_RATIO:
        ax.set_yscale("log")


def probe_iters(data: RunData) -> np.ndarray:
    """Iterations with a probe round (rounds.csv, else the probe_reason column)."""
    if len(data.rounds):
        return data.rounds.iters()
    reasons = data.curves.texts("probe_reason")
    return data.curves.iters()[[r is not None for r in reasons]]


def plot_series(
    table: Table, columns: list[str], marks: np.ndarray | None = None, title: str = ""
) -> str | None:
    """One panel per column against ``iter``; dotted verticals at ``marks``."""
    columns = [c for c in columns if np.any(np.isfinite(table.values(c)))]
    if not len(table) or not columns:
        return None
    ncol = 1 if len(columns) <= 3 else 2
    nrow = -(-len(columns) // ncol)
    height = 2.0 * nrow + 0.4
    fig = Figure(figsize=(10, height))
    axes = fig.subplots(nrow, ncol, sharex=True, squeeze=False).ravel()
    t = table.iters()
    for ax, col in zip(axes, columns, strict=False):
        y = table.values(col)
        ax.plot(t, y, marker="." if len(t) < 60 else None, lw=1)
        if marks is not None and len(marks):
            ax.vlines(
                marks,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                colors="tab:orange",
                linestyles=":",
                lw=0.8,
            )
        _scale(ax, y)
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=TICKS)
        if ax.get_yscale() == "linear":
            ax.locator_params(axis="y", nbins=TICKS)
    for ax in axes[len(columns) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(
        hspace=0.6, wspace=0.25, left=0.08, right=0.98, top=1 - 0.55 / height, bottom=0.35 / height
    )
    return to_data_uri(fig)


def sparkline(t: np.ndarray, y: np.ndarray, width: int = 140, height: int = 26) -> str:
    """An inline SVG polyline of ``y`` against ``t`` (finite points only), scaled to the
    box; a flat line for a constant series, a dot for a single point, '' for none."""
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = np.asarray(t, float)[ok], np.asarray(y, float)[ok]
    if not len(y):
        return ""
    pad = 3.0
    t_span = float(t.max() - t.min()) or 1.0
    y_span = float(y.max() - y.min())
    xs = pad + (t - t.min()) / t_span * (width - 2 * pad)
    ys = (height / 2 + 0 * y) if y_span == 0 else pad + (y.max() - y) / y_span * (height - 2 * pad)
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
    if len(y) == 1:
        return f'{head}<circle cx="{xs[0]:.1f}" cy="{ys[0]:.1f}" r="2" fill="#1f77b4"/></svg>'
    points = " ".join(f"{x:.1f},{v:.1f}" for x, v in zip(xs, ys, strict=True))
    return (
        f'{head}<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{points}"/></svg>'
    )


def plot_rho(data: RunData) -> tuple[str | None, str]:
    """Histogram of the latest raw rho sample (probes/rho_hist_<iter>.npy); without one,
    the per-iteration rho quantiles of the learning curves. Returns (uri, caption)."""
    it, rho = latest_array(data.run_dir, "rho_hist")
    if isinstance(rho, np.ndarray) and rho.size:
        rho = rho[np.isfinite(rho)].ravel()
        fig = Figure(figsize=(7, 3))
        ax = fig.add_subplot(1, 1, 1)
        lo, hi = (float(rho.min()), float(rho.max())) if rho.size else (1.0, 1.0)
        if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # on-policy: every ratio is exactly 1
            lo, hi = lo - 0.5, hi + 0.5
        ax.hist(rho, bins=60, range=(lo, hi), color="tab:blue", alpha=0.8)
        ax.axvline(1.0, color="k", ls="--", lw=1, label="rho = 1")
        ax.axvline(float(rho.mean()), color="tab:red", lw=1, label=f"mean {rho.mean():.4g}")
        ax.set_xlabel("rho (unclipped)")
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.15)
        return to_data_uri(fig), f"raw rho sample of the rho audit at iteration {it}"
    cols = [
        c for c in ("min_rho", "mean_rho", "p95_rho", "p99_rho", "max_rho") if data.curves.has(c)
    ]
    uri = None
    if cols and len(data.curves):
        fig = Figure(figsize=(7, 3))
        ax = fig.add_subplot(1, 1, 1)
        for c in cols:
            ax.plot(data.curves.iters(), data.curves.values(c), label=c, lw=1)
        ax.legend(fontsize=7)
        ax.set_xlabel("iter")
        fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.15)
        uri = to_data_uri(fig)
    return uri, "no raw rho sample saved: per-iteration rho quantiles of the training batches"


def plot_q_kernel(data: RunData) -> tuple[str | None, str]:
    """Heatmap of the latest Q_hat and its lag profile C(tau) = mean_t Q_hat(t, t + tau)."""
    it, Q = latest_array(data.run_dir, "q_kernel")
    if not isinstance(Q, np.ndarray) or Q.ndim != 2 or not Q.size:
        return None, "no Q_hat saved"
    _, lag = latest_array(data.run_dir, "q_kernel_lag", at_or_before=it)
    if not isinstance(lag, np.ndarray) or lag.ndim != 1:
        lag = np.array([np.mean(np.diagonal(Q, offset=k)) for k in range(Q.shape[0])])
    fig = Figure(figsize=(11, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    vmax = float(np.nanmax(np.abs(Q))) or 1.0
    im = ax.imshow(Q, cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"Q_hat(t, t') at iter {it}", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(np.arange(len(lag)), lag, lw=1)
    ax2.axhline(0.0, color="k", lw=0.5)
    ax2.set_title("lag profile C(tau)", fontsize=9)
    ax2.set_xlabel("tau")
    fig.subplots_adjust(left=0.06, right=0.97, top=0.9, bottom=0.15, wspace=0.45)
    return to_data_uri(fig), f"probes/q_kernel_{it:04d}.npy"


def plot_spectrum(data: RunData) -> tuple[str | None, str]:
    """Eigenvalues of A of the latest stability probe (probes/stability_eigs_<iter>.npy)
    in the complex plane, with the +-spectral_noise band of Re(l)."""
    it, eigs = latest_array(data.run_dir, "stability_eigs")
    if not isinstance(eigs, np.ndarray) or not eigs.size:
        return None, "no eigenvalues saved"
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(eigs.real, eigs.imag, s=6)
    noise = data.probe("stability_probe").last("spectral_noise")
    if noise is not None and np.isfinite(noise):
        ax.axvspan(-noise, noise, color="tab:gray", alpha=0.2, label="|Re| < spectral_noise")
        ax.legend(fontsize=7)
    ax.axvline(0.0, color="k", lw=0.5)
    ax.set_xlabel("Re eig(A)")
    ax.set_ylabel("Im")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.15)
    return to_data_uri(fig), f"probes/stability_eigs_{it:04d}.npy"


def plot_theory(theory: dict[str, Any]) -> str | None:
    """Measured value_gap (points) against the predicted band and curves of the theory
    overlay (:func:`tdlens.report.theory.theory_overlay`)."""
    if not theory["value_gap"]:
        return None
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    band = theory.get("band") or {}
    if band.get("lo"):
        ax.fill_between(
            theory["pred_iters"], band["lo"], band["hi"], alpha=0.25, label="predicted band"
        )
    ax.plot(theory["measured_iters"], theory["value_gap"], "o", label="measured value_gap")
    for label, values in theory["curves"].items():
        ax.plot(theory["pred_iters"], values, "--", label=label)
    ax.set_xlabel("iter")
    ax.set_ylabel("value_gap")
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.15)
    return to_data_uri(fig)


def plot_key_probes(data: RunData) -> str | None:
    """The probes' key series against iter (each probe's registry ``key_series``), each
    with its reference where it has one (drift vs noise_floor, eig_min_real vs
    -spectral_noise, drawn negated, rho^2 vs its closed form)."""
    panels = [
        (p, c, r)
        for p, c, r in registry.key_series()
        if data.probe(p).has(c) and len(data.probe(p))
    ]
    if not panels:
        return None
    nrow = -(-len(panels) // 2)
    height = 2.0 * nrow + 0.4
    fig = Figure(figsize=(10, height))
    axes = fig.subplots(nrow, 2, sharex=True, squeeze=False).ravel()
    for ax, (probe, col, ref) in zip(axes, panels, strict=False):
        table = data.probe(probe)
        t = table.iters()
        ax.plot(t, table.values(col), "o-", ms=3, lw=1, label=col)
        if ref is not None and table.has(ref):
            y_ref = table.values(ref) * (-1.0 if ref == "spectral_noise" else 1.0)
            label = f"-{ref}" if ref == "spectral_noise" else ref
            ax.plot(t, y_ref, "--", lw=1, label=label)
            ax.legend(fontsize=6)
        ax.set_title(f"{probe}.{col}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=TICKS)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.subplots_adjust(
        hspace=0.6, wspace=0.25, left=0.08, right=0.98, top=1 - 0.3 / height, bottom=0.35 / height
    )
    return to_data_uri(fig)
