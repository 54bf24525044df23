"""Counterfactual predictions: the final value_gap under each label's intervention, and
the grid that advice is chosen from (docs/model.md §6.1, issue 23 items 2 and 4).

The expected dynamics of a probe (:mod:`tdlens.probes.expected`) depend on the config
only through the trainer's step ``eta`` and its batch ``B`` (trajectories per iteration):

    e_{k+1} = (I - eta A) e_k + eta xi_k,   Cov xi = S / B,   eta = alpha_w s B T

with ``s = 1/(B T)`` (step_normalization ``mean``: ``eta = alpha_w``) or ``s = 1/(sqrt(B)
T)`` (``sqrt_batch``: ``eta = alpha_w sqrt(B)``), :func:`tdlens.probes.stability.
expected_step`. A, w#, U and the probe rows are the probe's and stay as they are: the
prediction assumes the policies frozen at the probe's snapshot. So an override of the
config is an override of ``(eta, B)`` (:func:`step_of`):

    {"alpha_w": 4 alpha_w}                         eta' = 4 eta,  B' = B
        (capped at the regime table's cap_critical = 0.5 x critical_step, never below eta:
         eta' = max(eta, min(4 eta, 0.5 eta_c)))
    {"alpha_w": alpha_w/4, "trajectories": 4 B}     mean: eta' = eta / 4,  B' = 4 B
                                                   sqrt_batch: eta' = eta / 2,  B' = 4 B
    {"alpha_pi": 0, "beta": 0}                     eta' = eta, B' = B (today's prediction)
    {"alpha_w": critical_alpha_w / 2}              eta' = critical_step / 2, B' = B
    {}                                             the control: eta, B

The interventions and their ``set`` dicts are the regime table's
(:func:`tdlens.regimes.intervention_set`, one per distinct predictor name of
:func:`tdlens.regimes.predicted_interventions`), so ``tdlens explain`` finds each twin's
prediction by its ``set``. ``{"sigma_mu": sigma_pi}`` changes A itself (the behaviour
policy): not predictable from this probe's A, so ``predicted`` is null with that reason.

The mean path does not depend on B and the noise variance scales as ``eta^2 / B``, so a
batch change at a fixed eta rescales the noise, ``noise' = noise sqrt(B / B')``; one
:func:`tdlens.probes.expected.predict` per distinct eta (:class:`Predictor`).

Per setting, at the run's last iteration ``outer_iters - 1`` (``j_end = outer_iters - 1 -
n`` iterations after the probe at iteration n), with the prediction's ``mid``, spread
``s = sqrt(noise^2 + est^2)``, ``lo``, ``hi``:

    value_gap_end = sqrt(mid^2 + s^2)   (what a probe measures on average: |mid + eps|,
                                         eps of RMS s; mid alone ignores the noise that
                                         holds value_gap at its floor)
    value_gap_end_lo, value_gap_end_hi = lo_{j_end}, hi_{j_end}
    value_gap_end_path = mid_{j_end}    (the mean path)

and the regime its path implies (:func:`path_regime`). The advice grid: eta at
GRID_POINTS log-spaced values from eta / 10 to CAP critical_step, times B x BATCH_FACTORS;
the report chooses the advice from it (:mod:`tdlens.report.advice`, which reads the
stored arrays: the report imports no probe).

A change predicted from the probe at iteration n applies from that snapshot on; from a
probe at iteration 0 it predicts a fresh run with the change (after one update at the old
step), which is how tests/test_counterfactual.py follows the advice. The fixed-point
probe calls :func:`counterfactuals` once per run, at its first round: about 15
predictions (9.5 s of CPU at the seed run's D = 2048, against 2 s for a whole round).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tdlens import regimes
from tdlens.config import RunConfig
from tdlens.probes import expected as ex
from tdlens.probes import stability as st

CAP = 0.9
"""Largest step considered stable, as a fraction of the probe's critical_step."""
GRID_POINTS = 12
"""Log-spaced steps of the advice grid, from GRID_LOW eta to CAP critical_step."""
GRID_LOW = 0.1
"""The grid's smallest step as a fraction of the run's eta (at most CAP critical_step / 10)."""
BATCH_FACTORS = (1, 2, 4)
"""Trajectory multipliers of the advice grid."""
DIVERGED_GROWTH = 10.0
"""path_regime diverged: the band's centre grows by this factor (issue 23's 10x)."""
FROZEN_FALL = 0.1
"""path_regime frozen: the mean path falls by less than this fraction over the run."""
PREFIX = "counterfactuals"
"""``probes/counterfactuals_<iter>.npz``."""
UNPREDICTABLE = frozenset({"sigma_mu"})
"""Overrides that change A itself: not predictable from the probe's A."""
UNPREDICTABLE_NOTE = "changes A itself (the behaviour policy): not predictable from this probe's A"
FROZEN_KEYS = frozenset({"alpha_pi", "beta"})
"""Overrides that freeze the policies: the prediction already assumes them frozen."""


