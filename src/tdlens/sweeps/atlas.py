"""The regime atlas: phase diagrams of a sweep's regime labels (issue #14, SPEC 11).

``write_atlas(sweep_dirs, docs)`` reads one or two finished sweeps (plan.json and every
run directory, through the same records as the summary) and writes a Markdown page with
PNG phase diagrams beside it (``<docs stem>/``):

- **step x mismatch** (the first sweep, which varies alpha_w): every run at
  ``x = alpha_w / critical_step`` (its own latest stability round; the median over the
  sweep when a run has none, e.g. diverged before its first probe) and ``y`` = the
  mismatch axis (``theta_mu_offset_scale``, else ``sigma_pi / sigma_mu``, else
  ``sigma_mu / sigma_pi``), one panel per value of beta, coloured by regime label
  (mechanism included) and marked by mechanism. Theory boundaries: ``eta =
  critical_step`` is the vertical line ``x = 1``; ``eig_min_real = 0`` is the horizontal
  line where the median ``eig_min_real`` over a mismatch value changes sign from
  positive to negative (linear interpolation between the two mismatch values), with the
  band where the medians of ``eig_min_real_lo`` and ``eig_min_real_hi`` change sign
  (when the stability probe writes them); else the page states its range. For
  ``sigma_pi`` the closed form ``sigma_pi / sigma_mu = sqrt(2 / gamma)`` (docs/triad.md:
  every ratio truncated) is drawn as a thin line for comparison.
- **beta x offset** (the second sweep, else the first): per value of alpha_w one panel,
  each cell the majority label of its runs (seeds).

and for every label each sweep produced, one ``tdlens run`` command that reproduces a run
of that label (the sweep's base, its overrides and that run's swept values), plus the
shipped regime configs. Pure reading and drawing: no run is started.
"""

from __future__ import annotations

import io
import json
import math
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tdlens.regimes import entry
from tdlens.rundir.files import atomic_write_bytes, atomic_write_text
from tdlens.rundir.read import load_run
from tdlens.scores import REGIME_DOC
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.records import RunRecord, last_values, load_record
from tdlens.sweeps.spec import SEED_AXIS
from tdlens.sweeps.summary import majority_regime

MISMATCH_KEYS: tuple[str, ...] = ("theta_mu_offset_scale", "sigma_pi", "sigma_mu")
"""Mismatch axes in order of preference (sigma_pi is shown as sigma_pi / sigma_mu,
sigma_mu as sigma_mu / sigma_pi)."""
SHIPPED_REGIMES: tuple[tuple[str, str], ...] = (
    ("learning", "regime_learning"),
    ("plateau:slow-modes", "regime_plateau"),
    ("plateau:noise-floor", "regime_noise_floor"),
    ("diverged:step-size", "regime_divergence"),
    ("diverged:off-policy", "regime_triad"),
)
"""Shipped configs that show one regime each (tests/test_regime_configs.py)."""


class AtlasError(ValueError):
    """The sweep cannot be drawn as an atlas (no mismatch or alpha_w axis)."""


@dataclass(frozen=True)
class AtlasPoint:
    """One run placed on the diagrams."""

    record: RunRecord
    step_ratio: float
    mismatch: float
    beta: float
    alpha_w: float
    eig_min_real: float
    eig_lo: float = math.nan
    eig_hi: float = math.nan


@dataclass(frozen=True)
class Atlas:
    """What :func:`write_atlas` wrote and the points it drew."""

    page: Path
    images: list[Path]
    points: list[AtlasPoint]
    labels: dict[str, int]
    crossing: tuple[float, float, float]


def _param(rec: RunRecord, base: dict[str, Any], key: str) -> float:
    """A swept value of the run, else the base config's (dotted keys), as float."""
    if key in rec.params:
        return float(rec.params[key])
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else math.nan


def mismatch_name(mkey: str) -> str:
    """How the mismatch axis is labelled (a ratio for the action widths)."""
    return {"sigma_pi": "sigma_pi / sigma_mu", "sigma_mu": "sigma_mu / sigma_pi"}.get(mkey, mkey)


def _eig_interval(rec: RunRecord) -> tuple[float, float]:
    """``(eig_min_real_lo, eig_min_real_hi)`` of the run's latest stability round (NaN when
    the probe does not write them or the run has none)."""
    rows = list(load_run(rec.path).probe("stability_probe").rows) if rec.path.is_dir() else []
    got = last_values(rows, ("eig_min_real_lo", "eig_min_real_hi"))
    return got.get("eig_min_real_lo", math.nan), got.get("eig_min_real_hi", math.nan)


