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

``best_f1_thresholds``: the threshold chosen freely to maximise F1 on ``cal`` (an upper
reference that isolates how much of a win is the tail and how much is calibration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import numpy as np

from .metrics import f1_grid

DEFAULT_GRID: tuple[float, ...] = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: names the threshold rule in cache keys of results that depend on it (a rule change must not
#: reuse tables computed under the old one)
TAIL_RULE = "kth-largest-ceil"


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


def tail_thresholds(populations: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """Thresholds ``[C, G]``: the ``k``-th largest value of each concept's population (:func:`tail_counts`).

    An empty population gives a row of NaN (that concept cannot be calibrated) and a warning.
    A population may also be a streamed summary with ``len()`` and ``order_stats(ranks)``
    (0-based ascending ranks; see :mod:`superactivators.evaluate.quantiles`: exact when the
    values fit in memory, otherwise a fixed-memory histogram with a proven error bound).
    """
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


def column_tail_thresholds(rows: np.ndarray, grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """Thresholds ``[G, K]`` of every column of ``rows [t, K]`` at once (as :func:`tail_thresholds`
    per column); no rows gives NaN."""
    rows = np.asarray(rows, dtype=np.float64)
    grid_fractions(grid)
    if len(rows) == 0:
        return np.full((len(grid), rows.shape[1]), np.nan)
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
                   grid: Sequence[float] = DEFAULT_GRID) -> TailCalibration:
    """Tail thresholds from ``populations`` and, per concept, the N whose threshold maximises F1
    of ``scores >= threshold`` against ``labels`` (both ``[n, C]``, the calibration samples).

    The one calibration protocol: the pipeline's :func:`~superactivators.evaluate.detect.calibrate_method`
    and the estimator both call it.
    """
    thr = tail_thresholds(populations, grid)  # [C, G]
    pred = np.asarray(scores)[None, :, :] >= thr.T[:, None, :]  # [G, n, C]
    curve = f1_grid(pred, np.asarray(labels, dtype=bool)).T  # [C, G]
    best = np.argmax(np.nan_to_num(curve, nan=-1.0), axis=1)
    return TailCalibration(np.asarray(grid, dtype=float), thr, curve, best)


def positive_populations(scores: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Per concept, the scores of its positive samples: the baselines' calibration population."""
    labels = np.asarray(labels, dtype=bool)
    return [scores[labels[:, c], c] for c in range(labels.shape[1])]