def _capped(label: str, current: dict[str, Any], sets: dict[str, Any]) -> float | None:
    """The ``cap_critical`` of the label's ``times`` override when the cap bound it
    (``sets[key] < times x current``), else None."""
    for o in regimes.entry(label).intervention:
        if o.times is not None and o.cap_critical is not None:
            if sets.get(o.key, math.inf) < o.times * float(current[o.key]) * (1 - 1e-12):
                return o.cap_critical
    return None


@dataclass(frozen=True)
class Ingredients:
    """What :func:`tdlens.probes.expected.predict` takes from a probe besides (eta, B):
    ``A [D, D]``, ``e0 = w - w# [D]``, ``U [D, C]``, ``phi_t [n, D]``, est and halves."""

    A: np.ndarray
    e0: np.ndarray
    U: np.ndarray
    phi_t: np.ndarray
    est: float
    halves: tuple[ex.HalfBatch, ex.HalfBatch] | None = None
    threads: int = 1


def step_of(cfg: RunConfig, overrides: dict[str, Any]) -> tuple[float, int]:
    """``(eta', B')`` of `cfg` with `overrides` applied (module docstring): ``eta' =
    alpha_w' s(B') B' T`` by :func:`tdlens.probes.stability.expected_step` on the changed
    config, ``B'`` its trajectories. Keys other than alpha_w and trajectories leave both."""
    update = {k: overrides[k] for k in ("alpha_w", "trajectories") if k in overrides}
    new = cfg.model_copy(update=update)
    return st.expected_step(new), int(new.trajectories)


def alpha_w_for(cfg: RunConfig, eta: float, trajectories: int) -> float:
    """The alpha_w whose step is eta with B = trajectories: ``eta / (s(B) B T)``."""
    return eta / st.expected_step(
        cfg.model_copy(update={"alpha_w": 1.0, "trajectories": trajectories})
    )


class Predictor:
    """``ex.predict`` per distinct eta (cached; `base` is the prediction at the config's
    own eta), rescaled to other batches: ``noise sqrt(B_cfg / B)``."""

    def __init__(self, ing: Ingredients, cfg: RunConfig, base: ex.Prediction | None = None):
        self.ing, self.cfg = ing, cfg
        self._cache: dict[float, ex.Prediction] = {}
        if base is not None:
            self._cache[st.expected_step(cfg)] = base

    def __call__(self, eta: float, trajectories: int) -> ex.Prediction:
        p = self._cache.get(eta)
        if p is None:
            i = self.ing
            p = ex.predict(
                i.A, i.e0, i.U, i.phi_t, eta, self.cfg.trajectories, self.cfg.outer_iters,
                i.est, i.halves, i.threads,
            )  # fmt: skip
            self._cache[eta] = p
        if trajectories == self.cfg.trajectories:
            return p
        scale = math.sqrt(self.cfg.trajectories / trajectories)
        return ex.Prediction(mid=p.mid, noise=p.noise * scale, est=p.est)


def path_regime(p: ex.Prediction, j_end: int) -> str:
    """The label a predicted path implies over j = 0..j_end (in this order), from the
    mean path ``mid_j``, the spread ``s_j = sqrt(noise_j^2 + est^2)`` (what a probe can
    resolve: the training noise and w#'s own error) and the band's centre ``c_j =
    sqrt(mid_j^2 + s_j^2)``:

    - ``diverged``: c_end not finite or ``c_end > DIVERGED_GROWTH c_0``;
    - the mean path inside its band at the end, ``mid_end <= 2 s_end`` (the floor a
      probe measures): ``plateau:noise-floor`` when it got there (first such j) within the
      first half of the j_end iterations, else ``learning``;
    - ``frozen``: the mean path falls by less than FROZEN_FALL of itself, ``mid_end >=
      (1 - FROZEN_FALL) mid_0``;
    - ``plateau:slow-modes`` otherwise (falls, but ends above its band).
    """
    mid, s = p.mid[: j_end + 1], p.spread[: j_end + 1]
    centre = np.hypot(mid, s)
    if not np.isfinite(centre[-1]) or centre[-1] > DIVERGED_GROWTH * centre[0]:
        return "diverged"
    if mid[-1] <= 2.0 * s[-1]:
        first = int(np.flatnonzero(mid <= 2.0 * s)[0])
        return "plateau:noise-floor" if first <= j_end / 2 else "learning"
    if mid[-1] >= (1.0 - FROZEN_FALL) * mid[0]:
        return "frozen"
    return "plateau:slow-modes"


@dataclass(frozen=True)
class Outcome:
    """One setting: its config overrides, (eta, B) and predicted end (module docstring);
    ``end`` is None when not predictable (`note` says why)."""

    name: str
    set: dict[str, Any]
    eta: float = math.nan
    trajectories: int = 0
    end: dict[str, float] | None = None
    regime: str = ""
    note: str = ""

    @property
    def value(self) -> float:
        """value_gap_end (inf when not predicted, so it never wins a minimum)."""
        return self.end["value_gap_end"] if self.end else math.inf


