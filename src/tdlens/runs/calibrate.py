"""Calibrate the stability probe's critical step against training itself (docs/model.md §6.2).

With the policies frozen (alpha_pi = 0, beta = 0) the critic update is the linear
stochastic iteration ``w <- w + eta (b_n - A_n w)`` whose mean diverges once eta passes
the critical step ``min 2 Re l / |l|^2``. :func:`calibrate`:

1. probes the initial snapshot with the stability probe alone: critical_step and its
   interval ``[critical_step_lo, critical_step_hi]`` (as eta; divided by ``s B T`` as
   alpha_w);
2. trains ``iters`` iterations from the same initial parameters at
   ``alpha_w = f x critical_alpha_w`` for every f of the grid (the training streams of
   the run seed, so every f sees the same batches);
3. calls a run diverged when its largest ``||w||`` exceeds GROWTH_FACTOR times the
   largest ``||w||`` of the smallest f (a step well inside the stable range) or is not
   finite. The empirical threshold is bracketed by the largest stable f below the first
   diverged f and that f.

Rows (CSV): f, alpha_w, eta, diverged, w_norm_max, w_norm_last, growth (``w_norm_max``
over the reference's). The predicted interval in units of f is
``[critical_step_lo, critical_step_hi] / critical_step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.config import RunConfig
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes.manager import ProbeManager
from tdlens.rundir.files import atomic_write_bytes, atomic_write_json, atomic_write_text

DEFAULT_GRID = (0.5, 0.8, 0.9, 1.1, 1.25, 1.5, 2.0)
GROWTH_FACTOR = 10.0
DEFAULT_ITERS = 60
COLUMNS = ("f", "alpha_w", "eta", "diverged", "w_norm_max", "w_norm_last", "growth")


@dataclass(frozen=True)
class Calibration:
    """The predicted critical step with its interval and the trainings of the grid."""

    critical_step: float
    critical_step_lo: float
    critical_step_hi: float
    critical_alpha_w: float
    rows: tuple[dict[str, float], ...]
    w_norms: np.ndarray  # [len(grid), iters]

    @property
    def predicted_interval(self) -> tuple[float, float]:
        """``[lo, hi] / critical_step`` (units of f)."""
        return (
            self.critical_step_lo / self.critical_step,
            self.critical_step_hi / self.critical_step,
        )

    @property
    def empirical_bracket(self) -> tuple[float, float]:
        """(largest stable f below the first diverged f, first diverged f); nan / inf when
        every f diverged / none did."""
        fs = [r["f"] for r in self.rows]
        div = [bool(r["diverged"]) for r in self.rows]
        if not any(div):
            return (max(fs), math.inf)
        first = div.index(True)
        return (fs[first - 1] if first else math.nan, fs[first])


def frozen_config(cfg: RunConfig) -> RunConfig:
    """The config with both policies frozen and only the stability probe enabled."""
    probes = cfg.probes.model_copy(
        update={
            name: cfg.probes.section(name).model_copy(update={"enabled": False})
            for name in ("fixed_point", "distribution", "q_kernel", "rho_audit")
        }
        | {"stability": cfg.probes.stability.model_copy(update={"enabled": True})}
    )
    return cfg.model_copy(update={"alpha_pi": 0.0, "beta": 0.0, "probes": probes})


def calibrate(
    cfg: RunConfig, grid: tuple[float, ...] = DEFAULT_GRID, iters: int = DEFAULT_ITERS
) -> Calibration:
    """Probe, then train at ``f x critical_alpha_w`` for each f (module docstring)."""
    cfg = frozen_config(cfg)
    maps = make_feature_maps(cfg)
    params = init_params(cfg, maps)
    manager = ProbeManager(cfg, maps)
    rnd = manager.run(0, params, np.zeros((cfg.trajectories, cfg.horizon)), 0.0, "calibrate")
    stab = rnd.rows["stability_probe"]
    crit_alpha = stab["critical_alpha_w"]
    grid = tuple(sorted(grid))
    norms = np.full((len(grid), iters), np.nan)
    ws = Workspace()
    for i, f in enumerate(grid):
        run_cfg = cfg.model_copy(update={"alpha_w": f * crit_alpha})
        p = params
        for n in range(iters):
            p = outer_iteration(run_cfg, maps, p, n, ws).params
            norms[i, n] = float(np.linalg.norm(p.w))
            if not np.isfinite(norms[i, n]):
                break
    ref = float(np.nanmax(norms[0])) if np.isfinite(np.nanmax(norms[0])) else math.inf
    rows = []
    s_terms = cfg.step_scale * cfg.trajectories * cfg.horizon
    for i, f in enumerate(grid):
        finite = np.isfinite(norms[i]).all()
        w_max = float(np.nanmax(norms[i])) if finite else math.inf
        rows.append(
            {
                "f": f,
                "alpha_w": f * crit_alpha,
                "eta": f * crit_alpha * s_terms,
                "diverged": float(not finite or w_max > GROWTH_FACTOR * ref),
                "w_norm_max": w_max,
                "w_norm_last": float(norms[i, -1]),
                "growth": w_max / ref,
            }
        )
    return Calibration(
        critical_step=stab["critical_step"],
        critical_step_lo=stab["critical_step_lo"],
        critical_step_hi=stab["critical_step_hi"],
        critical_alpha_w=crit_alpha,
        rows=tuple(rows),
        w_norms=norms,
    )


def plot_figure(cal: Calibration) -> Any:
    """``||w||`` against iteration per f (log scale): a matplotlib Figure whose
    constrained layout keeps the title, axis labels and legend inside it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for row, norms in zip(cal.rows, cal.w_norms, strict=True):
        style = "-" if not row["diverged"] else "--"
        ax.semilogy(np.arange(norms.size), norms, style, label=f"f = {row['f']:g}")
    lo, hi = cal.predicted_interval
    ax.set_title(
        f"critical_step {cal.critical_step:.4g} (f interval {lo:.3g}-{hi:.3g}); "
        f"empirical f in {cal.empirical_bracket}",
        fontsize=8,
    )
    ax.set_xlabel("iteration (0-based)")
    ax.set_ylabel("||w||")
    ax.legend(fontsize=7)
    return fig


def plot_png(cal: Calibration) -> bytes:
    """:func:`plot_figure` as PNG bytes."""
    import io

    buf = io.BytesIO()
    plot_figure(cal).savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write(cal: Calibration, out_dir: Path) -> list[Path]:
    """calibration.csv, calibration.json (summary) and calibration.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)] + [",".join(repr(float(r[c])) for c in COLUMNS) for r in cal.rows]
    paths = [out_dir / "calibration.csv", out_dir / "calibration.json", out_dir / "calibration.png"]
    atomic_write_text(paths[0], "\n".join(lines) + "\n")
    lo, hi = cal.predicted_interval
    stable, div = cal.empirical_bracket
    atomic_write_json(
        paths[1],
        {
            "critical_step": cal.critical_step,
            "critical_step_lo": cal.critical_step_lo,
            "critical_step_hi": cal.critical_step_hi,
            "critical_alpha_w": cal.critical_alpha_w,
            "predicted_f_lo": lo,
            "predicted_f_hi": hi,
            "empirical_f_stable": None if math.isnan(stable) else stable,
            "empirical_f_diverged": None if math.isinf(div) else div,
        },
    )
    atomic_write_bytes(paths[2], plot_png(cal))
    return paths
