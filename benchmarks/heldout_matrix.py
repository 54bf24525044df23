"""The held-out matrix: do labels and advice hold on configs nobody tuned them to?
(issue 23's "Done when"; results recorded in docs/verdicts.md).

Each case is a shipped base with overrides that move it off every shipped config (D,
gamma, the sigma_pi / sigma_mu ratio around the triad boundary, the policies' rates
alpha_pi / beta, rho_clip, alpha_w from frozen-ish to past the critical step). For each:

1. the *source* run (<= 80 iterations, probes every 2-8, only the fixed-point and
   stability probes: the label and the counterfactual prediction need nothing else) and
   its regime label (run_report.json ``regime.label``);
2. the label tested by its intervention twins (:func:`tdlens.sweeps.explain.explain`,
   branched ``twin_iters`` iterations before the end): ``confirmed`` / ``refuted`` by the
   twins' verdict (Z = 2 combined SEs on ln value_gap), read per label by
   :func:`label_holds`: for ``diverged:off-policy`` the sign the table predicts (the twin's
   eig_min_real 95% interval above zero); for ``learning`` (no intervention) the
   control-only rule :func:`learning_holds` (the control ends at its floor or still
   relaxes toward it); for the family ``plateau`` (no mechanism helps)
   :func:`plateau_holds`: every rival mechanism's twin, none of which may lower value_gap;
3. the first advice (``verdict.advice[0]``) FOLLOWED from the start: a fresh run with the
   advised ``set``; its final value_gap (the last fixed-point probe round) must lie in the
   predicted ``[value_gap_end_lo, value_gap_end_hi]``.

One JSON file per case (``OUT_DIR/results/<case>.json``, skipped when present: the matrix
resumes), ``OUT_DIR/heldout.jsonl`` (one line per case) and ``OUT_DIR/heldout.md`` (the
table). Runs one case at a time unless ``--jobs`` (the machine is shared)::

    PYTHONPATH=src nice python benchmarks/heldout_matrix.py OUT_DIR [--quick] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

import tdlens
from tdlens.scores import FLOOR_FACTOR
from tdlens.sweeps import explain as ex

COMMON: dict[str, Any] = {
    "threads": 1,
    "probes.plateau.enabled": False,
    "probes.distribution.enabled": False,
    "probes.q_kernel.enabled": False,
    "probes.rho_audit.enabled": False,
    "checkpoint_keep": 40,
}
"""Every source run: only the fixed-point and stability probes (label + prediction), at
their base's batch sizes (the triad's 16384 for the stability probe: eig_min_real's
interval must be narrow enough to tell its sign)."""
ADVISED: dict[str, Any] = {"probes.every": 0, "probes.stability.enabled": False}
"""A followed-advice run: one fixed-point round, at its last iteration."""
TWIN_ITERS = 16
"""Iterations each explain twin runs (probe rounds every TWIN_ITERS // 8)."""


@dataclass(frozen=True)
class Case:
    """One held-out config: a shipped base, its overrides, what it varies (in words), its
    outer_iters and its probe (and checkpoint) interval."""

    name: str
    base: str
    overrides: dict[str, Any]
    varies: str
    iters: int = 60
    every: int = 4

    def source(self) -> dict[str, Any]:
        """The source run's overrides (checkpoints every `every`, so explain can branch
        TWIN_ITERS before the end)."""
        return {
            **COMMON,
            "outer_iters": self.iters,
            "probes.every": self.every,
            "checkpoint_every": self.every,
            **self.overrides,
        }


SMALL = {"env.feature_dim": 128, "env.actor_feature_dim": 32}
MATRIX: tuple[Case, ...] = (
    Case("plateau_D64", "regime_plateau", {"env.feature_dim": 64, "env.actor_feature_dim": 16},
         "D 256 -> 64"),
    Case("plateau_D192_g095", "regime_plateau",
         {"env.feature_dim": 192, "env.actor_feature_dim": 48, "gamma": 0.95},
         "D 256 -> 192, gamma 0.9 -> 0.95"),
    Case("plateau_g08_aw20", "regime_plateau", {**SMALL, "gamma": 0.8, "alpha_w": 20.0},
         "D 128, gamma 0.9 -> 0.8, alpha_w 60 -> 20"),
    Case("frozen_aw3", "regime_plateau", {**SMALL, "alpha_w": 3.0},
         "D 128, alpha_w 60 -> 3 (frozen-ish)"),
    Case("learning_g099", "regime_learning",
         {**SMALL, "gamma": 0.99, "alpha_w": 150.0}, "D 128, gamma 0.9 -> 0.99, alpha_w 150"),
    Case("learning_frozen_policies", "regime_learning",
         {**SMALL, "alpha_pi": 0.0, "beta": 0.0, "alpha_w": 300.0},
         "D 128, policies frozen (alpha_pi = beta = 0), alpha_w 300"),
    Case("noise_floor_D128", "regime_noise_floor",
         {"env.feature_dim": 128, "env.actor_feature_dim": 32,
          "probes.fixed_point.batch_size": 8192},
         "D 64 -> 128, 80 iterations", iters=80, every=8),
    Case("noise_floor_near_critical", "regime_noise_floor",
         {"env.feature_dim": 96, "env.actor_feature_dim": 32, "alpha_w": 900.0},
         "D 96, alpha_w 900 (near the critical step)", iters=64, every=8),
    Case("divergence_D128", "regime_divergence",
         {**SMALL, "alpha_w": 4000.0}, "D 128, alpha_w 4000 (over the critical step)",
         iters=32, every=2),
    Case("policies_fast", "atlas_tracking",
         {**SMALL, "alpha_pi": 200.0, "beta": 0.5, "alpha_w": 8.0},
         "D 128, fast policies alpha_pi 200, beta 0.5, alpha_w 8"),
    Case("policies_slow", "regime_plateau",
         {**SMALL, "alpha_pi": 0.005, "beta": 0.02, "alpha_w": 40.0},
         "D 128, slow policies alpha_pi 0.005, beta 0.02, alpha_w 40"),
    Case("rho_clip_none", "regime_plateau",
         {**SMALL, "rho_clip": None, "disable_rho_clip": True, "sigma_pi": 0.2},
         "D 128, rho_clip none, sigma_pi / sigma_mu 0.25 / 0.3 -> 0.2 / 0.3"),
    Case("triad_below", "regime_triad", {"sigma_pi": 0.38, "alpha_w": 10.0},
         "sigma_pi / sigma_mu 2 -> 1.27 (below the 1.42 boundary), alpha_w 10",
         iters=64, every=8),
    Case("triad_above_g095", "regime_triad",
         {"env.feature_dim": 96, "env.actor_feature_dim": 24, "gamma": 0.95, "sigma_pi": 0.54},
         "D 96, gamma 0.99 -> 0.95, sigma_pi / sigma_mu 1.8 (above the boundary)",
         iters=48, every=4),
    Case("rho_clip_02", "regime_triad",
         {"env.feature_dim": 48, "env.actor_feature_dim": 16, "gamma": 0.95, "rho_clip": 0.2,
          "alpha_w": 20.0},
         "D 48, gamma 0.95, rho_clip 1 -> 0.2, alpha_w 20", iters=48, every=4),
    Case("noise_floor_g085", "regime_noise_floor",
         {"env.feature_dim": 64, "env.actor_feature_dim": 32, "gamma": 0.85, "alpha_w": 600.0},
         "gamma 0.9 -> 0.85, alpha_w 650 -> 600, 80 iterations", iters=80, every=8),
    Case("tracking_D128", "atlas_tracking", SMALL,
         "D 256 -> 128 (the former regime_moving_target: alpha_pi 20, beta 0.2, alpha_w 30)"),
    Case("triad_slow_growth", "regime_triad",
         {"env.feature_dim": 96, "env.actor_feature_dim": 24, "gamma": 0.9, "sigma_pi": 0.5,
          "alpha_w": 100.0},
         "issue 23's slow off-policy growth (D 96, gamma 0.9, sigma_pi 0.5, alpha_w 100) "
         "at 80 iterations", iters=80, every=8),
)  # fmt: skip
"""About 15 configs not shipped, each small (D <= 256, <= 80 iterations)."""
QUICK = ("frozen_aw3", "plateau_g08_aw20", "learning_frozen_policies", "rho_clip_02")
"""--quick: the cases tests/test_heldout.py runs (with shorter twins there)."""


def case_named(name: str) -> Case:
    """The matrix case called `name` (KeyError names it)."""
    for case in MATRIX:
        if case.name == name:
            return case
    raise KeyError(f"no held-out case '{name}'")


def _report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run_report.json").read_text())


def run_source(case: Case, out: Path) -> Path:
    """The case's source run in ``out/<case>/source`` (its report written)."""
    run_dir = out / case.name / "source"
    tdlens.run(
        case.base, case.source(), run_dir=run_dir, progress=False, catalog=out / "catalog.sqlite"
    )
    return run_dir


def _eig_min_interval(run_dir: Path) -> tuple[float, float]:
    """The last round's 95% interval of eig_min_real (stability probe), NaN without."""
    rows = tdlens.open_run(run_dir).probes.get("stability_probe")
    if rows is None or len(rows) == 0:
        return math.nan, math.nan
    last = rows.iloc[-1]
    return float(last["eig_min_real_lo"]), float(last["eig_min_real_hi"])


def slope_se(t: np.ndarray, g: np.ndarray, phi: float = ex.PHI) -> tuple[float, float]:
    """``(b, se(b))`` of the least-squares line ``g = a + b t``: ``se(b) = s / sqrt(S_tt)``
    with ``s^2 = RSS / (n - 2)``, inflated by ``sqrt((1 + phi) / (1 - phi))`` for AR(1)
    noise as :func:`tdlens.sweeps.explain.line_end_se` inflates its end point."""
    fit = scipy.stats.linregress(t, g)
    return float(fit.slope), float(fit.stderr) * math.sqrt((1 + phi) / (1 - phi))


def _control_rounds(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, value_gap) of the control's probe rounds after the branch point."""
    rows = tdlens.open_run(result["control"]["run_dir"]).probes["fixed_point_probe"]
    k = result["iteration"]
    rows = rows[(rows["iter"] >= k) & (rows["iter"] < k + result["iters"])]
    return rows["iter"].to_numpy(float), rows["value_gap"].to_numpy(float)


def learning_holds(result: dict[str, Any], report: dict[str, Any]) -> tuple[str, str]:
    """The control-only rule of ``learning`` (tdlens.scores rule 3: value_gap still falls
    on the run's timescale, or sits at its floor), on the control branch: with
    ``F = FLOOR_FACTOR F_s`` (F_s the run's stochastic_floor), confirmed when the control
    ends at the floor, ``ln g_c - ln F <= Z se_c`` (explain's final value_gap g_c and SE),
    or its excess ``x_r = g_r - F_s`` still relaxes: slope ``b`` of ``ln x_r`` over the
    control's rounds below zero beyond Z SEs, ``b + Z se(b) < 0``, at a timescale
    ``-1 / b`` within the run's outer_iters."""
    c = result["control"]["measured"]
    f_s = float(report["regime"]["evidence"]["stochastic_floor"])
    excess = c["log_value_gap"] - math.log(FLOOR_FACTOR * f_s)
    band = ex.Z * c["log_value_gap_se"]
    at_floor = f"ln(g_c / {FLOOR_FACTOR:g} F_s) = {excess:.3g} vs {ex.Z:g} SE {band:.3g}"
    if excess <= band:
        return "confirmed", f"control at the floor: {at_floor}"
    t, g = _control_rounds(result)
    if g.size < ex.MIN_ROUNDS or not np.all(g > f_s):
        return "refuted", f"control above the floor ({at_floor}) and not measurably falling"
    b, se = slope_se(t, np.log(g - f_s))
    tau = -1.0 / b if b < 0 else math.inf
    word = "confirmed" if b + ex.Z * se < 0 and tau <= result_outer(report) else "refuted"
    return word, (
        f"control excess over F_s relaxes at {b:.3g} +- {se:.3g} per iteration "
        f"(timescale {tau:.3g} vs {result_outer(report):g} iterations); {at_floor}"
    )


def result_outer(report: dict[str, Any]) -> float:
    """The run's outer_iters (its regime evidence)."""
    return float(report["regime"]["evidence"]["outer_iters"])


RIVALS = (
    "plateau:slow-modes",
    "plateau:noise-floor",
    "plateau:moving-target",
    "diverged:off-policy",
)
"""The mechanisms whose interventions the family ``plateau`` says do not help (each one's
table intervention; diverged:off-policy too, since a slowly growing error must not pass
for a plateau)."""


def plateau_holds(
    source: Path, result: dict[str, Any], iters: int, at: int | None
) -> tuple[str, str, list[dict[str, Any]]]:
    """The family ``plateau`` claims no mechanism's intervention lowers value_gap beyond its
    band: each rival mechanism (:data:`RIVALS`, explain ``--label``) is run as a twin, and
    the family is confirmed when none of its twins (nor the family's own) confirms."""
    twins = list(result["twins"])
    for rival in RIVALS:
        twins += [
            {**t, "rival": rival}
            for t in ex.explain(source, iters, label=rival, index=False, at=at)["twins"]
        ]
    helped = [t for t in twins if t["verdict"] == "confirmed"]
    word = "refuted" if helped else "confirmed"
    why = "; ".join(f"{t['name']}: {t['why']}" for t in twins)
    return word, f"{len(helped)} of {len(twins)} twins lowered value_gap: {why}", twins


def label_holds(result: dict[str, Any], report: dict[str, Any]) -> tuple[str, str]:
    """``(confirmed|refuted, why)`` of a label with its own twins (module docstring)."""
    label = result["label"]
    if label == "learning":
        return learning_holds(result, report)
    if label == "diverged:off-policy":
        (twin,) = result["twins"]
        lo, hi = _eig_min_interval(Path(twin["run_dir"]))
        sign = "confirmed" if lo > 0 else "refuted"
        return sign, (
            f"twin eig_min_real 95% interval [{lo:.3g}, {hi:.3g}] ({sign}: the table predicts "
            f"it above 0); value_gap twin: {twin['verdict']} ({twin['why']})"
        )
    if not result["twins"]:
        return "untested", "no intervention"
    return result["label_verdict"], "; ".join(t["why"] for t in result["twins"])


def follow_advice(case: Case, report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The first advice run from the start; ``{"set", "predicted", "helps", "measured",
    "lands", "unchanged"}`` (``{}`` when the report gives no advice): ``unchanged`` is the
    source run's own final value_gap, to see whether the interval tells the two apart."""
    advice = (report.get("verdict") or {}).get("advice") or []
    if not advice:
        return {}
    first = advice[0]
    run_dir = out / case.name / "advised"
    overrides = {**case.source(), **ADVISED, **first["set"]}
    tdlens.run(
        case.base, overrides, run_dir=run_dir, progress=False, catalog=out / "catalog.sqlite"
    )
    measured = last_value_gap(run_dir)
    p = first["predicted"]
    lands = bool(p["value_gap_end_lo"] <= measured <= p["value_gap_end_hi"])
    return {
        "set": first["set"],
        "predicted": p,
        "helps": first.get("helps"),
        "measured": measured,
        "lands": lands,
        "unchanged": last_value_gap(out / case.name / "source"),
    }


def last_value_gap(run_dir: Path) -> float:
    """The value_gap of the run's last fixed-point probe round."""
    return float(tdlens.open_run(run_dir).probes["fixed_point_probe"]["value_gap"].iloc[-1])


def evaluate(
    case: Case, out: Path, twin_iters: int = TWIN_ITERS, at: int | None = None
) -> dict[str, Any]:
    """Run one case (module docstring) and return its result row; the twins branch at the
    newest checkpoint at or before `at` (default: ``twin_iters`` before the end)."""
    t0 = time.time()
    shutil.rmtree(out / case.name, ignore_errors=True)  # a half-run case starts over
    source = run_source(case, out)
    report = _report(source)
    result = ex.explain(source, twin_iters, index=False, at=at)
    twins = result["twins"]
    if result["label"] == "plateau":
        word, why, twins = plateau_holds(source, result, twin_iters, at)
    else:
        word, why = label_holds(result, report)
    advice = follow_advice(case, report, out)
    return {
        "case": case.name,
        "base": case.base,
        "overrides": case.overrides,
        "varies": case.varies,
        "outer_iters": case.iters,
        "label": result["label"],
        "evidence": report["regime"]["evidence"],
        "twin_iteration": result["iteration"],
        "twin_iters": twin_iters,
        "control": result["control"]["measured"],
        "twins": [
            {
                k: t.get(k)
                for k in ("name", "rival", "set", "predicted", "measured", "verdict", "why")
            }
            for t in twins
        ],
        "label_verdict": word,
        "label_why": why,
        "advice": advice,
        "seconds": time.time() - t0,
    }


def _g(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and x is not None else "-"


def _sets(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_g(v) if isinstance(v, float) else v}" for k, v in d.items())


def _twin_name(t: dict[str, Any]) -> str:
    return f"{t['name']} [rival {t['rival']}]" if t.get("rival") else t["name"]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table: one row per case."""
    head = (
        "| case | varies | label | twin (set): measured vs control | verdict | advice set | "
        "predicted [lo, hi] | measured | lands | unchanged |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        twins = (
            "; ".join(
                f"{_twin_name(t)} ({_sets(t['set'])}): {_g(t['measured']['value_gap'])} vs "
                f"{_g(r['control']['value_gap'])}"
                for t in r["twins"]
            )
            or f"control only: {_g(r['control']['value_gap'])}"
        )
        a = r["advice"]
        p = a.get("predicted") or {}
        lines.append(
            f"| {r['case']} | {r['varies']} | `{r['label']}` | {twins} | {r['label_verdict']} | "
            f"{_sets(a.get('set', {})) or '-'} | {_g(p.get('value_gap_end'))} "
            f"[{_g(p.get('value_gap_end_lo'))}, {_g(p.get('value_gap_end_hi'))}] | "
            f"{_g(a.get('measured'))} | {'in' if a.get('lands') else 'OUT' if a else '-'} | "
            f"{_g(a.get('unchanged'))} |"
        )
    return lines


def summary(rows: list[dict[str, Any]]) -> str:
    """``labels confirmed a/n, advice landed b/m``."""
    confirmed = sum(r["label_verdict"] == "confirmed" for r in rows)
    followed = [r for r in rows if r["advice"]]
    landed = sum(r["advice"]["lands"] for r in followed)
    return (
        f"labels confirmed by their twins: {confirmed}/{len(rows)}; "
        f"followed advice landed in its interval: {landed}/{len(followed)}"
    )


def _one(args: tuple[str, str, int]) -> dict[str, Any]:
    name, out, twin_iters = args
    out_path = Path(out)
    done = out_path / "results" / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    row = evaluate(case_named(name), out_path, twin_iters)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=1))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (resumes: finished cases skip)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--jobs", type=int, default=1, help="cases at once (default 1)")
    parser.add_argument("--twin-iters", type=int, default=TWIN_ITERS)
    parser.add_argument("--only", nargs="*", default=None, help="case names")
    args = parser.parse_args(argv)
    names = [c.name for c in MATRIX]
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            print(f"--only: unknown case(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        names = args.only
    elif args.quick:
        names = list(QUICK)
    if args.jobs < 1:
        print(f"--jobs: expected >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    from common import machine_info

    print(machine_info(), flush=True)
    t0 = time.time()
    tasks = [(n, str(args.out), args.twin_iters) for n in names]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, row in enumerate(pool.map(_one, tasks), 1):
            rows.append(row)
            a = row["advice"]
            print(
                f"[{i}/{len(tasks)}] {row['case']}: {row['label']} {row['label_verdict']}; "
                f"advice {'in' if a.get('lands') else 'OUT' if a else '-'} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "heldout.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    (args.out / "heldout.md").write_text("\n".join([*table(rows), "", summary(rows)]) + "\n")
    print(summary(rows))
    print(f"wall time {time.time() - t0:.0f} s; table: {args.out / 'heldout.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
