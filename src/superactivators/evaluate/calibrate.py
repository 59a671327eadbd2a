"""Calibration: per-concept thresholds from the tail of a calibration population.

Every calibrator is a pure function ``(populations or scores, ...) -> thresholds``.

``tail_thresholds``: for a grid of N (percent of the population kept), the threshold of a
population of ``n`` values is its ``k``-th largest value with ``k = max(1, ceil(N * n / 100))``
(:func:`tail_counts`), so that exactly the top ``k`` values reach it (ties at the threshold
aside: tied values all reach it). ``k`` comes from whole-number arithmetic on the decimal value
of N (``Fraction(str(N))``), never from ``1 - N/100`` in floating point, which rounds up for
N = 10, 20, 60, 70, 95 and drops the boundary value whenever the rank lands on a whole number.
For SuperActivator detection the population is the in-concept token activations on ``cal``;
for the per-sample baselines it is the score of the concept's positive ``cal`` samples.

That is the rule ``"ours"`` (the default). ``protocol: seed`` takes the seed study's rule
``"seed"`` instead (:data:`TailRule`): the threshold is the linear-interpolated ``1 - N/100``
quantile of the population, NaN values left out, computed as ``torch.nanquantile`` computes it
(in float32 for float32 values: :func:`seed_quantiles`). Of ``[1, 2, 3, 4]`` at N = 50 ours keeps
the top ``k = 2`` and gives 3, the seed's gives 2.5. The rule is one argument, ``rule``,
of :func:`tail_thresholds` / :func:`calibrate_tail`; everything that calibrates passes it down.

``best_f1_thresholds``: the threshold chosen freely to maximise F1 on ``cal`` (an upper
reference that isolates how much of a win is the tail and how much is calibration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal, Sequence, get_args

import numpy as np

from .metrics import f1_grid

DEFAULT_GRID: tuple[float, ...] = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: the threshold rule of a tail: "ours" (the ``k``-th largest value, :func:`tail_counts`) or "seed"
#: (the seed study's linear ``1 - N/100`` quantile, NaNs ignored); the same names as ``protocol``
TailRule = Literal["ours", "seed"]
TAIL_RULES: tuple[str, ...] = get_args(TailRule)
#: names the threshold rule in cache keys of results that depend on it (a rule change must not
#: reuse tables computed under the old one); :func:`tail_rule_key` gives it per rule
TAIL_RULE = "kth-largest-ceil"
_RULE_KEYS = {"ours": TAIL_RULE, "seed": "linear-quantile-1-N/100"}


def check_rule(rule: str) -> str:
    """``rule`` if it names a threshold rule, else a one-line ValueError."""
    if rule not in TAIL_RULES:
        raise ValueError(f"threshold rule must be one of {list(TAIL_RULES)}, got {rule!r}")
    return rule


def tail_rule_key(rule: TailRule = "ours") -> str:
    """The name of ``rule`` in cache keys (``"ours"``: :data:`TAIL_RULE`, the key it always had)."""
    return _RULE_KEYS[check_rule(rule)]


def grid_fractions(grid: Sequence[float]) -> list[Fraction]:
    """Each N of the grid as an exact fraction of its decimal value (``2.5`` -> 5/2, ``0.1`` -> 1/10)."""
    return list(_grid_fractions(tuple(float(g) for g in grid)))


@lru_cache(maxsize=64)
def _grid_fractions(grid: tuple[float, ...]) -> tuple[Fraction, ...]:
    """Cached: calibration asks once per concept and method (thousands of ``Fraction`` parses a run)."""
    out = []
    for g in grid:
        f = Fraction(str(g))
        if not 0 <= f <= 100:
            raise ValueError(f"grid values must lie in [0, 100], got {list(grid)}")
        out.append(f)
    return tuple(out)


def tail_counts(n: int | np.ndarray, grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """How many values of a population of ``n`` reach the threshold for each N: ``[..., G]`` int64.

    ``k = ceil(N * n / 100)``, at least 1 (N = 0 keeps the maximum) and at most ``n``; 0 when
    ``n = 0``. Whole-number arithmetic: ``ceil(a / b) = -(-a // b)`` with ``N = p / q``.
    """
    n = np.asarray(n, dtype=np.int64)
    fr = grid_fractions(grid)
    p = np.array([f.numerator for f in fr], dtype=np.int64)
    q = np.array([f.denominator for f in fr], dtype=np.int64)
    k = -((-(n[..., None] * p)) // (100 * q))
    return np.where(n[..., None] > 0, np.clip(k, 1, n[..., None]), 0)


def seed_levels(grid: Sequence[float], dtype: type = np.float32) -> np.ndarray:
    """The seed's quantile level ``1 - N/100`` for each N of the grid, as ``torch.nanquantile``
    holds it: in the values' dtype (a Python float ``q`` becomes a scalar tensor of that dtype)."""
    grid_fractions(grid)  # validates
    return (1.0 - np.asarray(grid, dtype=np.float64) / 100.0).astype(dtype)


def seed_quantiles(sorted_vals: np.ndarray, n_valid: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """``torch.nanquantile(values, 1 - N/100)`` (linear) of each column, ``[G, K]``, in numpy.

    ``sorted_vals [n, K]``: each column ascending with its NaNs last; ``n_valid [K]``: its
    non-NaN count (at least 1). Arithmetic as torch's CPU kernel, in the values' dtype: rank
    ``h = q (n_valid - 1)``, ``x_lo = x_(floor h)``, ``x_hi = x_(ceil h)``, weight ``w = h - floor h``,
    then one fused multiply-add ``w < 0.5 ? x_lo + w d : x_hi + (w - 1) d`` with ``d = x_hi - x_lo``
    (emulated exactly in float64 for float32 values: the product of two float32 is exact there).
    Checked bit for bit against ``torch.nanquantile`` (float32, CPU) in tests/test_seed_rule.py.
    """
    dt = np.dtype(np.float64 if sorted_vals.dtype == np.float64 else np.float32)
    vals = np.asarray(sorted_vals, dtype=dt)
    one = dt.type(1)
    rank = np.maximum(seed_levels(grid, dt)[:, None] * (np.asarray(n_valid) - 1).astype(dt)[None, :], dt.type(0))
    lo, hi = np.floor(rank).astype(np.int64), np.ceil(rank).astype(np.int64)
    w = rank - lo.astype(dt)
    cols = np.arange(vals.shape[1])[None, :]
    a, b = vals[lo, cols], vals[hi, cols]
    d = b - a
    small = w < 0.5
    coeff, base = np.where(small, w, w - one), np.where(small, a, b)
    if dt == np.float32:  # fma(coeff, d, base), rounded once
        return (coeff.astype(np.float64) * d + base.astype(np.float64)).astype(np.float32)
    return coeff * d + base


def tail_thresholds(populations: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID,
                    rule: TailRule = "ours") -> np.ndarray:
    """Thresholds ``[C, G]``: the ``k``-th largest value of each concept's population (:func:`tail_counts`),
    or under ``rule="seed"`` its linear ``1 - N/100`` quantile (:func:`seed_thresholds`).

    An empty population gives a row of NaN (that concept cannot be calibrated) and a warning.
    A population may also be a streamed summary with ``len()`` and ``order_stats(ranks)``
    (0-based ascending ranks; see :mod:`superactivators.evaluate.quantiles`: exact when the
    values fit in memory, otherwise a fixed-memory histogram with a proven error bound).
    """
    if check_rule(rule) == "seed":
        return seed_thresholds(populations, grid)
    grid_fractions(grid)  # validates
    out = np.full((len(populations), len(grid)), np.nan, dtype=np.float64)
    for c, pop in enumerate(populations):  # one partition per concept
        streamed = hasattr(pop, "order_stats")
        n = len(pop) if streamed else np.asarray(pop).size
        if n == 0:
            warnings.warn(f"concept #{c} has an empty calibration population; no threshold", stacklevel=2)
            continue
        ranks = n - tail_counts(n, grid)  # ascending 0-based rank of the k-th largest
        if streamed:  # already checked finite when counted
            out[c] = pop.order_stats(ranks)
            continue
        pop = np.asarray(pop, dtype=np.float64).ravel()
        if not np.isfinite(pop).all():
            raise FloatingPointError(f"concept #{c}: non-finite activations in the calibration population")
        out[c] = np.partition(pop, np.unique(ranks))[ranks]
    return out


def seed_thresholds(populations: Sequence, grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """The seed's rule: thresholds ``[C, G]``, each population's linear quantile at ``1 - N/100``.

    As ``torch.nanquantile(values, 1 - N/100)`` computes it (:func:`seed_quantiles`): NaN values
    are left out (a population of only NaN, or none, gives NaN and a warning); ``±inf`` is refused
    as under ``"ours"``. It equals ``np.quantile(values, 1 - N/100)`` to float32 precision; the
    float32 level and rank decide, as in the seed, whether a threshold lands exactly on a value.
    A streamed population (see :class:`~superactivators.evaluate.quantiles.HistogramPopulation`)
    estimates the linear quantile at the same level from its two order statistics, so its error
    stays within the wider of their two buckets (the module's bound).
    """
    out = np.full((len(populations), len(grid)), np.nan, dtype=np.float64)
    q = seed_levels(grid).astype(np.float64)
    for c, pop in enumerate(populations):
        streamed = hasattr(pop, "order_stats")  # a histogram summary: finite values only (checked when counted)
        if not streamed:
            pop = np.asarray(pop)
            pop = np.asarray(pop, dtype=np.float64 if pop.dtype == np.float64 else np.float32).ravel()
            pop = pop[~np.isnan(pop)]
            if not np.isfinite(pop).all():
                raise FloatingPointError(f"concept #{c}: infinite activations in the calibration population")
        if len(pop) == 0:
            warnings.warn(f"concept #{c} has an empty calibration population; no threshold", stacklevel=2)
            continue
        if streamed:
            out[c] = pop.quantile(q)
        else:
            out[c] = seed_quantiles(np.sort(pop)[:, None], np.array([len(pop)]), grid)[:, 0]
    return out


def column_tail_thresholds(rows: np.ndarray, grid: Sequence[float] = DEFAULT_GRID,
                           rule: TailRule = "ours") -> np.ndarray:
    """Thresholds ``[G, K]`` of every column of ``rows [t, K]`` at once (as :func:`tail_thresholds`
    per column); no rows gives NaN."""
    rows = np.asarray(rows)
    grid_fractions(grid)
    if len(rows) == 0:
        return np.full((len(grid), rows.shape[1]), np.nan)
    if check_rule(rule) == "seed":  # in the values' precision, as the seed (float32 unless float64)
        rows = rows.astype(np.float64 if rows.dtype == np.float64 else np.float32, copy=False)
        if np.isinf(rows).any():
            raise FloatingPointError("infinite activations in a calibration population")
        n_valid = (~np.isnan(rows)).sum(axis=0)
        out = seed_quantiles(np.sort(rows, axis=0), np.maximum(n_valid, 1), grid).astype(np.float64)
        out[:, n_valid == 0] = np.nan  # an all-NaN column gives NaN, as torch.nanquantile
        return out
    rows = rows.astype(np.float64, copy=False)
    if not np.isfinite(rows).all():
        raise FloatingPointError("non-finite activations in a calibration population")
    ranks = len(rows) - tail_counts(len(rows), grid)
    return np.partition(rows, np.unique(ranks), axis=0)[ranks]


def best_f1_thresholds(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per concept, the threshold ``t`` (predict ``score >= t``) that maximises F1.

    Candidates are the observed scores; ties in score are cut together. Returns
    ``(thresholds [C], f1 [C])``. A concept with no positives gets threshold +inf, F1 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n, C = scores.shape
    order = np.argsort(-scores, axis=0, kind="stable")
    s_sorted = np.take_along_axis(scores, order, axis=0)
    t_sorted = np.take_along_axis(truth, order, axis=0)
    tp = np.cumsum(t_sorted, axis=0)  # predicting the top k+1 positive
    k = np.arange(1, n + 1)[:, None]
    P = truth.sum(axis=0)[None, :]
    f1 = np.where(P + k > 0, 2 * tp / (P + k), 0.0)
    # only cut where the next score differs, so tied scores fall on the same side
    cut_ok = np.ones_like(f1, dtype=bool)
    cut_ok[:-1] = s_sorted[:-1] != s_sorted[1:]
    f1 = np.where(cut_ok, f1, -1.0)
    best = np.argmax(f1, axis=0)
    thr = s_sorted[best, np.arange(C)]
    best_f1 = f1[best, np.arange(C)]
    no_pos = P[0] == 0
    thr[no_pos] = np.inf
    best_f1[no_pos] = 0.0
    return thr, best_f1


@dataclass
class TailCalibration:
    """Tail thresholds for every N of the grid and the N chosen per concept by calibration F1."""

    grid: np.ndarray  # [G] percent of the population kept
    thresholds: np.ndarray  # [C, G]
    f1_curve: np.ndarray  # [C, G] F1 on the calibration samples for each N
    best: np.ndarray  # [C] index into the grid (first best in grid order)

    @property
    def threshold(self) -> np.ndarray:
        """Chosen threshold per concept; +inf (never fires) where no threshold exists."""
        chosen = self.thresholds[np.arange(len(self.best)), self.best]
        return np.where(np.isnan(chosen), np.inf, chosen)

    @property
    def n_pct(self) -> np.ndarray:
        return self.grid[self.best]

    @property
    def f1(self) -> np.ndarray:
        return self.f1_curve[np.arange(len(self.best)), self.best]


def calibrate_tail(scores: np.ndarray, populations: Sequence, labels: np.ndarray,
                   grid: Sequence[float] = DEFAULT_GRID, rule: TailRule = "ours") -> TailCalibration:
    """Tail thresholds from ``populations`` (under ``rule``) and, per concept, the N whose threshold
    maximises F1 of ``scores >= threshold`` against ``labels`` (both ``[n, C]``, the calibration samples).

    The one calibration protocol: the pipeline's :func:`~superactivators.evaluate.detect.calibrate_method`
    and the estimator both call it.
    """
    thr = tail_thresholds(populations, grid, rule)  # [C, G]
    pred = np.asarray(scores)[None, :, :] >= thr.T[:, None, :]  # [G, n, C]
    curve = f1_grid(pred, np.asarray(labels, dtype=bool)).T  # [C, G]
    best = np.argmax(np.nan_to_num(curve, nan=-1.0), axis=1)
    return TailCalibration(np.asarray(grid, dtype=float), thr, curve, best)


def positive_populations(scores: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Per concept, the scores of its positive samples: the baselines' calibration population."""
    labels = np.asarray(labels, dtype=bool)
    return [scores[labels[:, c], c] for c in range(labels.shape[1])]
