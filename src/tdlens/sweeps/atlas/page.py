"""The atlas page: its Markdown (boundary text, label tables, reproduce commands,
shipped regime configs) and :func:`write_atlas`, which writes it with its images.
"""

from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdlens.catalog.records import RunRecord
from tdlens.rundir.files import atomic_write_bytes, atomic_write_text
from tdlens.scores import REGIME_DOC
from tdlens.sweeps.atlas.data import AtlasError, AtlasPoint, AtlasSweep, mismatch_name, read_sweep
from tdlens.sweeps.atlas.geometry import (
    _representatives,
    axis_effect,
    closed_form_boundary,
    crossing_interval,
)
from tdlens.sweeps.atlas.plot import _fig_png, beta_offset_figure, step_mismatch_figure
from tdlens.sweeps.atlas.seeds import agreement_lines
from tdlens.sweeps.atlas.twins import Explainer, TwinRow, explain_representatives, twin_lines

HAND_WRITTEN = "<!-- hand-written below: tdlens atlas keeps everything from this line on -->"
"""Marks the start of the page's hand-written tail (evidence no sweep produces, e.g. "Is
moving-target ever the cause?"): :func:`write_atlas` keeps it when it regenerates."""

SHIPPED_REGIMES: tuple[tuple[str, str], ...] = (
    ("learning", "regime_learning"),
    ("plateau:slow-modes", "regime_plateau"),
    ("plateau:noise-floor", "regime_noise_floor"),
    ("diverged:step-size", "regime_divergence"),
    ("diverged:off-policy", "regime_triad"),
)
"""Shipped configs that show one regime each (tests/test_regime_configs.py)."""


@dataclass(frozen=True)
class Atlas:
    """What :func:`write_atlas` wrote and the points it drew."""

    page: Path
    images: list[Path]
    points: list[AtlasPoint]
    labels: dict[str, int]
    crossing: tuple[float, float, float]


def reproduce_command(plan: dict[str, Any], rec: RunRecord) -> str:
    """``tdlens run BASE --set k=v ...``: the sweep's base, overrides and the run's values."""
    spec = plan.get("spec") or {}
    base = str(spec.get("base") or plan.get("base_file"))
    sets = {**(spec.get("overrides") or {}), **rec.params}
    parts = ["tdlens", "run", base]
    for key, value in sets.items():
        parts += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    return " ".join(shlex.quote(p) for p in parts)


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


def atlas_markdown(
    step: AtlasSweep,
    track: AtlasSweep,
    crossing: tuple[float, float, float],
    closed_form: float,
    images: Sequence[str],
    command: str,
    twins: Sequence[TwinRow] = (),
    explain_iters: int = 0,
) -> str:
    """The atlas page (module docstring), without its hand-written tail."""
    sweeps = [step] if track is step else [step, track]
    seeded = [sw for sw in sweeps if sw.seed_points]
    sname, tname = mismatch_name(step.mkey), mismatch_name(track.mkey)
    boundary = _boundary_text(step.points, sname, crossing, closed_form)
    compute = sum(
        p.record.seconds
        for sw in sweeps
        for p in sw.seed_points or sw.points
        if math.isfinite(p.record.seconds)
    )
    made = " and ".join(
        f"`tdlens sweep configs/sweeps/{sw.spec_name} --jobs 2 --output-dir OUT`" for sw in sweeps
    )
    lines = [
        "# The regime atlas\n",
        f"Generated by `{command}` from the sweep"
        f"{'s' if len(sweeps) > 1 else ''} "
        + " and ".join(f"`{sw.plan.get('name')}` ({_runs(sw)})" for sw in sweeps)
        + f", {compute:.0f} s of compute summed over runs, made with {made}. "
        "Do not edit by hand (except the hand-written sections at the end, which "
        "regeneration keeps).\n",
        "Regime labels (from each run's own numbers, `tdlens.scores`): " + REGIME_DOC + "\n",
        "Why an eigenvalue of A turns negative when the target is wider than the behaviour "
        "and the ratios are truncated: [the deadly triad](triad.md).\n",
        "How the noise floor and the relaxation time scale with the step and the batch, and "
        "how annealing the step removes the floor: [the plateau laws](laws.md).\n",
        *(
            [
                f"Diagrams, label tables and representative runs show each sweep's first seed "
                f"only (seed {seeded[0].seeds[0]}); how many grid points keep their label at "
                "the other seeds: [label agreement over seeds](#label-agreement-over-seeds).\n"
            ]
            if seeded
            else []
        ),
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
        "One panel per alpha_w; each cell is the majority label of its runs"
        + (f" at seed {track.seeds[0]}.\n" if track.seed_points else ".\n"),
        f"![regime over beta and mismatch]({images[1]})\n",
        *(["## Label agreement over seeds\n"] if seeded else []),
        *(line for sw in seeded for line in agreement_lines(sw)),
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
        *twin_lines(twins, explain_iters),
    ]
    return "\n".join(lines)


def _runs(sw: AtlasSweep) -> str:
    if not sw.seed_points:
        return f"{len(sw.points)} runs"
    return f"{len(sw.points)} grid points x {len(sw.seeds)} seeds = {len(sw.seed_points)} runs"


def hand_written_tail(docs: Path) -> str:
    """The existing page's text from :data:`HAND_WRITTEN` on ("" without the marker)."""
    text = docs.read_text(encoding="utf-8") if docs.is_file() else ""
    at = text.find(HAND_WRITTEN)
    return text[at:] if at >= 0 else ""


def write_atlas(
    sweep_dirs: str | Path | Sequence[str | Path],
    docs: str | Path,
    command: str | None = None,
    *,
    explain_iters: int | None = None,
    explainer: Explainer | None = None,
    jobs: int = 1,
) -> Atlas:
    """Read the sweep(s) and write the atlas page `docs` and its images (module docstring):
    step x mismatch from the first sweep, beta x offset from the second (else the first).

    With `explain_iters`, each label's representative run is explained by its intervention
    twins (:mod:`~tdlens.sweeps.atlas.twins`; `explainer` replaces ``tdlens explain``,
    `jobs` its workers) and the page gains the twin table. The existing page's
    hand-written tail (:data:`HAND_WRITTEN` on) is kept at the end."""
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
    sweeps = [step] if track is step else [step, track]
    twins = (
        explain_representatives(sweeps, explain_iters, explainer, jobs)
        if explain_iters is not None
        else []
    )
    text = atlas_markdown(step, track, crossing, closed, rel, command, twins, explain_iters or 0)
    tail = hand_written_tail(docs)
    atomic_write_text(docs, f"{text}\n{tail}" if tail else text)
    points = step.points if track is step else [*step.points, *track.points]
    labels = dict(Counter(p.record.regime for p in points))
    return Atlas(docs, images, points, labels, crossing)
