"""Ranking metrics (ROC AUC, average precision) and operating points set on negatives.

**ROC AUC and average precision** follow scikit-learn's definitions exactly
(``sklearn.metrics.roc_auc_score`` / ``average_precision_score``), ties included: samples with
equal scores form one step of the curve, so a positive tied with a negative counts one half
(AUC), and AP is ``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores in decreasing order.
Both accept per-sample weights ``[B, n]`` so that B bootstrap resamples (each sample's count in
the resample) are scored in one pass. Undefined values (no positive, or for AUC no negative)
are NaN.

**Operating point at a target false-positive rate** (:func:`fpr_thresholds`): the threshold is
the smallest one whose false-positive rate on the ``cal`` negatives is ``<= alpha``. With ``n0``
negatives, at most ``k = floor(alpha n0)`` of them may reach the threshold (whole-number
arithmetic: ``alpha n0`` is rounded to 12 decimals first, so ``0.05 x 100`` gives 5, not 4).
With the negatives' scores sorted in decreasing order ``v_1 >= v_2 >= ...``, the threshold is
the next float above ``v_{k+1}`` (a sample is positive iff ``score >= threshold``).
**Tie rule**: negatives tied with ``v_{k+1}`` all fall below the threshold, so the realised
``cal`` FPR can be below ``alpha`` (never above). ``k >= n0`` gives ``-inf`` (everything positive);
no negative gives ``+inf`` (nothing positive, nothing to calibrate on).
"""

from __future__ import annotations

import math

import numpy as np


def _ranked(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per group of tied scores, groups in decreasing score: ``[B, G]`` each."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s = np.asarray(scores)[order]
    y = np.asarray(truth, dtype=bool)[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, int)
    w = np.asarray(weights, dtype=np.float64)[:, order]
    gp = np.add.reduceat(w * y, starts, axis=1) if len(s) else np.zeros((w.shape[0], 0))
    gn = np.add.reduceat(w * ~y, starts, axis=1) if len(s) else np.zeros((w.shape[0], 0))
    return gp, gn


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def weighted_auc_ap(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and AP of one score column ``[n]`` under each row of ``weights [B, n]`` -> ``([B], [B])``."""
    w = np.ones((1, len(scores))) if weights is None else np.atleast_2d(weights)
    gp, gn = _ranked(scores, truth, w)
    P, N = gp.sum(axis=1), gn.sum(axis=1)
    below = N[:, None] - np.cumsum(gn, axis=1)  # negative weight strictly below each group
    auc = _div((gp * (below + 0.5 * gn)).sum(axis=1), P * N)
    tp, fp = np.cumsum(gp, axis=1), np.cumsum(gn, axis=1)
    prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    ap = _div((gp * prec).sum(axis=1), P)
    return auc, ap


def auc_ap(scores: np.ndarray, truth: np.ndarray, known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-concept ROC AUC and AP of scores ``[n, C]`` against labels ``[n, C]`` -> ``([C], [C])``;
    ``known [n, C]`` (``data.missing_labels: allow``): samples whose label is unknown are left out."""
    scores, truth = np.asarray(scores), np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {truth.shape} must be equal [n, C] shapes")
    w = None if known is None else np.asarray(known, dtype=float)
    out = [weighted_auc_ap(scores[:, c], truth[:, c], None if w is None else w[:, c]) for c in range(scores.shape[1])]
    return (np.array([a[0] for a, _ in out], dtype=float).reshape(-1),
            np.array([b[0] for _, b in out], dtype=float).reshape(-1))


def roc_points(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of one score column at every distinct threshold, from (0, 0) to (1, 1)
    (sklearn's ``roc_curve`` without dropping collinear points); NaN arrays without both classes."""
    gp, gn = _ranked(scores, truth, np.ones((1, len(scores))))
    P, N = gp.sum(), gn.sum()
    if P == 0 or N == 0:
        return np.array([np.nan]), np.array([np.nan])
    return np.r_[0.0, np.cumsum(gn[0]) / N], np.r_[0.0, np.cumsum(gp[0]) / P]


def allowed_false_positives(alpha: float, n_neg: int) -> int:
    """``floor(alpha n_neg)`` in whole numbers (``alpha n_neg`` rounded to 12 decimals first)."""
    return int(math.floor(round(alpha * n_neg, 12)))


def fpr_thresholds(scores: np.ndarray, truth: np.ndarray, alpha: float, known: np.ndarray | None = None
                   ) -> np.ndarray:
    """Per concept, the smallest threshold whose FPR on the negatives of ``scores [n, C]`` is ``<= alpha``
    (``known [n, C]``: samples whose label is unknown are not negatives)."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if known is not None:
        truth = truth | ~np.asarray(known, dtype=bool)  # unknown: kept out of the negatives
    if not 0 <= alpha <= 1:
        raise ValueError(f"target false-positive rate must be in [0, 1], got {alpha}")
    out = np.empty(scores.shape[1])
    for c in range(scores.shape[1]):
        neg = np.sort(scores[~truth[:, c], c])[::-1]
        k = allowed_false_positives(alpha, len(neg))
        if len(neg) == 0:
            out[c] = np.inf
        elif k >= len(neg):
            out[c] = -np.inf
        else:
            out[c] = np.nextafter(neg[k], np.inf)
    return out


def reweighted_precision(tpr: np.ndarray, fpr: np.ndarray, prevalence: float) -> np.ndarray:
    """Precision at a share ``prevalence`` (pi) of positives: ``pi TPR / (pi TPR + (1 - pi) FPR)``.

    The same as weighting each test negative by ``(1 - pi) / pi * n_pos / n_neg`` relative to
    a positive; 0 where nothing would be predicted positive.
    """
    tpr, fpr = np.asarray(tpr, dtype=np.float64), np.asarray(fpr, dtype=np.float64)
    num = prevalence * tpr
    den = num + (1 - prevalence) * fpr
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def reweighted_f1(tpr: np.ndarray, fpr: np.ndarray, prevalence: float) -> np.ndarray:
    """F1 at a share ``prevalence`` of positives: ``2 P R / (P + R)`` with P re-weighted, R = TPR."""
    p, r = reweighted_precision(tpr, fpr, prevalence), np.asarray(tpr, dtype=np.float64)
    return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
