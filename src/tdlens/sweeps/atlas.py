"""The regime atlas: phase diagrams of a sweep's regime labels (issue #14, SPEC 11).

``write_atlas(sweep_dir, docs)`` reads a finished sweep (plan.json and every run
directory, through the same records as the summary) and writes a Markdown page with PNG
phase diagrams beside it (``<docs stem>/``):

- **step x mismatch**: every run at ``x = alpha_w / critical_step`` (its own latest
  stability round; the median over the sweep when a run has none, e.g. diverged before
  its first probe) and ``y`` = the mismatch axis (``theta_mu_offset_scale``, else
  ``sigma_mu / sigma_pi``), one panel per value of the remaining axis (beta), coloured
  by regime family and marked by mechanism. Theory boundaries: ``eta = critical_step``
  is the vertical line ``x = 1``; ``eig_min_real = 0`` is drawn where the median
  ``eig_min_real`` over a mismatch value changes sign (linear interpolation between the
  two mismatch values), else the page states its smallest value.
- **beta x offset**: per value of alpha_w one panel, each cell the majority label of its
  runs (seeds).

and for every label the sweep produced, one ``tdlens run`` command that reproduces a run
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

from tdlens.rundir.files import atomic_write_bytes, atomic_write_text
from tdlens.scores import REGIME_DOC, regime_family
from tdlens.sweeps.plan import read_plan, run_dir
from tdlens.sweeps.records import RunRecord, load_record
from tdlens.sweeps.spec import SEED_AXIS
from tdlens.sweeps.summary import majority_regime

MISMATCH_KEYS: tuple[str, ...] = ("theta_mu_offset_scale", "sigma_mu")
"""Mismatch axes in order of preference (sigma_mu is shown as sigma_mu / sigma_pi)."""
FAMILY_COLOURS: dict[str, str] = {
    "learning": "#1a7f37",
    "plateau": "#d4a017",
    "frozen": "#1f6feb",
    "diverged": "#cf222e",
    "n/a": "#999999",
}
MECHANISM_MARKERS: dict[str, str] = {
    "": "o",
    "slow-modes": "s",
    "moving-target": ">",
    "noise-floor": "v",
    "step-size": "X",
    "off-policy": "P",
}
SHIPPED_REGIMES: tuple[tuple[str, str], ...] = (
    ("learning", "regime_learning"),
    ("plateau:slow-modes", "regime_plateau"),
    ("plateau:moving-target", "regime_moving_target"),
    ("plateau:noise-floor", "regime_noise_floor"),
    ("diverged", "regime_divergence"),
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


@dataclass(frozen=True)
class Atlas:
    """What :func:`write_atlas` wrote and the points it drew."""

    page: Path
    images: list[Path]
    points: list[AtlasPoint]
    labels: dict[str, int]


def _param(rec: RunRecord, base: dict[str, Any], key: str) -> float:
    """A swept value of the run, else the base config's (dotted keys), as float."""
    if key in rec.params:
        return float(rec.params[key])
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else math.nan


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
        c = c if math.isfinite(c) else fallback
        points.append(
            AtlasPoint(
                rec,
                alpha / c if c > 0 else math.nan,
                mismatch,
                _param(rec, base, "beta"),
                alpha,
                rec.metrics.get("eig_min_real", math.nan),
            )
        )
    return points


def eig_zero_crossing(points: Sequence[AtlasPoint]) -> float:
    """Mismatch where the median eig_min_real per mismatch value first changes sign
    (linear interpolation), NaN when it never does."""
    values = sorted({p.mismatch for p in points})
    med = []
    for v in values:
        e = [p.eig_min_real for p in points if p.mismatch == v and math.isfinite(p.eig_min_real)]
        med.append(float(np.median(e)) if e else math.nan)
    for i in range(len(values) - 1):
        (v0, e0), (v1, e1) = (values[i], med[i]), (values[i + 1], med[i + 1])
        if math.isfinite(e0) and math.isfinite(e1) and e0 > 0 >= e1:
            return v0 + (v1 - v0) * e0 / (e0 - e1)
    return math.nan