def mismatch_key(swept: Sequence[str]) -> str:
    """The first of MISMATCH_KEYS that the sweep varies."""
    for key in MISMATCH_KEYS:
        if key in swept:
            return key
    raise AtlasError(
        f"the sweep varies none of {', '.join(MISMATCH_KEYS)}: no mismatch axis to draw"
    )


def atlas_points(records: Sequence[RunRecord], base: dict[str, Any], mkey: str) -> list[AtlasPoint]:
    """Every run at ``(alpha_w / critical_step, mismatch)`` (module docstring)."""
    crit = np.array([r.metrics.get("critical_step", math.nan) for r in records])
    fallback = float(np.median(crit[np.isfinite(crit)])) if np.isfinite(crit).any() else math.nan
    points = []
    for rec, c in zip(records, crit, strict=True):
        alpha = _param(rec, base, "alpha_w")
        mismatch = _param(rec, base, mkey)
        if mkey == "sigma_mu":
            mismatch /= _param(rec, base, "sigma_pi")
        if mkey == "sigma_pi":
            mismatch /= _param(rec, base, "sigma_mu")
        c = c if math.isfinite(c) else fallback
        points.append(
            AtlasPoint(
                rec,
                alpha / c if c > 0 else math.nan,
                round(mismatch, 12),
                _param(rec, base, "beta"),
                alpha,
                rec.metrics.get("eig_min_real", math.nan),
                *_eig_interval(rec),
            )
        )
    return points


def eig_zero_crossing(points: Sequence[AtlasPoint], field_name: str = "eig_min_real") -> float:
    """Mismatch where the median of ``field_name`` (eig_min_real, eig_lo or eig_hi) per
    mismatch value first changes sign from positive to non-positive (linear
    interpolation), NaN when it never does."""
    values = sorted({p.mismatch for p in points})
    med = []
    for v in values:
        e = [getattr(p, field_name) for p in points if p.mismatch == v]
        e = [x for x in e if math.isfinite(x)]
        med.append(float(np.median(e)) if e else math.nan)
    for i in range(len(values) - 1):
        (v0, e0), (v1, e1) = (values[i], med[i]), (values[i + 1], med[i + 1])
        if math.isfinite(e0) and math.isfinite(e1) and e0 > 0 >= e1:
            return v0 + (v1 - v0) * e0 / (e0 - e1)
    return math.nan


def crossing_interval(points: Sequence[AtlasPoint]) -> tuple[float, float, float]:
    """``(crossing, lo, hi)``: the eig_min_real = 0 crossing of the medians and its band,
    from where the medians of eig_min_real_hi and eig_min_real_lo change sign (sorted;
    NaN where that median never changes sign inside the grid)."""
    mid = eig_zero_crossing(points)
    ends = sorted(eig_zero_crossing(points, f) for f in ("eig_lo", "eig_hi"))
    return mid, ends[0], ends[1]


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


def reproduce_command(plan: dict[str, Any], rec: RunRecord) -> str:
    """``tdlens run BASE --set k=v ...``: the sweep's base, overrides and the run's values."""
    spec = plan.get("spec") or {}
    base = str(spec.get("base") or plan.get("base_file"))
    sets = {**(spec.get("overrides") or {}), **rec.params}
    parts = ["tdlens", "run", base]
    for key, value in sets.items():
        parts += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    return " ".join(shlex.quote(p) for p in parts)


def _representatives(points: Sequence[AtlasPoint]) -> dict[str, AtlasPoint]:
    """Per label, the run nearest the middle of that label's runs in log step ratio."""
    by_label: dict[str, list[AtlasPoint]] = {}
    for p in points:
        by_label.setdefault(p.record.regime, []).append(p)
    out = {}
    for label, pts in sorted(by_label.items()):
        logs = np.log([p.step_ratio if p.step_ratio > 0 else 1.0 for p in pts])
        out[label] = pts[int(np.argmin(np.abs(logs - np.median(logs))))]
    return out


def _fig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def axis_effect(points: Sequence[AtlasPoint], field_name: str) -> tuple[int, int]:
    """``(slices whose labels differ along the axis, slices)``: a slice fixes every other
    drawn axis (alpha_w, beta, mismatch); labels are each run's (seeds kept apart)."""
    keys = [k for k in ("alpha_w", "beta", "mismatch") if k != field_name]
    slices: dict[tuple[float, ...], set[str]] = {}
    for p in points:
        slices.setdefault(tuple(getattr(p, k) for k in keys), set()).add(p.record.regime)
    return sum(len(labels) > 1 for labels in slices.values()), len(slices)


