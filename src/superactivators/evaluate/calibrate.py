"""Calibration: per-concept thresholds from the tail of a calibration population.

Every calibrator is a pure function ``(populations or scores, ...) -> thresholds``.

``tail_thresholds``: for a grid of N (percent of the population kept), the threshold is the
``1 - N/100`` quantile with linear interpolation (numpy's default ``linear`` method), so that
the top N % of the population reach it. For SuperActivator detection the population is the
in-concept token activations on ``cal``; for the per-sample baselines it is the score of the
concept's positive ``cal`` samples.

``best_f1_thresholds``: the threshold chosen freely to maximise F1 on ``cal`` (an upper
reference that isolates how much of a win is the tail and how much is calibration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import f1_grid

DEFAULT_GRID: tuple[float, ...] = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def tail_thresholds(populations: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """Thresholds ``[C, G]``: the ``(1 - N/100)`` quantile of each concept's population.

    An empty population gives a row of NaN (that concept cannot be calibrated) and a warning.
    A population may also be a streamed summary with ``len()`` and ``quantile(q)`` (see
    :mod:`superactivators.evaluate.quantiles`: exact when the values fit in memory, otherwise a
    fixed-memory histogram with a proven error bound).
    """
    q = 1.0 - np.asarray(grid, dtype=np.float64) / 100.0
    if np.any((q < 0) | (q > 1)):
        raise ValueError(f"grid values must lie in [0, 100], got {list(grid)}")
    out = np.full((len(populations), len(q)), np.nan, dtype=np.float64)
    for c, pop in enumerate(populations):
        if hasattr(pop, "quantile"):  # streamed: already checked finite when counted
            if len(pop) == 0:
                warnings.warn(f"concept #{c} has an empty calibration population; no threshold", stacklevel=2)
            else:
                out[c] = pop.quantile(q)
            continue
        pop = np.asarray(pop, dtype=np.float64)
        if pop.size == 0:
            warnings.warn(f"concept #{c} has an empty calibration population; no threshold", stacklevel=2)
            continue
        if not np.isfinite(pop).all():
            raise FloatingPointError(f"concept #{c}: non-finite activations in the calibration population")
        out[c] = np.quantile(pop, q, method="linear")
    return out


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
