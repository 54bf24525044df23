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
    {"alpha_w": min(alpha_w, critical_alpha_w / 2)}  eta' = min(eta, critical_step / 2),
                                                     B' = B (lowered, never raised)
    {"alpha_w": min(alpha_w / 4, critical_alpha_w / 2)}  eta' = min(eta / 4,
                                                     critical_step / 2), B' = B (the bare
                                                     diverged family's)
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
predictions made together by :func:`tdlens.probes.expected.predict_many` (shared series
terms; past the series, A deflated: 3.2 s at the seed run's D = 2048 on a loaded machine
against 25-29 s one by one, BENCHMARKS.md), the control by ``predict`` itself.

Under a non-constant ``schedules.alpha_w`` each setting scales the whole schedule (eta is
its base step; :class:`Predictor`). When the control's path reaches a floor
(ANNEAL_FOR) under a constant schedule, :func:`annealing` adds ``inverse_time``
schedules of the run's step, which the report advises where the run is
``plateau:noise-floor`` (:func:`tdlens.report.advice.anneal_advice`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tdlens import regimes
from tdlens.config import RunConfig, StepSchedule, eta_t
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
ANNEAL_T0 = (1 / 40, 1 / 20, 1 / 10, 1 / 5, 1 / 2.5)
"""t0 of the proposed ``inverse_time`` schedules, as fractions of the iterations after the
probe (at least 1 iteration each)."""
SCHEDULED_FLOPS = 2e10
"""Above this estimated cost a scheduled prediction past the series regime uses the
schedule's mean step instead (:meth:`Predictor.with_schedule`; a few seconds here)."""
ANNEAL_FOR = ("plateau:noise-floor", "learning")
"""The control's path regimes for which the annealing schedules are predicted (a floor
reached within the run: the schedule can only lower a floor)."""
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
    own eta), rescaled to other batches: ``noise sqrt(B_cfg / B)``. :meth:`prefetch`
    predicts many etas at once (``ex.predict_many``: the same numbers up to float
    rounding, at a fraction of the cost); the config's own eta always comes from
    ``ex.predict`` itself, so the control is the probe's prediction bit for bit.

    Under a non-constant ``schedules.alpha_w`` a step eta stands for the whole schedule
    with base eta (``eta_t(schedule, eta, t)`` for the iterations t = n + 1 .. outer_iters
    - 1 after the probe at iteration n), predicted by ``ex.predict_scheduled``."""

    def __init__(
        self, ing: Ingredients, cfg: RunConfig, base: ex.Prediction | None = None, n: int = 0
    ):
        self.ing, self.cfg, self.n = ing, cfg, n
        self._cache: dict[float, ex.Prediction] = {}
        self.notes: dict[float, str] = {}
        """Per base step: how its scheduled prediction was approximated (with_schedule)."""
        if base is not None:
            self._cache[st.expected_step(cfg)] = base

    @property
    def scheduled(self) -> bool:
        """Does the critic step follow a non-constant schedule?"""
        return not self.cfg.schedules.alpha_w.is_constant

    def _schedule_steps(self, schedule: StepSchedule, eta: float) -> np.ndarray:
        """``eta_t(schedule, eta, t)`` for t = n + 1 .. outer_iters - 1."""
        t = self.n + 1 + np.arange(max(self.cfg.outer_iters - self.n - 1, 0))
        return np.atleast_1d(eta_t(schedule, eta, t))

    def _too_costly(self, etas: np.ndarray) -> str:
        """Why a scheduled prediction with steps `etas` uses their mean step ("" when it
        does not): past the series regime its noise costs ``~min(steps^2 C D^2, 4 steps
        D^3)`` flops, above SCHEDULED_FLOPS the constant mean step stands in (the same
        total step, so the same mean path to first order)."""
        i = self.ing
        steps, D, C = etas.size, i.A.shape[0], i.U.shape[1]
        flops = min(steps**2 * C * D**2, 4 * steps * D**3)
        if not steps or ex._binomial(i.A, float(np.max(etas)), steps):
            return ""
        if flops <= SCHEDULED_FLOPS:
            return ""
        return (
            f"schedule approximated by its mean step {float(np.mean(etas)):.4g} (following "
            f"it step by step would take ~{flops:.1e} flops)"
        )

    def with_schedule(self, schedule: StepSchedule, eta: float) -> tuple[ex.Prediction, str]:
        """``(prediction, note)`` under `schedule` with base step eta
        (:meth:`_schedule_steps`, ``ex.predict_scheduled``), the run's batch; or the
        prediction at the schedule's mean step with the note of :meth:`_too_costly`."""
        i, cfg = self.ing, self.cfg
        etas = self._schedule_steps(schedule, eta)
        note = self._too_costly(etas)
        if note:
            mean = float(np.mean(etas))
            p = ex.predict(
                i.A, i.e0, i.U, i.phi_t, mean, cfg.trajectories, cfg.outer_iters,
                i.est, i.halves, i.threads,
            )  # fmt: skip
            return p, note
        pred = ex.predict_scheduled(
            i.A, i.e0, i.U, i.phi_t, etas, cfg.trajectories, i.est, i.halves, i.threads
        )
        return pred, ""

    def _one(self, eta: float) -> ex.Prediction:
        i, cfg = self.ing, self.cfg
        if self.scheduled:
            p, note = self.with_schedule(cfg.schedules.alpha_w, eta)
            if note:
                self.notes[eta] = note
            return p
        return ex.predict(
            i.A, i.e0, i.U, i.phi_t, eta, cfg.trajectories, cfg.outer_iters,
            i.est, i.halves, i.threads,
        )  # fmt: skip

    def prefetch(self, etas: list[float]) -> None:
        """Predict every eta of `etas` not cached yet in one ``ex.predict_many`` (the
        config's own eta and scheduled predictions one by one, :meth:`_one`)."""
        own = st.expected_step(self.cfg)
        todo = sorted({float(e) for e in etas} - set(self._cache))
        if own in todo:
            self._cache[own] = self._one(own)
            todo.remove(own)
        if not todo:
            return
        if self.scheduled:  # the mean steps of those too costly to follow: together
            means = {}
            for e in todo:
                etas = self._schedule_steps(self.cfg.schedules.alpha_w, e)
                note = self._too_costly(etas)
                if note:
                    means[e], self.notes[e] = float(np.mean(etas)), note
                else:
                    self._cache[e] = self._one(e)
            if means:
                i, cfg = self.ing, self.cfg
                preds = ex.predict_many(
                    i.A, i.e0, i.U, i.phi_t, list(means.values()), cfg.trajectories,
                    cfg.outer_iters, i.est, i.halves, i.threads,
                )  # fmt: skip
                self._cache.update(zip(means, preds, strict=True))
            return
        i, cfg = self.ing, self.cfg
        preds = ex.predict_many(
            i.A, i.e0, i.U, i.phi_t, todo, cfg.trajectories, cfg.outer_iters,
            i.est, i.halves, i.threads,
        )  # fmt: skip
        self._cache.update(zip(todo, preds, strict=True))

    def __call__(self, eta: float, trajectories: int) -> ex.Prediction:
        p = self._cache.get(eta)
        if p is None:
            p = self._one(eta)
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
    return outcome_of(predictor(eta, B), name, sets, eta, B, j_end, note)