def _boundary_text(
    points: Sequence[AtlasPoint],
    mname: str,
    crossing: tuple[float, float, float],
    closed_form: float,
) -> str:
    mid, lo, hi = crossing
    eig = [p.eig_min_real for p in points if math.isfinite(p.eig_min_real)]
    theory = (
        f"; the closed form with every ratio truncated ([the deadly triad](triad.md)) puts it "
        f"at {mname} = sqrt(2 / gamma) = {closed_form:.3g} (thin dash-dotted line)"
        if math.isfinite(closed_form)
        else ""
    )
    if math.isfinite(mid):
        has_interval = any(math.isfinite(p.eig_lo) for p in points)
        if math.isfinite(lo) and math.isfinite(hi):
            band = (
                f", between {lo:.3g} and {hi:.3g} where the medians of `eig_min_real_hi` and "
                "`eig_min_real_lo` change sign (shaded band)"
            )
        elif has_interval:
            band = (
                ", and the medians of `eig_min_real_lo` / `eig_min_real_hi` do not both "
                "change sign inside the grid, so no band is drawn"
            )
        else:
            band = ""
        return (
            f"the median `eig_min_real` changes sign at {mname} = {mid:.3g} (dotted line: "
            f"`eig_min_real = 0`){band}{theory}. Above it an eigenvalue of A is negative: "
            "TD diverges at every step (`diverged:off-policy`), below it only past the "
            "critical step (`diverged:step-size`). Near the line A is close to singular, "
            "so the TD fixed point `w# = A^-1 b`, and with it `value_gap` and its drift, "
            "is ill-determined: labels in the rows next to the line that rest on those "
            "numbers (the plateau mechanisms) are uncertain there"
        )
    if not eig:
        return "no run has a stability round, so `eig_min_real` is unknown"
    return (
        f"the median `eig_min_real` over each {mname} value never changes sign from positive "
        f"to negative (every run: {min(eig):.3g} to {max(eig):.3g}, within the spectral noise "
        "where negative), so there is no `eig_min_real = 0` line: no off-policy instability "
        f"in this range{theory}"
    )


def _label_table(points: Sequence[AtlasPoint]) -> list[str]:
    labels = Counter(p.record.regime for p in points)
    return [
        "| label | runs |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in sorted(labels.items())),
        "",
    ]


def _effects(points: Sequence[AtlasPoint], mname: str) -> str:
    swept = [k for k in ("alpha_w", "beta", "mismatch") if len({getattr(p, k) for p in points}) > 1]
    effects = {k: axis_effect(points, k) for k in swept}
    return (
        "Which axes move the label (slices: the other two axes fixed): "
        + "; ".join(
            f"{mname if k == 'mismatch' else k} changes it in {d} of {n}"
            for k, (d, n) in effects.items()
        )
        + ".\n"
    )


@dataclass(frozen=True)
class AtlasSweep:
    """One sweep read for the atlas: its plan, mismatch key and points."""

    plan: dict[str, Any]
    mkey: str
    points: list[AtlasPoint]

    @property
    def spec_name(self) -> str:
        return Path(str(self.plan.get("spec_file") or f"{self.plan.get('name')}.yaml")).name


def atlas_markdown(
    step: AtlasSweep,
    track: AtlasSweep,
    crossing: tuple[float, float, float],
    closed_form: float,
    images: Sequence[str],
    command: str,
) -> str:
    """The atlas page (module docstring)."""
    sweeps = [step] if track is step else [step, track]
    sname, tname = mismatch_name(step.mkey), mismatch_name(track.mkey)
    boundary = _boundary_text(step.points, sname, crossing, closed_form)
    compute = sum(
        p.record.seconds for sw in sweeps for p in sw.points if math.isfinite(p.record.seconds)
    )
    made = " and ".join(
        f"`tdlens sweep configs/sweeps/{sw.spec_name} --jobs 2 --output-dir OUT`" for sw in sweeps
    )
    lines = [
        "# The regime atlas\n",
        f"Generated by `{command}` from the sweep"
        f"{'s' if len(sweeps) > 1 else ''} "
        + " and ".join(f"`{sw.plan.get('name')}` ({len(sw.points)} runs)" for sw in sweeps)
        + f", {compute:.0f} s of compute summed over runs, made with {made}. "
        "Do not edit by hand.\n",
        "Regime labels (from each run's own numbers, `tdlens.scores`): " + REGIME_DOC + "\n",
        "Why an eigenvalue of A turns negative when the target is wider than the behaviour "
        "and the ratios are truncated: [the deadly triad](triad.md).\n",
        f"## Regime over alpha_w / critical_step x {sname}\n",
        f"Sweep `{step.plan.get('name')}`:\n",
        *_label_table(step.points),
        _effects(step.points, sname),
        "Each point is one run, at its step relative to its own critical step (latest "
        "stability round). Theory boundaries: the dashed line is `eta = critical_step` "
        f"(beyond it the fastest mode overshoots, `|1 - eta l| > 1`); {boundary}.\n",
        f"![regime over step and mismatch]({images[0]})\n",
        f"## Regime over beta x {tname}\n",
        f"Sweep `{track.plan.get('name')}`:\n",
        *_label_table(track.points),
        _effects(track.points, tname),
        "One panel per alpha_w; each cell is the majority label of its runs.\n",
        f"![regime over beta and mismatch]({images[1]})\n",
        "## Reproduce each regime\n",
        "One run of every label in each sweep (the run nearest the middle of its label's "
        "step range):\n",
        "| sweep | label | alpha_w / critical_step | command |",
        "| --- | --- | --- | --- |",
    ]
    for sw in sweeps:
        for label, p in _representatives(sw.points).items():
            lines.append(
                f"| {sw.plan.get('name')} | {label} | {p.step_ratio:.3g} | "
                f"`{reproduce_command(sw.plan, p.record)}` |"
            )
    lines += [
        "",
        "The shipped regime configs, each verified by its own report in "
        "`tests/test_regime_configs.py`:\n",
        "| label | command |",
        "| --- | --- |",
        *(f"| {label} | `tdlens run {name}` |" for label, name in SHIPPED_REGIMES),
        "",
    ]
    return "\n".join(lines)


