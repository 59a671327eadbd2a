"""Bootstrap uncertainty of detection F1: per concept, per aggregate, and paired between methods.

**Resamples.** One resample draws ``n`` test samples with replacement (``resample_indices``:
a seeded ``numpy`` generator, ``integers(0, n)``, in chunks of resamples). Every concept and every method is scored on
the *same* resamples, so differences between methods are paired and aggregates over concepts
keep the correlation between concepts (one image holds many concepts).

**Fast.** A resample only changes how often each sample counts. With ``W [B, n]`` the count of
each sample in each resample and the per-sample indicators ``X [n, 3K]`` of TP, FP and FN of
``K`` (method, concept) columns, all resampled confusion counts are one matrix product
``W @ X`` (float32 holds counts exactly up to 2^24). No Python loop runs per resample.

**What is reported** (percentile intervals as the seed's ``utils/detection_error_utils.py``,
``np.percentile`` at ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``):

- per concept: F1 on the whole test split, its interval ``[lo, hi]`` and the seed's error
  ``(hi - lo) / 2``;
- aggregates over the concepts with test positives: ``macro`` (mean F1), ``weighted`` (F1
  weighted by test positives: the paper's headline) and ``micro`` (F1 of the counts pooled
  over every concept). Their interval comes from the aggregate recomputed on each resample
  (the weights of ``weighted`` are the resample's own positives). Their ``err`` for macro and
  weighted is the seed's (``scripts/per_concept_ptm_optimization.py``): per-concept errors
  combined as if independent, ``sqrt(sum_c (w_c err_c)^2)`` with ``w_c`` the share of test
  positives (``1 / C`` for macro); micro has no such formula and gets ``(hi - lo) / 2``;
- paired: ``d = F1(a) - F1(b)`` per resample; interval of ``d`` and the one-sided p-value
  ``(1 + #{d <= 0}) / (B + 1)`` of "a is not better than b" (identical methods give p = 1;
  ``a`` better on every resample gives ``1 / (B + 1)``), and the two-sided p-value
  ``min(1, 2 min(p(d <= 0), p(d >= 0)))`` of "no difference" (``p_two``), which words the gap
  either way: significantly better, significantly worse, or no significant difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95
ALPHA = 0.05  # one-sided significance level of the paired test
CHUNK_ELEMENTS = 1 << 22  # resample weights held at once (float32: 16 MB)


def iter_resample_indices(n: int, n_resamples: int, seed: int):
    """Chunks ``[b, n]`` of sample indices of resamples ``0..n_resamples`` of ``n`` samples.

    One seeded generator draws them in chunks whose size depends on ``n`` only, so the same
    ``(n, n_resamples, seed)`` always gives the same resamples, and memory stays bounded.
    """
    if n < 1:
        raise ValueError(f"cannot resample an empty test split (n = {n})")
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_ELEMENTS // n)
    for b0 in range(0, n_resamples, step):
        yield rng.integers(0, n, (min(step, n_resamples - b0), n))


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """All resamples at once: ``[n_resamples, n]`` sample indices (as :func:`iter_resample_indices`)."""
    return np.concatenate(list(iter_resample_indices(n, n_resamples, seed)))


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each sample appears in each resample: ``[B, n]`` float32 from indices ``[B, n]``."""
    B = idx.shape[0]
    flat = (idx + (np.arange(B, dtype=np.int64) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n).reshape(B, n).astype(np.float32)


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``2 tp / (2 tp + fp + fn)``, 0 where nothing is predicted and nothing is positive."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def bootstrap_counts(pred: np.ndarray, truth: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resampled counts ``(tp, fp, fn, positives)``, each ``[B, K]``, of ``pred`` vs ``truth`` ``[n, K]``."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be equal [n, K] shapes")
    n, K = pred.shape
    X = np.concatenate([pred & truth, pred & ~truth, ~pred & truth, truth], axis=1).astype(np.float32)
    out = np.empty((n_resamples, 4 * K), dtype=np.float64)
    b0 = 0
    for idx in iter_resample_indices(n, n_resamples, seed):  # chunks of resamples, one GEMM each
        out[b0:b0 + len(idx)] = resample_weights(idx, n) @ X
        b0 += len(idx)
    return out[:, :K], out[:, K:2 * K], out[:, 2 * K:3 * K], out[:, 3 * K:]


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` percentile interval along axis 0 (linear, as ``np.percentile``)."""
    a = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(samples, [a, 100 - a], axis=0)
    return lo, hi


def one_sided_p(diff: np.ndarray) -> np.ndarray:
    """``(1 + #{d <= 0}) / (B + 1)`` along axis 0: the p-value of "not better"."""
    return (1 + (diff <= 0).sum(axis=0)) / (diff.shape[0] + 1)


def two_sided_p(diff: np.ndarray) -> np.ndarray:
    """``min(1, 2 min((1 + #{d <= 0}), (1 + #{d >= 0})) / (B + 1))`` along axis 0: the p-value
    of "no difference", so that a significant loss is told from a tie."""
    B = diff.shape[0]
    le, ge = (1 + (diff <= 0).sum(axis=0)) / (B + 1), (1 + (diff >= 0).sum(axis=0)) / (B + 1)
    return np.minimum(1.0, 2 * np.minimum(le, ge))


BETTER, WORSE, TIE = "significantly better", "significantly worse", "no significant difference"


def significance_words(diff: float, p_two: float, alpha: float = ALPHA) -> str:
    """How ``a`` compares with ``b`` from the point difference and the two-sided p-value."""
    if not np.isfinite(p_two) or p_two >= alpha or diff == 0:
        return TIE
    return BETTER if diff > 0 else WORSE


@dataclass
class Interval:
    """A point value with its bootstrap interval and error."""

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    err: np.ndarray


@dataclass
class Paired:
    """``a - b``: the point difference, its interval, the one-sided p-value of a <= b and the
    two-sided one of a == b."""

    diff: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    p: np.ndarray
    p_two: np.ndarray | None = None

    def significant(self, alpha: float = ALPHA) -> np.ndarray:
        return self.p < alpha

    def words(self, alpha: float = ALPHA) -> str | list[str]:
        """:func:`significance_words` of the two-sided test (a list for per-concept arrays)."""
        d, p = np.asarray(self.diff, float), np.asarray(self.p_two if self.p_two is not None else np.nan, float)
        if d.ndim == 0:
            return significance_words(float(d), float(p), alpha)
        return [significance_words(float(x), float(y), alpha) for x, y in zip(d, np.broadcast_to(p, d.shape))]


AGG_KINDS = ("macro", "weighted", "micro")


@dataclass
class Bootstrap:
    """Resampled F1 of ``M`` methods x ``C`` concepts on the same test resamples.

    ``tp``, ``fp``, ``fn``: ``[B, M, C]``; ``pos``: ``[B, C]`` positives per resample;
    ``point``: the counts on the whole test split (``[M, C]`` each) and ``support`` ``[C]``.
    """

    methods: list[str]
    names: list[str]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    pos: np.ndarray
    point: dict[str, np.ndarray]
    support: np.ndarray
    confidence: float = CONFIDENCE

    @classmethod
    def run(cls, pred: np.ndarray, truth: np.ndarray, methods: Sequence[str], names: Sequence[str],
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> Bootstrap:
        """``pred [M, n, C]`` bool of every method, ``truth [n, C]``: all resampled at once."""
        pred = np.asarray(pred, dtype=bool)
        truth = np.asarray(truth, dtype=bool)
        M, n, C = pred.shape
        if truth.shape != (n, C) or len(methods) != M or len(names) != C:
            raise ValueError(f"pred {pred.shape}, truth {truth.shape}, {len(methods)} methods, {len(names)} names disagree")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        flat = pred.transpose(1, 0, 2).reshape(n, M * C)  # column m * C + c
        tp, fp, fn, pos = bootstrap_counts(flat, np.tile(truth, (1, M)), n_resamples, seed)
        shape = (n_resamples, M, C)
        point = {"tp": (pred & truth).sum(axis=1), "fp": (pred & ~truth).sum(axis=1),
                 "fn": (~pred & truth).sum(axis=1)}
        return cls(list(methods), list(names), tp.reshape(shape), fp.reshape(shape), fn.reshape(shape),
                   pos[:, :C], {k: v.astype(np.float64) for k, v in point.items()}, truth.sum(axis=0), confidence)

    @property
    def scored(self) -> np.ndarray:
        """Concepts with at least one positive test sample (the ones aggregates run over)."""
        return self.support > 0

    def f1(self) -> np.ndarray:
        """Resampled F1 ``[B, M, C]`` (computed once)."""
        if getattr(self, "_f1", None) is None:
            self._f1 = f1_from_counts(self.tp, self.fp, self.fn)
        return self._f1

    def point_f1(self) -> np.ndarray:
        return f1_from_counts(self.point["tp"], self.point["fp"], self.point["fn"])

    def per_concept(self) -> Interval:
        """F1 ``[M, C]`` with its interval and error ``(hi - lo) / 2``."""
        lo, hi = percentile_interval(self.f1(), self.confidence)
        return Interval(self.point_f1(), lo, hi, (hi - lo) / 2)

    def _aggregate(self, kind: str, f1: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                   pos: np.ndarray) -> np.ndarray:
        """Aggregate over concepts (last axis) of F1 / counts; ``pos`` weights (broadcast)."""
        s = self.scored
        if kind == "macro":
            return f1[..., s].mean(axis=-1) if s.any() else np.zeros(f1.shape[:-1])
        if kind == "weighted":
            w = np.broadcast_to(pos, f1.shape)[..., s]
            tot = w.sum(axis=-1)
            return np.divide((w * f1[..., s]).sum(axis=-1), tot, out=np.zeros_like(tot, dtype=float), where=tot > 0)
        if kind == "micro":
            return f1_from_counts(tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1))
        raise ValueError(f"aggregate must be one of {AGG_KINDS}, got {kind!r}")

    def aggregate_samples(self, kind: str) -> np.ndarray:
        """The aggregate recomputed on every resample: ``[B, M]``."""
        return self._aggregate(kind, self.f1(), self.tp, self.fp, self.fn, self.pos[:, None, :])

    def aggregate_point(self, kind: str) -> np.ndarray:
        """The aggregate on the whole test split: ``[M]``."""
        p = self.point
        return self._aggregate(kind, self.point_f1(), p["tp"], p["fp"], p["fn"], self.support[None, :].astype(float))

    def aggregate(self, kind: str) -> Interval:
        """Aggregate F1 ``[M]``: value, interval over resamples, and the seed's error (see module doc)."""
        lo, hi = percentile_interval(self.aggregate_samples(kind), self.confidence)
        if kind == "micro":
            err = (hi - lo) / 2
        else:
            s = self.scored
            per = self.per_concept().err[:, s]  # [M, C_scored]
            w = self.support[s] / self.support[s].sum() if kind == "weighted" else np.full(s.sum(), 1 / max(s.sum(), 1))
            err = np.sqrt(((per * w[None, :]) ** 2).sum(axis=1))
        return Interval(self.aggregate_point(kind), lo, hi, err)

    def paired(self, a: str, b: str, kind: str | None = None) -> Paired:
        """``F1(a) - F1(b)``: per concept (``kind=None``, arrays ``[C]``) or of an aggregate (scalars)."""
        i, j = self.methods.index(a), self.methods.index(b)
        if kind is None:
            f = self.f1()
            d, d0 = f[:, i] - f[:, j], self.point_f1()[i] - self.point_f1()[j]
        else:
            s = self.aggregate_samples(kind)
            p = self.aggregate_point(kind)
            d, d0 = s[:, i] - s[:, j], p[i] - p[j]
        lo, hi = percentile_interval(d, self.confidence)
        return Paired(np.asarray(d0), lo, hi, one_sided_p(d), two_sided_p(d))
