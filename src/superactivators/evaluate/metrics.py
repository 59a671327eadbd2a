"""Detection and localisation metrics: confusion counts, precision, recall, F1, IoU.

Conventions (as scikit-learn's ``zero_division=0``): precision is 0 when nothing is
predicted positive, recall is 0 when there are no positives, F1 is 0 when both are 0; a rate
whose denominator is empty (FPR and TNR without negatives, FNR without positives) is 0 too, as
in the seed's ``bootstrap_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Confusion:
    """Per-concept counts ``[C]``."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @classmethod
    def from_predictions(cls, pred: np.ndarray, truth: np.ndarray, known: np.ndarray | None = None) -> "Confusion":
        """Counts per concept; ``known`` (same shape, optional) leaves unknown labels out of every count."""
        pred = np.asarray(pred, dtype=bool)
        truth = np.asarray(truth, dtype=bool)
        if known is not None:
            k = np.asarray(known, dtype=bool)
            return cls(tp=(pred & truth & k).sum(axis=0), fp=(pred & ~truth & k).sum(axis=0),
                       fn=(~pred & truth & k).sum(axis=0), tn=(~pred & ~truth & k).sum(axis=0))
        return cls(
            tp=(pred & truth).sum(axis=0), fp=(pred & ~truth).sum(axis=0),
            fn=(~pred & truth).sum(axis=0), tn=(~pred & ~truth).sum(axis=0),
        )

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def support(self) -> np.ndarray:
        return self.tp + self.fn

    def precision(self) -> np.ndarray:
        return _safe_div(self.tp, self.tp + self.fp)

    def recall(self) -> np.ndarray:
        return _safe_div(self.tp, self.tp + self.fn)

    def f1(self) -> np.ndarray:
        return _safe_div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def iou(self) -> np.ndarray:
        return _safe_div(self.tp, self.tp + self.fp + self.fn)

    def accuracy(self) -> np.ndarray:
        return _safe_div(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn)

    def fpr(self) -> np.ndarray:
        """False positive rate ``fp / (fp + tn)``."""
        return _safe_div(self.fp, self.fp + self.tn)

    def tnr(self) -> np.ndarray:
        """True negative rate (specificity) ``tn / (tn + fp)``."""
        return _safe_div(self.tn, self.tn + self.fp)

    def fnr(self) -> np.ndarray:
        """False negative rate (miss rate) ``fn / (fn + tp)``."""
        return _safe_div(self.fn, self.fn + self.tp)

    def rates(self) -> dict[str, np.ndarray]:
        """The table columns: precision, recall, F1, accuracy, FPR, TNR, FNR."""
        return {"precision": self.precision(), "recall": self.recall(), "f1": self.f1(),
                "accuracy": self.accuracy(), "fpr": self.fpr(), "tnr": self.tnr(), "fnr": self.fnr()}


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def f1_grid(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 per concept for a stack of predictions ``[G, n, C]`` -> ``[G, C]``."""
    truth = np.asarray(truth, dtype=bool)[None]
    tp = (pred & truth).sum(axis=1)
    fp = (pred & ~truth).sum(axis=1)
    fn = (~pred & truth).sum(axis=1)
    return _safe_div(2 * tp, 2 * tp + fp + fn)