def read_sweep(sweep_dir: Path, need_step: bool) -> AtlasSweep:
    """A sweep's plan and points; ``need_step``: it must vary alpha_w (AtlasError)."""
    plan = read_plan(sweep_dir)
    swept = [a["key"] for a in plan.get("axes", []) if a["key"] != SEED_AXIS]
    if need_step and "alpha_w" not in swept:
        raise AtlasError(f"{sweep_dir.name}: the sweep does not vary alpha_w: no step axis to draw")
    mkey = mismatch_key(swept)
    records = [
        load_record(run_dir(sweep_dir, e["run_id"]), e.get("overrides", {})) for e in plan["runs"]
    ]
    return AtlasSweep(plan, mkey, atlas_points(records, plan.get("base_config") or {}, mkey))


def closed_form_boundary(sweep: AtlasSweep) -> float:
    """``sqrt(2 / gamma)`` when the mismatch is sigma_pi / sigma_mu and gamma is one value
    (docs/triad.md), else NaN."""
    if sweep.mkey != "sigma_pi":
        return math.nan
    base = sweep.plan.get("base_config") or {}
    gammas = {_param(p.record, base, "gamma") for p in sweep.points}
    (gamma,) = gammas if len(gammas) == 1 else (math.nan,)
    return math.sqrt(2.0 / gamma) if gamma > 0 else math.nan


def write_atlas(
    sweep_dirs: str | Path | Sequence[str | Path], docs: str | Path, command: str | None = None
) -> Atlas:
    """Read the sweep(s) and write the atlas page `docs` and its images (module docstring):
    step x mismatch from the first sweep, beta x offset from the second (else the first)."""
    dirs = (
        [Path(sweep_dirs)] if isinstance(sweep_dirs, str | Path) else [Path(d) for d in sweep_dirs]
    )
    if not 1 <= len(dirs) <= 2:
        raise AtlasError(f"expected one or two sweep directories, got {len(dirs)}")
    docs = Path(docs)
    step = read_sweep(dirs[0], need_step=True)
    track = read_sweep(dirs[1], need_step=False) if len(dirs) > 1 else step
    crossing = crossing_interval(step.points)
    closed = closed_form_boundary(step)
    image_dir = docs.parent / docs.stem
    image_dir.mkdir(parents=True, exist_ok=True)
    names = ["step_mismatch.png", "beta_offset.png"]
    figures = [
        step_mismatch_figure(step.points, step.mkey, crossing, closed),
        beta_offset_figure(track.points, track.mkey),
    ]
    images = []
    for name, fig in zip(names, figures, strict=True):
        atomic_write_bytes(image_dir / name, _fig_png(fig))
        images.append(image_dir / name)
    command = command or f"tdlens atlas {' '.join(str(d) for d in dirs)} --docs {docs}"
    rel = [f"{docs.stem}/{n}" for n in names]
    atomic_write_text(docs, atlas_markdown(step, track, crossing, closed, rel, command))
    points = step.points if track is step else [*step.points, *track.points]
    labels = dict(Counter(p.record.regime for p in points))
    return Atlas(docs, images, points, labels, crossing)