def outcome_of(
    p: ex.Prediction,
    name: str,
    sets: dict[str, Any],
    eta: float,
    B: int,
    j_end: int,
    note: str = "",
) -> Outcome:
    """The :class:`Outcome` of the prediction `p` (module docstring), j_end ahead."""
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
    schedules: list[Outcome] = field(default_factory=list)


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
    predictor = Predictor(ing, cfg, base, n)
    eta, B = st.expected_step(cfg), cfg.trajectories
    j_end = max(cfg.outer_iters - 1 - n, 0)
    stable = CAP * critical_step if math.isfinite(critical_step) and critical_step > 0 else math.inf

    def at(name: str, sets: dict[str, Any], note: str = "") -> Outcome:
        e, b = step_of(cfg, sets)
        return Outcome(name, sets, e, b, note=note)  # predicted below, all etas at once

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
            cap = _capped(label, current, sets)
            note = f"capped at {cap:g} x critical_step" if cap is not None else ""
            out.append(at(name, sets, note))
    top = stable if math.isfinite(stable) else 10.0 * eta
    low = min(GRID_LOW * eta, top / 10.0) if eta > 0 else top / 100.0
    grid = []
    for k, e in enumerate(np.geomspace(low, top, GRID_POINTS) if top > 0 else ()):
        for f in BATCH_FACTORS:
            sets = {"alpha_w": alpha_w_for(cfg, float(e), f * B)}
            if f > 1:
                sets["trajectories"] = f * B
            grid.append(Outcome(f"grid_{k:02d}_b{f}", sets, float(e), f * B))
    predictor.prefetch([o.eta for o in (*out, *grid) if o.trajectories > 0])

    def resolve(o: Outcome) -> Outcome:
        if o.trajectories <= 0:
            return o  # not predictable (its note says why)
        got = outcome(predictor, o.name, o.set, o.eta, o.trajectories, j_end, o.note)
        extra = predictor.notes.get(o.eta, "")
        if extra:
            return replace(got, note="; ".join(filter(None, [o.note, extra])))
        return got

    interventions = [resolve(o) for o in out]
    anneal = []
    control = next((o for o in interventions if o.name == "control"), None)
    if cfg.schedules.alpha_w.is_constant and control is not None and control.regime in ANNEAL_FOR:
        anneal = annealing(predictor, cfg, n, j_end)
    return Counterfactuals(
        n, j_end, critical_step, interventions, [resolve(o) for o in grid], anneal
    )