def outcome(
    predictor: Predictor,
    name: str,
    sets: dict[str, Any],
    eta: float,
    B: int,
    j_end: int,
    note: str = "",
) -> Outcome:
    """The :class:`Outcome` of step eta with B trajectories, j_end iterations ahead."""
    p = predictor(eta, B)
    mid, s = float(p.mid[j_end]), float(p.spread[j_end])
    end = {
        "value_gap_end": math.hypot(mid, s),
        "value_gap_end_lo": float(p.lo[j_end]),
        "value_gap_end_hi": float(p.hi[j_end]),
        "value_gap_end_path": mid,
    }
    return Outcome(name, sets, eta, B, end, path_regime(p, j_end), note)


@dataclass(frozen=True)
class Counterfactuals:
    """The interventions (control first) and the advice grid of one probe."""

    n: int
    j_end: int
    critical_step: float
    interventions: list[Outcome] = field(default_factory=list)
    grid: list[Outcome] = field(default_factory=list)


def counterfactuals(
    ing: Ingredients,
    cfg: RunConfig,
    n: int,
    critical_step: float,
    base: ex.Prediction | None = None,
) -> Counterfactuals:
    """Predicted final value_gap under each intervention of issue 23's table and over
    the advice grid (module docstring), from the probe at iteration n; `base` is the
    probe's own prediction (``ex.predict`` at the config's eta, reused for the control)."""
    predictor = Predictor(ing, cfg, base)
    eta, B = st.expected_step(cfg), cfg.trajectories
    j_end = max(cfg.outer_iters - 1 - n, 0)
    stable = CAP * critical_step if math.isfinite(critical_step) and critical_step > 0 else math.inf

    def at(name: str, sets: dict[str, Any], note: str = "") -> Outcome:
        e, b = step_of(cfg, sets)
        return outcome(predictor, name, sets, e, b, j_end, note)

    out = [at("control", {})]
    crit_alpha = alpha_w_for(cfg, critical_step, B) if math.isfinite(stable) else None
    current = {k: getattr(cfg, k) for k in regimes.INTERVENTION_KEYS}
    for name, label in regimes.predicted_interventions().items():
        sets = regimes.intervention_set(label, current, crit_alpha)
        wanted = {o.key for o in regimes.entry(label).intervention}
        if not wanted <= set(sets):  # a critical_fraction without a critical step
            sets = {k: sets.get(k) for k in sorted(wanted)}
            out.append(Outcome(name, sets, note="no eigenvalue with Re > 0: no critical step"))
        elif set(sets) & UNPREDICTABLE:
            out.append(Outcome(name, sets, note=UNPREDICTABLE_NOTE))
        elif set(sets) & FROZEN_KEYS:
            out.append(at(name, sets, "the prediction assumes frozen policies: the control's"))
        else:
            e, b = step_of(cfg, sets)
            cap = _capped(label, current, sets)
            note = f"capped at {cap:g} x critical_step" if cap is not None else ""
            out.append(outcome(predictor, name, sets, e, b, j_end, note))
    top = stable if math.isfinite(stable) else 10.0 * eta
    low = min(GRID_LOW * eta, top / 10.0) if eta > 0 else top / 100.0
    grid = []
    for k, e in enumerate(np.geomspace(low, top, GRID_POINTS) if top > 0 else ()):
        for f in BATCH_FACTORS:
            sets = {"alpha_w": alpha_w_for(cfg, float(e), f * B)}
            if f > 1:
                sets["trajectories"] = f * B
            grid.append(outcome(predictor, f"grid_{k:02d}_b{f}", sets, float(e), f * B, j_end))
    return Counterfactuals(n, j_end, critical_step, out, grid)


def to_arrays(cf: Counterfactuals) -> dict[str, np.ndarray]:
    """``probes/counterfactuals_<iter>.npz``: one entry per setting (interventions then
    grid), strings as unicode arrays (no pickles), NaN where not predicted."""
    rows = [*cf.interventions, *cf.grid]
    keys = ("value_gap_end", "value_gap_end_lo", "value_gap_end_hi", "value_gap_end_path")
    out: dict[str, np.ndarray] = {
        "name": np.array([o.name for o in rows]),
        "set_json": np.array([json.dumps(o.set, sort_keys=True) for o in rows]),
        "kind": np.array(["intervention"] * len(cf.interventions) + ["grid"] * len(cf.grid)),
        "eta": np.array([o.eta for o in rows], dtype=np.float64),
        "trajectories": np.array([o.trajectories for o in rows], dtype=np.int64),
        "regime": np.array([o.regime for o in rows]),
        "note": np.array([o.note for o in rows]),
        "iter": np.array([cf.n]),
        "j_end": np.array([cf.j_end]),
        "critical_step": np.array([cf.critical_step]),
    }
    for k in keys:
        out[k] = np.array([o.end[k] if o.end else math.nan for o in rows], dtype=np.float64)
    return out
