"""Seed aggregates: interquartile mean and stratified-bootstrap intervals (docs/model.md §11).

Interquartile mean (IQM) of n values: the mean of the middle 50% of the empirical
distribution, each sorted value ``x_(i)`` (i = 1..n) carrying mass 1/n on
``[(i-1)/n, i/n]``:

    IQM = 2 sum_i x_(i) |[(i-1)/n, i/n] cap [1/4, 3/4]|

so boundary values count fractionally; for n divisible by 4 it equals the 25%-trimmed mean
(``scipy.stats.trim_mean(x, 0.25)``, rliable's IQM). Examples: IQM(1, 2, 3, 4) = 2.5;
IQM(1, 2, 10) = (1/12 + 2/3 + 10/12) * 2 = 19/6.

Stratified bootstrap (rliable): each resample draws, within every stratum s independently,
``n_s`` values with replacement from that stratum's ``n_s`` values, pools them, and applies
the statistic; the 95% interval is the 2.5th and 97.5th percentile of the statistic over
``reps`` resamples. Strata keep their sizes in every resample (for a config's seeds there
is one stratum; for a marginal over configs each config is a stratum). Draws come from a
``numpy.random.Generator`` the caller seeds.

No interval from one seed: a stratum of one value resamples to itself, so when no stratum
holds ``MIN_SEEDS`` values the bootstrap would print a zero-width interval that says
nothing about seed-to-seed spread. Then the interval is (NaN, NaN) and its text
(:func:`interval_text`) says ``1 seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 20240811
"""Root seed of the summaries' bootstrap streams (so summaries are reproducible)."""

MIN_SEEDS = 2
"""An interval needs a stratum with at least this many values (seeds)."""
ONE_SEED = "1 seed"

Statistic = Callable[[np.ndarray], np.ndarray]


def iqm_weights(n: int) -> np.ndarray:
    """Weights ``w_i = 2 |[(i-1)/n, i/n] cap [1/4, 3/4]|`` of the sorted values (sum 1)."""
    if n < 1:
        raise ValueError("iqm of no values")
    lo = np.arange(n) / n
    hi = (np.arange(n) + 1) / n
    overlap = np.clip(np.minimum(hi, 0.75) - np.maximum(lo, 0.25), 0.0, None)
    return 2.0 * overlap


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean along `axis` (module docstring); NaN for an empty axis."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        return float("nan") if x.ndim == 1 else np.full(np.delete(x.shape, axis), np.nan)
    out = np.moveaxis(x, axis, -1) @ iqm_weights(n)
    return float(out) if np.ndim(out) == 0 else out


def mean_stat(resamples: np.ndarray) -> np.ndarray:
    return resamples.mean(axis=-1)


def iqm_stat(resamples: np.ndarray) -> np.ndarray:
    return np.asarray(iqm(resamples, axis=-1))


def stratified_resamples(
    strata: Sequence[np.ndarray], reps: int, rng: np.random.Generator
) -> np.ndarray:
    """``[reps, sum n_s]``: per stratum, ``n_s`` draws with replacement, pooled per row."""
    parts = []
    for values in strata:
        values = np.asarray(values, dtype=float)
        idx = rng.integers(0, values.size, size=(reps, values.size))
        parts.append(values[idx])
    return np.concatenate(parts, axis=1)


def bootstrap_ci(
    strata: Sequence[np.ndarray],
    statistic: Statistic = iqm_stat,
    rng: np.random.Generator | None = None,
    reps: int = BOOTSTRAP_REPS,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of `statistic` under the stratified bootstrap (module docstring).

    Empty strata are dropped; with no values at all, or no stratum of ``MIN_SEEDS`` values
    (every seed alone: no spread to resample), the interval is (NaN, NaN).
    """
    strata = [np.asarray(s, dtype=float) for s in strata if np.size(s)]
    if not strata or max(np.size(s) for s in strata) < MIN_SEEDS:
        return float("nan"), float("nan")
    rng = rng if rng is not None else np.random.default_rng(BOOTSTRAP_SEED)
    stats = statistic(stratified_resamples(strata, reps, rng))
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


def interval_text(n_max: int, lo: float, hi: float) -> str:
    """``[lo, hi]`` (4 significant digits), ``1 seed`` when no stratum has two values,
    ``-`` with no values."""
    if n_max == 0:
        return "-"
    if n_max < MIN_SEEDS:
        return ONE_SEED
    return f"[{lo:.4g}, {hi:.4g}]"


def aggregate(values: Sequence[float], rng: np.random.Generator) -> dict[str, float | str]:
    """n, mean, IQM and the IQM's 95% bootstrap interval over the finite `values` (one
    stratum) and the interval's text ``ci`` (``1 seed`` for a single value)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "iqm": nan, "ci_low": nan, "ci_high": nan, "ci": "-"}
    lo, hi = bootstrap_ci([x], iqm_stat, rng)
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "iqm": iqm(x),
        "ci_low": lo,
        "ci_high": hi,
        "ci": interval_text(int(x.size), lo, hi),
    }