def _split(label: str) -> tuple[str, str]:
    family = regime_family(label)
    return family, label[len(family) + 1 :] if ":" in label else ""


def step_mismatch_figure(points: Sequence[AtlasPoint], mkey: str, crossing: float) -> Figure:
    """Panels per beta: runs at (alpha_w / critical_step, mismatch), coloured by label."""
    betas = sorted({p.beta for p in points})
    fig = Figure(figsize=(3.6 * len(betas) + 1.6, 3.8))
    axes = fig.subplots(1, len(betas), sharey=True, squeeze=False)[0]
    seen: dict[str, Any] = {}
    for ax, beta in zip(axes, betas, strict=True):
        for p in points:
            if p.beta != beta or not math.isfinite(p.step_ratio):
                continue
            family, mech = _split(p.record.regime)
            h = ax.scatter(
                p.step_ratio,
                p.mismatch,
                c=FAMILY_COLOURS.get(family, "#000000"),
                marker=MECHANISM_MARKERS.get(mech, "o"),
                s=46,
                edgecolors="k",
                linewidths=0.4,
            )
            seen.setdefault(p.record.regime, h)
        ax.axvline(1.0, color="k", ls="--", lw=1)
        if math.isfinite(crossing):
            ax.axhline(crossing, color="m", ls=":", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("alpha_w / critical_step")
        ax.set_title(f"beta = {beta:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sigma_mu / sigma_pi" if mkey == "sigma_mu" else mkey)
    labels = sorted(seen)
    fig.legend([seen[k] for k in labels], labels, loc="center right", fontsize=7)
    fig.subplots_adjust(right=1 - 1.5 / fig.get_figwidth(), wspace=0.08)
    return fig


def beta_offset_figure(points: Sequence[AtlasPoint], mkey: str) -> Figure:
    """Panels per alpha_w: the majority label of each (beta, mismatch) cell."""
    alphas = sorted({p.alpha_w for p in points})
    betas = sorted({p.beta for p in points})
    mism = sorted({p.mismatch for p in points})
    cols = min(len(alphas), 3)
    rows = math.ceil(len(alphas) / cols)
    fig = Figure(figsize=(3.4 * cols + 1.6, 3.0 * rows))
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
                family, mech = _split(label)
                h = ax.scatter(
                    ix,
                    iy,
                    c=FAMILY_COLOURS.get(family, "#000000"),
                    marker=MECHANISM_MARKERS.get(mech, "o"),
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
        ax.set_ylabel("sigma_mu / sigma_pi" if mkey == "sigma_mu" else mkey)
    for ax in axes[len(alphas) :]:
        ax.set_visible(False)
    labels = sorted(seen)
    fig.legend([seen[k] for k in labels], labels, loc="center right", fontsize=7)
    fig.subplots_adjust(right=1 - 1.5 / fig.get_figwidth(), hspace=0.5, wspace=0.35)
    return fig


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


def _boundary_text(points: Sequence[AtlasPoint], mname: str, crossing: float) -> str:
    eig = [p.eig_min_real for p in points if math.isfinite(p.eig_min_real)]
    if math.isfinite(crossing):
        return f"the median `eig_min_real` changes sign at {mname} = {crossing:.3g} (dotted line)"
    if not eig:
        return "no run has a stability round, so `eig_min_real` is unknown"
    return (
        f"the median `eig_min_real` over each {mname} value never changes sign from positive "
        f"to negative (every run: {min(eig):.3g} to {max(eig):.3g}, within the spectral noise "
        "where negative), so there is no `eig_min_real = 0` line: no off-policy instability "
        "in this range"
    )


def atlas_markdown(
    plan: dict[str, Any],
    points: Sequence[AtlasPoint],
    mkey: str,
    crossing: float,
    images: Sequence[str],
    command: str,
) -> str:
    """The atlas page (module docstring)."""
    labels = Counter(p.record.regime for p in points)
    mname = "sigma_mu / sigma_pi" if mkey == "sigma_mu" else mkey
    boundary = _boundary_text(points, mname, crossing)
    effects = {k: axis_effect(points, k) for k in ("alpha_w", "beta", "mismatch")}
    compute = sum(p.record.seconds for p in points if math.isfinite(p.record.seconds))
    spec_file = plan.get("spec_file") or "the sweep spec"
    lines = [
        "# The regime atlas\n",
        f"Generated by `{command}` from the sweep `{plan.get('name')}` ({len(points)} runs, "
        f"{compute:.0f} s of compute summed over runs), made with "
        f"`tdlens sweep configs/sweeps/{Path(str(spec_file)).name} --jobs 2 --output-dir OUT`. "
        "Do not edit by hand.\n",
        "Regime labels (from each run's own numbers, `tdlens.scores`): " + REGIME_DOC + "\n",
        "| label | runs |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in sorted(labels.items())),
        "",
        "Which axes move the label (slices: the other two axes fixed): "
        + "; ".join(
            f"{'alpha_w' if k == 'alpha_w' else mname if k == 'mismatch' else k} changes it "
            f"in {d} of {n}"
            for k, (d, n) in effects.items()
        )
        + ".\n",
        f"## Regime over alpha_w / critical_step x {mname}\n",
        "Each point is one run, at its step relative to its own critical step (latest "
        "stability round). Theory boundaries: the dashed line is `eta = critical_step` "
        f"(beyond it the fastest mode overshoots, `|1 - eta l| > 1`); {boundary}.\n",
        f"![regime over step and mismatch]({images[0]})\n",
        f"## Regime over beta x {mname}\n",
        "One panel per alpha_w; each cell is the majority label of its runs.\n",
        f"![regime over beta and mismatch]({images[1]})\n",
        "## Reproduce each regime\n",
        "One run of every label in this atlas (the run nearest the middle of its label's "
        "step range):\n",
        "| label | alpha_w / critical_step | command |",
        "| --- | --- | --- |",
    ]
    for label, p in _representatives(points).items():
        lines.append(f"| {label} | {p.step_ratio:.3g} | `{reproduce_command(plan, p.record)}` |")
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


def write_atlas(sweep_dir: str | Path, docs: str | Path, command: str | None = None) -> Atlas:
    """Read a sweep and write the atlas page `docs` and its images (module docstring)."""
    sweep_dir, docs = Path(sweep_dir), Path(docs)
    plan = read_plan(sweep_dir)
    swept = [a["key"] for a in plan.get("axes", []) if a["key"] != SEED_AXIS]
    if "alpha_w" not in swept:
        raise AtlasError("the sweep does not vary alpha_w: no step axis to draw")
    mkey = mismatch_key(swept)
    records = [
        load_record(run_dir(sweep_dir, e["run_id"]), e.get("overrides", {})) for e in plan["runs"]
    ]
    points = atlas_points(records, plan.get("base_config") or {}, mkey)
    crossing = eig_zero_crossing(points)
    image_dir = docs.parent / docs.stem
    image_dir.mkdir(parents=True, exist_ok=True)
    names = ["step_mismatch.png", "beta_offset.png"]
    figures = [step_mismatch_figure(points, mkey, crossing), beta_offset_figure(points, mkey)]
    images = []
    for name, fig in zip(names, figures, strict=True):
        atomic_write_bytes(image_dir / name, _fig_png(fig))
        images.append(image_dir / name)
    command = command or f"tdlens atlas {sweep_dir} --docs {docs}"
    rel = [f"{docs.stem}/{n}" for n in names]
    atomic_write_text(docs, atlas_markdown(plan, points, mkey, crossing, rel, command))
    return Atlas(docs, images, points, dict(Counter(p.record.regime for p in points)))
