"""Bootstrap of the ranking metrics (ROC AUC, average precision) on the F1 bootstrap's resamples.

The resamples are :func:`~.bootstrap.iter_resample_indices`'s for the same ``(n, B, seed)``, so
intervals of AUROC / AP and of F1 come from the same test resamples. A resample is a weight per
sample (how often it was drawn); AUROC and AP under those weights are scikit-learn's on the
resampled data (:func:`~superactivators.evaluate.ranking.weighted_auc_ap`). A resample
where a concept has no positive (or no negative) leaves that concept's value undefined (NaN):
percentiles and aggregates skip NaN. Aggregates: ``macro`` (mean over concepts with a value),
``weighted`` (weighted by each resample's positives, as weighted F1).

Paired tests (``a - b`` per resample, as F1's): :func:`~.bootstrap.one_sided_p` of "a is not
better", :func:`reverse_p` of "a is not worse" (small when ``b`` is significantly better) and
:func:`two_sided_p` = ``min(1, 2 min(both))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..evaluate.ranking import weighted_auc_ap
from .bootstrap import CONFIDENCE, DEFAULT_RESAMPLES, iter_resample_indices, one_sided_p, resample_weights, two_sided_p

METRICS = ("auroc", "ap")


def reverse_p(diff: np.ndarray) -> np.ndarray:
    """``(1 + #{d >= 0}) / (B + 1)`` along axis 0: the p-value of "a is not worse than b"."""
    return (1 + (diff >= 0).sum(axis=0)) / (diff.shape[0] + 1)


def nan_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 skipping NaN (all-NaN gives NaN)."""
    a = (1 - confidence) / 2 * 100
    ok = ~np.isnan(samples).all(axis=0)
    lo = np.full(samples.shape[1:], np.nan)
    hi = np.full(samples.shape[1:], np.nan)
    if ok.any():
        lo[ok], hi[ok] = np.nanpercentile(samples[:, ok], [a, 100 - a], axis=0)
    return lo, hi


@dataclass
class RankPaired:
    """``a - b`` of a ranking metric: point difference, interval, and the three p-values."""

    diff: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    p: np.ndarray  # a not better
    p_reverse: np.ndarray  # a not worse (b better)
    p_two_sided: np.ndarray


@dataclass
class RankBootstrap:
    """Resampled AUROC and AP ``[B, M, C]`` of ``M`` methods' scores, plus the whole-split values ``[M, C]``."""

    methods: list[str]
    names: list[str]
    samples: dict[str, np.ndarray]
    point: dict[str, np.ndarray]
    pos: np.ndarray  # [B, C] resampled positives
    support: np.ndarray  # [C]
    confidence: float = CONFIDENCE

    @classmethod
    def run(cls, scores: np.ndarray, truth: np.ndarray, methods: Sequence[str], names: Sequence[str],
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> RankBootstrap:
        """``scores [M, n, C]``, ``truth [n, C]``."""
        scores = np.asarray(scores)
        truth = np.asarray(truth, dtype=bool)
        M, n, C = scores.shape
        if truth.shape != (n, C) or len(methods) != M or len(names) != C:
            raise ValueError(f"scores {scores.shape}, truth {truth.shape}, {len(methods)} methods, {len(names)} names disagree")
        out = {k: np.empty((n_resamples, M, C)) for k in METRICS}
        point = {k: np.empty((M, C)) for k in METRICS}
        pos = np.empty((n_resamples, C))
        # methods sharing a score column (SuperActivator and max_token, a method and its variants)
        # share its resampled values: each distinct column is ranked once
        first: dict[tuple[int, int], tuple[int, int]] = {}
        for c in range(C):
            for m in range(M):
                same = next((k for k in range(m) if np.array_equal(scores[k, :, c], scores[m, :, c])), None)
                first[(m, c)] = (m, c) if same is None else first[(same, c)]
        for (m, c), src in first.items():
            if src == (m, c):
                a, p = weighted_auc_ap(scores[m, :, c], truth[:, c])
                point["auroc"][m, c], point["ap"][m, c] = a[0], p[0]
        for (m, c), src in first.items():
            point["auroc"][m, c], point["ap"][m, c] = point["auroc"][src], point["ap"][src]
        b0 = 0
        for idx in iter_resample_indices(n, n_resamples, seed):
            w = resample_weights(idx, n).astype(np.float64)
            rows = slice(b0, b0 + len(idx))
            pos[rows] = w @ truth.astype(np.float64)
            for (m, c), src in first.items():
                if src == (m, c):
                    out["auroc"][rows, m, c], out["ap"][rows, m, c] = weighted_auc_ap(scores[m, :, c], truth[:, c], w)
            for (m, c), (k, cc) in first.items():
                out["auroc"][rows, m, c], out["ap"][rows, m, c] = out["auroc"][rows, k, cc], out["ap"][rows, k, cc]
            b0 += len(idx)
        return cls(list(methods), list(names), out, point, pos, truth.sum(axis=0), confidence)

    def per_concept(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, lo, hi)`` ``[M, C]`` of ``metric`` (``auroc`` / ``ap``)."""
        lo, hi = nan_interval(self.samples[metric], self.confidence)
        return self.point[metric], lo, hi

    def _agg(self, kind: str, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(v)
        if kind == "macro":
            n = ok.sum(axis=-1)
            return np.divide(np.where(ok, v, 0).sum(axis=-1), n, out=np.full(n.shape, np.nan), where=n > 0)
        if kind == "weighted":
            w = np.where(ok, np.broadcast_to(pos, v.shape), 0)
            tot = w.sum(axis=-1)
            return np.divide((w * np.where(ok, v, 0)).sum(axis=-1), tot, out=np.full(tot.shape, np.nan), where=tot > 0)
        raise ValueError(f"ranking aggregate must be macro or weighted, got {kind!r}")

    def aggregate_samples(self, metric: str, kind: str) -> np.ndarray:
        """The ``macro`` / ``weighted`` aggregate of ``metric`` on every resample: ``[B, M]``."""
        return self._agg(kind, self.samples[metric], self.pos[:, None, :])

    def aggregate(self, metric: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, lo, hi)`` ``[M]`` of the ``macro`` / ``weighted`` aggregate."""
        s = self._agg(kind, self.samples[metric], self.pos[:, None, :])
        lo, hi = nan_interval(s, self.confidence)
        return self._agg(kind, self.point[metric], self.support[None, :].astype(float)), lo, hi

    def paired(self, metric: str, a: str, b: str, kind: str | None = None) -> RankPaired:
        """``metric(a) - metric(b)`` per concept (``kind=None``) or of an aggregate; NaN resamples count as no difference."""
        i, j = self.methods.index(a), self.methods.index(b)
        if kind is None:
            s, p = self.samples[metric], self.point[metric]
        else:
            s = self._agg(kind, self.samples[metric], self.pos[:, None, :])
            p = self._agg(kind, self.point[metric], self.support[None, :].astype(float))
        d = np.nan_to_num(s[:, i] - s[:, j], nan=0.0)
        lo, hi = nan_interval(s[:, i] - s[:, j], self.confidence)
        return RankPaired(np.asarray(p[i] - p[j]), lo, hi, one_sided_p(d), reverse_p(d), two_sided_p(d))