def annealing(predictor: Predictor, cfg: RunConfig, n: int, j_end: int) -> list[Outcome]:
    """The run's base step under ``inverse_time`` schedules ``alpha_w / (1 + t / t0)``,
    t0 = ANNEAL_T0 x the iterations after the probe (at least 1, each once): a constant step holds
    value_gap at its noise floor ``~ sqrt(eta / B)``, a falling one keeps lowering it
    (docs/model.md §6.1). Each ``set`` is the config keys that make that schedule."""
    eta, out = st.expected_step(cfg), []
    left = max(cfg.outer_iters - 1 - n, 1)
    t0s = sorted({float(max(round(frac * left), 1)) for frac in ANNEAL_T0})
    for k, t0 in enumerate(t0s):
        schedule = StepSchedule(kind="inverse_time", t0=t0)
        sets = {"schedules.alpha_w.kind": "inverse_time", "schedules.alpha_w.t0": t0}
        p, note = predictor.with_schedule(schedule, eta)
        out.append(outcome_of(p, f"anneal_{k:02d}", sets, eta, cfg.trajectories, j_end, note))
    return out


def to_arrays(cf: Counterfactuals) -> dict[str, np.ndarray]:
    """``probes/counterfactuals_<iter>.npz``: one entry per setting (interventions, the
    grid, then the annealing schedules), strings as unicode arrays (no pickles), NaN where
    not predicted."""
    rows = [*cf.interventions, *cf.grid, *cf.schedules]
    keys = ("value_gap_end", "value_gap_end_lo", "value_gap_end_hi", "value_gap_end_path")
    out: dict[str, np.ndarray] = {
        "name": np.array([o.name for o in rows]),
        "set_json": np.array([json.dumps(o.set, sort_keys=True) for o in rows]),
        "kind": np.array(
            ["intervention"] * len(cf.interventions)
            + ["grid"] * len(cf.grid)
            + ["schedule"] * len(cf.schedules)
        ),
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
