"""The atlas's seed agreement: does a grid point keep its label when only the seed changes?

A sweep with a ``seeds`` axis runs every grid point at each seed ``s_0 < s_1 < ...``; the
diagrams and tables of the atlas show ``s_0`` only. Per label ``l`` of ``s_0``, over the
grid points ``g`` labelled ``l`` at ``s_0``:

    kept(l)        = #{g : label(g, s) = l for every seed s}
    family_kept(l) = #{g : family(label(g, s)) = family(l) for every seed s}

and overall ``sum_l kept(l) / sum_l points(l)``. Seeds share nothing but the config, so
a label that flips between seeds is a statement about that grid point's run-to-run
spread, not a bug of one run. Only grid points run at every seed of the sweep count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tdlens.scores import regime_family
from tdlens.sweeps.atlas.data import AtlasPoint, AtlasSweep


@dataclass(frozen=True)
class LabelAgreement:
    """One label of the first seed: its grid points and how many keep it at every seed."""

    label: str
    points: int
    kept: int
    family_kept: int
    others: dict[str, int] = field(default_factory=dict)
    """Labels the other seeds gave these grid points instead (runs)."""


def seed_agreement(points: Sequence[AtlasPoint]) -> list[LabelAgreement]:
    """Per label of the first seed, sorted by label (module docstring)."""
    seeds = sorted({p.seed for p in points})
    by_point: dict[tuple, dict[int, str]] = {}
    for p in points:
        by_point.setdefault(p.grid_point, {})[p.seed] = p.record.regime
    rows: dict[str, list[int]] = {}
    others: dict[str, Counter[str]] = {}
    for labels in by_point.values():
        if sorted(labels) != seeds:
            continue
        first = labels[seeds[0]]
        row = rows.setdefault(first, [0, 0, 0])
        row[0] += 1
        row[1] += all(lab == first for lab in labels.values())
        row[2] += all(regime_family(lab) == regime_family(first) for lab in labels.values())
        others.setdefault(first, Counter()).update(lab for lab in labels.values() if lab != first)
    return [
        LabelAgreement(label, n, kept, fam, dict(sorted(others[label].items())))
        for label, (n, kept, fam) in sorted(rows.items())
    ]


def agreement_lines(sweep: AtlasSweep) -> list[str]:
    """The Markdown of one sweep's seed agreement (nothing for a single-seed sweep)."""
    if not sweep.seed_points:
        return []
    seeds = sweep.seeds
    rows = seed_agreement(sweep.seed_points)
    n = sum(r.points for r in rows)
    kept = sum(r.kept for r in rows)
    fam = sum(r.family_kept for r in rows)
    shown = ", ".join(str(s) for s in seeds)
    k = len(seeds)
    out = [
        f"Sweep `{sweep.plan.get('name')}`, seeds {shown}: **{kept} of {n} grid points "
        f"({kept / n:.0%}) keep their label at all {k} seeds** ({fam} of {n}, "
        f"{fam / n:.0%}, keep its family).\n"
        if n
        else f"Sweep `{sweep.plan.get('name')}`, seeds {shown}: no grid point ran at every seed.\n",
        f"| label at seed {seeds[0]} | grid points | same label at all {k} seeds | "
        f"same family at all {k} seeds | other labels at other seeds (runs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        other = ", ".join(f"{lab} {c}" for lab, c in r.others.items()) or "-"
        out.append(f"| {r.label} | {r.points} | {r.kept} | {r.family_kept} | {other} |")
    return [*out, ""]
